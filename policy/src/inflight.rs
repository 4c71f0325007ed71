//! [`InFlight`]: a shard's ledger of flows holding concurrency tokens, with their expiry.
//!
//! A concurrency component admits a flow by taking its tokens from the bucket of its label
//! value and recording the flow here under a fresh [`FlowId`]. The tokens go back when the
//! flow ends (FlowEnd), when a later stage of the same check rejects it, or at the latest
//! after the component's `max_inflight_duration`, so a client that never ends its flows
//! cannot hold capacity forever. The ledger is bounded ([`InFlight::new`]'s `max_flows`);
//! the shard's state machine refuses a flow it could not record.

use crate::flow::FlowId;
use crate::flow_ids::FlowIds;
use crate::identity::LimiterId;
use crate::tokens::Tokens;
use hashbrown::HashMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Stale expiry entries tolerated beyond one per flow in flight before they are dropped.
const STALE_SLACK: usize = 64;

/// One flow in flight.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowEntry {
    /// The concurrency component it holds tokens of.
    pub limiter: LimiterId,
    /// The bucket key (the limit label's value).
    pub key: Box<str>,
    /// Tokens it holds.
    pub tokens: Tokens,
    /// When it is ended for the client (ns on the caller's clock).
    pub expires_ns: u64,
}

/// A shard's flows in flight.
#[derive(Debug)]
pub struct InFlight {
    ids: FlowIds,
    max_flows: usize,
    flows: HashMap<FlowId, FlowEntry>,
    /// (expiry, id): popped in order; entries of flows already ended are skipped.
    expiry: BinaryHeap<Reverse<(u64, FlowId)>>,
}

impl InFlight {
    /// An empty ledger for `shard`, holding at most `max_flows` flows, whose ids no client
    /// can guess from the ones it was given ([`FlowIds`]).
    pub fn new(shard: u16, max_flows: usize) -> InFlight {
        InFlight {
            ids: FlowIds::new(shard),
            max_flows,
            flows: HashMap::new(),
            expiry: BinaryHeap::new(),
        }
    }

    /// Flows in flight.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow is in flight.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Records a flow; None when the ledger is full (the caller refuses the flow and puts
    /// its tokens back).
    pub fn start(
        &mut self,
        limiter: LimiterId,
        key: &str,
        tokens: Tokens,
        expires_ns: u64,
    ) -> Option<FlowId> {
        if self.flows.len() >= self.max_flows {
            return None;
        }
        let id = self.ids.next_id();
        self.flows.insert(
            id,
            FlowEntry {
                limiter,
                key: key.into(),
                tokens,
                expires_ns,
            },
        );
        self.expiry.push(Reverse((expires_ns, id)));
        // An ended flow's entry stays until its expiry comes up. While one flow is held
        // long, every flow started meanwhile would leave one: dropped in one pass once
        // they outnumber the flows in flight (amortized O(1) a start).
        if self.expiry.len() > 2 * self.flows.len() + STALE_SLACK {
            let flows = &self.flows;
            self.expiry
                .retain(|Reverse((_, id))| flows.contains_key(id));
        }
        Some(id)
    }

    /// Ends a flow: its entry, or None if it is unknown or already ended.
    pub fn end(&mut self, id: FlowId) -> Option<FlowEntry> {
        self.flows.remove(&id)
    }

    /// The earliest expiry of a flow still in flight, if any.
    pub fn next_expiry(&mut self) -> Option<u64> {
        while let Some(&Reverse((at, id))) = self.expiry.peek() {
            if self.flows.contains_key(&id) {
                return Some(at);
            }
            self.expiry.pop();
        }
        None
    }

    /// Ends every flow whose expiry is at or before `now_ns`; hands each to `ended`.
    pub fn expire(&mut self, now_ns: u64, mut ended: impl FnMut(FlowId, FlowEntry)) {
        while let Some(&Reverse((at, id))) = self.expiry.peek() {
            if at > now_ns {
                break;
            }
            self.expiry.pop();
            if let Some(entry) = self.flows.remove(&id) {
                ended(id, entry);
            }
        }
    }

    /// Ends every flow (shutdown): their tokens go back.
    pub fn drain(&mut self, mut ended: impl FnMut(FlowId, FlowEntry)) {
        self.expiry.clear();
        for (id, entry) in self.flows.drain() {
            ended(id, entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ended_flows_leave_no_expiry_entries_behind_while_one_is_held_long() {
        let mut l = InFlight::new(0, 1000);
        let limiter = LimiterId(0);
        let held = l.start(limiter, "k", Tokens::ONE, u64::MAX).unwrap();
        for i in 0..100_000u64 {
            let id = l.start(limiter, "k", Tokens::ONE, 1_000 + i).unwrap();
            assert!(l.end(id).is_some());
        }
        assert!(
            l.expiry.len() <= 2 * l.len() + STALE_SLACK,
            "{}",
            l.expiry.len()
        );
        assert_eq!(l.next_expiry(), Some(u64::MAX));
        assert_eq!(l.end(held).map(|e| e.expires_ns), Some(u64::MAX));
    }

    #[test]
    fn flows_end_once_and_expire_in_order() {
        let mut l = InFlight::new(2, 3);
        let limiter = LimiterId(0);
        let a = l.start(limiter, "k", Tokens::ONE, 50).unwrap();
        let b = l.start(limiter, "k", Tokens::ONE, 20).unwrap();
        let c = l.start(limiter, "k", Tokens::ONE, 30).unwrap();
        assert_eq!(a.shard(), 2);
        assert!(l.start(limiter, "k", Tokens::ONE, 10).is_none(), "full");
        assert_eq!(l.end(c).map(|e| e.expires_ns), Some(30));
        assert_eq!(l.end(c), None, "ending twice is unknown");
        assert_eq!(l.next_expiry(), Some(20));
        let mut expired = Vec::new();
        l.expire(40, |id, _| expired.push(id));
        assert_eq!(expired, vec![b]);
        assert_eq!(l.next_expiry(), Some(50));
        l.expire(50, |id, _| expired.push(id));
        assert_eq!(expired, vec![b, a]);
        assert!(l.is_empty());
        assert_eq!(l.next_expiry(), None);
    }
}
