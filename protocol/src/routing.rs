//! Which shard owns a flow: the one routing function shared by server, client, load generator
//! and tests.
//!
//! A token bucket is keyed by the value of its policy's `limit_by_label_key` label (`""` for a
//! policy without one: the shared bucket). The server pins that bucket to shard
//! `shard_for(routing_hash(value), nr_shards)`, and a shard-aware client sends the request
//! straight to that shard's port, computing the same value with [`routing_value`].
//!
//! **Which keys route a flow** (the one rule, [`RoutingKeys::keys_for`]): the routing label
//! keys *of the flow's control point* — the distinct limit-by keys of the limiters selected
//! on it, in policy order (`HELLO_REPLY.control_point_routing` in version 2; the server's
//! `Engine::routing_label_keys_for`). The flow goes to the shard of the first of those keys
//! it carries, `""` if none (also for a control point without limiters: no bucket, no hop
//! either way). A version-1 `HELLO_REPLY` only has the global list (every control point's
//! keys together), which version-1 clients keep using; it can send a check whose control
//! point keys on `tenant` to its `user` shard, where it hops.
//!
//! The hash is FNV-1a 64 ([`HASH_FNV1A_64`] in `HELLO_REPLY.hash_algo`): trivial to reimplement
//! in any language, byte-order independent, and good enough spread for a modulo over a handful
//! of shards. It is *not* DoS-resistant; that is acceptable because a skewed key only moves load
//! between this server's own cores, it cannot grow memory.

use std::collections::HashMap;

use crate::types::HelloReply;
use crate::version::ProtocolVersion;

/// `HELLO_REPLY.hash_algo` value naming FNV-1a 64-bit, the only algorithm versions 1 and 2
/// define.
pub const HASH_FNV1A_64: u8 = 1;

/// Bits of a flow id below its shard number: the top 12 bits of a flow id name the shard whose
/// ledger holds the flow (the server's `tollgate_policy::FlowId` layout), so a `FLOW_END` can
/// go straight to it.
pub const FLOW_ID_SHARD_SHIFT: u32 = 52;

/// The shard holding flow `flow_id`: its top 12 bits.
#[inline]
pub fn shard_of_flow(flow_id: u64) -> usize {
    // At most 12 bits remain: always fits.
    (flow_id >> FLOW_ID_SHARD_SHIFT) as usize
}

/// FNV-1a 64-bit offset basis.
const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64-bit over the bytes (offset basis 0xcbf29ce484222325, prime 0x100000001b3).
///
/// For each byte: `hash ^= byte; hash = hash.wrapping_mul(prime)`.
#[inline]
pub fn routing_hash(label_value: &[u8]) -> u64 {
    let mut hash = FNV_OFFSET_BASIS;
    for &byte in label_value {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// `key_hash % nr_shards`: the index of the shard owning a bucket. `nr_shards == 0` is treated
/// as 1 (everything on shard 0) so a caller can never divide by zero.
#[inline]
pub fn shard_for(key_hash: u64, nr_shards: usize) -> usize {
    let n = nr_shards.max(1) as u64;
    // The same remainder as `%`, without a 64-bit division (tens of cycles, on every check
    // a server or client routes) when the count is a power of two, as core counts mostly are.
    let rest = if n.is_power_of_two() {
        key_hash & (n - 1)
    } else {
        key_hash % n
    };
    // The remainder is < n <= usize::MAX, so the conversion cannot truncate.
    rest as usize
}

/// The routing label value of a flow: the value of the first key in `routing_label_keys` (in
/// the order advertised in `HELLO_REPLY`) that the labels contain; `""` if none (the shared
/// bucket).
///
/// Allocation-free: it scans `labels` once per routing key (both lists are short and bounded by
/// [`crate::MAX_LABELS`]). If a key appears several times among the labels, its first
/// occurrence wins.
pub fn routing_value<'a, S, I>(routing_label_keys: &[S], labels: I) -> &'a str
where
    S: AsRef<str>,
    I: IntoIterator<Item = (&'a str, &'a str)> + Clone,
{
    routing_label(routing_label_keys, labels, |&(key, _)| key).map_or("", |(_, (_, value))| value)
}

/// Where [`routing_value`] finds its value: the position, among a flow's label keys (in the
/// flow's order), of the label it returns; `None` when it returns `""`. For a client that sends
/// many flows with the same label keys and only their values changing (a load generator's
/// request template): it finds the routing label once, and each flow then hashes its value
/// alone, with no scan of the keys per flow.
pub fn routing_label_index<'a, S, K>(routing_label_keys: &[S], label_keys: K) -> Option<usize>
where
    S: AsRef<str>,
    K: IntoIterator<Item = &'a str> + Clone,
{
    routing_label(routing_label_keys, label_keys, |&key| key).map(|(at, _)| at)
}

/// The one search both answer from: the first of `labels` (and its position) whose key,
/// `key_of` it, is the first routing key that any label has.
fn routing_label<'a, S, I, T>(
    routing_label_keys: &[S],
    labels: I,
    key_of: impl Fn(&T) -> &'a str,
) -> Option<(usize, T)>
where
    S: AsRef<str>,
    I: IntoIterator<Item = T> + Clone,
{
    routing_label_keys.iter().find_map(|key| {
        let key = key.as_ref();
        (labels.clone().into_iter())
            .enumerate()
            .find(|(_, label)| key_of(label) == key)
    })
}

/// The shard owning a flow, in one call: `shard_for(routing_hash(routing_value(..)), n)`.
pub fn shard_for_labels<'a, S, I>(routing_label_keys: &[S], labels: I, nr_shards: usize) -> usize
where
    S: AsRef<str>,
    I: IntoIterator<Item = (&'a str, &'a str)> + Clone,
{
    shard_for(
        routing_hash(routing_value(routing_label_keys, labels).as_bytes()),
        nr_shards,
    )
}

/// The routing keys a client learned from `HELLO_REPLY`: per control point in version 2, one
/// global list in version 1.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoutingKeys {
    /// The version-1 list: every keyed limiter's key, whatever its control point.
    global: Vec<String>,
    /// Version 2: the keys of each control point with a limiter. `None` = version 1. Looked up
    /// for every check a client routes: foldhash, not SipHash (the keys come from the server's
    /// HELLO_REPLY, not from anyone who could aim collisions at it).
    by_control_point: Option<HashMap<String, Vec<String>, foldhash::fast::RandomState>>,
}

impl RoutingKeys {
    /// The keys a `HELLO_REPLY` advertises, for the version it speaks.
    pub fn from_hello(hello: &HelloReply) -> RoutingKeys {
        let by_control_point = match hello.version {
            ProtocolVersion::V1 => None,
            ProtocolVersion::V2 | ProtocolVersion::V3 => Some(
                hello
                    .control_point_routing
                    .iter()
                    .map(|c| (c.control_point.clone(), c.routing_label_keys.clone()))
                    .collect(),
            ),
        };
        RoutingKeys {
            global: hello.routing_label_keys.clone(),
            by_control_point,
        }
    }

    /// The keys that route a flow of `control_point`: that control point's keys (none for a
    /// control point without limiters) when the server sent them, else the global list.
    pub fn keys_for(&self, control_point: &str) -> &[String] {
        match &self.by_control_point {
            Some(map) => map.get(control_point).map_or(&[], Vec::as_slice),
            None => &self.global,
        }
    }

    /// [`routing_label_index`] for a flow of `control_point` with these label keys: which of
    /// its labels routes it.
    pub fn routing_label<'a, K>(&self, control_point: &str, label_keys: K) -> Option<usize>
    where
        K: IntoIterator<Item = &'a str> + Clone,
    {
        routing_label_index(self.keys_for(control_point), label_keys)
    }

    /// The shard owning a flow of `control_point` with these labels.
    pub fn shard_for<'a, I>(&self, control_point: &str, labels: I, nr_shards: usize) -> usize
    where
        I: IntoIterator<Item = (&'a str, &'a str)> + Clone,
    {
        shard_for_labels(self.keys_for(control_point), labels, nr_shards)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_reference_vectors() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(routing_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(routing_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(routing_hash(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn worked_example_from_docs() {
        // docs/protocol.md, "Routing": keep in sync.
        assert_eq!(routing_hash(b"user-42"), 0x32c6_d7a5_4d35_dacb);
        assert_eq!(shard_for(routing_hash(b"user-42"), 4), 3);
        assert_eq!(shard_for(routing_hash(b"user-42"), 3), 0);
        // The shared bucket ("") lives on shard 1 of 4.
        assert_eq!(shard_for(routing_hash(b""), 4), 1);
    }

    #[test]
    fn zero_shards_is_one() {
        assert_eq!(shard_for(u64::MAX, 0), 0);
        assert_eq!(shard_for(7, 1), 0);
        assert_eq!(shard_for(7, 4), 3);
    }

    proptest::proptest! {
        /// The power-of-two path is the remainder the protocol defines, for every count.
        #[test]
        fn shard_for_is_the_remainder(hash in proptest::prelude::any::<u64>(), n in 1usize..70) {
            proptest::prop_assert_eq!(shard_for(hash, n), (hash % n as u64) as usize);
        }
    }

    #[test]
    fn first_advertised_key_wins() {
        let keys = vec!["user".to_string(), "tenant".to_string()];
        let labels = [("tenant", "t1"), ("user", "u1")];
        assert_eq!(routing_value(&keys, labels.iter().copied()), "u1");
        let labels = [("tenant", "t1")];
        assert_eq!(routing_value(&keys, labels.iter().copied()), "t1");
        let labels = [("other", "x")];
        assert_eq!(routing_value(&keys, labels.iter().copied()), "");
        let none: [String; 0] = [];
        assert_eq!(routing_value(&none, labels.iter().copied()), "");
    }

    proptest::proptest! {
        /// The routing label's index names the label whose value `routing_value` returns, for
        /// any keys (drawn from a few names, so they repeat and overlap) and values.
        #[test]
        fn the_routing_label_index_finds_the_routing_value(
            routing_keys in proptest::collection::vec("[abc]", 0..4),
            labels in proptest::collection::vec(("[abcd]", "[a-z]{0,3}"), 0..6),
        ) {
            // The rule, written out: for each routing key in turn, its first label.
            let expected = routing_keys
                .iter()
                .find_map(|key| (0..labels.len()).find(|&i| labels[i].0 == *key));
            let pairs = labels.iter().map(|(k, v)| (k.as_str(), v.as_str()));
            let index = routing_label_index(&routing_keys, labels.iter().map(|(k, _)| k.as_str()));
            proptest::prop_assert_eq!(index, expected);
            let by_index = index.and_then(|i| labels.get(i)).map_or("", |(_, v)| v.as_str());
            proptest::prop_assert_eq!(by_index, routing_value(&routing_keys, pairs));
        }
    }

    fn hello(version: ProtocolVersion) -> HelloReply {
        HelloReply {
            version,
            node_id: "n".into(),
            shard_count: 4,
            hash_algo: HASH_FNV1A_64,
            shard_index: None,
            shard_ports: vec![],
            routing_label_keys: vec!["user".into(), "tenant".into()],
            policy_names: vec![],
            max_frame_len: 1,
            max_batch: 1,
            max_in_flight: 1,
            control_point_routing: vec![
                crate::types::ControlPointRouting {
                    control_point: "db".into(),
                    routing_label_keys: vec!["tenant".into()],
                },
                crate::types::ControlPointRouting {
                    control_point: "shared".into(),
                    routing_label_keys: vec![],
                },
            ],
        }
    }

    #[test]
    fn control_point_keys_route_in_version_2_only() {
        let labels = [("user", "u1"), ("tenant", "t1")];
        let v2 = RoutingKeys::from_hello(&hello(ProtocolVersion::V2));
        // The control point's limiter keys on tenant: the user label does not route it.
        assert_eq!(v2.keys_for("db"), ["tenant"]);
        assert_eq!(
            v2.shard_for("db", labels.iter().copied(), 4),
            shard_for(routing_hash(b"t1"), 4)
        );
        // Unkeyed limiters and unknown control points: the shared bucket's shard.
        for cp in ["shared", "unknown"] {
            assert!(v2.keys_for(cp).is_empty());
            assert_eq!(
                v2.shard_for(cp, labels.iter().copied(), 4),
                shard_for(routing_hash(b""), 4)
            );
        }
        // Version 1 has only the global list: the first global key the flow carries.
        let v1 = RoutingKeys::from_hello(&hello(ProtocolVersion::V1));
        assert_eq!(v1.keys_for("db"), ["user", "tenant"]);
        assert_eq!(
            v1.shard_for("db", labels.iter().copied(), 4),
            shard_for(routing_hash(b"u1"), 4)
        );
    }
}
