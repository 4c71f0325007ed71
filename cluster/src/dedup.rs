//! [`Seen`]: which of one peer's batches were applied, so each (boot, seq) is applied once.
//!
//! A contiguous floor (every seq at or below it was applied) plus a bounded set of
//! out-of-order numbers above it: duplicates and replays are recognised, reordering is
//! harmless, and memory stays bounded whatever a peer sends.

use std::collections::BTreeSet;

/// Out-of-order sequence numbers a receiver remembers above its contiguous floor. Past it
/// the floor jumps forward (older missing batches would then count as duplicates).
pub const MAX_SEEN_ABOVE_FLOOR: usize = 65_536;

/// Receiver-side duplicate detection for one peer.
pub(crate) struct Seen {
    /// The peer process whose batches these are.
    pub(crate) boot: u64,
    /// Every seq <= floor was applied.
    floor: u64,
    /// Applied seqs above the floor, at most [`MAX_SEEN_ABOVE_FLOOR`].
    above: BTreeSet<u64>,
}

/// What [`Seen::check`] found.
pub(crate) enum Verdict {
    /// Not applied before: apply it (it is now recorded).
    New,
    /// Applied before: acknowledge it again, apply nothing.
    Duplicate,
    /// From an older boot of the peer: ignore it.
    Stale,
}

impl Seen {
    /// Nothing applied yet from the peer process `boot`.
    pub(crate) fn new(boot: u64) -> Seen {
        Seen {
            boot,
            floor: 0,
            above: BTreeSet::new(),
        }
    }

    /// Classifies (boot, seq) and records it when new.
    pub(crate) fn check(&mut self, boot: u64, seq: u64) -> Verdict {
        if boot < self.boot {
            return Verdict::Stale;
        }
        if boot > self.boot {
            *self = Seen::new(boot);
        }
        if seq <= self.floor || !self.above.insert(seq) {
            return Verdict::Duplicate;
        }
        self.advance_floor();
        while self.above.len() > MAX_SEEN_ABOVE_FLOOR {
            if let Some(first) = self.above.pop_first() {
                self.floor = first;
            }
            self.advance_floor();
        }
        Verdict::New
    }

    /// Moves the floor over every contiguous seq remembered above it. Checked: a peer holding
    /// the secret may send any seq, u64::MAX included.
    fn advance_floor(&mut self) {
        while let Some(next) = self.floor.checked_add(1) {
            if !self.above.remove(&next) {
                break;
            }
            self.floor = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_window_is_bounded() {
        let mut s = Seen::new(1);
        for seq in 2..MAX_SEEN_ABOVE_FLOOR as u64 + 10 {
            assert!(matches!(s.check(1, seq), Verdict::New));
        }
        assert!(s.above.len() <= MAX_SEEN_ABOVE_FLOOR);
        assert!(matches!(s.check(1, 3), Verdict::Duplicate));
    }

    #[test]
    fn seen_survives_the_largest_sequence_numbers() {
        let mut s = Seen {
            boot: 1,
            floor: u64::MAX - 2,
            above: BTreeSet::new(),
        };
        assert!(matches!(s.check(1, u64::MAX), Verdict::New));
        assert!(matches!(s.check(1, u64::MAX - 1), Verdict::New));
        assert_eq!(s.floor, u64::MAX);
        assert!(s.above.is_empty());
        assert!(matches!(s.check(1, u64::MAX), Verdict::Duplicate));
    }

    #[test]
    fn older_boots_are_stale_and_newer_ones_start_over() {
        let mut s = Seen::new(5);
        assert!(matches!(s.check(5, 1), Verdict::New));
        assert!(matches!(s.check(4, 2), Verdict::Stale));
        assert!(matches!(s.check(6, 1), Verdict::New));
        assert!(matches!(s.check(6, 1), Verdict::Duplicate));
    }
}
