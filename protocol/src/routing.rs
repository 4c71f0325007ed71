//! Which shard owns a flow: the one routing function shared by server, client, load generator
//! and tests.
//!
//! A token bucket is keyed by the value of its policy's `limit_by_label_key` label (`""` for a
//! policy without one: the shared bucket). The server pins that bucket to shard
//! `shard_for(routing_hash(value), nr_shards)`, and a shard-aware client sends the request
//! straight to that shard's port, computing the same value with [`routing_value`] from the
//! `routing_label_keys` the server advertised in `HELLO_REPLY`.
//!
//! The hash is FNV-1a 64 ([`HASH_FNV1A_64`] in `HELLO_REPLY.hash_algo`): trivial to reimplement
//! in any language, byte-order independent, and good enough spread for a modulo over a handful
//! of shards. It is *not* DoS-resistant; that is acceptable because a skewed key only moves load
//! between this server's own cores, it cannot grow memory.

/// `HELLO_REPLY.hash_algo` value naming FNV-1a 64-bit, the only algorithm protocol version 1
/// defines.
pub const HASH_FNV1A_64: u8 = 1;

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
    // The remainder is < n <= usize::MAX, so the conversion cannot truncate.
    (key_hash % n) as usize
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
    for key in routing_label_keys {
        let key = key.as_ref();
        if let Some((_, value)) = labels.clone().into_iter().find(|(k, _)| *k == key) {
            return value;
        }
    }
    ""
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
}
