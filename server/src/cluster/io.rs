//! The IO shell: one plain thread that owns the gossip UDP socket and the sans-IO
//! [`Gossip`] node, and talks to the shards only through [`DecisionHandle`] messages.
//!
//! Nothing here touches a shard's buckets or adds a lock to the decision path: shards see
//! `DrainConsumed`, `Snapshot`, `Debit` and `LowerTo` messages in their inbox, between
//! decisions, like any other message. The loop:
//!
//! 1. wait for a datagram until the next deadline (foca timer, sync tick, seed retry);
//! 2. hand it to [`Gossip::handle_datagram`];
//! 3. every sync tick, drain each shard's consumption into [`Gossip::record_local`];
//! 4. [`Gossip::tick`], then carry out the effects (send, debit, lower, snapshot).

use super::gossip::{Effect, Gossip, GossipStats, MemberInfo};
use super::wire::{Entry, MAX_DATAGRAM};
use crate::bridge::{DecisionHandle, Inbound};
use crate::clock;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// Socket buffers: a state transfer or a sync of many keys is a burst of datagrams;
/// 4 MiB holds about 3,000 of them (the kernel may cap it at `net.core.rmem_max`).
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;
/// While this node knows no live member, it announces to its seeds this often.
pub const JOIN_RETRY: Duration = Duration::from_millis(500);
/// Once joined, seeds are re-announced this often (heals a partition where both sides
/// forgot each other, and finds new pods behind a headless Service).
pub const SEED_REANNOUNCE: Duration = Duration::from_secs(15);
/// Seeds are re-resolved (DNS) this often, on a separate thread so a slow resolver never
/// stalls gossip.
pub const SEED_RESOLVE_PERIOD: Duration = Duration::from_secs(5);
/// The gossip counters are logged this often (info level, `cluster stats`).
pub const STATS_PERIOD: Duration = Duration::from_secs(10);
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
    /// Starts the thread on a bound socket.
    pub fn start(
        socket: UdpSocket,
        gossip: Gossip,
        seeds: Vec<String>,
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
                        next_shard: 0,
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
    next_shard: usize,
}

impl Shell {
    fn run(&mut self, stop: &AtomicBool) {
        let tick = Duration::from_nanos(self.gossip.replication_config().tick_ns());
        let tick_ns = tick.as_nanos() as u64;
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        let mut out = Vec::new();
        let start = clock::now_ns();
        let mut next_drain = start + tick_ns;
        let mut next_join = start;
        let mut next_stats = start + STATS_PERIOD.as_nanos() as u64;
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
                    self.gossip.handle_datagram(from, &buf[..n], now, &mut out);
                    // Take whatever else is queued without waiting.
                    let _ = self.socket.set_nonblocking(true);
                    for _ in 0..256 {
                        match self.socket.recv_from(&mut buf) {
                            Ok((n, from)) => {
                                self.gossip.handle_datagram(from, &buf[..n], now, &mut out)
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
                self.drain_local();
                next_drain = (next_drain + tick_ns).max(now + 1);
            }
            self.gossip.tick(now, &mut out);
            self.carry_out(&mut out);
            self.publish();
            if now >= next_stats {
                let stats = self.gossip.stats();
                let secs = (now - last_stats.0) as f64 / 1e9;
                let rate = (stats.bytes_out - last_stats.1) as f64 / secs.max(1e-9);
                tracing::info!(
                    bytes_out = stats.bytes_out,
                    bytes_out_per_sec = rate as u64,
                    datagrams_out = stats.datagrams_out,
                    datagrams_in = stats.datagrams_in,
                    auth_failed = stats.auth_failed,
                    invalid = stats.invalid,
                    not_member = stats.not_member,
                    retransmits = stats.replication.retransmits,
                    gave_up = stats.replication.gave_up,
                    peers = self.gossip.peers().len(),
                    "cluster stats"
                );
                last_stats = (now, stats.bytes_out);
                next_stats = now + STATS_PERIOD.as_nanos() as u64;
            }
        }
        // Shutdown: send what was consumed since the last sync, then leave.
        self.drain_local();
        let now = clock::now_ns();
        self.gossip
            .tick(now.saturating_add(3_600_000_000_000), &mut out);
        self.gossip.leave(now, &mut out);
        self.carry_out(&mut out);
        self.publish();
        tracing::info!("left the cluster");
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
    fn drain_local(&mut self) {
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
        for rx in waiting {
            if let Ok(deltas) = rx.blocking_recv() {
                for d in deltas {
                    self.gossip.record_local(
                        u32::from(self.handle.engine().limiter(d.limiter).position),
                        d.key,
                        f64::from(d.tokens),
                    );
                }
            }
        }
    }

    fn snapshot(&self) -> Vec<Entry> {
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
                let engine = self.handle.engine();
                levels.extend(l.into_iter().map(|(limiter, key, value)| Entry {
                    limiter: u32::from(engine.limiter(limiter).position),
                    key,
                    value,
                }));
            }
        }
        levels
    }

    fn any_shard(&mut self) -> usize {
        let n = self.handle.nr_shards().max(1);
        self.next_shard = (self.next_shard + 1) % n;
        self.next_shard
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
                    Effect::Debit(entries) => {
                        let engine = self.handle.engine();
                        let takes: Vec<_> = entries
                            .into_iter()
                            .filter_map(|e| {
                                let spec = engine.limiters().get(e.limiter as usize)?;
                                Some((spec.id, e.key, e.value))
                            })
                            .collect();
                        if !takes.is_empty() {
                            let shard = self.any_shard();
                            let _ = self.handle.send_blocking(shard, Inbound::Debit(takes));
                        }
                    }
                    Effect::LowerTo(entries) => {
                        let engine = self.handle.engine();
                        let levels: Vec<_> = entries
                            .into_iter()
                            .filter_map(|e| {
                                let spec = engine.limiters().get(e.limiter as usize)?;
                                Some((spec.id, e.key, e.value))
                            })
                            .collect();
                        if !levels.is_empty() {
                            let shard = self.any_shard();
                            let _ = self.handle.send_blocking(shard, Inbound::LowerTo(levels));
                        }
                    }
                    Effect::SnapshotFor(to) => {
                        let levels = self.snapshot();
                        tracing::info!(%to, buckets = levels.len(), "sending bucket state to a joining peer");
                        self.gossip.send_transfer(to, levels, clock::now_ns(), out);
                    }
                    Effect::Synced => {
                        let _ = self.synced.send(());
                    }
                }
            }
        }
    }
}
