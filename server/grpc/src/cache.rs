//! The result cache and global cache behind `CacheLookup`, `CacheUpsert`, `CacheDelete` and the
//! cache stage of `Check`.
//!
//! Sans-IO: every call takes `now_ns` (a monotonic clock reading in nanoseconds) so tests are exact.
//!
//! Two namespaces share one memory budget:
//! - the **result cache**, keyed by `(control_point, key)`: one response per control point and key;
//! - the **global cache**, keyed by `key` alone.
//!
//! Memory is bounded by [`CacheLimits`]: a maximum number of entries and a maximum total size, where
//! an entry's size is its key bytes + value bytes + [`ENTRY_OVERHEAD_BYTES`]. When an insert would
//! exceed either bound, expired entries go first, then the oldest entries (by insertion time)
//! until the new entry fits. A value larger than `max_entry_bytes`, or an entry larger than the
//! whole budget, is refused with [`CacheError::ValueTooLarge`] / [`CacheError::EntryTooLarge`],
//! leaving the cache unchanged.
//!
//! ```text
//!   entries: HashMap<Arc<Key>, Entry>              the data
//!   by_expiry: BTreeMap<(expires_ns, seq), Arc<Key>>   expired-first eviction, O(log n)
//!   by_age:    BTreeMap<seq, Arc<Key>>                 oldest-first eviction, O(log n)
//! ```
//! `seq` is a per-cache insertion counter, so both indexes have unique keys. The map and the
//! two indexes share one copy of each key (an `Arc`): a key is held once, as it is counted
//! once, so `max_total_bytes` bounds the memory really held even when keys are long.

use std::collections::BTreeMap;
use std::sync::Arc;

use hashbrown::HashMap;

/// Accounting overhead charged per entry on top of key and value bytes: what else the cache
/// holds for an entry, so `max_total_bytes` bounds the memory really held. Why this value:
/// the hash-map slot (56 bytes, and up to about four slots per entry after the map grows
/// under churn), the key's shared allocation (64) and the two index entries in B-tree nodes
/// that may be half empty come to at most about 410 bytes, as `tests/cache_memory.rs`
/// measures; this rounds that up. It also keeps a flood of empty values from slipping past
/// `max_total_bytes`.
pub const ENTRY_OVERHEAD_BYTES: usize = 448;

/// Longest TTL accepted. Aperture's SDKs pass user-chosen TTLs; a month is far past any sane
/// response cache and keeps `now + ttl` clear of overflow.
pub const MAX_TTL_NS: u64 = 31 * 24 * 3600 * 1_000_000_000;

/// Memory bounds of the cache (from `server.cache` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Most entries held at once, both namespaces together.
    pub max_entries: usize,
    /// Most bytes held at once (sum of entry sizes, see the module docs).
    pub max_total_bytes: usize,
    /// Largest single value accepted.
    pub max_entry_bytes: usize,
}

/// Which namespace a key lives in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Result cache of one control point.
    Result(String),
    /// The global cache.
    Global,
}

/// Why an upsert was refused. The cache is unchanged in every case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// The value is bigger than `max_entry_bytes`.
    #[error("cache value of {size} bytes exceeds the limit of {limit} bytes per entry (server.cache.max_entry_bytes)")]
    ValueTooLarge {
        /// Size of the refused value.
        size: usize,
        /// The limit it exceeded.
        limit: usize,
    },
    /// The entry alone is bigger than the whole cache budget.
    #[error("cache entry of {size} bytes (key + value + {ENTRY_OVERHEAD_BYTES} overhead) exceeds the cache's total budget of {limit} bytes (server.cache.max_total_bytes)")]
    EntryTooLarge {
        /// Size of the refused entry.
        size: usize,
        /// The limit it exceeded.
        limit: usize,
    },
    /// The key is empty.
    #[error("cache key is empty")]
    EmptyKey,
    /// A result-cache entry needs the control point it belongs to.
    #[error("control_point is required for the result cache")]
    EmptyControlPoint,
    /// TTL zero, negative or absent.
    #[error("ttl must be greater than zero")]
    NonPositiveTtl,
    /// A TTL `google.protobuf.Duration` that is not normalized: its `nanos` outside
    /// ±999,999,999, or of the other sign than `seconds`. Such a value has no one meaning
    /// (`{seconds: 1, nanos: -999999999}` is 1 ns to one reader, 1 s to another), so it is
    /// refused rather than guessed at.
    #[error("ttl {{seconds: {seconds}, nanos: {nanos}}} is not a valid google.protobuf.Duration: nanos must be within -999999999..=999999999 and not of the other sign than seconds")]
    InvalidTtl {
        /// The duration's `seconds`.
        seconds: i64,
        /// The duration's `nanos`.
        nanos: i32,
    },
    /// TTL above [`MAX_TTL_NS`].
    #[error("ttl exceeds the maximum of {} seconds", MAX_TTL_NS / 1_000_000_000)]
    TtlTooLong,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    scope: Scope,
    key: String,
}

impl Key {
    fn bytes(&self) -> usize {
        let scope = match &self.scope {
            Scope::Result(cp) => cp.len(),
            Scope::Global => 0,
        };
        scope + self.key.len()
    }
}

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    expires_ns: u64,
    seq: u64,
    size: usize,
}

/// A bounded TTL cache. Not thread-safe by itself: the gRPC runtime runs on one thread and
/// wraps it in an uncontended mutex.
#[derive(Debug)]
pub struct TtlCache {
    limits: CacheLimits,
    entries: HashMap<Arc<Key>, Entry>,
    by_expiry: BTreeMap<(u64, u64), Arc<Key>>,
    by_age: BTreeMap<u64, Arc<Key>>,
    total_bytes: usize,
    next_seq: u64,
}

impl TtlCache {
    /// An empty cache with the given bounds.
    pub fn new(limits: CacheLimits) -> Self {
        Self {
            limits,
            entries: HashMap::new(),
            by_expiry: BTreeMap::new(),
            by_age: BTreeMap::new(),
            total_bytes: 0,
            next_seq: 0,
        }
    }

    /// The value under `key` if present and not expired at `now_ns`.
    pub fn get(&self, scope: &Scope, key: &str, now_ns: u64) -> Option<&[u8]> {
        // A lookup key is built per call; keys are short, and this keeps the map key simple.
        let k = Key {
            scope: scope.clone(),
            key: key.to_owned(),
        };
        self.entries
            .get(&k)
            .filter(|e| e.expires_ns > now_ns)
            .map(|e| e.value.as_slice())
    }

    /// Inserts or replaces `key`, living `ttl_ns` from `now_ns`. Evicts expired, then oldest
    /// entries as needed to fit; refuses an entry that can never fit.
    pub fn upsert(
        &mut self,
        scope: Scope,
        key: &str,
        value: Vec<u8>,
        ttl_ns: u64,
        now_ns: u64,
    ) -> Result<(), CacheError> {
        if key.is_empty() {
            return Err(CacheError::EmptyKey);
        }
        if matches!(&scope, Scope::Result(cp) if cp.is_empty()) {
            return Err(CacheError::EmptyControlPoint);
        }
        if ttl_ns == 0 {
            return Err(CacheError::NonPositiveTtl);
        }
        if ttl_ns > MAX_TTL_NS {
            return Err(CacheError::TtlTooLong);
        }
        let k = Arc::new(Key {
            scope,
            key: key.to_owned(),
        });
        let size = k
            .bytes()
            .saturating_add(value.len())
            .saturating_add(ENTRY_OVERHEAD_BYTES);
        if value.len() > self.limits.max_entry_bytes {
            return Err(CacheError::ValueTooLarge {
                size: value.len(),
                limit: self.limits.max_entry_bytes,
            });
        }
        if size > self.limits.max_total_bytes {
            return Err(CacheError::EntryTooLarge {
                size,
                limit: self.limits.max_total_bytes,
            });
        }
        // Replacing: drop the old version first so its bytes do not count against the new one.
        self.remove_key(&k);
        self.evict_expired(now_ns);
        while self.entries.len() >= self.limits.max_entries.max(1)
            || self.total_bytes.saturating_add(size) > self.limits.max_total_bytes
        {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.remove_key(&oldest);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let expires_ns = now_ns.saturating_add(ttl_ns);
        // Both indexes share the map's copy of the key: it is counted once in `size`.
        self.by_expiry.insert((expires_ns, seq), Arc::clone(&k));
        self.by_age.insert(seq, Arc::clone(&k));
        self.total_bytes += size;
        self.entries.insert(
            k,
            Entry {
                value,
                expires_ns,
                seq,
                size,
            },
        );
        Ok(())
    }

    /// Removes `key`; returns whether a live (unexpired) entry was there.
    pub fn delete(&mut self, scope: Scope, key: &str, now_ns: u64) -> bool {
        let k = Key {
            scope,
            key: key.to_owned(),
        };
        let live = self.entries.get(&k).is_some_and(|e| e.expires_ns > now_ns);
        self.remove_key(&k);
        live
    }

    /// Drops every entry expired at `now_ns`. Called on each upsert; callers may also call it
    /// periodically.
    pub fn evict_expired(&mut self, now_ns: u64) {
        while let Some(entry) = self.by_expiry.first_entry() {
            if entry.key().0 > now_ns {
                break;
            }
            let k = entry.remove();
            self.remove_key(&k);
        }
    }

    /// Number of entries held (expired ones included until evicted).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entries are held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sum of entry sizes held.
    pub fn total_bytes(&self) -> usize {
        self.total_bytes
    }

    fn remove_key(&mut self, k: &Key) {
        if let Some(e) = self.entries.remove(k) {
            self.by_expiry.remove(&(e.expires_ns, e.seq));
            self.by_age.remove(&e.seq);
            self.total_bytes -= e.size;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn cache(max_entries: usize, max_total_bytes: usize, max_entry_bytes: usize) -> TtlCache {
        TtlCache::new(CacheLimits {
            max_entries,
            max_total_bytes,
            max_entry_bytes,
        })
    }

    fn cp(s: &str) -> Scope {
        Scope::Result(s.to_owned())
    }

    #[test]
    fn ttl_expires_and_scopes_are_separate() {
        let mut c = cache(10, 1 << 20, 1 << 20);
        c.upsert(cp("a"), "k", b"1".to_vec(), 5 * S, 0).unwrap();
        c.upsert(cp("b"), "k", b"2".to_vec(), 5 * S, 0).unwrap();
        c.upsert(Scope::Global, "k", b"3".to_vec(), 10 * S, 0)
            .unwrap();
        assert_eq!(c.get(&cp("a"), "k", S), Some(&b"1"[..]));
        assert_eq!(c.get(&cp("b"), "k", S), Some(&b"2"[..]));
        assert_eq!(c.get(&Scope::Global, "k", S), Some(&b"3"[..]));
        assert_eq!(
            c.get(&cp("a"), "k", 5 * S),
            None,
            "expired at exactly now+ttl"
        );
        assert_eq!(c.get(&Scope::Global, "k", 5 * S), Some(&b"3"[..]));
        c.evict_expired(5 * S);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn replace_keeps_accounting_exact() {
        let mut c = cache(10, 1 << 20, 1 << 20);
        c.upsert(Scope::Global, "k", vec![0; 100], S, 0).unwrap();
        c.upsert(Scope::Global, "k", vec![0; 10], S, 0).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c.total_bytes(), 1 + 10 + ENTRY_OVERHEAD_BYTES);
        assert!(c.delete(Scope::Global, "k", 0));
        assert_eq!(c.total_bytes(), 0);
        assert!(!c.delete(Scope::Global, "k", 0));
    }

    #[test]
    fn evicts_expired_before_oldest() {
        let mut c = cache(2, 1 << 20, 1 << 20);
        c.upsert(Scope::Global, "old-long", b"x".to_vec(), 100 * S, 0)
            .unwrap();
        c.upsert(Scope::Global, "new-short", b"x".to_vec(), S, 1)
            .unwrap();
        // At t=2s "new-short" has expired: it goes, not the older but live "old-long".
        c.upsert(Scope::Global, "third", b"x".to_vec(), 100 * S, 2 * S)
            .unwrap();
        assert!(c.get(&Scope::Global, "old-long", 2 * S).is_some());
        assert!(c.get(&Scope::Global, "third", 2 * S).is_some());
        // Nothing expired now: the oldest goes.
        c.upsert(Scope::Global, "fourth", b"x".to_vec(), 100 * S, 3 * S)
            .unwrap();
        assert!(c.get(&Scope::Global, "old-long", 3 * S).is_none());
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn byte_budget_evicts_oldest() {
        let entry = 1 + 100 + ENTRY_OVERHEAD_BYTES;
        let mut c = cache(100, entry * 3, 100);
        for (i, k) in ["a", "b", "c", "d"].iter().enumerate() {
            c.upsert(Scope::Global, k, vec![0; 100], 100 * S, i as u64)
                .unwrap();
        }
        assert_eq!(c.len(), 3);
        assert!(c.total_bytes() <= entry * 3);
        assert!(c.get(&Scope::Global, "a", 10).is_none());
        assert!(c.get(&Scope::Global, "d", 10).is_some());
    }

    #[test]
    fn refuses_oversized_and_invalid_entries_without_change() {
        let mut c = cache(10, 10_000, 200);
        c.upsert(Scope::Global, "keep", b"v".to_vec(), S, 0)
            .unwrap();
        let err = c
            .upsert(Scope::Global, "big", vec![0; 500], S, 0)
            .unwrap_err();
        assert_eq!(
            err,
            CacheError::ValueTooLarge {
                size: 500,
                limit: 200
            }
        );
        assert!(
            err.to_string().contains("exceeds the limit of 200 bytes"),
            "{err}"
        );
        let mut tiny = cache(10, 100, 1000);
        let err = tiny
            .upsert(Scope::Global, "k", vec![0; 50], S, 0)
            .unwrap_err();
        assert!(
            matches!(err, CacheError::EntryTooLarge { limit: 100, .. }),
            "{err}"
        );
        assert_eq!(
            c.upsert(Scope::Global, "", vec![], S, 0),
            Err(CacheError::EmptyKey)
        );
        assert_eq!(
            c.upsert(cp(""), "k", vec![], S, 0),
            Err(CacheError::EmptyControlPoint)
        );
        assert_eq!(
            c.upsert(Scope::Global, "k", vec![], 0, 0),
            Err(CacheError::NonPositiveTtl)
        );
        assert_eq!(
            c.upsert(Scope::Global, "k", vec![], MAX_TTL_NS + 1, 0),
            Err(CacheError::TtlTooLong)
        );
        assert_eq!(c.len(), 1);
        assert!(c.get(&Scope::Global, "keep", 0).is_some());
    }

    #[test]
    fn bounded_under_churn() {
        let mut c = cache(50, 5_000, 1_000);
        for i in 0..10_000u64 {
            let key = format!("k{}", i % 997);
            let len = (i % 300) as usize;
            c.upsert(
                Scope::Result(format!("cp{}", i % 7)),
                &key,
                vec![0; len],
                (i % 13 + 1) * S,
                i * S / 10,
            )
            .unwrap();
            assert!(c.len() <= 50);
            assert!(c.total_bytes() <= 5_000);
        }
        let sum: usize = c.entries.values().map(|e| e.size).sum();
        assert_eq!(sum, c.total_bytes());
        assert_eq!(c.by_age.len(), c.len());
        assert_eq!(c.by_expiry.len(), c.len());
    }
}
