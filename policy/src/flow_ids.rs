//! [`FlowIds`]: where a shard's [`FlowId`]s come from.
//!
//! An id is a bearer token: whoever sends it in a FlowEnd ends the flow (as with Aperture,
//! the request carries no other proof). So ids must not be guessable from one another: a
//! client that was given id X must not be able to end other clients' flows, and free their
//! concurrency, by sending X-1, X+1, and so on.
//!
//! The sequence part of an id is a keyed permutation of a counter: a four-round Feistel
//! network over the 52 sequence bits (two 26-bit halves), whose round function is SipHash
//! under a 128-bit key drawn from the operating system's randomness for each ledger (std's
//! `RandomState`). Four rounds of a pseudo-random function make a pseudo-random permutation
//! (Luby–Rackoff). Being a permutation, the counter's 2^52 values give 2^52 distinct ids
//! before any repeats; with the key unknown, the ids a client sees tell it nothing useful
//! about the others, and a blind guess names one of the n flows in flight with probability
//! n / 2^52. A restarted process draws a new key, so ids from before are unknown to it.

use crate::flow::{FlowId, SEQUENCE_BITS};
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

/// Bits of each Feistel half.
const HALF_BITS: u32 = SEQUENCE_BITS / 2;
/// Feistel rounds: four make a strong pseudo-random permutation.
const ROUNDS: u8 = 4;

/// A shard's source of flow ids: distinct, and unguessable from each other.
#[derive(Debug)]
pub struct FlowIds {
    shard: u16,
    next: u64,
    key: RandomState,
}

impl FlowIds {
    /// The ids of `shard`, under a key drawn at random now.
    pub fn new(shard: u16) -> FlowIds {
        FlowIds {
            shard,
            next: 0,
            key: RandomState::new(),
        }
    }

    /// The next id: distinct from every id before it for the next 2^52 calls, and never 0
    /// (the wire's "no flow").
    pub fn next_id(&mut self) -> FlowId {
        loop {
            let id = FlowId::new(self.shard, self.permute(self.next));
            self.next = self.next.wrapping_add(1);
            if id.get() != 0 {
                return id;
            }
        }
    }

    /// The keyed permutation of the low [`SEQUENCE_BITS`] bits of `count`.
    fn permute(&self, count: u64) -> u64 {
        let mask = (1u64 << HALF_BITS) - 1;
        let (mut left, mut right) = ((count >> HALF_BITS) & mask, count & mask);
        for round in 0..ROUNDS {
            let f = self.key.hash_one((round, right)) & mask;
            (left, right) = (right, left ^ f);
        }
        (left << HALF_BITS) | right
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_distinct_and_name_their_shard() {
        let mut ids = FlowIds::new(5);
        let seen: HashSet<FlowId> = (0..100_000).map(|_| ids.next_id()).collect();
        assert_eq!(seen.len(), 100_000);
        assert!(seen.iter().all(|id| id.shard() == 5));
    }

    #[test]
    fn neighbouring_ids_do_not_follow_from_each_other() {
        let mut ids = FlowIds::new(0);
        let first: Vec<u64> = (0..1000).map(|_| ids.next_id().get()).collect();
        // A sequential source would give differences of 1; a permutation scatters them.
        let steps_of_one = first
            .windows(2)
            .filter(|w| w[1].abs_diff(w[0]) == 1)
            .count();
        assert!(
            steps_of_one <= 1,
            "{steps_of_one} consecutive pairs differ by 1"
        );
        // Two ledgers (two processes) under different keys share no early ids.
        let mut other = FlowIds::new(0);
        let second: HashSet<u64> = (0..1000).map(|_| other.next_id().get()).collect();
        assert!(first.iter().filter(|id| second.contains(id)).count() <= 1);
    }
}
