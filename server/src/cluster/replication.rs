//! Shard-delta replication, sans-IO: local consumption in, batches out; batches in, debits
//! out. Time is a `now_ns` argument; nothing here touches a socket, a clock or a shard.
//!
//! # Reliability: acknowledged batches, not cumulative counters
//!
//! Each node sends what its shards consumed since the previous sync as *deltas* in
//! [`Batch`]es numbered per boot (`boot`, `seq`). A receiver applies each (boot, seq) once
//! (so duplicates and replays are harmless and reordering does not matter, since debits
//! commute) and acknowledges it; the sender retransmits a batch until it is acknowledged,
//! [`MAX_TRIES`] times at most, or until the peer is declared down. A lost datagram
//! therefore delays consumption by one retransmission timeout instead of losing it.
//!
//! Cumulative per-bucket counters would also survive loss, but every receiver would keep a
//! counter per (peer, bucket) — at a million keys that is tens of megabytes per peer, and a
//! lost final update is only repaired if the bucket changes again. Acknowledged deltas keep
//! per-peer state proportional to what is in flight and queued, and nothing per key.
//!
//! # Flow control
//!
//! At most [`MAX_IN_FLIGHT_PER_PEER`] batches are unacknowledged per peer; more wait in a
//! per-peer backlog (at most [`MAX_BACKLOG_PER_PEER`]) and go out as acks free the window.
//! Acks are sent every [`ReplicationConfig::ack_interval_ns`] (at most 20 ms), so a window
//! turns over quickly even with long sync intervals, and a large state transfer is paced
//! instead of overflowing the peer's socket buffer.
//!
//! What is still lost, deliberately and counted in [`ReplicationStats`] (`gave_up`): a
//! batch retransmitted [`MAX_TRIES`] times without an acknowledgement, the oldest queued
//! batch when a peer's backlog is full, and everything still queued for a peer that stays
//! down longer than [`DOWN_GRACE_NS`] (it gets levels by state transfer when it returns).
//!
//! # State transfer
//!
//! When a peer joins (or restarts), every node sends it its bucket levels as `LOWER`
//! batches of one *transfer* (`transfer` id, `parts` count), and the receiver lowers each
//! bucket to the level (never raising it). The receiver reports [`Output::TransferComplete`]
//! once it has every part of one transfer, which `serve` waits for before reporting ready.

use super::wire::{self, op, Acks, Auth, Batch, Entry, Kind};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;

/// Transmissions of one batch before the sender gives up on it (counted as
/// `gave_up`). A try fails when the batch or its ack is lost: at 20% loss that is
/// 1 - 0.8² = 36%, and 16 tries all fail with probability 0.36^16 < 1e-7. Retries back off
/// (RTO, 2×, 4×, ... capped at [`MAX_RETRY_GAP_NS`]), so with the 100 ms RTO 16 tries span
/// about 13 s: longer than a loss burst or [`DOWN_GRACE_NS`], and a dead peer costs at most
/// one window of retransmissions per second.
pub const MAX_TRIES: u8 = 16;
/// Longest gap between two transmissions of one batch.
pub const MAX_RETRY_GAP_NS: u64 = 1_000_000_000;
/// Batches one peer may have unacknowledged (the send window). 1,024 datagrams is 1.4 MB:
/// a third of the 4 MiB socket buffers, so a burst cannot overflow them, and with acks
/// every 20 ms still 50,000 datagrams/s (70 MB/s) per peer.
pub const MAX_IN_FLIGHT_PER_PEER: usize = 1_024;
/// Batches queued per peer behind the window. 32,768 datagrams (about 45 MB) holds a state
/// transfer of about a million buckets; past it the oldest queued batch is dropped.
pub const MAX_BACKLOG_PER_PEER: usize = 32_768;
/// Acks go out at least this often (and at the sync interval if shorter).
pub const MAX_ACK_DELAY_NS: u64 = 20_000_000;
/// Out-of-order sequence numbers a receiver remembers above its contiguous floor. Past it
/// the floor jumps forward (older missing batches would then count as duplicates).
pub const MAX_SEEN_ABOVE_FLOOR: usize = 65_536;
/// State transfers a receiver tracks at once (a few peers join at a time).
pub const MAX_OPEN_TRANSFERS: usize = 64;
/// How long a peer declared down is still sent deltas (and its batches accepted). A node
/// falsely declared down (a lossy minute, a long GC-like stall) rejoins under a new
/// identity but the same boot; if it does so within this grace it has missed nothing and
/// needs no state transfer. A node that really crashed comes back with a new boot, which
/// resets its state here regardless. 10 s covers several suspect/down cycles with the
/// default timings while bounding traffic to a dead node to 10 s of deltas.
pub const DOWN_GRACE_NS: u64 = 10_000_000_000;

/// Settings of the replication core.
#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    /// Sync cadence per limiter id, in nanoseconds (the cluster's `sync_interval`, or a
    /// policy's `interval / lazy_sync.num_sync`).
    pub limiter_intervals_ns: Vec<u64>,
    /// Cadence of limiters not in the list: the cluster's `sync_interval`.
    pub default_interval_ns: u64,
    /// Retransmission timeout: an unacknowledged batch is resent after this long.
    pub rto_ns: u64,
}

impl ReplicationConfig {
    /// Retransmission timeout for a sync interval: an ack may wait one ack interval (at
    /// most 20 ms) plus a round trip and the receiver's loop; five ack intervals (at least
    /// 30 ms: 100 ms for syncs of 20 ms or more) avoid spurious resends on a busy host.
    pub fn rto_for(interval_ns: u64) -> u64 {
        interval_ns
            .min(MAX_ACK_DELAY_NS)
            .saturating_mul(5)
            .max(30_000_000)
    }

    /// How often pending acks are flushed.
    pub fn ack_interval_ns(&self) -> u64 {
        self.default_interval_ns.clamp(1, MAX_ACK_DELAY_NS)
    }

    /// The shortest cadence: how often local consumption must be drained.
    pub fn tick_ns(&self) -> u64 {
        self.limiter_intervals_ns
            .iter()
            .copied()
            .chain([self.default_interval_ns])
            .min()
            .unwrap_or(self.default_interval_ns)
            .max(1_000_000)
    }
}

/// What the replication core asks its shell to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Send this sealed datagram.
    Send {
        /// Destination gossip address.
        to: SocketAddr,
        /// Sealed bytes.
        datagram: Vec<u8>,
    },
    /// Debit these peer consumptions on their owning shards.
    Debit(Vec<Entry>),
    /// Lower these buckets to at most these levels.
    LowerTo(Vec<Entry>),
    /// Every part of a state transfer from `from` arrived.
    TransferComplete {
        /// The peer that sent it.
        from: SocketAddr,
    },
}

/// Counters, all monotonic.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplicationStats {
    /// Batches sent for the first time (per peer).
    pub batches_sent: u64,
    /// Retransmissions.
    pub retransmits: u64,
    /// Batches given up after [`MAX_TRIES`] or dropped from a full backlog
    /// ([`MAX_BACKLOG_PER_PEER`]).
    pub gave_up: u64,
    /// Batches applied.
    pub batches_applied: u64,
    /// Duplicate (or replayed) batches ignored.
    pub duplicates: u64,
    /// Batches from an older boot of a peer, ignored.
    pub stale: u64,
    /// Entries not replicated: key longer than [`wire::MAX_KEY_LEN`] or unknown limiter.
    pub skipped_entries: u64,
}

struct Pending {
    datagram: Vec<u8>,
    sent_at: u64,
    tries: u8,
}

struct Outbound {
    /// The peer process's boot nonce.
    boot: u64,
    unacked: BTreeMap<u64, Pending>,
    /// Sealed batches waiting for room in the window: (seq, datagram).
    backlog: VecDeque<(u64, Vec<u8>)>,
    /// When membership declared it down (None = alive or suspect).
    down_since: Option<u64>,
}

/// Receiver-side duplicate detection for one peer.
struct Seen {
    boot: u64,
    /// Every seq <= floor was applied.
    floor: u64,
    above: BTreeSet<u64>,
}

enum Verdict {
    New,
    Duplicate,
    Stale,
}

impl Seen {
    fn check(&mut self, boot: u64, seq: u64) -> Verdict {
        if boot < self.boot {
            return Verdict::Stale;
        }
        if boot > self.boot {
            *self = Seen {
                boot,
                floor: 0,
                above: BTreeSet::new(),
            };
        }
        if seq <= self.floor || !self.above.insert(seq) {
            return Verdict::Duplicate;
        }
        self.advance_floor();
        while self.above.len() > MAX_SEEN_ABOVE_FLOOR {
            if let Some(first) = self.above.pop_first() {
                self.floor = first;
            }
            self.advance_floor();
        }
        Verdict::New
    }

    /// Moves the floor over every contiguous seq remembered above it. Checked: a peer holding
    /// the secret may send any seq, u64::MAX included.
    fn advance_floor(&mut self) {
        while let Some(next) = self.floor.checked_add(1) {
            if !self.above.remove(&next) {
                break;
            }
            self.floor = next;
        }
    }
}

/// The replication state machine of one node.
pub struct Replicator {
    config: ReplicationConfig,
    auth: Auth,
    boot: u64,
    next_seq: u64,
    next_transfer: u32,
    // Ordered maps throughout: iteration order decides the order of sends, and the
    // simulation must replay exactly from its seed. They also cannot be hash-flooded.
    /// Live peers and what they have not acknowledged.
    peers: BTreeMap<SocketAddr, Outbound>,
    /// Per sender: what was applied.
    seen: BTreeMap<SocketAddr, Seen>,
    /// Per sender: (its boot, seqs to acknowledge at the next tick).
    acks_due: BTreeMap<SocketAddr, (u64, Vec<u64>)>,
    /// Local consumption not yet sent, per limiter: key -> tokens.
    unsent: Vec<BTreeMap<String, f64>>,
    /// When each limiter's unsent consumption goes out next.
    next_flush: Vec<u64>,
    /// Open transfers: (sender, boot, id) -> (parts expected, parts received).
    transfers: VecDeque<((SocketAddr, u64, u32), u32, u32)>,
    next_ack_at: u64,
    /// Counters.
    pub stats: ReplicationStats,
}

impl Replicator {
    /// A replicator for a node whose process booted with nonce `boot`.
    pub fn new(config: ReplicationConfig, auth: Auth, boot: u64, now_ns: u64) -> Replicator {
        let n = config.limiter_intervals_ns.len();
        let next_flush = config
            .limiter_intervals_ns
            .iter()
            .map(|i| now_ns.saturating_add(*i))
            .collect();
        Replicator {
            next_ack_at: now_ns.saturating_add(config.ack_interval_ns()),
            config,
            auth,
            boot,
            next_seq: 1,
            next_transfer: 1,
            peers: BTreeMap::new(),
            seen: BTreeMap::new(),
            acks_due: BTreeMap::new(),
            unsent: (0..n).map(|_| BTreeMap::new()).collect(),
            next_flush,
            transfers: VecDeque::new(),
            stats: ReplicationStats::default(),
        }
    }

    /// This process's boot nonce.
    pub fn boot(&self) -> u64 {
        self.boot
    }

    /// The settings.
    pub fn config(&self) -> &ReplicationConfig {
        &self.config
    }

    /// A peer process (`boot`) is alive: deltas go to it from now on. Returns true when
    /// it is new to us — joined, or restarted with a new boot, whose old in-flight
    /// batches are dropped — and so needs a state transfer; false when it is the same
    /// process coming back within [`DOWN_GRACE_NS`] (nothing was missed).
    pub fn peer_up(&mut self, addr: SocketAddr, boot: u64) -> bool {
        if let Some(p) = self.peers.get_mut(&addr) {
            if p.boot == boot {
                p.down_since = None;
                return false;
            }
        }
        self.peers.insert(
            addr,
            Outbound {
                boot,
                unacked: BTreeMap::new(),
                backlog: VecDeque::new(),
                down_since: None,
            },
        );
        true
    }

    /// A peer was declared down: keep replicating to it for [`DOWN_GRACE_NS`].
    pub fn peer_down(&mut self, addr: SocketAddr, now_ns: u64) {
        if let Some(p) = self.peers.get_mut(&addr) {
            p.down_since.get_or_insert(now_ns);
        }
    }

    /// A peer left gracefully: stop at once.
    pub fn peer_left(&mut self, addr: SocketAddr) {
        self.peers.remove(&addr);
        self.acks_due.remove(&addr);
    }

    /// Whether `addr` is a current peer.
    pub fn is_peer(&self, addr: &SocketAddr) -> bool {
        self.peers.contains_key(addr)
    }

    /// Batches in flight or queued to `addr` (tests and stats).
    pub fn unacked(&self, addr: &SocketAddr) -> usize {
        self.peers
            .get(addr)
            .map_or(0, |p| p.unacked.len() + p.backlog.len())
    }

    /// Records consumption drained from the local shards.
    pub fn record_local(&mut self, limiter: u32, key: String, tokens: f64) {
        if key.len() > wire::MAX_KEY_LEN || !tokens.is_finite() {
            self.stats.skipped_entries += 1;
            return;
        }
        match self.unsent.get_mut(limiter as usize) {
            Some(map) => *map.entry(key).or_insert(0.0) += tokens,
            None => self.stats.skipped_entries += 1,
        }
    }

    /// The next time [`Replicator::tick`] has work. O(batches in flight).
    pub fn next_deadline(&self) -> u64 {
        let rto = self.config.rto_ns;
        let retransmit = self
            .peers
            .values()
            .flat_map(|p| p.unacked.values())
            .map(|p| p.sent_at.saturating_add(retry_gap(rto, p.tries)))
            .min()
            .unwrap_or(u64::MAX);
        let backlog = if self
            .peers
            .values()
            .any(|p| !p.backlog.is_empty() && p.unacked.len() < MAX_IN_FLIGHT_PER_PEER)
        {
            0
        } else {
            u64::MAX
        };
        let flush = self.next_flush.iter().copied().min().unwrap_or(u64::MAX);
        retransmit.min(flush).min(self.next_ack_at).min(backlog)
    }

    /// Sends what is due: consumption of limiters whose interval elapsed, acks, and
    /// retransmissions.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<Output>) {
        let expired: Vec<SocketAddr> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.down_since
                    .is_some_and(|t| now_ns.saturating_sub(t) >= DOWN_GRACE_NS)
            })
            .map(|(a, _)| *a)
            .collect();
        for addr in expired {
            self.peer_left(addr);
        }
        let mut entries = Vec::new();
        for (limiter, due) in self.next_flush.iter_mut().enumerate() {
            if *due > now_ns {
                continue;
            }
            let interval = self.config.limiter_intervals_ns[limiter].max(1);
            // Skip missed ticks instead of bursting to catch up.
            *due = (*due + interval).max(now_ns + 1);
            for (key, value) in std::mem::take(&mut self.unsent[limiter]) {
                if value != 0.0 {
                    entries.push(Entry {
                        limiter: limiter as u32,
                        key,
                        value,
                    });
                }
            }
        }
        if !entries.is_empty() && !self.peers.is_empty() {
            let peers: Vec<SocketAddr> = self.peers.keys().copied().collect();
            for batch in self.pack(op::DEBIT, 0, entries) {
                for to in &peers {
                    self.send_reliable(*to, &batch, now_ns, out);
                }
            }
        }
        if now_ns >= self.next_ack_at {
            self.next_ack_at = now_ns + self.config.ack_interval_ns();
            let due: Vec<SocketAddr> = self.acks_due.keys().copied().collect();
            for to in due {
                self.flush_acks(to, out);
            }
        }
        self.retransmit(now_ns, out);
    }

    /// Sends `levels` to a joining peer as one state transfer.
    pub fn send_transfer(
        &mut self,
        to: SocketAddr,
        levels: Vec<Entry>,
        now_ns: u64,
        out: &mut Vec<Output>,
    ) {
        let transfer = self.next_transfer;
        self.next_transfer = self.next_transfer.wrapping_add(1).max(1);
        let levels: Vec<Entry> = levels
            .into_iter()
            .filter(|e| {
                let ok = e.key.len() <= wire::MAX_KEY_LEN && e.value.is_finite();
                if !ok {
                    self.stats.skipped_entries += 1;
                }
                ok
            })
            .collect();
        let mut batches = self.pack(op::LOWER, transfer, levels);
        if batches.is_empty() {
            batches.push(self.new_batch(op::LOWER, transfer, Vec::new()));
        }
        let parts = batches.len() as u32;
        for mut batch in batches {
            batch.parts = parts;
            self.send_reliable(to, &batch, now_ns, out);
        }
    }

    /// Handles an authenticated BATCH from `from` (the caller checked it is a member).
    ///
    /// Only batches of the peer process membership currently knows at that address are
    /// applied: membership, not the nonce's size, says which boot is current, so a replay
    /// from a previous process (or a clock that went backwards across a restart) cannot
    /// confuse the duplicate filter.
    pub fn handle_batch(&mut self, from: SocketAddr, batch: Batch, out: &mut Vec<Output>) {
        if self.peers.get(&from).map(|p| p.boot) != Some(batch.boot) {
            self.stats.stale += 1;
            return;
        }
        if self.seen.get(&from).is_some_and(|s| s.boot != batch.boot) {
            self.seen.remove(&from);
        }
        let seen = self.seen.entry(from).or_insert(Seen {
            boot: batch.boot,
            floor: 0,
            above: BTreeSet::new(),
        });
        match seen.check(batch.boot, batch.seq) {
            Verdict::Stale => {
                self.stats.stale += 1;
                return;
            }
            Verdict::Duplicate => {
                self.stats.duplicates += 1;
                self.ack(from, batch.boot, batch.seq, out);
                return;
            }
            Verdict::New => {}
        }
        self.stats.batches_applied += 1;
        self.ack(from, batch.boot, batch.seq, out);
        if batch.transfer != 0 {
            self.count_transfer_part(from, &batch, out);
        }
        if batch.entries.is_empty() {
            return;
        }
        if batch.op == op::LOWER {
            out.push(Output::LowerTo(batch.entries));
        } else {
            out.push(Output::Debit(batch.entries));
        }
    }

    /// Handles authenticated ACKS from `from`; sends queued batches the freed window allows.
    pub fn handle_acks(
        &mut self,
        from: SocketAddr,
        acks: Acks,
        now_ns: u64,
        out: &mut Vec<Output>,
    ) {
        if acks.boot != self.boot {
            return;
        }
        if let Some(peer) = self.peers.get_mut(&from) {
            for seq in acks.seqs {
                peer.unacked.remove(&seq);
            }
            self.stats.batches_sent += fill_window(from, peer, now_ns, out);
        }
    }

    fn count_transfer_part(&mut self, from: SocketAddr, batch: &Batch, out: &mut Vec<Output>) {
        let id = (from, batch.boot, batch.transfer);
        let pos = match self.transfers.iter().position(|(k, _, _)| *k == id) {
            Some(pos) => pos,
            None => {
                if self.transfers.len() >= MAX_OPEN_TRANSFERS {
                    self.transfers.pop_front();
                }
                self.transfers.push_back((id, batch.parts, 0));
                self.transfers.len() - 1
            }
        };
        let done = match self.transfers.get_mut(pos) {
            Some(t) => {
                t.2 += 1;
                t.2 >= t.1
            }
            None => false,
        };
        if done {
            self.transfers.remove(pos);
            out.push(Output::TransferComplete { from });
        }
    }

    fn ack(&mut self, to: SocketAddr, boot: u64, seq: u64, out: &mut Vec<Output>) {
        let due = self.acks_due.entry(to).or_insert((boot, Vec::new()));
        if due.0 != boot {
            *due = (boot, Vec::new());
        }
        due.1.push(seq);
        if due.1.len() >= wire::MAX_ACKS_PER_DATAGRAM {
            self.flush_acks(to, out);
        }
    }

    fn flush_acks(&mut self, to: SocketAddr, out: &mut Vec<Output>) {
        let Some((boot, seqs)) = self.acks_due.remove(&to) else {
            return;
        };
        for chunk in seqs.chunks(wire::MAX_ACKS_PER_DATAGRAM) {
            let acks = Acks {
                boot,
                seqs: chunk.to_vec(),
            };
            if let Ok(payload) = wire::encode(&acks) {
                if let Ok(datagram) = self.auth.seal(Kind::Acks, &payload) {
                    out.push(Output::Send { to, datagram });
                }
            }
        }
    }

    fn new_batch(&mut self, op: u8, transfer: u32, entries: Vec<Entry>) -> Batch {
        let seq = self.next_seq;
        self.next_seq += 1;
        Batch {
            boot: self.boot,
            seq,
            op,
            transfer,
            parts: 0,
            entries,
        }
    }

    /// Splits entries into batches that each fit one datagram.
    fn pack(&mut self, op: u8, transfer: u32, entries: Vec<Entry>) -> Vec<Batch> {
        let mut batches = Vec::new();
        let mut current = Vec::new();
        let mut size = wire::BATCH_OVERHEAD;
        for e in entries {
            let cost = wire::entry_cost(&e.key);
            if size + cost > wire::MAX_PAYLOAD && !current.is_empty() {
                let full = std::mem::take(&mut current);
                batches.push(self.new_batch(op, transfer, full));
                size = wire::BATCH_OVERHEAD;
            }
            size += cost;
            current.push(e);
        }
        if !current.is_empty() {
            batches.push(self.new_batch(op, transfer, current));
        }
        batches
    }

    fn send_reliable(&mut self, to: SocketAddr, batch: &Batch, now_ns: u64, out: &mut Vec<Output>) {
        let datagram = match wire::encode(batch).and_then(|p| self.auth.seal(Kind::Batch, &p)) {
            Ok(d) => d,
            Err(e) => {
                // pack() keeps batches under the limit; this is a bug, not input.
                tracing::error!(error = %e, entries = batch.entries.len(), "batch does not fit a datagram");
                self.stats.gave_up += 1;
                return;
            }
        };
        let Some(peer) = self.peers.get_mut(&to) else {
            return;
        };
        if peer.backlog.len() >= MAX_BACKLOG_PER_PEER {
            peer.backlog.pop_front();
            self.stats.gave_up += 1;
        }
        peer.backlog.push_back((batch.seq, datagram));
        self.stats.batches_sent += fill_window(to, peer, now_ns, out);
    }

    fn retransmit(&mut self, now_ns: u64, out: &mut Vec<Output>) {
        let rto = self.config.rto_ns;
        for (to, peer) in self.peers.iter_mut() {
            self.stats.batches_sent += fill_window(*to, peer, now_ns, out);
            let mut expired = Vec::new();
            for (seq, p) in peer.unacked.iter_mut() {
                if p.sent_at.saturating_add(retry_gap(rto, p.tries)) > now_ns {
                    continue;
                }
                if p.tries >= MAX_TRIES {
                    expired.push(*seq);
                    continue;
                }
                p.tries += 1;
                p.sent_at = now_ns;
                self.stats.retransmits += 1;
                out.push(Output::Send {
                    to: *to,
                    datagram: p.datagram.clone(),
                });
            }
            for seq in expired {
                peer.unacked.remove(&seq);
                self.stats.gave_up += 1;
            }
        }
    }
}

/// Time from a batch's latest transmission to its next: RTO doubled per try so far,
/// at most [`MAX_RETRY_GAP_NS`] (or the RTO, if that is longer).
fn retry_gap(rto: u64, tries: u8) -> u64 {
    rto.saturating_mul(1 << u32::from(tries.saturating_sub(1)).min(10))
        .min(MAX_RETRY_GAP_NS.max(rto))
}

/// Moves queued batches into the window while it has room; returns how many were sent.
fn fill_window(to: SocketAddr, peer: &mut Outbound, now_ns: u64, out: &mut Vec<Output>) -> u64 {
    let mut sent = 0;
    while peer.unacked.len() < MAX_IN_FLIGHT_PER_PEER {
        let Some((seq, datagram)) = peer.backlog.pop_front() else {
            break;
        };
        out.push(Output::Send {
            to,
            datagram: datagram.clone(),
        });
        peer.unacked.insert(
            seq,
            Pending {
                datagram,
                sent_at: now_ns,
                tries: 1,
            },
        );
        sent += 1;
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn replicator(boot: u64) -> Replicator {
        Replicator::new(
            ReplicationConfig {
                limiter_intervals_ns: vec![10, 100],
                default_interval_ns: 10,
                rto_ns: 30,
            },
            Auth::new(b"s"),
            boot,
            0,
        )
    }

    fn batches(out: &[Output]) -> Vec<(SocketAddr, Batch)> {
        let auth = Auth::new(b"s");
        out.iter()
            .filter_map(|o| match o {
                Output::Send { to, datagram } => {
                    let (kind, payload) = auth.open(datagram).ok()?;
                    if kind != Kind::Batch {
                        return None;
                    }
                    Some((*to, wire::decode_batch(payload).ok()?))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn limiters_flush_on_their_own_interval() {
        let mut r = replicator(1);
        r.peer_up(addr(2), 2);
        r.record_local(0, "a".into(), 1.0);
        r.record_local(1, "b".into(), 2.0);
        r.record_local(0, "a".into(), 1.0);
        let mut out = Vec::new();
        r.tick(10, &mut out);
        let sent = batches(&out);
        assert_eq!(sent.len(), 1);
        assert_eq!(
            sent[0].1.entries,
            vec![Entry {
                limiter: 0,
                key: "a".into(),
                value: 2.0
            }]
        );
        out.clear();
        r.tick(100, &mut out);
        let sent = batches(&out);
        assert!(sent
            .iter()
            .any(|(_, b)| b.entries.iter().any(|e| e.key == "b")));
    }

    #[test]
    fn duplicates_are_applied_once_and_acked_every_time() {
        let mut a = replicator(1);
        let mut b = replicator(2);
        a.peer_up(addr(2), 2);
        b.peer_up(addr(1), 1);
        a.record_local(0, "k".into(), 3.0);
        let mut out = Vec::new();
        a.tick(10, &mut out);
        let (_, batch) = batches(&out).remove(0);
        let mut got = Vec::new();
        b.handle_batch(addr(1), batch.clone(), &mut got);
        b.handle_batch(addr(1), batch.clone(), &mut got);
        let debits: Vec<_> = got
            .iter()
            .filter(|o| matches!(o, Output::Debit(_)))
            .collect();
        assert_eq!(debits.len(), 1);
        assert_eq!(b.stats.duplicates, 1);
        // An older boot of the same address is stale.
        let mut old = batch;
        old.boot = 0;
        b.handle_batch(addr(1), old, &mut got);
        assert_eq!(b.stats.stale, 1);
    }

    #[test]
    fn unacked_batches_are_retransmitted_then_given_up() {
        let mut a = replicator(1);
        a.peer_up(addr(2), 2);
        a.record_local(0, "k".into(), 1.0);
        let mut out = Vec::new();
        a.tick(10, &mut out);
        let mut now = 10;
        for _ in 0..MAX_TRIES + 2 {
            now += MAX_RETRY_GAP_NS + 1;
            a.tick(now, &mut out);
        }
        assert_eq!(a.stats.retransmits, u64::from(MAX_TRIES - 1));
        assert_eq!(a.stats.gave_up, 1);
        assert_eq!(a.unacked(&addr(2)), 0);
    }

    #[test]
    fn acks_stop_retransmission() {
        let mut a = replicator(1);
        let mut b = replicator(2);
        a.peer_up(addr(2), 2);
        b.peer_up(addr(1), 1);
        a.record_local(0, "k".into(), 1.0);
        let mut out = Vec::new();
        a.tick(10, &mut out);
        let (_, batch) = batches(&out).remove(0);
        let mut back = Vec::new();
        b.handle_batch(addr(1), batch, &mut back);
        b.tick(20, &mut back);
        let auth = Auth::new(b"s");
        for o in back {
            if let Output::Send { datagram, .. } = o {
                let (kind, payload) = auth.open(&datagram).expect("authentic");
                if kind == Kind::Acks {
                    let mut more = Vec::new();
                    a.handle_acks(
                        addr(2),
                        wire::decode_acks(payload).expect("acks"),
                        30,
                        &mut more,
                    );
                }
            }
        }
        assert_eq!(a.unacked(&addr(2)), 0);
    }

    #[test]
    fn transfer_completes_when_all_parts_arrive_in_any_order() {
        let mut a = replicator(1);
        let mut b = replicator(2);
        a.peer_up(addr(2), 2);
        b.peer_up(addr(1), 1);
        let levels: Vec<Entry> = (0..200)
            .map(|i| Entry {
                limiter: 0,
                key: format!("user-{i:06}"),
                value: 1.0,
            })
            .collect();
        let mut out = Vec::new();
        a.send_transfer(addr(2), levels, 0, &mut out);
        let mut sent = batches(&out);
        assert!(sent.len() > 1);
        assert!(out.iter().all(|o| match o {
            Output::Send { datagram, .. } => datagram.len() <= wire::MAX_DATAGRAM,
            _ => true,
        }));
        sent.reverse();
        let mut got = Vec::new();
        let n = sent.len();
        for (i, (_, batch)) in sent.into_iter().enumerate() {
            b.handle_batch(addr(1), batch, &mut got);
            let complete = got
                .iter()
                .any(|o| matches!(o, Output::TransferComplete { .. }));
            assert_eq!(complete, i + 1 == n);
        }
        let lowered: usize = got
            .iter()
            .map(|o| match o {
                Output::LowerTo(e) => e.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(lowered, 200);
    }

    /// A transfer larger than the window is paced by acks and completes.
    #[test]
    fn large_transfer_is_paced_by_the_window() {
        let mut a = replicator(1);
        let mut b = replicator(2);
        a.peer_up(addr(2), 2);
        b.peer_up(addr(1), 1);
        let n = 60_000;
        let levels: Vec<Entry> = (0..n)
            .map(|i| Entry {
                limiter: 0,
                key: format!("user-{i:07}"),
                value: 0.0,
            })
            .collect();
        let mut to_b = Vec::new();
        a.send_transfer(addr(2), levels, 0, &mut to_b);
        assert_eq!(
            to_b.len(),
            MAX_IN_FLIGHT_PER_PEER,
            "only a window's worth goes out at once"
        );
        let auth = Auth::new(b"s");
        let (mut lowered, mut complete, mut now) = (0, false, 0);
        for _round in 0..200 {
            now += 5;
            let mut to_a = Vec::new();
            for o in std::mem::take(&mut to_b) {
                if let Output::Send { datagram, .. } = o {
                    let (_, payload) = auth.open(&datagram).expect("authentic");
                    let batch = wire::decode_batch(payload).expect("batch");
                    b.handle_batch(addr(1), batch, &mut to_a);
                }
            }
            b.tick(now, &mut to_a);
            for o in to_a {
                match o {
                    Output::LowerTo(e) => lowered += e.len(),
                    Output::TransferComplete { .. } => complete = true,
                    Output::Send { datagram, .. } => {
                        let (kind, payload) = auth.open(&datagram).expect("authentic");
                        assert_eq!(kind, Kind::Acks);
                        let acks = wire::decode_acks(payload).expect("acks");
                        a.handle_acks(addr(2), acks, now, &mut to_b);
                    }
                    Output::Debit(_) => unreachable!("no debits in a transfer"),
                }
            }
            if complete {
                break;
            }
        }
        assert!(complete, "transfer never completed");
        assert_eq!(lowered, n);
        assert_eq!(a.stats.gave_up, 0);
    }

    #[test]
    fn seen_window_is_bounded() {
        let mut s = Seen {
            boot: 1,
            floor: 0,
            above: BTreeSet::new(),
        };
        for seq in (2..MAX_SEEN_ABOVE_FLOOR as u64 + 10).step_by(1) {
            assert!(matches!(s.check(1, seq), Verdict::New));
        }
        assert!(s.above.len() <= MAX_SEEN_ABOVE_FLOOR);
        assert!(matches!(s.check(1, 3), Verdict::Duplicate));
    }

    #[test]
    fn seen_survives_the_largest_sequence_numbers() {
        let mut s = Seen {
            boot: 1,
            floor: u64::MAX - 2,
            above: BTreeSet::new(),
        };
        assert!(matches!(s.check(1, u64::MAX), Verdict::New));
        assert!(matches!(s.check(1, u64::MAX - 1), Verdict::New));
        assert_eq!(s.floor, u64::MAX);
        assert!(s.above.is_empty());
        assert!(matches!(s.check(1, u64::MAX), Verdict::Duplicate));
    }
}
