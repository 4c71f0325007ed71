//! [`WaitQueue`]: the weighted fair queue of one scheduler bucket, on a caller-supplied
//! clock. Pure: no timers, no channels; the caller asks it to [`WaitQueue::serve`] at the
//! times it reports ([`WaitQueue::next_wake`]) and after any event that frees tokens.
//!
//! # Order
//!
//! Waiting flows are grouped into *flows* of the queue: one per (workload, priority), and
//! with a fairness label one per (workload, priority, fairness bucket). Each flow has a
//! virtual time; a waiter's cost is `tokens / priority × flows of its workload`, and its
//! virtual finish time is its flow's virtual time plus its cost. Only the head of each
//! flow competes, and the smallest virtual finish time is served first (ties: first come,
//! first served). Serving a waiter moves its flow's virtual time, and the queue's, to that
//! finish time; a new flow starts at the queue's virtual time. So under saturation two
//! workloads of priorities 1 and 4 are admitted tokens 1:4, fairness keys split their
//! workload's share evenly, and equal waiters are served in arrival order. This is
//! Aperture's weighted fair queuing (its `wfq.go`), single-threaded.
//!
//! # Tokens and deadlines
//!
//! Only the head is offered tokens ([`TokenSource`]): if the source has them, the head is
//! admitted and the next head is tried at once; if the source says when it will have them,
//! the queue waits until then — unless the head's deadline comes first, in which case the
//! head is refused now (it could not be served in time) and the next head is tried. A
//! waiter whose deadline passes while it waits is refused at its deadline: no waiter is
//! ever admitted after its deadline.

use crate::bucket::Take;
use crate::decision::Refusal;
use crate::tokens::Tokens;
use hashbrown::HashMap;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};

/// Stale heap entries tolerated beyond two per live one before they are dropped.
const STALE_SLACK: usize = 64;

/// The largest cost one waiter adds to a virtual time (see [`WaitQueue::push`]): costs are
/// `tokens / priority`, so 1e12 is a trillion tokens at priority 1.
const MAX_COST: f64 = 1e12;
/// The caller's handle for a waiter (it maps tickets to whoever awaits the answer).
pub type Ticket = u64;

/// Why a token source cannot serve a take now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shortfall {
    /// Enough tokens will exist in this many nanoseconds (a bucket that fills with time).
    In(u64),
    /// Only an event can make room (a flow ending, a peer's return): wait for a wake.
    Event,
    /// Never (more tokens than the bucket holds, or a bucket that never fills).
    Never,
}

/// Where a queue takes tokens from: a token bucket or a concurrency counter.
pub trait TokenSource {
    /// Takes `tokens` now if there are enough, else says how long until there will be.
    fn take(&mut self, tokens: Tokens, now_ns: u64) -> Result<Take, Shortfall>;
}

impl<F: FnMut(Tokens, u64) -> Result<Take, Shortfall>> TokenSource for F {
    fn take(&mut self, tokens: Tokens, now_ns: u64) -> Result<Take, Shortfall> {
        self(tokens, now_ns)
    }
}

/// Which flow of the queue a waiter joins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// The matched workload (None = default).
    pub class: Option<u16>,
    /// The flow's priority, as bits (equal priorities share a flow).
    pub priority_bits: u64,
    /// The fairness bucket, when the scheduler has a fairness label and the flow carries it.
    pub fairness: Option<u8>,
}

impl FlowKey {
    /// The flow for a workload class, priority and fairness value. Fairness values hash
    /// into 256 buckets, as Aperture's, so the queue's flows stay bounded.
    pub fn new(class: Option<u16>, priority: f64, fairness: Option<&str>) -> FlowKey {
        FlowKey {
            class,
            priority_bits: priority.to_bits(),
            fairness: fairness.map(|f| {
                // FNV-1a, folded to a byte: any stable spread will do.
                let mut h: u32 = 0x811c_9dc5;
                for b in f.bytes() {
                    h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
                }
                (h ^ (h >> 8) ^ (h >> 16) ^ (h >> 24)) as u8
            }),
        }
    }

    fn workload(&self) -> (Option<u16>, u64) {
        (self.class, self.priority_bits)
    }
}

/// What happened to a waiter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Served {
    /// It got its tokens.
    Admitted {
        /// Its ticket.
        ticket: Ticket,
        /// The take (level before and after).
        take: Take,
    },
    /// It was refused.
    Refused {
        /// Its ticket.
        ticket: Ticket,
        /// Why.
        refusal: Refusal,
        /// ns until its tokens would exist, when known (0 otherwise).
        wait_ns: u64,
    },
}

#[derive(Clone, Copy, Debug)]
struct Waiter {
    tokens: Tokens,
    cost: f64,
    flow: FlowKey,
    deadline_ns: u64,
}

#[derive(Debug, Default)]
struct FlowState {
    /// Virtual time: the finish time of the flow's last served waiter.
    vt: f64,
    /// Waiters behind the head, in arrival order (may hold tickets already gone).
    behind: VecDeque<Ticket>,
    /// The waiter of this flow on the heap, if any.
    head: Option<Ticket>,
    /// Waiters of this flow still waiting (head included).
    live: usize,
}

#[derive(Debug, Clone, Copy)]
struct HeapEntry {
    vft: f64,
    seq: u64,
    ticket: Ticket,
}

impl PartialEq for HeapEntry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for HeapEntry {}
impl PartialOrd for HeapEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for HeapEntry {
    /// Reversed: `BinaryHeap` is a max-heap and the smallest finish time goes first.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .vft
            .total_cmp(&self.vft)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

/// The weighted fair queue of one scheduler bucket.
#[derive(Debug, Default)]
pub struct WaitQueue {
    /// The queue's virtual time.
    vt: f64,
    /// Arrival counter: orders equal finish times first come, first served.
    seq: u64,
    flows: HashMap<FlowKey, FlowState>,
    /// Flows per workload (class, priority): the fairness adjustment of a waiter's cost.
    workload_flows: HashMap<(Option<u16>, u64), usize>,
    heap: BinaryHeap<HeapEntry>,
    waiters: HashMap<Ticket, Waiter>,
    deadlines: BinaryHeap<Reverse<(u64, Ticket)>>,
    /// When the source said it would have the head's tokens.
    tokens_at: Option<u64>,
}

impl WaitQueue {
    /// An empty queue.
    pub fn new() -> WaitQueue {
        WaitQueue::default()
    }

    /// Waiters in the queue.
    pub fn len(&self) -> usize {
        self.waiters.len()
    }

    /// Whether nobody waits.
    pub fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }

    /// Adds a waiter for `tokens` with `priority` (> 0), to be admitted or refused by
    /// `deadline_ns`. Tickets must be unique among waiters.
    pub fn push(
        &mut self,
        ticket: Ticket,
        tokens: Tokens,
        priority: f64,
        flow: FlowKey,
        deadline_ns: u64,
    ) {
        let vt = self.vt;
        let state = self.flows.entry(flow).or_insert_with(|| FlowState {
            vt,
            ..FlowState::default()
        });
        if state.live == 0 {
            *self.workload_flows.entry(flow.workload()).or_default() += 1;
        }
        state.live += 1;
        let flows_of_workload = self
            .workload_flows
            .get(&flow.workload())
            .copied()
            .unwrap_or(1);
        // Bounded: a priority near zero (a label of 5e-324) or a huge token count would make
        // the cost infinite, and once such a waiter is admitted every later flow would start
        // at an infinite virtual time, tied with all others: priorities would stop counting
        // for everyone until the queue empties. The bound is far beyond any real cost.
        let cost = (tokens.get() / priority * flows_of_workload as f64).min(MAX_COST);
        self.waiters.insert(
            ticket,
            Waiter {
                tokens,
                cost,
                flow,
                deadline_ns,
            },
        );
        self.deadlines.push(Reverse((deadline_ns, ticket)));
        if state.head.is_none() {
            state.head = Some(ticket);
            let vft = state.vt + cost;
            self.push_heap(vft, ticket);
        } else {
            state.behind.push_back(ticket);
        }
        self.drop_stale_entries();
    }

    /// A withdrawn waiter's deadline and head entries stay until they come up: dropped in
    /// one pass once they outnumber the live ones (amortized O(1) a push).
    fn drop_stale_entries(&mut self) {
        if self.deadlines.len() > 2 * self.waiters.len() + STALE_SLACK {
            let waiters = &self.waiters;
            self.deadlines
                .retain(|Reverse((_, t))| waiters.contains_key(t));
        }
        if self.heap.len() > 2 * self.flows.len() + STALE_SLACK {
            let (flows, waiters) = (&self.flows, &self.waiters);
            self.heap.retain(|e| {
                waiters
                    .get(&e.ticket)
                    .and_then(|w| flows.get(&w.flow))
                    .is_some_and(|f| f.head == Some(e.ticket))
            });
        }
    }

    fn push_heap(&mut self, vft: f64, ticket: Ticket) {
        let seq = self.seq;
        self.seq += 1;
        self.heap.push(HeapEntry { vft, seq, ticket });
    }

    /// Admits and refuses waiters at `now_ns`, taking tokens from `source`, until the head
    /// must wait; appends what happened to `out`.
    pub fn serve(&mut self, now_ns: u64, source: &mut impl TokenSource, out: &mut Vec<Served>) {
        self.tokens_at = None;
        loop {
            self.expire(now_ns, out);
            let Some(head) = self.live_head() else {
                return;
            };
            let Some(waiter) = self.waiters.get(&head.ticket).copied() else {
                return;
            };
            match source.take(waiter.tokens, now_ns) {
                Ok(take) => {
                    self.heap.pop();
                    if let Some(flow) = self.flows.get_mut(&waiter.flow) {
                        flow.vt = head.vft;
                    }
                    self.vt = head.vft;
                    self.remove(head.ticket);
                    out.push(Served::Admitted {
                        ticket: head.ticket,
                        take,
                    });
                }
                Err(Shortfall::In(wait)) if now_ns.saturating_add(wait) <= waiter.deadline_ns => {
                    self.tokens_at = Some(now_ns.saturating_add(wait));
                    return;
                }
                Err(Shortfall::In(wait)) => {
                    // Its tokens come after its deadline: refuse it now, not at the deadline.
                    self.remove(head.ticket);
                    out.push(Served::Refused {
                        ticket: head.ticket,
                        refusal: Refusal::TimedOut,
                        wait_ns: wait,
                    });
                }
                Err(Shortfall::Never) => {
                    self.remove(head.ticket);
                    out.push(Served::Refused {
                        ticket: head.ticket,
                        refusal: Refusal::Exhausted,
                        wait_ns: crate::WAIT_FOREVER,
                    });
                }
                Err(Shortfall::Event) => return,
            }
        }
    }

    /// When the queue next needs serving: the head's tokens, or the earliest deadline.
    /// None when only an event (a flow ending) can move it, or when it is empty.
    pub fn next_wake(&mut self) -> Option<u64> {
        while let Some(&Reverse((_, ticket))) = self.deadlines.peek() {
            if self.waiters.contains_key(&ticket) {
                break;
            }
            self.deadlines.pop();
        }
        let deadline = self.deadlines.peek().map(|&Reverse((d, _))| d);
        match (deadline, self.tokens_at) {
            (Some(d), Some(t)) => Some(d.min(t)),
            (d, t) => d.or(t),
        }
    }

    /// Refuses every waiter (shutdown, or the component was removed).
    pub fn drain(&mut self, refusal: Refusal, out: &mut Vec<Served>) {
        let mut tickets: Vec<Ticket> = self.waiters.keys().copied().collect();
        tickets.sort_unstable();
        for ticket in tickets {
            out.push(Served::Refused {
                ticket,
                refusal,
                wait_ns: 0,
            });
        }
        *self = WaitQueue::default();
    }

    /// Takes a waiter out before it is served or refused (its client gave up); false when
    /// it does not wait here.
    pub fn withdraw(&mut self, ticket: Ticket) -> bool {
        if !self.waiters.contains_key(&ticket) {
            return false;
        }
        self.remove(ticket);
        true
    }

    /// Refuses waiters whose deadline has come.
    fn expire(&mut self, now_ns: u64, out: &mut Vec<Served>) {
        while let Some(&Reverse((deadline, ticket))) = self.deadlines.peek() {
            if deadline > now_ns {
                break;
            }
            self.deadlines.pop();
            if self.waiters.contains_key(&ticket) {
                self.remove(ticket);
                out.push(Served::Refused {
                    ticket,
                    refusal: Refusal::TimedOut,
                    wait_ns: 0,
                });
            }
        }
    }

    /// The heap's first entry that is still a waiting head.
    fn live_head(&mut self) -> Option<HeapEntry> {
        while let Some(&top) = self.heap.peek() {
            if self.waiters.contains_key(&top.ticket) {
                return Some(top);
            }
            self.heap.pop();
        }
        None
    }

    /// Takes a waiter out (served or refused) and moves its flow's next waiter up.
    fn remove(&mut self, ticket: Ticket) {
        let Some(waiter) = self.waiters.remove(&ticket) else {
            return;
        };
        let Some(flow) = self.flows.get_mut(&waiter.flow) else {
            return;
        };
        flow.live -= 1;
        if flow.live == 0 {
            self.flows.remove(&waiter.flow);
            if let Some(n) = self.workload_flows.get_mut(&waiter.flow.workload()) {
                *n -= 1;
                if *n == 0 {
                    self.workload_flows.remove(&waiter.flow.workload());
                }
            }
            return;
        }
        if flow.head != Some(ticket) {
            return; // it waited behind the head: skipped when its turn comes
        }
        flow.head = None;
        while let Some(next) = flow.behind.pop_front() {
            if let Some(w) = self.waiters.get(&next) {
                flow.head = Some(next);
                let vft = flow.vt + w.cost;
                self.push_heap(vft, next);
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::{BucketParams, TokenBucket};

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000 * MS;

    fn tk(n: f64) -> Tokens {
        Tokens::new(n).expect("cost")
    }

    /// A token bucket as a source.
    struct Bucket {
        params: BucketParams,
        bucket: TokenBucket,
    }

    impl Bucket {
        fn new(capacity: f64, per_sec: f64) -> Bucket {
            let params = BucketParams {
                capacity,
                fill_amount: per_sec,
                interval_ns: SEC,
                continuous_fill: true,
                delay_initial_fill: false,
            };
            Bucket {
                bucket: TokenBucket::new(&params, 0),
                params,
            }
        }
    }

    impl TokenSource for Bucket {
        fn take(&mut self, tokens: Tokens, now_ns: u64) -> Result<Take, Shortfall> {
            let t = self.bucket.take(&self.params, now_ns, tokens);
            if t.accepted {
                Ok(t)
            } else if t.wait_ns == crate::WAIT_FOREVER {
                Err(Shortfall::Never)
            } else {
                Err(Shortfall::In(t.wait_ns))
            }
        }
    }

    fn admitted(out: &[Served]) -> Vec<Ticket> {
        out.iter()
            .filter_map(|s| match s {
                Served::Admitted { ticket, .. } => Some(*ticket),
                _ => None,
            })
            .collect()
    }

    /// Drives the queue on a virtual clock until it is empty or `until` passes.
    fn run(q: &mut WaitQueue, src: &mut Bucket, mut now: u64, until: u64, out: &mut Vec<Served>) {
        while now <= until && !q.is_empty() {
            q.serve(now, src, out);
            match q.next_wake() {
                Some(t) => now = t.max(now + 1),
                None => break,
            }
        }
    }

    #[test]
    fn withdrawn_waiters_leave_no_entries_behind() {
        let mut q = WaitQueue::new();
        let held = FlowKey::new(Some(0), 1.0, None);
        q.push(0, tk(1.0), 1.0, held, u64::MAX);
        for t in 1..100_000u64 {
            let flow = FlowKey::new(Some(1), 1.0, Some("churn"));
            q.push(t, tk(1.0), 1.0, flow, u64::MAX - t);
            assert!(q.withdraw(t));
        }
        assert_eq!(q.len(), 1);
        assert!(
            q.deadlines.len() <= 2 + STALE_SLACK,
            "{}",
            q.deadlines.len()
        );
        assert!(
            q.heap.len() <= 2 * q.flows.len() + STALE_SLACK,
            "{}",
            q.heap.len()
        );
        assert_eq!(q.live_head().map(|e| e.ticket), Some(0));
    }

    #[test]
    fn priorities_share_tokens_in_ratio() {
        // Empty bucket, 100 tokens/s; two saturated workloads of priority 1 and 4.
        let mut src = Bucket::new(1.0, 100.0);
        src.bucket = TokenBucket::with_level(0.0, 0);
        let mut q = WaitQueue::new();
        let (low, high) = (
            FlowKey::new(Some(0), 1.0, None),
            FlowKey::new(Some(1), 4.0, None),
        );
        for i in 0..1000u64 {
            q.push(2 * i, tk(1.0), 1.0, low, 100 * SEC);
            q.push(2 * i + 1, tk(1.0), 4.0, high, 100 * SEC);
        }
        let mut out = Vec::new();
        run(&mut q, &mut src, 0, 5 * SEC, &mut out);
        let got = admitted(&out);
        let highs = got.iter().filter(|t| *t % 2 == 1).count() as f64;
        let lows = got.iter().filter(|t| *t % 2 == 0).count() as f64;
        assert!(
            (450.0..=550.0).contains(&(highs + lows)),
            "{}",
            highs + lows
        );
        let ratio = highs / lows;
        assert!(
            (3.6..=4.4).contains(&ratio),
            "ratio {ratio} ({highs}:{lows})"
        );
    }

    #[test]
    fn priorities_still_count_after_a_waiter_of_a_priority_near_zero() {
        let mut src = Bucket::new(1.0, 100.0);
        src.bucket = TokenBucket::with_level(0.0, 0);
        let mut q = WaitQueue::new();
        q.push(
            0,
            tk(1.0),
            5e-324,
            FlowKey::new(Some(9), 5e-324, None),
            100 * SEC,
        );
        let mut out = Vec::new();
        run(&mut q, &mut src, 0, SEC / 50, &mut out);
        assert_eq!(admitted(&out), [0]);
        // Then two saturated workloads, as in `priorities_share_tokens_in_ratio`.
        let (low, high) = (
            FlowKey::new(Some(0), 1.0, None),
            FlowKey::new(Some(1), 4.0, None),
        );
        for i in 1..=1000u64 {
            q.push(2 * i, tk(1.0), 1.0, low, 100 * SEC);
            q.push(2 * i + 1, tk(1.0), 4.0, high, 100 * SEC);
        }
        out.clear();
        run(&mut q, &mut src, SEC / 50, 5 * SEC, &mut out);
        let got = admitted(&out);
        let highs = got.iter().filter(|t| *t % 2 == 1).count() as f64;
        let lows = got.iter().filter(|t| *t % 2 == 0).count() as f64;
        let ratio = highs / lows;
        assert!(
            (3.6..=4.4).contains(&ratio),
            "ratio {ratio} ({highs}:{lows})"
        );
    }

    #[test]
    fn a_workload_alone_gets_everything_and_equal_waiters_are_fifo() {
        let mut src = Bucket::new(1.0, 10.0);
        src.bucket = TokenBucket::with_level(0.0, 0);
        let mut q = WaitQueue::new();
        let flow = FlowKey::new(None, 1.0, None);
        for t in 0..20 {
            q.push(t, tk(1.0), 1.0, flow, 10 * SEC);
        }
        let mut out = Vec::new();
        run(&mut q, &mut src, 0, 10 * SEC, &mut out);
        assert_eq!(admitted(&out), (0..20).collect::<Vec<_>>());
    }

    #[test]
    fn fairness_keys_split_their_workloads_share() {
        // Workload A has two fairness keys; workload B none, same priority: A and B each
        // get half, and A's half splits evenly between its keys.
        let mut src = Bucket::new(1.0, 100.0);
        src.bucket = TokenBucket::with_level(0.0, 0);
        let mut q = WaitQueue::new();
        let a1 = FlowKey::new(Some(0), 1.0, Some("tenant-1"));
        let a2 = FlowKey::new(Some(0), 1.0, Some("tenant-2"));
        let b = FlowKey::new(Some(1), 1.0, None);
        assert_ne!(a1, a2);
        for i in 0..600u64 {
            q.push(3 * i, tk(1.0), 1.0, a1, 100 * SEC);
            q.push(3 * i + 1, tk(1.0), 1.0, a2, 100 * SEC);
            q.push(3 * i + 2, tk(1.0), 1.0, b, 100 * SEC);
        }
        let mut out = Vec::new();
        run(&mut q, &mut src, 0, 4 * SEC, &mut out);
        let got = admitted(&out);
        let count = |r: u64| got.iter().filter(|t| *t % 3 == r).count() as f64;
        let (n1, n2, nb) = (count(0), count(1), count(2));
        assert!(((n1 + n2) / nb - 1.0).abs() < 0.1, "{n1}+{n2} vs {nb}");
        assert!((n1 / n2 - 1.0).abs() < 0.1, "{n1} vs {n2}");
    }

    #[test]
    fn nobody_is_admitted_after_their_deadline() {
        let mut src = Bucket::new(1.0, 10.0); // one token per 100ms
        src.bucket = TokenBucket::with_level(0.0, 0);
        let mut q = WaitQueue::new();
        let flow = FlowKey::new(None, 1.0, None);
        for t in 0..10u64 {
            q.push(t, tk(1.0), 1.0, flow, 350 * MS);
        }
        let mut out = Vec::new();
        let mut now = 0;
        let mut admitted_at = Vec::new();
        while !q.is_empty() {
            let before = out.len();
            q.serve(now, &mut src, &mut out);
            for s in &out[before..] {
                match s {
                    Served::Admitted { .. } => admitted_at.push(now),
                    Served::Refused { refusal, .. } => {
                        assert_eq!(*refusal, Refusal::TimedOut);
                        assert!(now <= 350 * MS, "refused at its deadline at the latest");
                    }
                }
            }
            now = q.next_wake().map_or(now + 1, |t| t.max(now + 1));
        }
        assert_eq!(admitted_at, vec![100 * MS, 200 * MS, 300 * MS]);
        assert!(admitted_at.iter().all(|t| *t <= 350 * MS));
        assert_eq!(out.len(), 10);
    }

    #[test]
    fn a_head_that_cannot_make_its_deadline_is_refused_at_once() {
        let mut src = Bucket::new(10.0, 1.0); // 1 token/s
        src.bucket = TokenBucket::with_level(0.0, 0);
        let mut q = WaitQueue::new();
        q.push(1, tk(5.0), 1.0, FlowKey::new(None, 1.0, None), 2 * SEC);
        let mut out = Vec::new();
        q.serve(0, &mut src, &mut out);
        assert_eq!(
            out,
            vec![Served::Refused {
                ticket: 1,
                refusal: Refusal::TimedOut,
                wait_ns: 5 * SEC
            }]
        );
        let mut q = WaitQueue::new();
        q.push(2, tk(11.0), 1.0, FlowKey::new(None, 1.0, None), 100 * SEC);
        out.clear();
        q.serve(0, &mut src, &mut out);
        assert!(
            matches!(
                out[0],
                Served::Refused {
                    refusal: Refusal::Exhausted,
                    ..
                }
            ),
            "more than the bucket holds"
        );
    }

    #[test]
    fn a_timed_out_head_lets_its_flow_move_on() {
        let mut src = Bucket::new(1.0, 1.0);
        src.bucket = TokenBucket::with_level(0.0, 0);
        let mut q = WaitQueue::new();
        let flow = FlowKey::new(None, 1.0, None);
        q.push(1, tk(1.0), 1.0, flow, 500 * MS); // token at 1s: refused at once
        q.push(2, tk(1.0), 1.0, flow, 5 * SEC);
        let mut out = Vec::new();
        q.serve(0, &mut src, &mut out);
        assert!(matches!(out[0], Served::Refused { ticket: 1, .. }));
        assert_eq!(q.next_wake(), Some(SEC));
        q.serve(SEC, &mut src, &mut out);
        assert!(matches!(out[1], Served::Admitted { ticket: 2, .. }));
        assert!(q.is_empty());
    }
}
