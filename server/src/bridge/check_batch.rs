//! Checks from a tokio thread, gathered per turn: one inbox message per shard out, one
//! message of decisions back.
//!
//! Why: HTTP/2 sends every reply of a connection that is ready when its task runs in one
//! write. Sent one at a time, each check woke its shard (an eventfd write) and each decision
//! woke the tokio thread, so the replies came back one per wake-up and went out one per
//! `writev` (docs/performance.md, gRPC section). Gathered, a turn of the tokio thread costs
//! one wake-up each way per shard, and its replies are ready together.
//!
//! How:
//! - [`Outbox::push`] queues a check for its shard. The first check of a turn spawns a
//!   flush task that yields `FLUSH_YIELDS` times (below) and then sends each shard its
//!   checks as one [`Inbound::CheckBatch`].
//! - The shard decides them in order. Decisions it can give at once travel back together
//!   in one [`AnsweredChecks`] message; a check that must wait (a scheduler queue) keeps its
//!   own reply sender and is answered alone when it is decided.
//! - [`deliver`] hands each answer to its caller on the tokio thread (no cross-thread
//!   wake-up). A caller that went away meanwhile gets its flows ended, as the shard does
//!   when it answers a caller that is gone.
//!
//! A turn's checks for one shard keep their order; nothing waits for a batch to fill (the
//! flush follows the turn), so a lone check costs two task polls and one non-blocking IO poll
//! more than a send of its own would.
//!
//! Why the flush yields twice: a task that yields (`tokio::task::yield_now`) on a
//! current-thread runtime resumes after the tasks ready now *and* after the runtime's next
//! non-blocking poll of its IO driver. The first yield lets the turn's ready requests queue
//! their checks. But hyper reads a connection in the connection's task and runs each new
//! request in a task it spawns, queued behind the flush: the requests that IO poll brought in
//! would miss the batch and go out in the next one, each batch a shard wake-up. The second
//! yield lets them in. At RLS 50 × 1 it halved the shards' sleeps per request (0.11 → 0.06
//! context switches, 0.42 → 0.25 `io_uring_enter` calls); a third yield added little
//! (docs/performance.md, gRPC section).
//!
//! The gRPC port may run several threads (`server.grpc_threads`), each its own
//! current-thread runtime sharing one handle: the outbox keeps each thread's checks apart,
//! and a flush sends those of the thread that scheduled it, so a turn's batch never mixes
//! threads and its answers wake no other thread.

use super::{BridgeError, DecisionHandle, Inbound};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use tollgate_policy::{Checked, FlowId, OwnedFlow};

/// Where one check's decision goes, with its flow handed back ([`Checked`]): the caller
/// reuses the flow's strings, and they are freed on the thread that made them. Dropping the
/// receiver cancels the check.
pub type CheckReply = tokio::sync::oneshot::Sender<Checked>;

/// One check on its way to a shard.
pub struct QueuedCheck {
    /// The flow.
    pub flow: OwnedFlow,
    /// The client's deadline, absolute on [`crate::clock::now_ns`]'s clock; None: it brought
    /// none.
    pub deadline: Option<u64>,
    /// Where its decision goes.
    pub reply: CheckReply,
}

/// The decisions a shard gave at once for one [`Inbound::CheckBatch`], each with the sender
/// of the caller it answers.
pub type AnsweredChecks = Vec<(CheckReply, Checked)>;

/// How many times a flush yields before it sends: the turn's ready tasks, then the requests
/// one IO poll brings in (the module's docs).
const FLUSH_YIELDS: usize = 2;

/// The checks queued in this turn, per shard, and whether a flush is on its way.
#[derive(Default)]
struct Pending {
    per_shard: Vec<Vec<QueuedCheck>>,
    flush_scheduled: bool,
}

/// The per-node queue of checks waiting for their turn's flush, one [`Pending`] per thread
/// that pushes (shared by the clones of a [`DecisionHandle`]; only ever locked for a push or
/// a take, never across an await). A handful of threads at most: found by a linear search.
#[derive(Clone, Default)]
pub struct Outbox {
    pending: Arc<Mutex<Vec<(ThreadId, Pending)>>>,
}

impl Outbox {
    /// Queues `check` for `shard`. Outside a tokio runtime (nothing to run a flush) it is
    /// sent alone at once.
    pub async fn push(
        &self,
        handle: &DecisionHandle,
        shard: usize,
        check: QueuedCheck,
    ) -> Result<(), BridgeError> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            let (answered, answers) = tokio::sync::oneshot::channel();
            let batch = Inbound::CheckBatch {
                checks: vec![check],
                answered,
            };
            handle.send(shard, batch).await?;
            if let Ok(answers) = answers.await {
                let orphaned = deliver(answers);
                if !orphaned.is_empty() {
                    handle.end_flows(orphaned).await;
                }
            }
            return Ok(());
        };
        let thread = std::thread::current().id();
        let spawn_flush = {
            let mut all = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let pending = match all.iter().position(|(t, _)| *t == thread) {
                Some(i) => &mut all[i].1,
                None => {
                    all.push((thread, Pending::default()));
                    let last = all.len() - 1;
                    &mut all[last].1
                }
            };
            if pending.per_shard.len() <= shard {
                pending.per_shard.resize_with(shard + 1, Vec::new);
            }
            pending.per_shard[shard].push(check);
            !std::mem::replace(&mut pending.flush_scheduled, true)
        };
        if spawn_flush {
            runtime.spawn(flush(self.clone(), handle.clone(), thread));
        }
        Ok(())
    }

    /// Takes every check `thread` queued; its next push schedules a new flush.
    fn take(&self, thread: ThreadId) -> Vec<Vec<QueuedCheck>> {
        let mut all = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let Some((_, pending)) = all.iter_mut().find(|(t, _)| *t == thread) else {
            return Vec::new();
        };
        pending.flush_scheduled = false;
        let shards = pending.per_shard.len();
        std::mem::replace(
            &mut pending.per_shard,
            (0..shards).map(|_| Vec::new()).collect(),
        )
    }
}

/// Sends each shard the checks `thread` queued for it in this turn, then delivers the
/// decisions as they come back. The thread is named rather than taken to be the current one:
/// on a multi-thread runtime the flush may run on another worker than the push that spawned it.
async fn flush(outbox: Outbox, handle: DecisionHandle, thread: ThreadId) {
    // Let the turn's other ready tasks, and the requests the runtime's next IO poll reads,
    // queue theirs (the module's docs say why twice).
    for _ in 0..FLUSH_YIELDS {
        tokio::task::yield_now().await;
    }
    for (shard, checks) in outbox.take(thread).into_iter().enumerate() {
        if checks.is_empty() {
            continue;
        }
        let (answered, answers) = tokio::sync::oneshot::channel();
        let batch = Inbound::CheckBatch { checks, answered };
        // A shard that is gone dropped the batch: each caller's reply sender with it, so
        // each caller sees the server shutting down.
        if handle.send(shard, batch).await.is_ok() {
            let handle = handle.clone();
            tokio::spawn(async move {
                let Ok(answers) = answers.await else { return };
                let orphaned = deliver(answers);
                if !orphaned.is_empty() {
                    handle.end_flows(orphaned).await;
                }
            });
        }
    }
}

/// Hands each decision to its caller, and returns the flows started for callers that are
/// gone (their call was cancelled while the batch was out): nobody else will end them, so
/// the caller of this ends them now rather than at their `max_inflight_duration`.
pub fn deliver(answers: AnsweredChecks) -> Vec<FlowId> {
    let mut orphaned = Vec::new();
    for (reply, answer) in answers {
        if let Err(Checked {
            decision: Ok(decision),
            ..
        }) = reply.send(answer)
        {
            orphaned.extend(decision.limiters.iter().filter_map(|o| o.flow));
        }
    }
    orphaned
}

#[cfg(test)]
mod tests {
    use super::*;
    use arc_swap::ArcSwap;
    use tollgate_policy::{parse_policies, Decision, Engine, LimiterOutcome, Outcomes};

    fn flow(user: &str) -> OwnedFlow {
        OwnedFlow {
            control_point: "cp".into(),
            labels: vec![("user".into(), user.into())],
            tokens: None,
        }
    }

    /// A limiter keyed by `user` on control point `cp`: checks route by their user.
    fn engine() -> Engine {
        let yaml = "policies:
  - policy_name: c
    concurrency_limiter: { max_concurrency: 5, parameters: { limit_by_label_key: user, max_inflight_duration: 60s }, selectors: [ { control_point: cp } ] }
";
        Engine::new(&parse_policies(yaml, "t").expect("valid"))
    }

    /// A handle over `shards` inboxes that nobody serves: the test plays the shards.
    fn handle(shards: usize) -> (DecisionHandle, Vec<crate::bridge::InboxReceiver>) {
        let (senders, receivers) = (0..shards).map(|_| crate::bridge::inbox()).unzip();
        let policies = Arc::new(ArcSwap::from_pointee(engine()));
        (DecisionHandle::new(policies, senders), receivers)
    }

    fn accepted() -> Decision {
        Decision::from_outcomes(Outcomes::new())
    }

    /// The answer of a shard that accepts `flow` at once.
    fn accept(flow: OwnedFlow) -> Checked {
        Checked {
            flow,
            decision: Ok(accepted()),
        }
    }

    #[test]
    fn one_turns_checks_reach_each_shard_in_one_message_and_come_back_together() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let (handle, mut inboxes) = handle(2);
        rt.block_on(async {
            // 64 callers, all ready in the same turn.
            let calls: Vec<_> = (0..64)
                .map(|i| {
                    let handle = handle.clone();
                    tokio::spawn(async move { handle.check(flow(&format!("u{i}")), None).await })
                })
                .collect();
            // Let the callers and the flush run, until all 64 checks were sent.
            let mut batches: Vec<Vec<usize>> = vec![Vec::new(); inboxes.len()];
            let sent = |b: &Vec<Vec<usize>>| b.iter().flatten().sum::<usize>();
            for _ in 0..1_000 {
                if sent(&batches) == 64 {
                    break;
                }
                tokio::task::yield_now().await;
                for (shard, inbox) in inboxes.iter_mut().enumerate() {
                    while let Ok(msg) = inbox.try_recv() {
                        let Inbound::CheckBatch { checks, answered } = msg else {
                            panic!("expected a check batch");
                        };
                        batches[shard].push(checks.len());
                        // Play the shard: every check accepted at once.
                        let answers = checks.into_iter().map(|c| (c.reply, accept(c.flow)));
                        assert!(answered.send(answers.collect()).is_ok(), "flush waits");
                    }
                }
            }
            assert_eq!(sent(&batches), 64);
            // Each shard got its share of the turn in one message; both got some.
            assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1]);
            // Each caller got its own decision, and its own flow back.
            for (i, call) in calls.into_iter().enumerate() {
                let checked = call.await.expect("joined").expect("reached its shard");
                assert!(checked.decision.expect("decided").accepted);
                assert_eq!(checked.flow, flow(&format!("u{i}")), "caller {i}");
            }
        });
    }

    #[test]
    fn a_request_read_by_the_flushs_io_poll_joins_its_batch() {
        // hyper reads a connection in the connection's task and runs each request it finds in
        // a task it spawns. A request that the runtime's IO poll brings in while a flush
        // waits is spawned behind the flush, and must still make the flush's batch.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            // No IO poll but the ones the yields ask for.
            .event_interval(1_000)
            .build()
            .expect("runtime");
        let (handle, mut inboxes) = handle(1);
        rt.block_on(async {
            let (reader, writer) = tokio::net::UnixStream::pair().expect("socket pair");
            // The connection: once readable, it spawns its request's task.
            let connection = {
                let handle = handle.clone();
                tokio::spawn(async move {
                    reader.readable().await.expect("readable");
                    tokio::spawn(async move { handle.check(flow("late"), None).await }).await
                })
            };
            // Let the connection wait for its socket.
            tokio::task::yield_now().await;
            // Its request arrives; a check that was ready before it starts a flush.
            writer.try_write(b"x").expect("a socket pair is writable");
            let early = {
                let handle = handle.clone();
                tokio::spawn(async move { handle.check(flow("early"), None).await })
            };
            // Play the shard until both checks were sent.
            let mut batches = Vec::new();
            for _ in 0..1_000 {
                if batches.iter().sum::<usize>() == 2 {
                    break;
                }
                tokio::task::yield_now().await;
                while let Ok(msg) = inboxes[0].try_recv() {
                    let Inbound::CheckBatch { checks, answered } = msg else {
                        panic!("expected a check batch");
                    };
                    batches.push(checks.len());
                    let answers = checks.into_iter().map(|c| (c.reply, accept(c.flow)));
                    assert!(answered.send(answers.collect()).is_ok(), "flush waits");
                }
            }
            assert_eq!(
                batches,
                [2],
                "the late request went out in a batch of its own"
            );
            let early = early.await.expect("joined").expect("reached");
            assert_eq!(early.flow, flow("early"));
            let late = connection.await.expect("joined").expect("joined");
            assert_eq!(late.expect("reached").flow, flow("late"));
        });
    }

    #[test]
    fn each_threads_checks_travel_in_their_own_batches() {
        // Two gRPC threads, each its own current-thread runtime, sharing one handle: a batch
        // never mixes their checks, and every check is answered.
        let (handle, mut inboxes) = handle(2);
        let callers: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|thread| {
                let handle = handle.clone();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .expect("runtime");
                    rt.block_on(async {
                        let calls: Vec<_> = (0..16)
                            .map(|i| {
                                let handle = handle.clone();
                                let user = format!("{thread}{i}");
                                tokio::spawn(async move { handle.check(flow(&user), None).await })
                            })
                            .collect();
                        for call in calls {
                            let checked = call.await.expect("joined").expect("reached");
                            assert!(checked.decision.expect("decided").accepted);
                        }
                    });
                })
            })
            .collect();
        // Play the shards until every check was answered.
        let mut answered = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while answered < 32 {
            assert!(
                std::time::Instant::now() < deadline,
                "{answered} of 32 checks sent"
            );
            let mut idle = true;
            for inbox in &mut inboxes {
                let Ok(msg) = inbox.try_recv() else {
                    continue;
                };
                idle = false;
                let Inbound::CheckBatch {
                    checks,
                    answered: back,
                } = msg
                else {
                    panic!("expected a check batch");
                };
                let threads: std::collections::BTreeSet<char> = checks
                    .iter()
                    .filter_map(|c| c.flow.labels[0].1.chars().next())
                    .collect();
                assert_eq!(threads.len(), 1, "one batch mixed threads: {threads:?}");
                answered += checks.len();
                let answers = checks.into_iter().map(|c| (c.reply, accept(c.flow)));
                assert!(back.send(answers.collect()).is_ok(), "flush waits");
            }
            if idle {
                // Nothing queued yet: the callers' threads are still starting.
                std::thread::yield_now();
            }
        }
        for caller in callers {
            caller.join().expect("caller thread");
        }
    }

    #[test]
    fn a_flush_takes_only_the_checks_of_the_thread_that_scheduled_it() {
        // Each thread queues two checks on the shared outbox; its runtime is not driven
        // again, so the flushes they scheduled do not run and the queues stay as pushed.
        let (handle, _inboxes) = handle(2);
        let push_two = |name: &'static str| {
            let handle = handle.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("runtime");
                for i in 0..2 {
                    let (reply, _answer) = tokio::sync::oneshot::channel();
                    let check = QueuedCheck {
                        flow: flow(&format!("{name}{i}")),
                        deadline: None,
                        reply,
                    };
                    let pushed = rt.block_on(handle.outbox.push(&handle, 0, check));
                    assert!(pushed.is_ok());
                }
                std::thread::current().id()
            })
            .join()
            .expect("pushing thread")
        };
        let (a, b) = (push_two("a"), push_two("b"));
        let users = |thread| -> Vec<String> {
            let taken = handle.outbox.take(thread);
            taken
                .into_iter()
                .flatten()
                .map(|c| c.flow.labels[0].1.clone())
                .collect()
        };
        assert_eq!(users(b), ["b0", "b1"]);
        assert_eq!(users(a), ["a0", "a1"]);
        assert!(users(a).is_empty(), "taken once");
    }

    #[test]
    fn a_caller_gone_before_its_answer_gets_its_flows_back() {
        let (reply, answer) = tokio::sync::oneshot::channel();
        drop(answer);
        let engine = engine();
        let flow_id = FlowId::new(1, 7);
        let mut started = LimiterOutcome::key_not_found(engine.limiters()[0].id, 1.0);
        started.flow = Some(flow_id);
        let mut decision = accepted();
        decision.limiters.push(started);
        let answer = Checked {
            flow: flow("u"),
            decision: Ok(decision),
        };
        assert_eq!(deliver(vec![(reply, answer)]), vec![flow_id]);
    }
}
