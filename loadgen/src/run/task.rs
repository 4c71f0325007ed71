//! One load task: a loop that picks a key, a mix and a target, sends one request (or batch),
//! awaits the answer and records it, closed loop or paced on an open-loop schedule.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use tollgate_protocol::client::CheckRequest;

use crate::drivers::{tokens_of, CallError, Conn, PING_PAYLOAD_LEN};
use crate::keys::KeySampler;
use crate::run::plan::{set_key, Plan};
use crate::run::shared::Shared;
use crate::run::{Op, Stop};
use crate::scenario::MixPicker;
use crate::stats::Outcome;
use crate::target::Spread;

/// Open-loop schedule of one task.
struct Pacing {
    /// Time between this task's requests: `tasks / rate` seconds, in ns.
    period_ns: f64,
    /// Intended start of the next request, ns since the epoch.
    next_ns: f64,
}

/// One load task.
pub(super) struct Task {
    /// Global task number: picks the recorder stripe and seeds the generator.
    index: usize,
    /// This task's connection slot: one connection per target.
    conns: Arc<Vec<Conn>>,
    shared: Arc<Shared>,
    sampler: KeySampler,
    picker: MixPicker,
    /// The run's fixed inputs (templates, key prefix).
    plan: Arc<Plan>,
    rng: rand::rngs::StdRng,
    spread: Spread,
    op: Op,
    batch: usize,
    /// `Stop::Requests(n)`: the run ends once `n` measured requests have been issued.
    stop_after: Option<u64>,
    /// Open loop only.
    pacing: Option<Pacing>,
}

impl Task {
    /// Task `index` (of `connections x pipeline`) on the connection slot `conns`. In open loop
    /// the tasks' schedules are staggered evenly over one period.
    pub(super) fn new(
        index: usize,
        conns: Arc<Vec<Conn>>,
        shared: Arc<Shared>,
        plan: &Arc<Plan>,
    ) -> Task {
        let cfg = &plan.cfg;
        let tasks_total = cfg.connections * cfg.pipeline;
        let period_ns = cfg.rate.map(|r| (tasks_total as f64 * 1e9 / r).max(1.0));
        Task {
            index,
            conns,
            shared,
            sampler: plan.sampler.clone(),
            picker: plan.picker.clone(),
            plan: plan.clone(),
            rng: rand::rngs::StdRng::seed_from_u64(cfg.seed.wrapping_add(index as u64)),
            spread: cfg.spread,
            op: cfg.op,
            batch: cfg.batch,
            stop_after: match cfg.stop {
                Stop::Requests(n) => Some(n),
                Stop::Duration(_) => None,
            },
            pacing: period_ns.map(|p| Pacing {
                period_ns: p,
                next_ns: p * index as f64 / tasks_total as f64,
            }),
        }
    }

    /// Sends requests until the run stops.
    pub(super) async fn run(mut self) {
        // This task's own copies of the templates, rewritten in place per request.
        let mut singles: Vec<CheckRequest> =
            self.plan.templates.iter().map(|(r, _)| r.clone()).collect();
        // Batch slots, reused: (mix of the slot's current contents, key) and the requests.
        let mut slots: Vec<(usize, usize)> = Vec::with_capacity(self.batch);
        let mut batch: Vec<CheckRequest> = Vec::with_capacity(self.batch);
        let ping = [0x5au8; PING_PAYLOAD_LEN];
        let mut seq: u64 = 0;
        let mut prev_done_ns: u64 = 0;
        let targets = self.conns.len();
        let mut counts: Vec<[u64; 3]> = vec![[0; 3]; targets.max(1)];
        loop {
            if self.shared.stop.load(Ordering::Relaxed) {
                break;
            }
            let intended = match self.pacing.as_mut() {
                Some(p) => {
                    let at = p.next_ns as u64;
                    p.next_ns += p.period_ns;
                    let now = self.shared.now_ns();
                    if at > now {
                        tokio::time::sleep(Duration::from_nanos(at - now)).await;
                    }
                    Some(at)
                }
                None => None,
            };
            let now = self.shared.now_ns();
            let measured = now >= self.shared.measure_from_ns;
            if measured {
                if now >= self.shared.measure_until_ns {
                    break;
                }
                if let Some(limit) = self.stop_after {
                    let before = self
                        .shared
                        .issued
                        .fetch_add(self.batch as u64, Ordering::Relaxed);
                    if before >= limit {
                        self.shared.stop.store(true, Ordering::Relaxed);
                        break;
                    }
                }
            }
            seq += 1;
            // Per target: [accepted, rejected, errors].
            counts.iter_mut().for_each(|c| *c = [0; 3]);
            let (sent, done) = if self.op == Op::Ping {
                let target = self.spread.pick(targets, seq, 0);
                let sent = self.shared.now_ns();
                let r = match self.conns.get(target) {
                    Some(c) => c.ping(&ping).await.map(|()| true),
                    None => Err("no connection".to_string()),
                };
                let done = self.shared.now_ns();
                self.tally(None, 0.0, &r, sent, done, counts.get_mut(target));
                (sent, done)
            } else if self.batch == 1 {
                let mix = self.picker.pick(&mut self.rng);
                let key = self.sampler.sample(&mut self.rng);
                let target = self.spread.pick(targets, seq, key);
                let tokens = self.plan.templates.get(mix).map_or(1.0, |(_, t)| *t);
                let Some(req) = singles.get_mut(mix) else {
                    break;
                };
                set_key(req, &self.plan.cfg.key_prefix, key);
                let sent = self.shared.now_ns();
                let r = match self.conns.get(target) {
                    Some(c) => c.check(req).await,
                    None => Err("no connection".to_string()),
                };
                let done = self.shared.now_ns();
                self.tally(Some(key), tokens, &r, sent, done, counts.get_mut(target));
                (sent, done)
            } else {
                for i in 0..self.batch {
                    let mix = self.picker.pick(&mut self.rng);
                    let key = self.sampler.sample(&mut self.rng);
                    if i >= batch.len() || slots.get(i).map(|s| s.0) != Some(mix) {
                        let Some((template, _)) = self.plan.templates.get(mix) else {
                            break;
                        };
                        if i >= batch.len() {
                            batch.push(template.clone());
                            slots.push((mix, key));
                        } else {
                            batch[i] = template.clone();
                        }
                    }
                    if let Some(slot) = slots.get_mut(i) {
                        *slot = (mix, key);
                    }
                    if let Some(req) = batch.get_mut(i) {
                        set_key(req, &self.plan.cfg.key_prefix, key);
                    }
                }
                let sent = self.shared.now_ns();
                let results = self.send_batch(&batch, &slots, seq).await;
                let done = self.shared.now_ns();
                // The batch's answers are recorded below: their records load together.
                for (_, key) in &slots {
                    self.shared.ledger.prefetch(*key);
                }
                for ((_, key), (req, r)) in slots.iter().zip(batch.iter().zip(&results)) {
                    // The target send_batch chose for this slot.
                    let target = self.spread.pick(targets, seq, *key);
                    let tokens = tokens_of(req);
                    self.tally(Some(*key), tokens, r, sent, done, counts.get_mut(target));
                }
                (sent, done)
            };
            // Coordinated-omission correction: charge the wait behind a late reply.
            let start = match intended {
                Some(at) if prev_done_ns > at => at,
                _ => sent,
            };
            prev_done_ns = done;
            if measured {
                let latency = done.saturating_sub(start);
                for (target, per_outcome) in counts.iter().enumerate() {
                    for (outcome, &n) in [Outcome::Accepted, Outcome::Rejected, Outcome::Error]
                        .iter()
                        .zip(per_outcome)
                    {
                        if n > 0 {
                            let recorder = &self.shared.recorder;
                            recorder.record(self.index, target, *outcome, latency, n);
                        }
                    }
                }
            }
        }
    }

    /// Counts one result and notes a check's answer in the accuracy ledger.
    fn tally(
        &self,
        key: Option<usize>,
        tokens: f64,
        r: &Result<bool, CallError>,
        sent_ns: u64,
        done_ns: u64,
        counts: Option<&mut [u64; 3]>,
    ) {
        if let Some(key) = key {
            let given = matches!(r, Ok(true)).then_some(tokens);
            self.shared.ledger.answered(key, sent_ns, given, done_ns);
        }
        // A target index comes from Spread::pick over the connections: always present.
        let mut scratch = [0; 3];
        let counts = counts.unwrap_or(&mut scratch);
        match r {
            Ok(true) => counts[0] += 1,
            Ok(false) => counts[1] += 1,
            Err(e) => {
                counts[2] += 1;
                self.shared.note_error(e);
            }
        }
    }

    /// Sends a batch: with one target as one call; with several, grouped by target (the whole
    /// batch to one target for round-robin, by key for key spread), all groups at once.
    async fn send_batch(
        &self,
        batch: &[CheckRequest],
        slots: &[(usize, usize)],
        seq: u64,
    ) -> Vec<Result<bool, CallError>> {
        let targets = self.conns.len();
        if targets == 1 || self.spread == Spread::RoundRobin {
            let t = self.spread.pick(targets, seq, 0);
            return match self.conns.get(t) {
                Some(c) => c.check_batch(batch).await,
                None => vec![Err("no connection".to_string()); batch.len()],
            };
        }
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); targets];
        for (i, (_, key)) in slots.iter().enumerate() {
            if let Some(g) = groups.get_mut(self.spread.pick(targets, seq, *key)) {
                g.push(i);
            }
        }
        let calls = groups
            .iter()
            .enumerate()
            .filter(|(_, g)| !g.is_empty())
            .map(|(t, g)| {
                let reqs: Vec<CheckRequest> =
                    g.iter().filter_map(|&i| batch.get(i).cloned()).collect();
                let conn = self.conns.get(t).cloned();
                async move {
                    match conn {
                        Some(c) => c.check_batch(&reqs).await,
                        None => vec![Err("no connection".to_string()); reqs.len()],
                    }
                }
            });
        let answers = futures::future::join_all(calls).await;
        let mut out: Vec<Result<bool, CallError>> = vec![Err("lost".into()); batch.len()];
        for (g, a) in groups.iter().filter(|g| !g.is_empty()).zip(answers) {
            for (&i, r) in g.iter().zip(a) {
                if let Some(slot) = out.get_mut(i) {
                    *slot = r;
                }
            }
        }
        out
    }
}
