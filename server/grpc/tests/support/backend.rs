//! [`LocalBackend`]: a test double of the server's shards — one `ShardState` behind a std
//! Mutex, on the real clock, with the waiting done simply: a driver thread polls the state at
//! the times it asks for and hands each waiter its answer over a oneshot.
//!
//! It runs a check the way phase 2's design says the shard shell does: the immediate
//! components at once, then each scheduler in stage order (waiting if it queues the flow),
//! giving back everything taken when a later stage refuses — or when the caller stops
//! waiting. The real shell is the server crate's; this one lets the gRPC layer and the SDKs
//! be tested against waiting, flow ends and expiry on their own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};
use tollgate_grpc::{
    BackendError, DecisionBackend, DecisionFuture, EndStatus, FlowEndFuture, GrpcService,
};
use tollgate_policy::{
    Checked, Decision, Engine, FlowError, FlowId, LimiterId, LimiterOutcome, OutcomeKind,
    OwnedFlow, Resolved, ShardLimits, ShardState, Stage, Tokens,
};

/// A count of checks that reached the backend, with a wake-up for each.
#[derive(Default)]
pub struct Entered {
    count: AtomicUsize,
    notify: Notify,
}

impl Entered {
    fn record(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Waits until at least `n` checks have reached the backend (panics after 10 s).
    pub async fn wait_for(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            // Registered before the count is read, so a check entering in between still wakes it.
            let notified = self.notify.notified();
            if self.count.load(Ordering::SeqCst) >= n {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("{n} checks did not reach the backend within 10 s");
            }
        }
    }
}

/// A waiting flow: where its answer goes, and what to give back if nobody takes it.
struct Waiter {
    answer: oneshot::Sender<LimiterOutcome>,
    key: String,
    tokens: Tokens,
}

struct State {
    shard: ShardState,
    waiters: HashMap<u64, Waiter>,
    next_ticket: u64,
    stopped: bool,
}

struct Shared {
    engine: Arc<Engine>,
    state: Mutex<State>,
    /// Wakes the driver: a new wake time, or stop.
    changed: Condvar,
    epoch: Instant,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands out answers; an answer nobody waits for any more is given back at once.
    fn deliver(&self, state: &mut State, resolved: Vec<Resolved>, now: u64) {
        for r in resolved {
            let Some(w) = state.waiters.remove(&r.ticket) else {
                continue;
            };
            if let Err(outcome) = w.answer.send(r.outcome) {
                if outcome.kind == OutcomeKind::Accepted {
                    let (limiter, flow) = (outcome.limiter, outcome.flow);
                    state
                        .shard
                        .give_back(&self.engine, limiter, &w.key, w.tokens, flow, now);
                }
            }
        }
    }

    /// Polls the state (serves due queues, expires flows) and delivers what it decided.
    fn poll(&self, state: &mut State, now: u64) {
        let mut out = Vec::new();
        state.shard.poll(&self.engine, now, &mut out);
        self.deliver(state, out, now);
        self.changed.notify_all();
    }

    fn give_back(&self, taken: &[Taken]) {
        if taken.is_empty() {
            return;
        }
        let now = self.now_ns();
        let mut state = self.lock();
        for t in taken {
            state
                .shard
                .give_back(&self.engine, t.limiter, &t.key, t.tokens, t.flow, now);
        }
        self.poll(&mut state, now);
    }
}

/// What a check took so far, to give back if a later stage refuses or the caller goes away.
struct Taken {
    limiter: LimiterId,
    key: String,
    tokens: Tokens,
    flow: Option<FlowId>,
}

/// Gives back what it holds when dropped, unless the check finished.
struct GiveBackOnDrop {
    shared: Arc<Shared>,
    taken: Vec<Taken>,
}

impl Drop for GiveBackOnDrop {
    fn drop(&mut self) {
        self.shared.give_back(&std::mem::take(&mut self.taken));
    }
}

/// The test double (see the module docs).
pub struct LocalBackend {
    shared: Arc<Shared>,
    /// Extra latency per decision, to test deadlines.
    delay: Option<Duration>,
    /// Checks that have reached the backend, so tests can wait for a call to be in flight.
    pub entered: Arc<Entered>,
}

impl LocalBackend {
    /// A backend deciding with `engine`, its driver thread started.
    pub fn new(engine: Arc<Engine>, delay: Option<Duration>) -> LocalBackend {
        let shared = Arc::new(Shared {
            engine,
            state: Mutex::new(State {
                shard: ShardState::new(0, ShardLimits::default()),
                waiters: HashMap::new(),
                next_ticket: 0,
                stopped: false,
            }),
            changed: Condvar::new(),
            epoch: Instant::now(),
        });
        let driver = shared.clone();
        std::thread::Builder::new()
            .name("local-backend".into())
            .spawn(move || drive(&driver))
            .expect("spawn the backend driver");
        LocalBackend {
            shared,
            delay,
            entered: Arc::new(Entered::default()),
        }
    }
}

impl LocalBackend {
    /// Flows waiting in a scheduler's queue now.
    pub fn waiting(&self) -> usize {
        self.shared.lock().shard.waiting()
    }

    /// Waits until `n` flows wait in scheduler queues (polls; panics after 10 s).
    pub async fn wait_for_waiting(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.waiting() != n {
            assert!(
                Instant::now() < deadline,
                "{n} flows never waited (now {})",
                self.waiting()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Polls the state whenever it asks to be, until stopped.
fn drive(shared: &Shared) {
    let mut state = shared.lock();
    loop {
        if state.stopped {
            return;
        }
        let now = shared.now_ns();
        shared.poll(&mut state, now);
        let wait = match state.shard.next_wake() {
            Some(at) => Duration::from_nanos(at.saturating_sub(shared.now_ns())),
            None => Duration::from_secs(3600),
        };
        if wait.is_zero() {
            continue;
        }
        state = shared
            .changed
            .wait_timeout(state, wait)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

impl Drop for LocalBackend {
    fn drop(&mut self) {
        self.shared.lock().stopped = true;
        self.shared.changed.notify_all();
    }
}

/// Decides `flow` as the shard shell does (see the module docs): the outer error when the
/// backend stopped, the inner one when the flow cannot be judged.
async fn decide(
    shared: Arc<Shared>,
    flow: &OwnedFlow,
    deadline: Option<Duration>,
) -> Result<Result<Decision, FlowError>, BackendError> {
    let engine = shared.engine.clone();
    let plan = match engine.plan(&flow.control_point, flow.labels.as_slice(), flow.tokens) {
        Ok(plan) => plan,
        Err(error) => return Ok(Err(error)),
    };
    let deadline_ns = deadline.map(|d| shared.now_ns().saturating_add(d.as_nanos() as u64));
    let mut outcomes: Vec<Option<LimiterOutcome>> = vec![None; plan.len()];
    let mut held = GiveBackOnDrop {
        shared: shared.clone(),
        taken: Vec::new(),
    };
    let mut order: Vec<usize> = (0..plan.len()).collect();
    order.sort_by_key(|&i| plan[i].stage());

    // The immediate components at once, as one group.
    let immediate: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| plan[i].stage() == Stage::Immediate)
        .collect();
    let mut refused = false;
    {
        let takes: Vec<_> = immediate.iter().map(|&i| plan[i]).collect();
        let now = shared.now_ns();
        let mut state = shared.lock();
        let group = state.shard.take_group(&engine, &takes, now);
        for (&i, o) in immediate.iter().zip(group) {
            refused |= o.kind == OutcomeKind::Rejected;
            if o.kind == OutcomeKind::Accepted {
                held.taken.push(taken(&plan[i], &o));
            }
            outcomes[i] = Some(o);
        }
        shared.poll(&mut state, now);
    }

    // Then each scheduler, in stage order, while everything so far accepted.
    for &i in order
        .iter()
        .filter(|&&i| plan[i].stage() != Stage::Immediate)
    {
        if refused {
            break;
        }
        let take = plan[i];
        let answer = {
            let now = shared.now_ns();
            let mut state = shared.lock();
            let ticket = state.next_ticket;
            state.next_ticket += 1;
            let mut out = Vec::new();
            let decided = state
                .shard
                .offer(&engine, &take, ticket, deadline_ns, now, &mut out);
            let answer = match decided {
                Some(o) => Ok(o),
                None => {
                    let (tx, rx) = oneshot::channel();
                    state.waiters.insert(
                        ticket,
                        Waiter {
                            answer: tx,
                            key: take.key.unwrap_or_default().to_owned(),
                            tokens: take.tokens,
                        },
                    );
                    Err(rx)
                }
            };
            shared.deliver(&mut state, out, now);
            shared.changed.notify_all();
            answer
        };
        let o = match answer {
            Ok(o) => o,
            Err(rx) => rx
                .await
                .map_err(|_| BackendError::Unavailable("the backend stopped".into()))?,
        };
        refused |= o.kind == OutcomeKind::Rejected;
        if o.kind == OutcomeKind::Accepted {
            held.taken.push(taken(&take, &o));
        }
        outcomes[i] = Some(o);
    }

    if refused {
        // Everything taken goes back; the outcomes say so.
        let taken = std::mem::take(&mut held.taken);
        shared.give_back(&taken);
        for (i, o) in outcomes.iter_mut().enumerate() {
            if let Some(o) = o.as_mut().filter(|o| o.kind == OutcomeKind::Accepted) {
                let key = plan[i].key.unwrap_or_default();
                o.mark_returned(engine.limiter(o.limiter).params_for(key).capacity);
            }
        }
    }
    held.taken.clear();
    Ok(Ok(Decision::from_outcomes(
        outcomes.into_iter().flatten().collect(),
    )))
}

fn taken(take: &tollgate_policy::PlannedTake<'_>, o: &LimiterOutcome) -> Taken {
    Taken {
        limiter: take.limiter,
        key: take.key.unwrap_or_default().to_owned(),
        tokens: take.tokens,
        flow: o.flow,
    }
}

impl DecisionBackend for LocalBackend {
    fn engine(&self) -> Arc<Engine> {
        self.shared.engine.clone()
    }

    fn check(
        &self,
        _service: GrpcService,
        flow: OwnedFlow,
        deadline: Option<Duration>,
    ) -> DecisionFuture {
        self.entered.record();
        let shared = self.shared.clone();
        let delay = self.delay;
        Box::pin(async move {
            let decision = decide(shared, &flow, deadline).await?;
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            Ok(Checked { flow, decision })
        })
    }

    fn flow_end(&self, flows: Vec<FlowId>) -> FlowEndFuture {
        let shared = self.shared.clone();
        let now = shared.now_ns();
        let mut state = shared.lock();
        let statuses = flows
            .into_iter()
            .map(|id| EndStatus::from_ended(state.shard.end_flow(&shared.engine, id, now)))
            .collect();
        shared.poll(&mut state, now);
        Box::pin(async move { Ok(statuses) })
    }
}
