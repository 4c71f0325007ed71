//! The IO shell: one plain thread that owns the gossip UDP socket and the sans-IO
//! [`Gossip`] node, and talks to the shards only through [`DecisionHandle`] messages.
//!
//! Nothing here touches a shard's buckets or adds a lock to the decision path: shards see
//! `DrainConsumed`, `Snapshot` and `Replica` messages in their inbox, between decisions,
//! like any other message. The loop:
//!
//! 1. wait for a datagram until the next deadline (foca timer, sync tick, seed retry);
//! 2. hand it to [`Gossip::handle_datagram`] with the node's engine, which names limiters;
//! 3. every drain interval, drain each shard's consumption into [`Gossip::record_local`];
//! 4. tell it the digest of the policies in force (a reload changes it; it announces a new
//!    one to every peer);
//! 5. [`Gossip::tick`], then carry out the effects: send datagrams, send each replicated
//!    entry to the shard that owns its bucket (naming the peer process that sent it),
//!    answer snapshot requests, and tell every shard when a peer process is gone for good
//!    (so each hands back what that peer's flows in flight held of its buckets).
//!
//! Routing happens here, once, where entries enter the node: `owner_of(key)`, the routing
//! function checks use, so no shard ever re-routes a replica.

use crate::bridge::{DecisionHandle, Inbound};
use crate::clock;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use tollgate_cluster::wire::MAX_DATAGRAM;
use tollgate_cluster::{
    Effect, Gossip, GossipStats, MemberInfo, Op, Replica, JOIN_RETRY, SEED_REANNOUNCE,
};

/// Socket buffers: a state transfer or a sync of many keys is a burst of datagrams;
/// 4 MiB holds about 3,000 of them (the kernel may cap it at `net.core.rmem_max`).
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;
/// Seeds are re-resolved (DNS) this often, on a separate thread so a slow resolver never
/// stalls gossip.
pub const SEED_RESOLVE_PERIOD: Duration = Duration::from_secs(5);
/// Longest single wait for a datagram, so the stop flag is noticed promptly.
const MAX_WAIT: Duration = Duration::from_millis(100);

/// What the gossip thread publishes for MEMBERS and for tests.
#[derive(Default)]
pub struct Shared {
    /// The member list at the last loop iteration.
    pub members: Mutex<Vec<MemberInfo>>,
    /// The counters at the last loop iteration.
    pub stats: Mutex<GossipStats>,
}

/// The running gossip thread.
pub struct GossipThread {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    resolver: Option<std::thread::JoinHandle<()>>,
    synced: mpsc::Receiver<()>,
}

impl GossipThread {
    /// Starts the thread on a bound socket; it logs the counters every `stats_interval`.
    pub fn start(
        socket: UdpSocket,
        gossip: Gossip,
        seeds: Vec<String>,
        stats_interval: Duration,
        handle: DecisionHandle,
        shared: Arc<Shared>,
    ) -> std::io::Result<GossipThread> {
        let stop = Arc::new(AtomicBool::new(false));
        let resolved = Arc::new(Mutex::new(Vec::<SocketAddr>::new()));
        // Resolve once before starting so the first join does not wait a period.
        if let Ok(mut r) = resolved.lock() {
            *r = resolve(&seeds);
        }
        let resolver = {
            let (stop, resolved) = (stop.clone(), resolved.clone());
            std::thread::Builder::new()
                .name("gossip-dns".into())
                .spawn(move || resolve_loop(&seeds, &resolved, &stop))?
        };
        let (synced_tx, synced) = mpsc::channel();
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("gossip".into())
                .spawn(move || {
                    let mut shell = Shell {
                        socket,
                        gossip,
                        handle,
                        shared,
                        resolved,
                        synced: synced_tx,
                        stats_interval,
                    };
                    shell.run(&stop);
                })?
        };
        Ok(GossipThread {
            stop,
            thread: Some(thread),
            resolver: Some(resolver),
            synced,
        })
    }

    /// Waits until a peer's state transfer completed, at most `timeout`. False on timeout.
    pub fn wait_synced(&self, timeout: Duration) -> bool {
        self.synced.recv_timeout(timeout).is_ok()
    }

    /// Sends the last deltas, leaves the cluster gracefully and stops the thread.
    pub fn leave(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(t) = self.resolver.take() {
            let _ = t.join();
        }
    }
}

impl Drop for GossipThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

fn resolve(seeds: &[String]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for s in seeds {
        match s.to_socket_addrs() {
            Ok(addrs) => out.extend(addrs.filter(|a| a.is_ipv4() || a.is_ipv6())),
            Err(e) => tracing::debug!(seed = %s, error = %e, "seed does not resolve (yet)"),
        }
    }
    out.sort();
    out.dedup();
    out
}

fn resolve_loop(seeds: &[String], resolved: &Mutex<Vec<SocketAddr>>, stop: &AtomicBool) {
    let step = Duration::from_millis(100);
    let mut waited = Duration::ZERO;
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(step);
        waited += step;
        if waited < SEED_RESOLVE_PERIOD {
            continue;
        }
        waited = Duration::ZERO;
        let addrs = resolve(seeds);
        if let Ok(mut r) = resolved.lock() {
            *r = addrs;
        }
    }
}

struct Shell {
    socket: UdpSocket,
    gossip: Gossip,
    handle: DecisionHandle,
    shared: Arc<Shared>,
    resolved: Arc<Mutex<Vec<SocketAddr>>>,
    synced: mpsc::Sender<()>,
    /// How often the counters are logged.
    stats_interval: Duration,
}

impl Shell {
    fn run(&mut self, stop: &AtomicBool) {
        let drain_ns = self.gossip.drain_interval_ns(&self.handle.engine());
        let stats_ns = u64::try_from(self.stats_interval.as_nanos()).unwrap_or(u64::MAX);
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        let mut out = Vec::new();
        let start = clock::now_ns();
        let mut next_drain = start + drain_ns;
        let mut next_join = start;
        let mut next_stats = start.saturating_add(stats_ns);
        let mut last_stats = (start, 0u64);
        while !stop.load(Ordering::Acquire) {
            let now = clock::now_ns();
            let deadline = self
                .gossip
                .next_deadline()
                .min(next_drain)
                .min(next_join)
                .min(next_stats);
            let wait = Duration::from_nanos(deadline.saturating_sub(now))
                .clamp(Duration::from_millis(1), MAX_WAIT);
            let _ = self.socket.set_read_timeout(Some(wait));
            match self.socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let now = clock::now_ns();
                    let engine = self.handle.engine();
                    let engine: &tollgate_policy::Engine = &engine;
                    self.gossip
                        .handle_datagram(from, &buf[..n], now, engine, &mut out);
                    // Take whatever else is queued without waiting.
                    let _ = self.socket.set_nonblocking(true);
                    for _ in 0..256 {
                        match self.socket.recv_from(&mut buf) {
                            Ok((n, from)) => {
                                self.gossip
                                    .handle_datagram(from, &buf[..n], now, engine, &mut out)
                            }
                            Err(_) => break,
                        }
                    }
                    let _ = self.socket.set_nonblocking(false);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => tracing::debug!(error = %e, "gossip recv failed"),
            }
            self.carry_out(&mut out);
            let now = clock::now_ns();
            if now >= next_join {
                let joined = !self.gossip.peers().is_empty();
                let seeds = self.resolved.lock().map(|r| r.clone()).unwrap_or_default();
                self.gossip.join(&seeds, now, &mut out);
                next_join =
                    now + if joined { SEED_REANNOUNCE } else { JOIN_RETRY }.as_nanos() as u64;
            }
            if now >= next_drain {
                self.drain_local(now);
                next_drain = (next_drain + drain_ns).max(now + 1);
            }
            let digest = self.handle.engine().digest();
            self.gossip.set_policy_digest(digest, now, &mut out);
            self.gossip.tick(now, &mut out);
            self.carry_out(&mut out);
            self.publish();
            if now >= next_stats {
                self.log_stats(now, &mut last_stats);
                next_stats = now.saturating_add(stats_ns);
            }
        }
        // Shutdown: send what was consumed since the last sync, then leave.
        let now = clock::now_ns();
        self.drain_local(now);
        self.gossip.flush(now, &mut out);
        self.gossip.leave(now, &mut out);
        self.carry_out(&mut out);
        self.publish();
        tracing::info!("left the cluster");
    }

    /// Logs the counters (`cluster stats`): what docs/cluster.md's Observability lists.
    /// `last` is (when, bytes_out) at the previous line, for the rate.
    fn log_stats(&self, now: u64, last: &mut (u64, u64)) {
        let stats = self.gossip.stats();
        let secs = now.saturating_sub(last.0) as f64 / 1e9;
        let rate = stats.bytes_out.saturating_sub(last.1) as f64 / secs.max(1e-9);
        let r = &stats.replication;
        tracing::info!(
            bytes_out = stats.bytes_out,
            bytes_out_per_sec = rate as u64,
            datagrams_out = stats.datagrams_out,
            datagrams_in = stats.datagrams_in,
            auth_failed = stats.auth_failed,
            invalid = stats.invalid,
            not_member = stats.not_member,
            retransmits = r.retransmits,
            gave_up = r.gave_up,
            skipped_entries = r.skipped_entries,
            dropped_unknown_limiter = r.dropped_unknown_limiter,
            dropped_definition_differs = r.dropped_definition_differs,
            peers = self.gossip.peers().len(),
            "cluster stats"
        );
        *last = (now, stats.bytes_out);
    }

    fn publish(&self) {
        if let Ok(mut m) = self.shared.members.lock() {
            *m = self.gossip.members();
        }
        if let Ok(mut s) = self.shared.stats.lock() {
            *s = self.gossip.stats();
        }
    }

    /// Drains every shard's consumption since the last drain into the replication core.
    fn drain_local(&mut self, now: u64) {
        let mut waiting = Vec::with_capacity(self.handle.nr_shards());
        for shard in 0..self.handle.nr_shards() {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if self
                .handle
                .send_blocking(shard, Inbound::DrainConsumed(tx))
                .is_ok()
            {
                waiting.push(rx);
            }
        }
        let engine = self.handle.engine();
        let engine: &tollgate_policy::Engine = &engine;
        for rx in waiting {
            if let Ok(consumed) = rx.blocking_recv() {
                for c in consumed {
                    self.gossip.record_local(engine, c, now);
                }
            }
        }
    }

    /// Every shard's bucket levels.
    fn snapshot(&self) -> Vec<Replica> {
        let mut waiting = Vec::with_capacity(self.handle.nr_shards());
        for shard in 0..self.handle.nr_shards() {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if self
                .handle
                .send_blocking(shard, Inbound::Snapshot(tx))
                .is_ok()
            {
                waiting.push(rx);
            }
        }
        let mut levels = Vec::new();
        for rx in waiting {
            if let Ok(l) = rx.blocking_recv() {
                levels.extend(l);
            }
        }
        levels
    }

    /// Sends each entry to the shard that owns its bucket, one message per shard; `peer`
    /// is the boot nonce of the process that sent them.
    fn route(&self, op: Op, peer: u64, entries: Vec<Replica>) {
        let mut by_owner: Vec<Vec<Replica>> = vec![Vec::new(); self.handle.nr_shards()];
        for e in entries {
            let owner = self.handle.owner_of(&e.key);
            if let Some(list) = by_owner.get_mut(owner) {
                list.push(e);
            }
        }
        for (shard, entries) in by_owner.into_iter().enumerate() {
            if !entries.is_empty() {
                let _ = self
                    .handle
                    .send_blocking(shard, Inbound::Replica { op, peer, entries });
            }
        }
    }

    fn carry_out(&mut self, out: &mut Vec<Effect>) {
        // Effects may create more effects (a snapshot becomes sends): bounded by the
        // number of SnapshotFor effects, each of which produces only sends.
        while !out.is_empty() {
            let batch = std::mem::take(out);
            for effect in batch {
                match effect {
                    Effect::Send { to, datagram } => {
                        if let Err(e) = self.socket.send_to(&datagram, to) {
                            tracing::debug!(%to, error = %e, "gossip send failed");
                        }
                    }
                    Effect::Apply { op, entries, boot } => self.route(op, boot, entries),
                    Effect::PeerGone { boot } => {
                        tracing::info!(
                            peer = boot,
                            "a peer process is gone: releasing what its flows in flight held"
                        );
                        for shard in 0..self.handle.nr_shards() {
                            let _ = self
                                .handle
                                .send_blocking(shard, Inbound::PeerGone { peer: boot });
                        }
                    }
                    Effect::SnapshotFor(to) => {
                        let levels = self.snapshot();
                        tracing::info!(%to, buckets = levels.len(), "sending bucket state to a joining peer");
                        let engine = self.handle.engine();
                        let engine: &tollgate_policy::Engine = &engine;
                        self.gossip
                            .send_transfer(to, levels, engine, clock::now_ns(), out);
                    }
                    Effect::Synced => {
                        let _ = self.synced.send(());
                    }
                }
            }
        }
    }
}
