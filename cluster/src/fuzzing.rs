//! The body of the fuzz target `fuzz/fuzz_targets/gossip_datagram.rs`, kept here as a plain
//! function so `cargo test` drives it with random and well-formed inputs on the stable
//! toolchain too. Compiled only for tests and under `cfg(fuzzing)` (which `cargo fuzz`
//! sets), never into the shipped library.
//!
//! Gossip datagrams are the cluster's network-facing input: anyone who can reach the UDP
//! port can send them. The body hands the input to every wire decoder on its own, then to a
//! real node ([`Gossip`]) that a real peer has joined, so that authentic input reaches the
//! replication decoders instead of stopping at "not a member".
//!
//! Properties checked, for any input:
//! 1. no decoder, and no path through [`Gossip::handle_datagram`] or [`Gossip::tick`], panics
//!    (the target panicking *is* the failure);
//! 2. whatever a decoder accepts re-encodes to something that decodes to the same value;
//! 3. a datagram that fails [`Auth::open`] changes nothing: no effect, the same member list,
//!    and exactly one more `auth_failed` or `invalid` drop;
//! 4. sealing round-trips: `open(seal(kind, payload)) == (kind, payload)`;
//! 5. what the node emits is well formed: every datagram opens with the cluster secret (so it
//!    fits [`wire::MAX_DATAGRAM`]), and every entry it applies names a limiter of its engine,
//!    is finite and has a key of at most [`wire::MAX_KEY_LEN`] bytes;
//! 6. an authentic datagram from an address that never joined applies nothing, and one of
//!    kind BATCH, ACKS, LEAVE or POLICIES emits nothing at all;
//! 7. every entry of a new authentic batch from the peer is either applied or counted as
//!    dropped (`dropped_unknown_limiter`, `dropped_definition_differs`), never both, never
//!    neither;
//! 8. an authentic POLICIES datagram from B emits nothing, and B's digest in A's member list
//!    either stays or becomes the announced one, and only for an announcement of B's boot.
//!
//! How the input is used, on node A after node B has joined it:
//!
//! ```text
//!  (a) data                              raw, from B's address
//!  (b) seal(kind(data[0]), data[1..])    authentic, from B (a member)
//!  (c) the same sealed datagram          authentic, from an address that never joined
//!  then A's timers and replication ticks run for TAIL_NS of virtual time
//! ```
//!
//! `data[0] % 5` is the wire kind's number mod 5 (1 MEMBERSHIP, 2 BATCH, 3 ACKS, 4 LEAVE,
//! 0 POLICIES), so every byte value picks a kind. A payload too long to seal skips (b) and (c).
//!
//! Both nodes run [`POLICIES`]: a batch naming `p` with its digest applies; one naming `p`
//! with another digest, or any other name, is dropped and counted.

use crate::effect::Effect;
use crate::gossip::{Gossip, GossipConfig};
use crate::membership::Timings;
use crate::node_id::NodeId;
use crate::replication::ReplicationConfig;
use crate::wire::{self, Auth, FocaCodec, Kind, WireError};
use foca::Codec;
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::OnceLock;
use std::time::Duration;
use tollgate_policy::Engine;

/// Fuzzes every gossip decoder and one joined node with `data`, asserting the properties
/// above. Panics only if a property is violated.
pub fn gossip_datagram(data: &[u8]) {
    decoders(data);
    let auth = Auth::new(SECRET);
    let (mut a, joined_at) = joined_node();
    let now = joined_at + STEP_NS;
    raw_from_member(&mut a, &auth, data, now);
    if let Some((kind, sealed)) = sealed_input(&auth, data) {
        authentic_from_member(&mut a, &auth, kind, &sealed, now);
        authentic_from_stranger(&mut a, &auth, kind, &sealed, now);
    }
    settle(&mut a, &auth, now);
}

/// The cluster secret both nodes share.
const SECRET: &[u8] = b"tollgate-fuzz-secret";
/// Node A, which receives the input.
const A_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7000));
/// Node B, which joins A first; the input claims to come from it.
const B_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7001));
/// An address that never joined.
const STRANGER: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7999));
/// A's boot nonce (and first instance): what a valid ACKS to it carries.
const A_BOOT: u64 = 1_000;
/// B's boot nonce: what a BATCH must carry for A to apply it.
const B_BOOT: u64 = 2_000;
const MS: u64 = 1_000_000;
/// Virtual time between two delivery rounds while joining, and before the input arrives.
const STEP_NS: u64 = 10 * MS;
/// Delivery rounds allowed for the join. It takes a handful (announce, feed, transfers,
/// acks); 200 rounds are 2 s of virtual time, several probe periods.
const MAX_JOIN_ROUNDS: usize = 200;
/// How long A keeps running after the input: past the retransmission timeout and the
/// probe timeout, so timers the input armed (acks, retransmits, suspicion) fire.
const TAIL_NS: u64 = 400 * MS;
/// Ticks allowed in the tail, in case a deadline keeps coming due at once (a backlog).
const MAX_TAIL_TICKS: usize = 64;

/// Short failure-detection timings (the simulation's), so the join settles quickly.
fn timings() -> Timings {
    Timings {
        probe_period: Duration::from_millis(200),
        probe_rtt: Duration::from_millis(60),
        suspect_to_down_after: Duration::from_millis(600),
    }
}

/// The policies both nodes run: one limiter, `p`.
pub const POLICIES: &str = "policies:\n  - policy_name: p\n    rate_limiter:\n      bucket_capacity: 10\n      fill_amount: 1\n      parameters: { interval: 1s, limit_by_label_key: user }\n      selectors: [{ control_point: api }]\n";

/// The engine of [`POLICIES`], compiled once.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let policies = tollgate_policy::parse_policies(POLICIES, "fuzzing")
            .unwrap_or_else(|e| panic!("the fuzzing policies are invalid: {e}"));
        Engine::new(&policies)
    })
}

/// A node syncing every 50 ms.
fn node(addr: SocketAddr, boot: u64, name: &str) -> Gossip {
    let config = GossipConfig {
        identity: NodeId {
            addr,
            instance: boot,
            boot,
            name: name.to_string(),
        },
        timings: timings(),
        replication: ReplicationConfig::new(50 * MS),
        rng_seed: boot,
        policy_digest: engine().digest(),
    };
    Gossip::new(config, SECRET, 0)
}

/// Feeds `data` to each wire decoder directly.
fn decoders(data: &[u8]) {
    let auth = Auth::new(SECRET);
    if let Ok((kind, payload)) = auth.open(data) {
        assert_eq!(
            auth.seal(kind, payload).as_deref(),
            Ok(data),
            "open/seal differ"
        );
    }
    reencodes(data, wire::decode_batch, "batch");
    reencodes(data, wire::decode_acks, "acks");
    reencodes(data, wire::decode_leave, "leave");
    reencodes(data, wire::decode_policies, "policies");
    let mut codec = FocaCodec;
    if let Ok(header) = codec.decode_header(data) {
        let mut bytes = Vec::new();
        let encoded = codec.encode_header(&header, &mut bytes);
        assert!(encoded.is_ok(), "a decoded header failed to re-encode");
        assert_eq!(
            codec.decode_header(&bytes[..]),
            Ok(header),
            "header re-decodes differently"
        );
    }
    if let Ok(member) = codec.decode_member(data) {
        let mut bytes = Vec::new();
        let encoded = codec.encode_member(&member, &mut bytes);
        assert!(encoded.is_ok(), "a decoded member failed to re-encode");
        assert_eq!(
            codec.decode_member(&bytes[..]),
            Ok(member),
            "member re-decodes differently"
        );
    }
}

/// Property 2 for one archived payload type: a value `decode` accepts re-encodes to an
/// archive that decodes to the same value.
fn reencodes<T>(data: &[u8], decode: fn(&[u8]) -> Result<T, WireError>, what: &str)
where
    T: PartialEq + std::fmt::Debug + for<'a> rkyv::Serialize<wire::Serializer<'a>>,
{
    if let Ok(value) = decode(data) {
        if let Ok(bytes) = wire::encode(&value) {
            assert_eq!(decode(&bytes), Ok(value), "{what} re-decodes differently");
        }
    }
}

/// Datagrams in flight during the join: (from, to, sealed bytes).
type Wire = VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>;

/// Node A once B has joined it through its seed list and both have received the other's
/// state transfer, and the virtual time by then. Waiting for the transfers (not only for
/// membership) leaves A with real replication state for B: a dedup floor for B's boot and
/// batches of its own in flight, which fuzzed BATCH and ACKS datagrams then meet.
fn joined_node() -> (Gossip, u64) {
    let mut a = node(A_ADDR, A_BOOT, "a");
    let mut b = node(B_ADDR, B_BOOT, "b");
    let mut wire = Wire::new();
    let mut now = 0;
    let mut fx = Vec::new();
    b.join(&[A_ADDR], now, &mut fx);
    route(&mut b, B_ADDR, fx, now, &mut wire);
    let joined = |a: &Gossip, b: &Gossip| {
        a.is_replication_peer(&B_ADDR) && b.is_replication_peer(&A_ADDR) && a.synced() && b.synced()
    };
    for _ in 0..MAX_JOIN_ROUNDS {
        if joined(&a, &b) {
            break;
        }
        now += STEP_NS;
        for (from, to, datagram) in std::mem::take(&mut wire) {
            let (node, addr) = if to == A_ADDR {
                (&mut a, A_ADDR)
            } else {
                (&mut b, B_ADDR)
            };
            let mut fx = Vec::new();
            node.handle_datagram(from, &datagram, now, engine(), &mut fx);
            route(node, addr, fx, now, &mut wire);
        }
        for (node, addr) in [(&mut a, A_ADDR), (&mut b, B_ADDR)] {
            let mut fx = Vec::new();
            node.tick(now, &mut fx);
            route(node, addr, fx, now, &mut wire);
        }
    }
    // The setup is deterministic (fixed seeds, no loss): a pair that does not join is a bug
    // in membership or replication, not a property of the input.
    assert!(
        joined(&a, &b),
        "B did not join A in {MAX_JOIN_ROUNDS} rounds"
    );
    (a, now)
}

/// Puts `node`'s datagrams on the wire and answers its snapshot requests with an empty
/// store (one empty LOWER batch, which completes the transfer).
fn route(node: &mut Gossip, from: SocketAddr, mut fx: Vec<Effect>, now: u64, wire: &mut Wire) {
    // send_transfer only emits datagrams, so this runs at most twice.
    while !fx.is_empty() {
        for effect in std::mem::take(&mut fx) {
            match effect {
                Effect::Send { to, datagram } if to == A_ADDR || to == B_ADDR => {
                    wire.push_back((from, to, datagram));
                }
                Effect::SnapshotFor(to) => {
                    node.send_transfer(to, Vec::new(), engine(), now, &mut fx)
                }
                _ => {}
            }
        }
    }
}

/// (a) `data` as it arrived, from B.
fn raw_from_member(a: &mut Gossip, auth: &Auth, data: &[u8], now: u64) {
    let opened = auth.open(data).map(|_| ());
    let stats = a.stats();
    let members = a.members();
    let mut out = Vec::new();
    a.handle_datagram(B_ADDR, data, now, engine(), &mut out);
    check_effects(auth, &out);
    let Err(e) = opened else {
        return;
    };
    let mut expected = stats;
    expected.datagrams_in += 1;
    expected.bytes_in += data.len() as u64;
    match e {
        WireError::Auth(_) => expected.auth_failed += 1,
        WireError::Invalid(_) | WireError::TooLarge => expected.invalid += 1,
    }
    assert!(out.is_empty(), "a dropped datagram had effects: {out:?}");
    assert_eq!(
        a.members(),
        members,
        "a dropped datagram changed the member list"
    );
    assert_eq!(
        a.stats(),
        expected,
        "a dropped datagram was not counted once as {e}"
    );
}

/// `data[1..]` sealed as the kind `data[0]` picks; None when empty or too long to seal.
fn sealed_input(auth: &Auth, data: &[u8]) -> Option<(Kind, Vec<u8>)> {
    let (&selector, payload) = data.split_first()?;
    let kind = match selector % 5 {
        1 => Kind::Membership,
        2 => Kind::Batch,
        3 => Kind::Acks,
        4 => Kind::Leave,
        _ => Kind::Policies,
    };
    let sealed = auth.seal(kind, payload).ok()?;
    assert_eq!(
        auth.open(&sealed),
        Ok((kind, payload)),
        "seal/open round trip"
    );
    Some((kind, sealed))
}

/// (b) The authentic datagram from B, a member: anything may happen but a panic, and a
/// new batch's entries are each applied or counted as dropped (property 7).
fn authentic_from_member(a: &mut Gossip, auth: &Auth, kind: Kind, sealed: &[u8], now: u64) {
    let before = a.stats().replication;
    let digest_of_b = |a: &Gossip| {
        a.members()
            .into_iter()
            .find(|m| m.address == B_ADDR)
            .and_then(|m| m.policy_digest)
    };
    let b_before = digest_of_b(a);
    let mut out = Vec::new();
    a.handle_datagram(B_ADDR, sealed, now, engine(), &mut out);
    check_effects(auth, &out);
    if kind == Kind::Policies {
        assert!(out.is_empty(), "a POLICIES datagram had effects: {out:?}");
        let announced = auth
            .open(sealed)
            .ok()
            .and_then(|(_, payload)| wire::decode_policies(payload).ok())
            .filter(|p| p.boot == B_BOOT)
            .map(|p| tollgate_policy::Digest(p.digest));
        let b_after = digest_of_b(a);
        assert!(
            b_after == b_before || (announced.is_some() && b_after == announced),
            "B's digest went from {b_before:?} to {b_after:?} on {announced:?}"
        );
    }
    let after = a.stats().replication;
    if kind != Kind::Batch || after.batches_applied == before.batches_applied {
        return;
    }
    let batch = auth
        .open(sealed)
        .ok()
        .and_then(|(_, payload)| wire::decode_batch(payload).ok())
        .unwrap_or_else(|| panic!("a batch was applied that does not decode"));
    let applied: usize = out
        .iter()
        .map(|e| match e {
            Effect::Apply { entries, .. } => entries.len(),
            _ => 0,
        })
        .sum();
    let dropped = (after.dropped_unknown_limiter - before.dropped_unknown_limiter)
        + (after.dropped_definition_differs - before.dropped_definition_differs);
    assert_eq!(
        applied as u64 + dropped,
        batch.entries.len() as u64,
        "entries neither applied nor counted as dropped: {batch:?} -> {out:?}"
    );
}

/// (c) The same datagram from an address that never joined.
fn authentic_from_stranger(a: &mut Gossip, auth: &Auth, kind: Kind, sealed: &[u8], now: u64) {
    let not_member = a.stats().not_member;
    let mut out = Vec::new();
    a.handle_datagram(STRANGER, sealed, now, engine(), &mut out);
    check_effects(auth, &out);
    assert!(
        !out.iter().any(|e| matches!(e, Effect::Apply { .. })),
        "a stranger's {kind:?} changed buckets: {out:?}"
    );
    // MEMBERSHIP may be answered (foca replies to an announce); the rest must be ignored.
    if kind != Kind::Membership {
        assert!(out.is_empty(), "a stranger's {kind:?} had effects: {out:?}");
    }
    if matches!(kind, Kind::Batch | Kind::Acks | Kind::Policies) {
        assert_eq!(
            a.stats().not_member,
            not_member + 1,
            "a stranger's {kind:?} not counted"
        );
    }
}

/// Runs A's deadlines for [`TAIL_NS`] after the input.
fn settle(a: &mut Gossip, auth: &Auth, from: u64) {
    let end = from + TAIL_NS;
    let mut now = from;
    let mut out = Vec::new();
    for _ in 0..MAX_TAIL_TICKS {
        now = a.next_deadline().max(now + 1);
        if now > end {
            break;
        }
        a.tick(now, &mut out);
        check_effects(auth, &out);
        out.clear();
    }
}

/// Property 5: what a node emits is well formed.
fn check_effects(auth: &Auth, out: &[Effect]) {
    for effect in out {
        match effect {
            Effect::Send { datagram, .. } => {
                assert!(
                    auth.open(datagram).is_ok(),
                    "emitted a datagram that does not open"
                );
            }
            Effect::Apply { entries, .. } => {
                for e in entries {
                    assert!(e.value.is_finite(), "applies a non-finite value: {e:?}");
                    assert!(e.key.len() <= wire::MAX_KEY_LEN, "applies an over-long key");
                    assert!(
                        engine().get_limiter(e.limiter).is_some(),
                        "applies to a limiter the engine does not have: {e:?}"
                    );
                }
            }
            Effect::SnapshotFor(_) | Effect::Synced | Effect::PeerGone { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::effect::Replica;
    use crate::wire::{Acks, Batch, Entry, Leave, LimiterRef, Op, Policies};
    use proptest::prelude::*;

    /// The input whose `payload` is sealed as `kind`: the selector byte is the kind itself.
    fn input(kind: Kind, payload: &[u8]) -> Vec<u8> {
        let mut data = vec![kind as u8];
        data.extend_from_slice(payload);
        data
    }

    fn archived<T>(kind: Kind, value: &T) -> Vec<u8>
    where
        T: for<'a> rkyv::Serialize<wire::Serializer<'a>>,
    {
        input(kind, &wire::encode(value).expect("fits"))
    }

    /// How both nodes name their one limiter.
    fn p() -> LimiterRef {
        LimiterRef::of(&engine().limiters()[0])
    }

    /// A debit B could have sent: its boot, a sequence number past the join's.
    fn debit() -> Batch {
        Batch {
            boot: B_BOOT,
            seq: 1_000,
            op: Op::Debit,
            transfer: 0,
            parts: 0,
            limiters: vec![p()],
            entries: vec![Entry {
                limiter: 0,
                key: "user-1".into(),
                value: 2.0,
            }],
        }
    }

    /// Well-formed inputs of every kind: random bytes almost never form a valid rkyv
    /// archive or foca message, so these give proptest and the fuzzer a start.
    fn seeds() -> Vec<Vec<u8>> {
        let mut b = node(B_ADDR, B_BOOT, "b");
        let mut fx = Vec::new();
        b.join(&[A_ADDR], 0, &mut fx);
        let auth = Auth::new(SECRET);
        let announce = fx
            .iter()
            .find_map(|e| match e {
                Effect::Send { datagram, .. } => auth.open(datagram).ok(),
                _ => None,
            })
            .expect("join announces");
        let mut lower = debit();
        lower.op = Op::Lower;
        lower.transfer = 7;
        lower.parts = 2;
        let mut not_shared = debit();
        not_shared.limiters = vec![
            LimiterRef {
                policy: "p".into(),
                digest: p().digest ^ 1,
            },
            LimiterRef {
                policy: "q".into(),
                digest: 7,
            },
            p(),
        ];
        not_shared.entries = (0..3)
            .map(|i| Entry {
                limiter: i,
                key: format!("user-{i}"),
                value: 1.0,
            })
            .collect();
        vec![
            input(announce.0, announce.1),
            archived(Kind::Batch, &debit()),
            archived(Kind::Batch, &lower),
            archived(Kind::Batch, &not_shared),
            archived(
                Kind::Acks,
                &Acks {
                    boot: A_BOOT,
                    seqs: vec![1, 2, 3],
                },
            ),
            archived(Kind::Leave, &Leave { boot: B_BOOT }),
            archived(
                Kind::Policies,
                &Policies {
                    boot: B_BOOT,
                    seq: 5,
                    digest: 42,
                },
            ),
        ]
    }

    /// Limiter names: the shared one, the same name with another digest, another name.
    fn limiter() -> impl Strategy<Value = LimiterRef> {
        prop_oneof![
            Just(p()),
            any::<u64>().prop_map(|digest| LimiterRef {
                policy: "p".into(),
                digest
            }),
            ("[a-z]{0,4}", any::<u64>()).prop_map(|(policy, digest)| LimiterRef { policy, digest }),
        ]
    }

    fn batch() -> impl Strategy<Value = Batch> {
        let entry =
            (0u16..4, "[a-z0-9-]{0,12}", any::<f64>()).prop_map(|(limiter, key, value)| Entry {
                limiter,
                key,
                value,
            });
        (
            prop_oneof![Just(B_BOOT), any::<u64>()],
            0u64..2_000,
            prop_oneof![Just(Op::Debit), Just(Op::Lower)],
            (0u32..3, 0u32..3),
            proptest::collection::vec(limiter(), 0..4),
            proptest::collection::vec(entry, 0..4),
        )
            .prop_map(
                |(boot, seq, op, (transfer, parts), limiters, entries)| Batch {
                    boot,
                    seq,
                    op,
                    transfer,
                    parts,
                    limiters,
                    entries,
                },
            )
    }

    /// The seeds and well-formed archives of every kind.
    fn well_formed() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::sample::select(seeds()),
            batch().prop_map(|b| archived(Kind::Batch, &b)),
            (
                prop_oneof![Just(A_BOOT), any::<u64>()],
                proptest::collection::vec(0u64..8, 0..8)
            )
                .prop_map(|(boot, seqs)| archived(Kind::Acks, &Acks { boot, seqs })),
            prop_oneof![Just(B_BOOT), Just(A_BOOT), any::<u64>()]
                .prop_map(|boot| archived(Kind::Leave, &Leave { boot })),
            (
                prop_oneof![Just(B_BOOT), any::<u64>()],
                0u64..8,
                any::<u64>()
            )
                .prop_map(|(boot, seq, digest)| archived(
                    Kind::Policies,
                    &Policies { boot, seq, digest }
                )),
        ]
    }

    /// Random bytes, well-formed inputs, and well-formed inputs truncated or with one byte
    /// flipped.
    fn inputs() -> impl Strategy<Value = Vec<u8>> {
        let mutated = (well_formed(), any::<usize>(), any::<u8>(), any::<bool>()).prop_map(
            |(mut data, at, byte, truncate)| {
                let at = at % data.len().max(1);
                if truncate {
                    data.truncate(at);
                } else if let Some(b) = data.get_mut(at) {
                    *b ^= byte | 1;
                }
                data
            },
        );
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..wire::MAX_DATAGRAM + 100),
            well_formed(),
            mutated,
        ]
    }

    proptest! {
        // Each case joins two nodes first; 256 cases take well under a second in debug.
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_input_keeps_the_gossip_properties(data in inputs()) {
            gossip_datagram(&data);
        }
    }

    #[test]
    fn seeds_keep_the_properties() {
        for seed in seeds() {
            gossip_datagram(&seed);
        }
    }

    /// The setup is worth its cost only if authentic input gets past "not a member".
    #[test]
    fn a_well_formed_batch_from_the_peer_is_applied() {
        let (mut a, now) = joined_node();
        let sealed = Auth::new(SECRET)
            .seal(Kind::Batch, &wire::encode(&debit()).expect("fits"))
            .expect("fits");
        let mut out = Vec::new();
        a.handle_datagram(B_ADDR, &sealed, now + STEP_NS, engine(), &mut out);
        assert_eq!(
            out,
            vec![Effect::Apply {
                op: Op::Debit,
                entries: vec![Replica {
                    limiter: engine().limiters()[0].id,
                    key: "user-1".into(),
                    value: 2.0,
                }],
                boot: B_BOOT,
            }]
        );
        assert_eq!(a.stats().not_member, 0);
    }

    /// Each node learns the other's policy digest at the join, and keeps the newest
    /// announcement of the peer's current boot.
    #[test]
    fn the_peer_s_policy_digest_is_known_and_only_newer_announcements_change_it() {
        let (mut a, now) = joined_node();
        let digest_of_b = |a: &Gossip| {
            a.members()
                .into_iter()
                .find(|m| m.address == B_ADDR)
                .and_then(|m| m.policy_digest)
        };
        assert_eq!(digest_of_b(&a), Some(engine().digest()));
        let auth = Auth::new(SECRET);
        let announce = |a: &mut Gossip, boot: u64, seq: u64, digest: u64| {
            let sealed = auth
                .seal(
                    Kind::Policies,
                    &wire::encode(&Policies { boot, seq, digest }).expect("fits"),
                )
                .expect("fits");
            let mut out = Vec::new();
            a.handle_datagram(B_ADDR, &sealed, now + STEP_NS, engine(), &mut out);
            assert!(out.is_empty());
        };
        announce(&mut a, B_BOOT, 10, 99);
        assert_eq!(digest_of_b(&a), Some(tollgate_policy::Digest(99)));
        announce(&mut a, B_BOOT, 9, 98);
        assert_eq!(
            digest_of_b(&a),
            Some(tollgate_policy::Digest(99)),
            "older seq"
        );
        let not_member = a.stats().not_member;
        announce(&mut a, B_BOOT + 1, 11, 97);
        assert_eq!(
            digest_of_b(&a),
            Some(tollgate_policy::Digest(99)),
            "other boot"
        );
        assert_eq!(a.stats().not_member, not_member + 1);
    }

    /// Writes [`seeds`] to the directory `$TOLLGATE_FUZZ_SEEDS` (see fuzz/README.md).
    #[test]
    #[ignore = "writes files: run by hand to seed the fuzz corpus"]
    fn write_seed_corpus() {
        let dir = std::env::var_os("TOLLGATE_FUZZ_SEEDS").expect("set TOLLGATE_FUZZ_SEEDS");
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("create the corpus directory");
        for (i, seed) in seeds().iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed).expect("write a seed");
        }
    }
}
