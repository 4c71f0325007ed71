//! [`PeerHolds`]: how much of this shard's concurrency buckets other nodes' flows in flight
//! hold, so that capacity comes back when such a node is gone for good.
//!
//! A concurrency bucket's level is its free capacity. A peer node that admits a flow
//! replicates the tokens it took as a positive debit, and the flow's end as a negative one,
//! so while both nodes live the level here is right. If the peer dies with flows in flight,
//! their ends never come: without this record the capacity they held would be lost on every
//! other node for good. So the shard remembers, per (peer process, limiter, key), the net of
//! that peer's debits, and puts it back when the gossip layer reports the peer gone
//! (`PeerGone`: it left, stayed down past the replication grace, or restarted).
//!
//! A state transfer (a joining or restarted node lowering its buckets to a peer's levels)
//! lowers concurrency buckets too, by tokens no peer's debits account for: flows admitted
//! anywhere before this node joined. Their ends arrive later as negative debits from their
//! owners and draw that *unattributed* amount down; whatever is left when every such flow
//! must have ended or expired on its owner (the limiter's `max_inflight_duration` after the
//! transfer, plus [`UNATTRIBUTED_GRACE_NS`] for the ends to replicate) belonged to owners
//! that are gone, and is put back then.
//!
//! Ends are applied only as far as a record accounts for them: an end of a flow whose
//! tokens were already put back (its node was declared gone, then came back with the flow
//! still in flight; or unattributed tokens were released) is not applied twice.
//!
//! Pure and single-threaded: the shard calls it with its clock and applies the returned
//! tokens to its buckets. Memory is bounded: records whose net reaches zero are dropped,
//! and at most `max_records` are kept (beyond that a peer's debits still count against the
//! buckets, but are not remembered: they come back when the peer ends those flows, and
//! from then on ends are applied in full).

use hashbrown::HashMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use tollgate_policy::LimiterId;

/// Below this many tokens a record is considered settled and dropped. Debits travel as f32
/// sums, so a net that should be zero may be off by rounding; no flow holds less than this.
pub const NEGLIGIBLE_TOKENS: f64 = 1e-6;

/// Time added to `max_inflight_duration` before unattributed tokens are put back: every
/// flow in the transfer has ended or expired on its owner by then, and this leaves its end
/// time to arrive by replication (the replication core's down grace, 10 s, is how long it
/// retries a batch to a live peer).
pub const UNATTRIBUTED_GRACE_NS: u64 = 10_000_000_000;

/// A bucket of one limiter: (limiter, key).
type Bucket = (LimiterId, Box<str>);

/// What [`PeerHolds::debit`] makes of a peer's debit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PeerDebit {
    /// Tokens to debit from the bucket (negative: tokens coming back).
    pub apply: f64,
    /// This is the first debit that could not be remembered (records full): warn once.
    pub first_overflow: bool,
}

/// Tokens to put back into one bucket.
#[derive(Clone, Debug, PartialEq)]
pub struct Release {
    /// The limiter.
    pub limiter: LimiterId,
    /// The bucket key.
    pub key: Box<str>,
    /// Tokens to hand back (> 0).
    pub tokens: f64,
}

/// Tokens lowered by state transfers that no peer's debits account for.
#[derive(Clone, Copy, Debug)]
struct Unattributed {
    tokens: f64,
    release_at: u64,
}

/// What other nodes' flows hold of this shard's concurrency buckets.
#[derive(Debug)]
pub struct PeerHolds {
    /// Peer boot -> bucket -> net tokens its debits took (> 0).
    by_peer: HashMap<u64, HashMap<Bucket, f64>>,
    /// Bucket -> tokens lowered by state transfers, not yet accounted for.
    unattributed: HashMap<Bucket, Unattributed>,
    /// (release time, bucket) of unattributed tokens; stale entries are skipped.
    releases: BinaryHeap<Reverse<(u64, LimiterId, Box<str>)>>,
    /// Records held (both maps).
    records: usize,
    /// Most records held at once.
    max_records: usize,
    /// Whether a debit was not remembered because the records were full (logged once).
    overflowed: bool,
}

impl PeerHolds {
    /// An empty record that holds at most `max_records` (peer, bucket) and bucket entries.
    pub fn new(max_records: usize) -> PeerHolds {
        PeerHolds {
            by_peer: HashMap::new(),
            unattributed: HashMap::new(),
            releases: BinaryHeap::new(),
            records: 0,
            max_records,
            overflowed: false,
        }
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.records
    }

    /// Whether nothing is held by peers.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Notes a peer's debit of `tokens` on a concurrency bucket and says how much of it to
    /// apply. A positive debit is that peer's flows taking capacity: applied and
    /// remembered. A negative one is flows ending: it settles that peer's record first,
    /// then what state transfers left unattributed, and only what those account for is
    /// applied — the rest was released already (the peer was declared gone and came back,
    /// or the unattributed tokens were put back), and applying it again would count that
    /// capacity free twice. Once a debit could not be remembered (records full), ends are
    /// applied in full, since they may be that debit's.
    pub fn debit(&mut self, peer: u64, limiter: LimiterId, key: &str, tokens: f64) -> PeerDebit {
        let pass = PeerDebit {
            apply: tokens,
            first_overflow: false,
        };
        if !tokens.is_finite() || tokens.abs() < NEGLIGIBLE_TOKENS {
            return pass;
        }
        if tokens > 0.0 {
            let bucket = &BucketRef(limiter, key);
            if let Some(net) = self.by_peer.get_mut(&peer).and_then(|h| h.get_mut(bucket)) {
                *net += tokens;
                return pass;
            }
            if self.records >= self.max_records {
                return PeerDebit {
                    apply: tokens,
                    first_overflow: self.overflow(),
                };
            }
            self.by_peer
                .entry(peer)
                .or_default()
                .insert((limiter, key.into()), tokens);
            self.records += 1;
            return pass;
        }
        let mut unaccounted = -tokens;
        if let Some(held) = self.by_peer.get_mut(&peer) {
            let bucket = &BucketRef(limiter, key);
            if let Some(net) = held.get_mut(bucket) {
                let settled = unaccounted.min(*net);
                *net -= settled;
                unaccounted -= settled;
                if *net < NEGLIGIBLE_TOKENS {
                    held.remove(bucket);
                    self.records -= 1;
                }
            }
            if held.is_empty() {
                self.by_peer.remove(&peer);
            }
        }
        if unaccounted >= NEGLIGIBLE_TOKENS {
            let bucket = &BucketRef(limiter, key);
            if let Some(u) = self.unattributed.get_mut(bucket) {
                let settled = unaccounted.min(u.tokens);
                u.tokens -= settled;
                unaccounted -= settled;
                if u.tokens < NEGLIGIBLE_TOKENS {
                    self.unattributed.remove(bucket);
                    self.records -= 1;
                }
            }
        }
        if self.overflowed || unaccounted < NEGLIGIBLE_TOKENS {
            return pass;
        }
        PeerDebit {
            apply: tokens + unaccounted,
            first_overflow: false,
        }
    }

    /// Notes that a state transfer lowered a concurrency bucket by `tokens`; unless flows'
    /// ends account for them first, they are put back at `release_at`
    /// ([`PeerHolds::release_due`]).
    /// Returns true the first time it could not be remembered (records full).
    pub fn lowered(&mut self, limiter: LimiterId, key: &str, tokens: f64, release_at: u64) -> bool {
        if !tokens.is_finite() || tokens < NEGLIGIBLE_TOKENS {
            return false;
        }
        let bucket = &BucketRef(limiter, key);
        match self.unattributed.get_mut(bucket) {
            Some(u) => {
                u.tokens += tokens;
                u.release_at = u.release_at.max(release_at);
            }
            None if self.records >= self.max_records => return self.overflow(),
            None => {
                self.unattributed
                    .insert((limiter, key.into()), Unattributed { tokens, release_at });
                self.records += 1;
            }
        }
        self.releases
            .push(Reverse((release_at, limiter, key.into())));
        false
    }

    /// Notes that something could not be remembered; true the first time.
    fn overflow(&mut self) -> bool {
        !std::mem::replace(&mut self.overflowed, true)
    }

    /// The peer process `peer` is gone for good: what its debits still hold, to put back.
    pub fn peer_gone(&mut self, peer: u64) -> Vec<Release> {
        let Some(held) = self.by_peer.remove(&peer) else {
            return Vec::new();
        };
        self.records -= held.len();
        held.into_iter()
            .map(|((limiter, key), tokens)| Release {
                limiter,
                key,
                tokens,
            })
            .collect()
    }

    /// When unattributed tokens are next due back, if any.
    pub fn next_release(&mut self) -> Option<u64> {
        while let Some(Reverse((at, limiter, key))) = self.releases.peek() {
            let bucket = &BucketRef(*limiter, key);
            match self.unattributed.get(bucket) {
                Some(u) if u.release_at == *at => return Some(*at),
                _ => {
                    self.releases.pop();
                }
            }
        }
        None
    }

    /// Unattributed tokens due back at `now_ns`.
    pub fn release_due(&mut self, now_ns: u64) -> Vec<Release> {
        let mut due = Vec::new();
        while let Some(at) = self.next_release() {
            if at > now_ns {
                break;
            }
            let Some(Reverse((_, limiter, key))) = self.releases.pop() else {
                break;
            };
            if let Some(u) = self.unattributed.remove(&BucketRef(limiter, &key)) {
                self.records -= 1;
                due.push(Release {
                    limiter,
                    key,
                    tokens: u.tokens,
                });
            }
        }
        due
    }
}

/// A bucket looked up without allocating its key. Hashes exactly as the stored
/// `(LimiterId, Box<str>)` does (a tuple hashes its fields in order; a `Box<str>` as its str).
#[derive(Clone, Copy, Debug)]
struct BucketRef<'a>(LimiterId, &'a str);

impl std::hash::Hash for BucketRef<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.0, self.1).hash(state);
    }
}

impl hashbrown::Equivalent<Bucket> for BucketRef<'_> {
    fn equivalent(&self, stored: &Bucket) -> bool {
        self.0 == stored.0 && self.1 == &*stored.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_policy::{parse_policies, Engine};

    fn ids() -> (LimiterId, LimiterId) {
        let yaml = "policies:
  - policy_name: a
    concurrency_limiter: { max_concurrency: 5, parameters: { limit_by_label_key: t, max_inflight_duration: 60s }, selectors: [ { control_point: c } ] }
  - policy_name: b
    concurrency_limiter: { max_concurrency: 5, parameters: { limit_by_label_key: t, max_inflight_duration: 60s }, selectors: [ { control_point: c } ] }
";
        let e = Engine::new(&parse_policies(yaml, "t").expect("valid"));
        (e.limiters()[0].id, e.limiters()[1].id)
    }

    fn sorted(mut r: Vec<Release>) -> Vec<(LimiterId, String, f64)> {
        r.sort_by(|x, y| (x.limiter, &x.key).cmp(&(y.limiter, &y.key)));
        r.into_iter()
            .map(|r| (r.limiter, r.key.into(), r.tokens))
            .collect()
    }

    #[test]
    fn a_gone_peer_gives_back_its_net_and_nothing_else() {
        let (a, b) = ids();
        let mut h = PeerHolds::new(100);
        h.debit(1, a, "x", 3.0);
        h.debit(1, a, "x", -1.0);
        h.debit(1, b, "x", 2.0);
        h.debit(2, a, "x", 4.0);
        h.debit(1, a, "y", 1.0);
        h.debit(1, a, "y", -1.0); // settled: dropped
        assert_eq!(h.len(), 3);
        assert_eq!(
            sorted(h.peer_gone(1)),
            vec![(a, "x".into(), 2.0), (b, "x".into(), 2.0)]
        );
        assert!(h.peer_gone(1).is_empty(), "once");
        assert_eq!(sorted(h.peer_gone(2)), vec![(a, "x".into(), 4.0)]);
        assert!(h.is_empty());
    }

    #[test]
    fn ends_beyond_a_peers_record_settle_unattributed_tokens_first() {
        let (a, _) = ids();
        let mut h = PeerHolds::new(100);
        h.lowered(a, "x", 3.0, 1_000);
        h.lowered(a, "x", 1.0, 900); // a second transfer: the later release time holds
        assert_eq!(h.next_release(), Some(1_000));
        // Peer 7 ends two flows it started before we joined.
        h.debit(7, a, "x", -2.0);
        assert!(h.peer_gone(7).is_empty(), "no record: it owes nothing");
        assert!(h.release_due(999).is_empty());
        assert_eq!(sorted(h.release_due(1_000)), vec![(a, "x".into(), 2.0)]);
        assert_eq!(h.next_release(), None);
        assert!(h.is_empty());
        // Fully accounted for: nothing to release, and the timer entry is stale.
        h.lowered(a, "y", 1.0, 50);
        h.debit(3, a, "y", -1.0);
        assert_eq!(h.next_release(), None);
        assert!(h.release_due(u64::MAX).is_empty());
    }

    #[test]
    fn ends_nothing_accounts_for_are_not_applied_twice() {
        let (a, _) = ids();
        let mut h = PeerHolds::new(100);
        assert_eq!(h.debit(1, a, "x", 2.0).apply, 2.0);
        assert_eq!(sorted(h.peer_gone(1)), vec![(a, "x".into(), 2.0)]);
        // The peer was only cut off: its flows end after all. Released already: not again.
        assert_eq!(h.debit(1, a, "x", -2.0).apply, 0.0);
        // Partly accounted for: the record's share only.
        h.debit(1, a, "x", 1.0);
        h.lowered(a, "x", 0.5, 10);
        assert_eq!(h.debit(1, a, "x", -2.0).apply, -1.5);
        assert!(h.is_empty());
    }

    #[test]
    fn records_are_bounded_and_overflow_is_reported_once() {
        let (a, b) = ids();
        let mut h = PeerHolds::new(2);
        assert!(!h.debit(1, a, "x", 1.0).first_overflow);
        assert!(!h.debit(1, a, "y", 1.0).first_overflow);
        let d = h.debit(1, a, "z", 1.0);
        assert!(d.first_overflow, "first overflow is reported");
        assert_eq!(d.apply, 1.0, "and the debit still counts");
        assert!(
            !h.debit(2, b, "z", 1.0).first_overflow,
            "later ones are not"
        );
        assert!(!h.lowered(b, "w", 1.0, 5));
        assert!(
            !h.debit(1, a, "x", 1.0).first_overflow,
            "known records still grow"
        );
        assert_eq!(
            h.debit(2, b, "z", -1.0).apply,
            -1.0,
            "after an overflow, ends pass in full"
        );
        assert_eq!(h.len(), 2);
        assert_eq!(
            sorted(h.peer_gone(1)),
            vec![(a, "x".into(), 2.0), (a, "y".into(), 1.0)]
        );
        assert!(h.peer_gone(2).is_empty());
        assert!(h.is_empty());
    }
}
