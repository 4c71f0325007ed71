//! Starting and stopping a node: bind every socket, start one pinned executor per shard,
//! connect them with a channel mesh, report ready, and on shutdown stop accepting, drain
//! connections and exit.

use crate::bridge::{DecisionHandle, Inbound, INBOX_DEPTH};
use crate::config::Config;
use crate::node::{Limits, MembersView, Node};
use crate::shard::{MeshMsg, Planned, Shard, MESH_CHANNEL_SIZE};
use crate::{clock, conn, listeners};
use anyhow::{anyhow, Context, Result};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use tollgate_cluster::Replica;
use tollgate_policy::{Engine, OwnedFlow};

/// glommio reserves this much io_uring-registered memory per executor for storage I/O.
/// Tollgate does no file I/O on shards, so the minimum (64 KiB) leaves locked-memory
/// limits (often 8 MiB in containers) to the rings themselves.
const SHARD_IO_MEMORY: usize = 64 * 1024;

/// How often a shard sweeps idle buckets, at most and at least: the sweep is O(buckets),
/// so not too often; eviction is a memory bound, not a semantic one, so not urgent.
const EVICT_MIN_PERIOD: Duration = Duration::from_secs(1);
const EVICT_MAX_PERIOD: Duration = Duration::from_secs(60);

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

/// Binds, starts every shard and returns once all are serving.
pub fn start(config: &Config, options: StartOptions) -> Result<RunningServer> {
    raise_memlock_limit();
    let nr_shards = config
        .server
        .shards
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let engine = Arc::new(Engine::new(&config.policies));
    let bound = listeners::bind_binary(config.server.listen, nr_shards)?;
    let shard_ports = bound.shard_ports();
    let node_id = config
        .server
        .node_id
        .clone()
        .or_else(|| config.cluster.as_ref().and_then(|c| c.node_id.clone()))
        .unwrap_or_else(|| "tollgate".to_string());
    let node = Arc::new(Node {
        engine: engine.clone(),
        nr_shards,
        node_id,
        listen: bound.listen,
        shard_ports: shard_ports.clone(),
        limits: Limits::from_config(&config.server),
        connections: AtomicUsize::new(0),
        members: options.members,
        metrics: Arc::new(crate::metrics::Metrics::new(
            config.server.metrics,
            nr_shards,
            engine.limiters().len(),
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
        let (tx, rx) = flume::bounded::<Inbound>(INBOX_DEPTH);
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
            .io_memory(SHARD_IO_MEMORY);
        if !config.server.idle_spin.0.is_zero() {
            builder = builder.spin_before_park(config.server.idle_spin.0);
        }
        let executor = builder
            .spawn(move || async move {
                if let Err(e) = run_shard(node, slots, mesh, rx, &ready_tx, drained_tx, track).await
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
        handle: DecisionHandle::new(engine, inboxes),
        node,
        executors,
        drained: drained_rx,
    })
}

impl RunningServer {
    /// Stops accepting, lets connections finish (up to `drain_timeout`), stops the shards.
    pub fn shutdown(self) -> Result<()> {
        let n = self.executors.len();
        for shard in 0..n {
            let _ = self.handle.send_blocking(shard, Inbound::Stop);
        }
        let deadline = self.node.limits.drain_timeout + Duration::from_secs(2);
        for _ in 0..n {
            if self.drained.recv_timeout(deadline).is_err() {
                tracing::warn!("a shard did not drain in time");
                break;
            }
        }
        for shard in 0..n {
            let _ = self.handle.send_blocking(shard, Inbound::Exit);
        }
        for e in self.executors {
            e.join().map_err(|e| anyhow!("shard thread failed: {e}"))?;
        }
        Ok(())
    }
}

/// Open connections of one shard, so shutdown can end their reads.
#[derive(Default)]
struct Connections {
    fds: RefCell<hashbrown::HashMap<u64, RawFd>>,
    next_id: Cell<u64>,
}

impl Connections {
    fn add(&self, fd: RawFd) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        self.fds.borrow_mut().insert(id, fd);
        id
    }

    fn remove(&self, id: u64) {
        self.fds.borrow_mut().remove(&id);
    }

    fn len(&self) -> usize {
        self.fds.borrow().len()
    }

    /// Ends the read side of every connection: readers see EOF, finish what is in
    /// flight, flush and close.
    fn shutdown_reads(&self) {
        for &fd in self.fds.borrow().values() {
            // SAFETY: fd belongs to a live connection (removed from the map when it closes).
            unsafe { libc::shutdown(fd, libc::SHUT_RD) };
        }
    }
}

async fn run_shard(
    node: Arc<Node>,
    slots: Arc<Mutex<ListenerSlots>>,
    mesh: MeshBuilder<Vec<MeshMsg>, glommio::channels::channel_mesh::Full>,
    inbox: flume::Receiver<Inbound>,
    ready: &mpsc::Sender<Result<usize, String>>,
    drained: mpsc::Sender<usize>,
    track_consumption: bool,
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
    shard.with_store(|store, _| store.track_consumption(track_consumption));
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
    let evictor = glommio::spawn_local(evict_loop(shard.clone()));
    let _ = ready.send(Ok(id));

    while let Ok(msg) = inbox.recv_async().await {
        if matches!(msg, Inbound::Stop) {
            break;
        }
        handle_inbound(&shard, msg);
    }
    // Drain: no new connections, reads end, in-flight replies are written.
    drop(accepting);
    drop(evictor);
    conns.shutdown_reads();
    let deadline =
        clock::now_ns() + u64::try_from(node.limits.drain_timeout.as_nanos()).unwrap_or(u64::MAX);
    while conns.len() > 0 && clock::now_ns() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    if conns.len() > 0 {
        tracing::warn!(
            shard = id,
            open = conns.len(),
            "drain timeout: closing remaining connections"
        );
    }
    let _ = drained.send(id);
    // Keep answering peers (their drains may still hop here) until every shard is done.
    while let Ok(msg) = inbox.recv_async().await {
        if matches!(msg, Inbound::Exit) {
            break;
        }
        handle_inbound(&shard, msg);
    }
    Ok(())
}

fn handle_inbound(shard: &Rc<Shard>, msg: Inbound) {
    match msg {
        Inbound::Check { flow, reply } => {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                let _ = reply.send(decide_owned(&shard, &flow).await);
            })
            .detach();
        }
        Inbound::Replica { op, entries } => {
            shard.metrics().replica_applied(op, entries.len());
            shard.apply_replica(op, entries)
        }
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
        Inbound::Stop | Inbound::Exit => {}
    }
}

/// Decides an owned flow (from another thread) on this shard.
pub async fn decide_owned(
    shard: &Rc<Shard>,
    flow: &OwnedFlow,
) -> Result<tollgate_policy::Decision, tollgate_policy::FlowError> {
    match shard.decide_now(
        &flow.control_point,
        flow.labels.as_slice(),
        flow.tokens,
        clock::now_ns(),
    )? {
        Planned::Decided(d) => Ok(d),
        Planned::Forward(plan) => Ok(shard.decide_forwarded(plan).await),
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
                if !shard.node.try_add_connection() {
                    tracing::warn!(
                        max = shard.node.limits.max_connections,
                        "connection limit reached; closing new connection"
                    );
                    drop(stream);
                    continue;
                }
                let id = conns.add(stream.as_raw_fd());
                let (shard, conns) = (shard.clone(), conns.clone());
                glommio::spawn_local(async move {
                    conn::serve(shard.clone(), stream, shard_index).await;
                    conns.remove(id);
                    shard.node.remove_connection();
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

async fn evict_loop(shard: Rc<Shard>) {
    let min_idle = shard
        .engine()
        .limiters()
        .iter()
        .map(|l| l.max_idle_ns)
        .min();
    let Some(min_idle) = min_idle else { return };
    let period = Duration::from_nanos(min_idle / 8).clamp(EVICT_MIN_PERIOD, EVICT_MAX_PERIOD);
    loop {
        glommio::timer::sleep(period).await;
        let evicted = shard.with_store(|store, engine| store.evict_idle(engine, clock::now_ns()));
        shard.metrics().evicted_idle(evicted);
        if evicted > 0 {
            tracing::debug!(
                shard = shard.id,
                evicted,
                live = shard.bucket_count(),
                "evicted idle buckets"
            );
        }
    }
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
