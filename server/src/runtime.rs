//! Starting and stopping a node: bind every socket, start one pinned executor per shard,
//! connect them with a channel mesh, report ready, and on shutdown answer every waiting
//! flow, stop accepting, drain connections, end the flows in flight and exit.

use crate::bridge::check_batch::{CheckReply, QueuedCheck};
use crate::bridge::{AnsweredChecks, DecisionHandle, Inbound, InboxReceiver};
use crate::config::Config;
use crate::conn::access::Access;
use crate::conn::registry::Connections;
use crate::node::{Limits, MembersView, Node};
use crate::shard::{MeshMsg, PendingCheck, Planned, Shard, MESH_CHANNEL_SIZE};
use crate::{clock, conn, listeners};
use anyhow::{anyhow, Context, Result};
use arc_swap::ArcSwap;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use tollgate_cluster::Replica;
use tollgate_policy::store::SWEEP_BUDGET;
use tollgate_policy::{Checked, Engine, OwnedFlow, StoreStats};

/// glommio reserves this much io_uring-registered memory per executor for storage I/O.
/// Tollgate does no file I/O on shards, so the minimum (64 KiB) leaves locked-memory
/// limits (often 8 MiB in containers) to the rings themselves.
const SHARD_IO_MEMORY: usize = 64 * 1024;

/// How long one pass of the idle sweep over a shard's buckets takes, at least and at most
/// (`max_idle_time / 8` within these): eviction is a memory bound, not a semantic one, so
/// not urgent.
const SWEEP_MIN_PASS: Duration = Duration::from_secs(1);
const SWEEP_MAX_PASS: Duration = Duration::from_secs(60);

/// Shortest pause between two sweep ticks of [`SWEEP_BUDGET`] positions. Why this value: a
/// tick costs ~0.2 ms, so a shard with many buckets spends at most ~2% of its core on the
/// sweep, which then covers ~1.6 M positions a second (a pass over 100 M buckets takes
/// ~90 s rather than 60 s).
const SWEEP_MIN_PAUSE: Duration = Duration::from_millis(10);

/// Longest pause between two sweep ticks: counters are looked at this often.
const SWEEP_MAX_PAUSE: Duration = Duration::from_secs(1);

/// How often a shard logs its bucket counters (when they changed), and at most how often
/// it warns about evictions that over-admit.
const STATS_LOG_PERIOD: Duration = Duration::from_secs(10);

/// mimalloc's `purge_delay` option (`mi_option_purge_delay` in mimalloc.h, v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory stays mapped before the allocator hands it back to the OS, in ms.
/// Why not mimalloc's 1,000: the pages freed in a second (e.g. the idle sweep dropping
/// millions of buckets) were then unmapped in one call that stalled its thread for 100+ ms.
/// Why not 0: every page that emptied between two bursts of requests was unmapped at once
/// and faulted back in, zeroed, by the next burst; the gRPC thread spent ~15% of its time in
/// page faults and ran at 0.70x the throughput it has at 10 ms (docs/performance.md).
/// At 10 ms a batch holds about one sweep tick's frees (ticks are >= `SWEEP_MIN_PAUSE` apart).
const PURGE_DELAY_MS: std::ffi::c_long = 10;

/// What `start` needs beyond the config file.
#[derive(Default)]
pub struct StartOptions {
    /// Supplies the MEMBERS list when clustered.
    pub members: Option<Arc<dyn MembersView>>,
    /// Record consumption per bucket for replication.
    pub track_consumption: bool,
}

/// A running node.
pub struct RunningServer {
    /// The shared binary port.
    pub listen: SocketAddr,
    /// Shard-aware ports, index = shard.
    pub shard_ports: Vec<u16>,
    /// Handle for other threads (gRPC, gossip).
    pub handle: DecisionHandle,
    /// Node facts.
    pub node: Arc<Node>,
    executors: Vec<glommio::ExecutorJoinHandle<()>>,
    drained: mpsc::Receiver<usize>,
}

/// Per-shard listener descriptors, taken by each shard once it knows its mesh id.
struct ListenerSlots {
    shared: Vec<Option<RawFd>>,
    shard_aware: Vec<Option<RawFd>>,
}

/// How a shard's bucket store is set up.
struct StoreSettings {
    /// Record consumption for replication.
    track_consumption: bool,
    /// This shard's share of `server.max_buckets`.
    max_buckets: usize,
}

/// Binds, starts every shard and returns once all are serving.
pub fn start(config: &Config, options: StartOptions) -> Result<RunningServer> {
    raise_memlock_limit();
    let nr_shards = config
        .server
        .shards
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    check_descriptor_budget(config, nr_shards)?;
    let policies = Arc::new(ArcSwap::from_pointee(Engine::new(&config.policies)));
    let cap = config.server.bucket_cap();
    if cap.max_buckets < nr_shards {
        return Err(anyhow!(
            "server.max_buckets ({}) must be at least the number of shards ({nr_shards})",
            cap.max_buckets
        ));
    }
    return_free_pages_soon();
    tracing::info!(
        max_buckets = cap.max_buckets,
        per_shard = cap.per_shard(0, nr_shards),
        source = %cap.source,
        "bucket cap"
    );
    let bound = listeners::bind_binary(config.server.listen, nr_shards)?;
    let shard_ports = bound.shard_ports();
    let node_id = config
        .server
        .node_id
        .clone()
        .or_else(|| config.cluster.as_ref().and_then(|c| c.node_id.clone()))
        .unwrap_or_else(|| "tollgate".to_string());
    let node = Arc::new(Node {
        policies: policies.clone(),
        nr_shards,
        node_id,
        listen: bound.listen,
        shard_ports: shard_ports.clone(),
        limits: Limits::from_config(&config.server),
        connections: Default::default(),
        access: Access::from_config(&config.server)?,
        members: options.members,
        metrics: Arc::new(crate::metrics::Metrics::new(
            config.server.metrics,
            nr_shards,
            policies.load().limiters().len(),
        )),
    });
    let slots = Arc::new(Mutex::new(ListenerSlots {
        shared: bound
            .shared
            .into_iter()
            .map(|l| Some(l.into_raw_fd()))
            .collect(),
        shard_aware: bound
            .shard_aware
            .into_iter()
            .map(|l| Some(l.into_raw_fd()))
            .collect(),
    }));
    let mesh = MeshBuilder::<Vec<MeshMsg>, _>::full(nr_shards, MESH_CHANNEL_SIZE);
    let cpus = allowed_cpus();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<usize, String>>();
    let (drained_tx, drained_rx) = mpsc::channel::<usize>();
    let mut inboxes = Vec::with_capacity(nr_shards);
    let mut executors = Vec::with_capacity(nr_shards);
    let track = options.track_consumption;
    for i in 0..nr_shards {
        let max_buckets = cap.per_shard(i, nr_shards);
        let (tx, rx) = crate::bridge::inbox();
        inboxes.push(tx);
        let (node, slots, mesh, ready_tx, drained_tx) = (
            node.clone(),
            slots.clone(),
            mesh.clone(),
            ready_tx.clone(),
            drained_tx.clone(),
        );
        let mut builder = LocalExecutorBuilder::new(Placement::Fixed(cpus[i % cpus.len()]))
            .name(&format!("shard-{i}"))
            .io_memory(SHARD_IO_MEMORY)
            // glommio ignores it for an executor that spins (`idle_spin`): see the config docs.
            .coop_taskrun(config.server.coop_taskrun);
        if !config.server.idle_spin.0.is_zero() {
            builder = builder.spin_before_park(config.server.idle_spin.0);
        }
        let executor = builder
            .spawn(move || async move {
                let store = StoreSettings {
                    track_consumption: track,
                    max_buckets,
                };
                if let Err(e) = run_shard(node, slots, mesh, rx, &ready_tx, drained_tx, store).await
                {
                    let _ = ready_tx.send(Err(format!("{e:#}")));
                }
            })
            .map_err(|e| {
                anyhow!("cannot start shard {i} (glommio needs io_uring and locked memory): {e}")
            })?;
        executors.push(executor);
    }
    drop(ready_tx);
    for _ in 0..nr_shards {
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(anyhow!("a shard failed to start: {e}")),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(anyhow!("shards did not start within 30s"))
            }
            // A shard thread ended without a word: glommio panicked (see above), most often
            // because io_uring is blocked (seccomp) or locked memory is short.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(anyhow!(
                    "a shard thread died while starting (glommio needs io_uring, allowed by seccomp, and at least 512 KiB of locked memory: docs/deploy.md)"
                ))
            }
        }
    }
    Ok(RunningServer {
        listen: bound.listen,
        shard_ports,
        handle: DecisionHandle::new(policies, inboxes),
        node,
        executors,
        drained: drained_rx,
    })
}

impl RunningServer {
    /// Starts stopping every shard: each answers its waiting flows (`shutting_down`) at
    /// once, stops accepting, lets its connections finish (up to `drain_timeout`), then
    /// ends its flows in flight. Shards keep deciding (nothing waits any more) and
    /// answering other threads until [`RunningServer::exit`].
    pub fn begin_stop(&self) {
        for shard in 0..self.executors.len() {
            let _ = self.handle.send_blocking(shard, Inbound::Stop);
        }
    }

    /// Waits until every shard has drained (see [`RunningServer::begin_stop`]); false if
    /// one did not within `drain_timeout` (+2 s).
    pub fn wait_drained(&self) -> bool {
        let deadline = self.node.limits.drain_timeout + Duration::from_secs(2);
        for _ in 0..self.executors.len() {
            if self.drained.recv_timeout(deadline).is_err() {
                tracing::warn!("a shard did not drain in time");
                return false;
            }
        }
        true
    }

    /// Stops the shards and joins their threads.
    pub fn exit(self) -> Result<()> {
        for shard in 0..self.executors.len() {
            let _ = self.handle.send_blocking(shard, Inbound::Exit);
        }
        for e in self.executors {
            e.join().map_err(|e| anyhow!("shard thread failed: {e}"))?;
        }
        Ok(())
    }

    /// [`RunningServer::begin_stop`], [`RunningServer::wait_drained`], then
    /// [`RunningServer::exit`].
    pub fn shutdown(self) -> Result<()> {
        self.begin_stop();
        self.wait_drained();
        self.exit()
    }
}

async fn run_shard(
    node: Arc<Node>,
    slots: Arc<Mutex<ListenerSlots>>,
    mesh: MeshBuilder<Vec<MeshMsg>, glommio::channels::channel_mesh::Full>,
    mut inbox: InboxReceiver,
    ready: &mpsc::Sender<Result<usize, String>>,
    drained: mpsc::Sender<usize>,
    store: StoreSettings,
) -> Result<()> {
    let (senders, receivers) = mesh
        .join()
        .await
        .map_err(|_| anyhow!("channel mesh join failed"))?;
    let id = senders.peer_id();
    let (shared_fd, aware_fd) = {
        let mut s = slots
            .lock()
            .map_err(|_| anyhow!("listener slots poisoned"))?;
        let shared = s.shared.get_mut(id).and_then(Option::take);
        let aware = s.shard_aware.get_mut(id).and_then(Option::take);
        (
            shared.context("no shared listener for shard")?,
            aware.context("no shard-aware listener")?,
        )
    };
    // SAFETY: both fds are bound, listening sockets handed over exactly once (taken above).
    let (shared, aware) = unsafe {
        (
            TcpListener::from_raw_fd(shared_fd),
            TcpListener::from_raw_fd(aware_fd),
        )
    };
    let shard = Shard::start(id, node.clone(), senders, receivers);
    shard.with_store(|s, _| {
        s.track_consumption(store.track_consumption);
        s.set_max_buckets(store.max_buckets);
    });
    let conns = Rc::new(Connections::default());
    let accepting = vec![
        glommio::spawn_local(accept_loop(shard.clone(), shared, None, conns.clone())),
        glommio::spawn_local(accept_loop(
            shard.clone(),
            aware,
            Some(id as u16),
            conns.clone(),
        )),
    ];
    let mut upkeep = vec![glommio::spawn_local(evict_loop(shard.clone()))];
    if let Some(idle) = node.limits.idle_timeout {
        upkeep.push(glommio::spawn_local(idle_loop(
            shard.clone(),
            conns.clone(),
            idle,
        )));
    }
    let _ = ready.send(Ok(id));

    // The inbox is served until Exit, through the drain: other threads (gRPC calls still
    // in flight, the gossip thread's final replication drain) reach this shard until then.
    let mut drain = Some((accepting, upkeep, drained));
    while let Some(msg) = inbox.recv().await {
        match msg {
            Inbound::Stop => {
                if let Some((accepting, upkeep, drained)) = drain.take() {
                    // Waiting flows are answered first, so their replies go out before
                    // their connections are drained.
                    shard.stop_waiting();
                    glommio::spawn_local(drain_shard(
                        shard.clone(),
                        conns.clone(),
                        accepting,
                        upkeep,
                        drained,
                    ))
                    .detach();
                }
            }
            Inbound::Exit => break,
            msg => handle_inbound(&shard, msg),
        }
    }
    Ok(())
}

/// Drains a stopping shard: no new connections, reads end, in-flight replies are written
/// (up to `drain_timeout`); then every flow in flight is ended, so the last replication
/// drain tells peers their tokens came back. Reports on `drained`.
async fn drain_shard(
    shard: Rc<Shard>,
    conns: Rc<Connections>,
    accepting: Vec<glommio::Task<()>>,
    upkeep: Vec<glommio::Task<()>>,
    drained: mpsc::Sender<usize>,
) {
    drop(accepting);
    drop(upkeep);
    conns.shutdown_reads();
    let limits = &shard.node.limits;
    let deadline =
        clock::now_ns() + u64::try_from(limits.drain_timeout.as_nanos()).unwrap_or(u64::MAX);
    while !conns.is_empty() && clock::now_ns() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    if !conns.is_empty() {
        tracing::warn!(
            shard = shard.id,
            open = conns.len(),
            "drain timeout: closing remaining connections"
        );
    }
    let ended = shard.end_all_flows();
    if ended > 0 {
        tracing::info!(shard = shard.id, ended, "ended the flows still in flight");
    }
    let _ = drained.send(shard.id);
}

fn handle_inbound(shard: &Rc<Shard>, msg: Inbound) {
    match msg {
        Inbound::CheckBatch { checks, answered } => {
            let now = clock::now_ns();
            let mut answers: AnsweredChecks = Vec::with_capacity(checks.len());
            for QueuedCheck {
                flow,
                deadline,
                reply,
            } in checks
            {
                let planned = shard.decide_now(
                    &flow.control_point,
                    flow.labels.as_slice(),
                    flow.tokens,
                    deadline,
                    now,
                );
                let decision = match planned {
                    Err(e) => Err(e),
                    Ok(Planned::Decided(d)) => Ok(d),
                    Ok(Planned::Pending(pending)) => {
                        answer_when_decided(shard, pending, flow, reply);
                        continue;
                    }
                };
                answers.push((reply, Checked { flow, decision }));
            }
            // The caller's thread is gone (shutting down): answer each caller alone.
            if let Err(answers) = answered.send(answers) {
                for (reply, answer) in answers {
                    answer_check(shard, reply, answer);
                }
            }
        }
        Inbound::EndFlows { ids, reply } => {
            if ids.iter().all(|id| id.shard() == shard.id) {
                // The bridge routes each id to its owner: ended before the next message.
                let _ = reply.send(ids.iter().map(|&id| shard.end_flow_here(id)).collect());
            } else {
                let shard = shard.clone();
                glommio::spawn_local(async move {
                    let _ = reply.send(shard.end_flows(&ids).await);
                })
                .detach();
            }
        }
        Inbound::Replica { op, peer, entries } => {
            shard.metrics().replica_applied(op, entries.len());
            shard.apply_replica(op, peer, entries)
        }
        Inbound::PeerGone { peer } => shard.peer_gone(peer),
        Inbound::DrainConsumed(reply) => {
            let mut consumed = Vec::new();
            shard.with_store(|store, _| store.drain_unsynced(|c| consumed.push(c)));
            let _ = reply.send(consumed);
        }
        Inbound::Snapshot(reply) => {
            let mut levels = Vec::new();
            let now = clock::now_ns();
            shard.with_store(|store, engine| {
                store.snapshot(engine, now, |limiter, key, value| {
                    levels.push(Replica {
                        limiter,
                        key: key.to_string(),
                        value,
                    })
                })
            });
            let _ = reply.send(levels);
        }
        Inbound::Admin(query) => crate::admin::shard_query::answer(shard, query),
        Inbound::Reload { engine, done } => {
            shard.reload(engine);
            let _ = done.send(shard.id);
        }
        Inbound::Stop | Inbound::Exit => {}
    }
}

/// Lets a check that must wait (a scheduler queue) be decided in its own task, and answers
/// its caller alone then. A caller that goes away meanwhile cancels it: dropping the check
/// hands back what it took.
fn answer_when_decided(
    shard: &Rc<Shard>,
    pending: Box<PendingCheck>,
    flow: OwnedFlow,
    reply: CheckReply,
) {
    let shard = shard.clone();
    glommio::spawn_local(async move {
        let mut reply = reply;
        let decided = {
            let decision = pending.decide();
            let cancelled = reply.closed();
            futures::pin_mut!(decision, cancelled);
            match futures::future::select(decision, cancelled).await {
                futures::future::Either::Left((d, _)) => Some(d),
                futures::future::Either::Right(_) => None,
            }
        };
        if let Some(d) = decided {
            let answer = Checked {
                flow,
                decision: Ok(d),
            };
            answer_check(&shard, reply, answer);
        }
    })
    .detach();
}

/// Sends an answer to a caller on another thread. If it is gone, the flows the decision
/// started end now rather than at their `max_inflight_duration` (nobody will end them).
fn answer_check(shard: &Rc<Shard>, reply: CheckReply, answer: Checked) {
    if let Err(Checked {
        decision: Ok(decision),
        ..
    }) = reply.send(answer)
    {
        let flows: Vec<_> = decision.limiters.iter().filter_map(|o| o.flow).collect();
        if !flows.is_empty() {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                shard.end_flows(&flows).await;
            })
            .detach();
        }
    }
}

async fn accept_loop(
    shard: Rc<Shard>,
    listener: TcpListener,
    shard_index: Option<u16>,
    conns: Rc<Connections>,
) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                // Refused: the peer is told why and closed (conn::admission).
                let Some((stream, slot)) = conn::admission::admit(&shard.node, stream) else {
                    continue;
                };
                let (id, activity) = conns.add(stream.as_raw_fd(), clock::now_ns());
                let (shard, conns) = (shard.clone(), conns.clone());
                glommio::spawn_local(async move {
                    conn::serve(shard.clone(), stream, shard_index, activity).await;
                    conns.remove(id);
                    drop(slot);
                })
                .detach();
            }
            Err(e) => {
                // Usually EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Closes the shard's binary connections idle for `idle` (`server.idle_timeout`), one sweep
/// per [`conn::idle::sweep_period`].
async fn idle_loop(shard: Rc<Shard>, conns: Rc<Connections>, idle: Duration) {
    let period = conn::idle::sweep_period(idle);
    let idle_ns = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
    loop {
        glommio::timer::sleep(period).await;
        let closed = conns.close_idle(clock::now_ns(), idle_ns);
        shard.metrics().idle_closed(closed);
        if closed > 0 {
            tracing::debug!(
                closed,
                idle_timeout = ?idle,
                "closing connections: no complete frame within server.idle_timeout"
            );
        }
    }
}

/// A shard's bucket upkeep: the idle sweep a slice at a time, and the bucket counters in
/// the log.
///
/// Each tick sweeps up to [`SWEEP_BUDGET`] positions (well under a millisecond); ticks are
/// paced so that a whole pass takes about `max_idle_time / 8` (1–60 s), or longer when a
/// shard holds more buckets than [`SWEEP_MIN_PAUSE`] lets it cover.
async fn evict_loop(shard: Rc<Shard>) {
    let mut pause = SWEEP_MAX_PAUSE;
    let mut report = StatsReport::default();
    loop {
        glommio::timer::sleep(pause).await;
        // Read each tick: a reload may change the limiters (and remove some, whose buckets
        // this sweep then frees).
        let min_idle = shard
            .engine()
            .limiters()
            .iter()
            .map(|l| l.max_idle_ns)
            .min();
        let pass = min_idle.map_or(SWEEP_MAX_PASS, |idle| {
            Duration::from_nanos(idle / 8).clamp(SWEEP_MIN_PASS, SWEEP_MAX_PASS)
        });
        let now = clock::now_ns();
        let (stats, swept, budget) = shard.with_store(|store, engine| {
            let positions = store.stats().positions.max(1);
            // This tick's share of a pass, so a pass takes `pass`.
            let share = (positions as f64 * pause.as_secs_f64() / pass.as_secs_f64()).ceil();
            let budget = (share as usize).clamp(1, SWEEP_BUDGET);
            let swept = store.sweep(engine, now, budget);
            (store.stats(), swept, budget)
        });
        shard.metrics().evicted_idle(swept.dropped);
        let cut_short = swept.visited < budget && !swept.wrapped;
        let ticks_per_pass = stats.positions.div_ceil(SWEEP_BUDGET).max(1) as u32;
        pause = if cut_short {
            // The call stopped at a shrink (one per call): when many buckets expire at
            // once, keep the pass going at the shortest pause instead of one segment per
            // paced tick, which stretched a pass over minutes in the soak.
            SWEEP_MIN_PAUSE
        } else {
            (pass / ticks_per_pass).clamp(SWEEP_MIN_PAUSE, SWEEP_MAX_PAUSE)
        };
        report.tick(shard.id, &stats, now, || {
            shard.with_store(|s, _| s.table_bytes())
        });
    }
}

/// What a shard last logged about its buckets, so it logs changes only (at most once per
/// [`STATS_LOG_PERIOD`]), and warns about over-admitting evictions at most that often.
#[derive(Default)]
struct StatsReport {
    /// The counters of the last `buckets` line, and when it was logged.
    logged: Option<(StoreStats, u64)>,
    /// The counters at the last warning, and when it was given.
    warned: Option<(StoreStats, u64)>,
}

impl StatsReport {
    fn tick(
        &mut self,
        shard: usize,
        stats: &StoreStats,
        now: u64,
        table_bytes: impl FnOnce() -> usize,
    ) {
        let period = nanos(STATS_LOG_PERIOD);
        let due = |last: Option<(StoreStats, u64)>| last.is_none_or(|(_, at)| now >= at + period);
        let counters = |s: &StoreStats| {
            (
                s.live,
                s.evicted_full,
                s.evicted_not_full,
                s.evicted_idle,
                s.refused,
            )
        };
        let changed = self
            .logged
            .is_none_or(|(l, _)| counters(&l) != counters(stats));
        if changed && due(self.logged) {
            tracing::info!(
                shard,
                live = stats.live,
                max = stats.max_buckets,
                evicted_full = stats.evicted_full,
                evicted_not_full = stats.evicted_not_full,
                evicted_idle = stats.evicted_idle,
                refused = stats.refused,
                table_bytes = table_bytes(),
                "buckets"
            );
            self.logged = Some((*stats, now));
        }
        let before = self.warned.map(|(s, _)| s).unwrap_or_default();
        let over_admitted = stats.evicted_not_full - before.evicted_not_full;
        let refused = stats.refused - before.refused;
        if (over_admitted > 0 || refused > 0) && due(self.warned) {
            tracing::warn!(
                shard,
                evicted_not_full = over_admitted,
                refused,
                max = stats.max_buckets,
                "bucket cap reached: buckets that were not full were evicted or new keys refused; \
                 those keys start full again (over-admission); raise server.max_buckets if this persists"
            );
            self.warned = Some((*stats, now));
        }
    }
}

/// Makes the allocator hand free pages back to the OS [`PURGE_DELAY_MS`] after they are
/// freed instead of in one batch a second later (mimalloc's default). An operator's
/// `MIMALLOC_PURGE_DELAY` in the environment wins.
fn return_free_pages_soon() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return; // the operator's choice (mimalloc reads it at start)
    }
    // SAFETY: sets one integer option of the allocator; it takes effect on later frees.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The CPUs this process may run on, ascending: its affinity mask, which a container's
/// cpuset (e.g. Kubernetes' static CPU manager) or `taskset` narrows. Shards are pinned to
/// these, since pinning to a CPU outside a cpuset fails (EINVAL): CPU ids 0..n only work
/// where the process may use CPU 0 onwards. Falls back to 0..available_parallelism if the
/// mask cannot be read.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain bits; sched_getaffinity writes at most its size into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let read = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) } == 0;
    let cpus: Vec<usize> = if read {
        // SAFETY: every index is below CPU_SETSIZE, the size of `set`.
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
            .collect()
    } else {
        Vec::new()
    };
    if cpus.is_empty() {
        (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
    } else {
        cpus
    }
}

/// Raises the open-file limit and checks every port's connection cap against it
/// ([`crate::descriptors`]): refuses to start when one cap cannot fit.
fn check_descriptor_budget(config: &Config, nr_shards: usize) -> Result<()> {
    use crate::descriptors::PortCap;
    let as_u64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    let mut caps = vec![PortCap {
        field: "server.max_connections",
        cap: as_u64(config.server.max_connections),
    }];
    if config.server.grpc.is_some() {
        caps.push(PortCap {
            field: "server.grpc_connections.max_connections",
            cap: as_u64(config.server.grpc_connections.max_connections),
        });
    }
    crate::descriptors::check(&caps, nr_shards)
}

/// glommio checks RLIMIT_MEMLOCK; raise the soft limit to the hard one (best effort).
fn raise_memlock_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a stack struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim);
        }
    }
}
