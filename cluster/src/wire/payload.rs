//! The archived payloads of BATCH, ACKS, LEAVE and POLICIES datagrams, and their bounded
//! decoders.
//!
//! A [`Batch`] names each limiter its entries belong to by what the limiter *means*: the
//! policy name and the digest of its definition ([`LimiterRef`]), never by a position in
//! the `policies:` list (which a config edit reorders) nor by a process-local id. The names
//! are written once per batch, in a small table that entries index:
//!
//! ```text
//! Batch { boot u64, seq u64, op Debit|Lower, transfer u32, parts u32,
//!         limiters: [ { policy string, digest u64 } ]        (<= MAX_LIMITERS_PER_BATCH)
//!         entries:  [ { limiter u16 (index into limiters), key string, value f64 } ] }
//! ```
//!
//! So every datagram carries the identity of everything it debits, and a receiver resolves
//! it against its own policies ([`tollgate_policy::Engine::resolve`]) without any state
//! negotiated beforehand.
//!
//! [`decode_batch`] returns only batches within the documented limits: a known op (the
//! archive's enum check), `seq > 0`, at most [`MAX_LIMITERS_PER_BATCH`] limiters with
//! non-empty names of at most [`MAX_POLICY_NAME_LEN`] bytes, every entry's index inside the
//! table, keys of at most [`MAX_KEY_LEN`] bytes, finite values, and a transfer only with
//! `Lower` and a part count.

use super::envelope::MAX_PAYLOAD;
use super::WireError;
use tollgate_policy::{Digest, LimiterSpec};

/// Longest bucket key replicated. Longer label values are not replicated (counted): one
/// entry must fit a datagram with room to spare.
pub const MAX_KEY_LEN: usize = 1024;
/// Longest policy name a cluster replicates (`cluster:` validation refuses longer names).
/// Why this value: one batch must hold the longest name and the longest key,
/// `BATCH_OVERHEAD + limiter_cost + entry_cost` = 64 + 232 + 1,056 = 1,352 <= 1,380 bytes;
/// 200 bytes is far beyond a readable policy name.
pub const MAX_POLICY_NAME_LEN: usize = 200;
/// Limiters one batch may name. A reference costs at least 24 bytes, so a datagram could
/// not hold many more than 50 anyway; 64 keeps the index small and the table check cheap.
/// The packer starts a new batch when a table is full.
pub const MAX_LIMITERS_PER_BATCH: usize = 64;
/// Sequence numbers per ACKS datagram: 8 bytes each, well inside [`MAX_PAYLOAD`].
pub const MAX_ACKS_PER_DATAGRAM: usize = 128;
/// Payload bytes a batch costs before its limiters and entries, rounded up (measured by a
/// test below).
pub const BATCH_OVERHEAD: usize = 64;

/// What a [`Batch`] asks the receiver to do with its entries.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Debit `value` tokens (a peer's consumption since its previous batch).
    Debit,
    /// Lower the bucket to at most `value` tokens (state transfer to a joining node).
    Lower,
}

/// A limiter as every node names it: the policy's name and the digest of its definition.
///
/// Two nodes share a limiter's buckets only when both agree on both: the same name with
/// another digest (a capacity changed on one side of a rolling deploy) is a different
/// limiter, whose numbers must not be applied.
#[derive(
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    Clone,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
)]
pub struct LimiterRef {
    /// The policy's name (unique within a config).
    pub policy: String,
    /// [`tollgate_policy::LimiterSpec::digest`] of its definition.
    pub digest: u64,
}

impl LimiterRef {
    /// How peers name this node's limiter `spec`.
    pub fn of(spec: &LimiterSpec) -> LimiterRef {
        LimiterRef {
            policy: spec.policy_name.clone(),
            digest: spec.digest.0,
        }
    }

    /// The definition digest.
    pub fn digest(&self) -> Digest {
        Digest(self.digest)
    }
}

/// One bucket's replicated number.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq)]
pub struct Entry {
    /// Index of the bucket's limiter in [`Batch::limiters`].
    pub limiter: u16,
    /// Bucket key (the limit label's value).
    pub key: String,
    /// Tokens consumed ([`Op::Debit`]) or the level ([`Op::Lower`]).
    pub value: f64,
}

/// A reliable, acknowledged datagram of entries.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq)]
pub struct Batch {
    /// The sender's boot nonce: sequence numbers restart with each process.
    pub boot: u64,
    /// Per-boot sequence number, from 1; the receiver applies each (boot, seq) once.
    pub seq: u64,
    /// What to do with the entries.
    pub op: Op,
    /// State transfer this batch belongs to (0 = none).
    pub transfer: u32,
    /// Batches in that transfer (0 = none), so the receiver knows when it has them all.
    pub parts: u32,
    /// The limiters the entries belong to.
    pub limiters: Vec<LimiterRef>,
    /// The entries.
    pub entries: Vec<Entry>,
}

/// Batches received, so the sender stops retransmitting them.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq)]
pub struct Acks {
    /// The boot of the node whose batches are acknowledged.
    pub boot: u64,
    /// Their sequence numbers.
    pub seqs: Vec<u64>,
}

/// A graceful leave.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq)]
pub struct Leave {
    /// The leaving identity's instance (so a replayed LEAVE cannot mark a later instance).
    pub boot: u64,
}

/// The digest of the sender's policy set, announced to every peer (on a change, to a peer
/// that comes up, and every [`crate::gossip::POLICY_DIGEST_REFRESH`]) so every node can show
/// which members run other policies (`tollgate members`).
///
/// Fixed size: three numbers, nothing to bound. A receiver keeps, per member, the
/// announcement with the highest `seq` of the member's current boot, so a replayed or
/// reordered older announcement cannot bring back a digest from before a reload.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq)]
pub struct Policies {
    /// The sender's boot nonce (announcements of an older process are ignored).
    pub boot: u64,
    /// Per-boot announcement number, from 1, larger for each change of the digest.
    pub seq: u64,
    /// [`tollgate_policy::Engine::digest`] of the sender's policies.
    pub digest: u64,
}

/// Upper bound of the payload bytes one entry adds to a batch archive: the fixed part
/// (index 2, string header 8, value 8, padding) plus an out-of-line key.
pub fn entry_cost(key: &str) -> usize {
    32 + key.len()
}

/// Upper bound of the payload bytes one limiter reference adds to a batch archive: the
/// fixed part (string header 8, digest 8, padding) plus an out-of-line name.
pub fn limiter_cost(policy: &str) -> usize {
    32 + policy.len()
}

/// The rkyv serializer [`encode`] uses; a payload type is one that implements
/// `for<'a> rkyv::Serialize<Serializer<'a>>` ([`Batch`], [`Acks`], [`Leave`]).
pub type Serializer<'a> = rkyv::api::high::HighSerializer<
    rkyv::util::AlignedVec,
    rkyv::ser::allocator::ArenaHandle<'a>,
    rkyv::rancor::Error,
>;

/// Serializes any of the archived payloads.
pub fn encode<T>(value: &T) -> Result<Vec<u8>, WireError>
where
    T: for<'a> rkyv::Serialize<Serializer<'a>>,
{
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(value).map_err(|_| WireError::TooLarge)?;
    if bytes.len() > MAX_PAYLOAD {
        return Err(WireError::TooLarge);
    }
    Ok(bytes.to_vec())
}

/// Copies a payload into an aligned buffer (the archive's root is found from its end).
fn aligned(payload: &[u8]) -> Result<rkyv::util::AlignedVec, WireError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(WireError::Invalid("payload longer than MAX_PAYLOAD"));
    }
    let mut buf = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
    buf.extend_from_slice(payload);
    Ok(buf)
}

/// Validates and decodes a BATCH payload (the module docs list what is checked).
pub fn decode_batch(payload: &[u8]) -> Result<Batch, WireError> {
    let buf = aligned(payload)?;
    let batch: Batch = rkyv::from_bytes::<Batch, rkyv::rancor::Error>(&buf)
        .map_err(|_| WireError::Invalid("batch archive"))?;
    if batch.seq == 0 {
        return Err(WireError::Invalid("batch seq 0"));
    }
    if batch.limiters.len() > MAX_LIMITERS_PER_BATCH {
        return Err(WireError::Invalid(
            "more limiters than MAX_LIMITERS_PER_BATCH",
        ));
    }
    if batch
        .limiters
        .iter()
        .any(|l| l.policy.is_empty() || l.policy.len() > MAX_POLICY_NAME_LEN)
    {
        return Err(WireError::Invalid("policy name empty or too long"));
    }
    if batch
        .entries
        .iter()
        .any(|e| usize::from(e.limiter) >= batch.limiters.len())
    {
        return Err(WireError::Invalid("entry names no limiter of the batch"));
    }
    if batch
        .entries
        .iter()
        .any(|e| !e.value.is_finite() || e.key.len() > MAX_KEY_LEN)
    {
        return Err(WireError::Invalid("entry value not finite or key too long"));
    }
    if batch.transfer != 0 && (batch.parts == 0 || batch.op != Op::Lower) {
        return Err(WireError::Invalid("transfer without parts"));
    }
    Ok(batch)
}

/// Validates and decodes an ACKS payload.
pub fn decode_acks(payload: &[u8]) -> Result<Acks, WireError> {
    let buf = aligned(payload)?;
    let acks = rkyv::from_bytes::<Acks, rkyv::rancor::Error>(&buf)
        .map_err(|_| WireError::Invalid("acks archive"))?;
    if acks.seqs.len() > MAX_ACKS_PER_DATAGRAM {
        return Err(WireError::Invalid("more acks than MAX_ACKS_PER_DATAGRAM"));
    }
    Ok(acks)
}

/// Validates and decodes a LEAVE payload.
pub fn decode_leave(payload: &[u8]) -> Result<Leave, WireError> {
    let buf = aligned(payload)?;
    rkyv::from_bytes::<Leave, rkyv::rancor::Error>(&buf)
        .map_err(|_| WireError::Invalid("leave archive"))
}

/// Validates and decodes a POLICIES payload (`seq > 0`).
pub fn decode_policies(payload: &[u8]) -> Result<Policies, WireError> {
    let buf = aligned(payload)?;
    let policies = rkyv::from_bytes::<Policies, rkyv::rancor::Error>(&buf)
        .map_err(|_| WireError::Invalid("policies archive"))?;
    if policies.seq == 0 {
        return Err(WireError::Invalid("policies seq 0"));
    }
    Ok(policies)
}

// Property tests with arbitrary datagrams, raw and authentic, are in `crate::fuzzing`: the
// body of the `gossip_datagram` fuzz target, which `cargo test` runs too.
#[cfg(test)]
mod tests {
    use super::*;

    /// A reference named by exactly `name_len` characters (`i`'s digits, zero padded).
    fn limiter(i: usize, name_len: usize) -> LimiterRef {
        let digits = format!("{i:0>name_len$}");
        LimiterRef {
            policy: digits[digits.len() - name_len..].to_string(),
            digest: u64::MAX - i as u64,
        }
    }

    /// A batch of `limiters` references and `n` entries spread over them, every number
    /// at its widest.
    fn batch(limiters: usize, name_len: usize, n: usize, key_len: usize) -> Batch {
        Batch {
            boot: u64::MAX,
            seq: u64::MAX,
            op: Op::Lower,
            transfer: u32::MAX,
            parts: u32::MAX,
            limiters: (0..limiters).map(|i| limiter(i, name_len)).collect(),
            entries: (0..n)
                .map(|i| Entry {
                    limiter: (i % limiters.max(1)) as u16,
                    key: "k".repeat(key_len),
                    value: 1.5,
                })
                .collect(),
        }
    }

    #[test]
    fn batch_cost_estimate_is_an_upper_bound() {
        for limiters in [1, 2, 5, MAX_LIMITERS_PER_BATCH] {
            for name_len in [1, 7, 8, 9, 40] {
                for key_len in [0, 1, 8, 9, 20, 100, 300] {
                    for n in [0, 1, 2, 7, 30] {
                        let b = batch(limiters, name_len, n, key_len);
                        let len = rkyv::to_bytes::<rkyv::rancor::Error>(&b)
                            .expect("archive")
                            .len();
                        let estimate = BATCH_OVERHEAD
                            + b.limiters
                                .iter()
                                .map(|l| limiter_cost(&l.policy))
                                .sum::<usize>()
                            + n * entry_cost(&"k".repeat(key_len));
                        assert!(
                            len <= estimate,
                            "limiters={limiters} name_len={name_len} n={n} key_len={key_len}: {len} > {estimate}"
                        );
                    }
                }
            }
        }
        let acks = Acks {
            boot: 1,
            seqs: vec![u64::MAX; MAX_ACKS_PER_DATAGRAM],
        };
        assert!(encode(&acks).is_ok());
    }

    #[test]
    fn the_largest_limiter_and_entry_fit_one_datagram() {
        let b = batch(1, MAX_POLICY_NAME_LEN, 1, MAX_KEY_LEN);
        assert!(
            BATCH_OVERHEAD + limiter_cost(&b.limiters[0].policy) + entry_cost(&b.entries[0].key)
                <= MAX_PAYLOAD
        );
        assert!(encode(&b).is_ok());
    }

    #[test]
    fn policies_round_trip_and_seq_0_is_invalid() {
        let p = Policies {
            boot: u64::MAX,
            seq: 3,
            digest: 0x0123_4567_89ab_cdef,
        };
        let bytes = encode(&p).expect("encode");
        assert_eq!(decode_policies(&bytes), Ok(p.clone()));
        for cut in 0..bytes.len() {
            assert!(
                decode_policies(&bytes[..cut]).is_err(),
                "a {cut}-byte prefix decoded"
            );
        }
        let zero = encode(&Policies { seq: 0, ..p }).expect("encode");
        assert_eq!(
            decode_policies(&zero),
            Err(WireError::Invalid("policies seq 0"))
        );
    }

    #[test]
    fn batch_round_trip() {
        let b = batch(3, 5, 7, 12);
        let bytes = encode(&b).expect("encode");
        assert_eq!(decode_batch(&bytes), Ok(b));
    }

    #[test]
    fn batches_outside_the_limits_are_invalid() {
        let cases: Vec<(&str, Batch)> = vec![
            ("seq 0", {
                let mut b = batch(1, 3, 1, 3);
                b.seq = 0;
                b
            }),
            ("non-finite value", {
                let mut b = batch(1, 3, 1, 3);
                b.entries[0].value = f64::NAN;
                b
            }),
            ("key too long", batch(1, 3, 1, MAX_KEY_LEN + 1)),
            ("index outside the table", {
                let mut b = batch(2, 3, 1, 3);
                b.entries[0].limiter = 2;
                b
            }),
            ("entries without limiters", {
                let mut b = batch(1, 3, 1, 3);
                b.limiters.clear();
                b
            }),
            ("empty policy name", batch(1, 0, 1, 3)),
            (
                "policy name too long",
                batch(1, MAX_POLICY_NAME_LEN + 1, 1, 3),
            ),
            (
                "too many limiters",
                batch(MAX_LIMITERS_PER_BATCH + 1, 1, 0, 0),
            ),
            ("transfer of debits", {
                let mut b = batch(1, 3, 1, 3);
                b.op = Op::Debit;
                b
            }),
            ("transfer without parts", {
                let mut b = batch(1, 3, 1, 3);
                b.parts = 0;
                b
            }),
        ];
        for (what, b) in cases {
            let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&b).expect("archive");
            assert!(
                matches!(decode_batch(&bytes), Err(WireError::Invalid(_))),
                "{what} was accepted"
            );
        }
    }

    /// The op is an archived enum: a byte that names no op fails the archive check.
    #[test]
    fn an_unknown_op_is_invalid() {
        let b = batch(1, 3, 0, 0);
        let mut bytes = encode(&b).expect("encode");
        let lower = bytes.clone();
        // Find the op byte: the only byte that differs between a Lower and a Debit batch.
        let mut as_debit = b.clone();
        as_debit.op = Op::Debit;
        let other = rkyv::to_bytes::<rkyv::rancor::Error>(&as_debit).expect("archive");
        let at = (0..lower.len())
            .find(|&i| lower[i] != other[i])
            .expect("op byte");
        bytes[at] = 7;
        assert!(matches!(decode_batch(&bytes), Err(WireError::Invalid(_))));
    }
}
