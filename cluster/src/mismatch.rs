//! [`MismatchLog`]: entries a peer sends for limiters this node does not share are dropped
//! on every batch, but logged once per peer and limiter — a rolling config change must not
//! turn into a log line per datagram.

use crate::wire::LimiterRef;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use tollgate_policy::Resolution;

/// (peer, limiter) pairs remembered as logged. A rolling change touches a few policies on a
/// few peers at a time, and a peer's pairs are forgotten when it leaves or restarts;
/// 4,096 pairs (under 1 MB with the longest names) cover every policy of a large config on
/// dozens of peers. Past it, new pairs are counted but not logged (one line says so).
pub const MAX_LOGGED_MISMATCHES: usize = 4_096;

/// Which (peer, limiter) mismatches were logged already.
#[derive(Default)]
pub(crate) struct MismatchLog {
    logged: BTreeSet<(SocketAddr, LimiterRef)>,
    /// Whether the "too many to log" line was written.
    full_reported: bool,
}

impl MismatchLog {
    /// Logs that `peer` sent entries for `limiter`, which resolved to `resolution` here
    /// (not a local limiter), unless this pair was logged before.
    pub(crate) fn note(&mut self, peer: SocketAddr, limiter: &LimiterRef, resolution: Resolution) {
        let pair = (peer, limiter.clone());
        if self.logged.contains(&pair) {
            return;
        }
        if self.logged.len() >= MAX_LOGGED_MISMATCHES {
            if !self.full_reported {
                self.full_reported = true;
                tracing::warn!(
                    max = MAX_LOGGED_MISMATCHES,
                    "too many peer limiters that differ from ours to log each; still counting them (dropped_unknown_limiter, dropped_definition_differs)"
                );
            }
            return;
        }
        match resolution {
            Resolution::Unknown => tracing::warn!(
                %peer,
                policy = %limiter.policy,
                digest = %limiter.digest(),
                "a peer replicates a policy this node does not have: its entries are dropped (counted as dropped_unknown_limiter)"
            ),
            Resolution::DefinitionDiffers { ours } => tracing::warn!(
                %peer,
                policy = %limiter.policy,
                theirs = %limiter.digest(),
                %ours,
                "a peer's policy has another definition than ours: its entries are dropped (counted as dropped_definition_differs)"
            ),
            Resolution::Local(_) => return,
        }
        self.logged.insert(pair);
    }

    /// Forgets `peer`'s pairs: it left, or restarted (perhaps with other policies), so a
    /// mismatch it still has is worth one more line.
    pub(crate) fn forget(&mut self, peer: SocketAddr) {
        self.logged.retain(|(p, _)| *p != peer);
    }

    /// Pairs remembered (tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.logged.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_policy::Digest;

    #[test]
    fn each_pair_is_remembered_once_and_the_set_is_bounded() {
        let mut log = MismatchLog::default();
        let peer = SocketAddr::from(([10, 0, 0, 1], 7946));
        let limiter = LimiterRef {
            policy: "p".into(),
            digest: 1,
        };
        for _ in 0..3 {
            log.note(peer, &limiter, Resolution::Unknown);
        }
        assert_eq!(log.len(), 1);
        log.forget(peer);
        assert_eq!(log.len(), 0);
        for i in 0..MAX_LOGGED_MISMATCHES as u64 + 10 {
            let other = LimiterRef {
                policy: format!("p{i}"),
                digest: i,
            };
            log.note(
                peer,
                &other,
                Resolution::DefinitionDiffers { ours: Digest(0) },
            );
        }
        assert_eq!(log.len(), MAX_LOGGED_MISMATCHES);
        assert!(log.full_reported);
    }
}
