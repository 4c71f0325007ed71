//! Shard-delta replication, sans-IO: local consumption in, batches out; batches in, entries
//! to apply out. Time is a `now_ns` argument and the policies an `&Engine` argument;
//! nothing here touches a socket, a clock or a shard.
//!
//! # Naming limiters across nodes
//!
//! Consumption is recorded by [`LimiterId`] (this process's handle) and, when drained,
//! named by what the limiter means: its policy name and definition digest
//! ([`LimiterRef`]). Every batch carries those names. A receiver resolves each with its own
//! engine ([`Engine::resolve`]): entries of a limiter it has with the same definition are
//! applied to *its* id for that limiter, whatever the order of either node's `policies:`;
//! entries of a limiter it does not have, or has with another definition, are dropped and
//! counted ([`ReplicationStats::dropped_unknown_limiter`],
//! [`ReplicationStats::dropped_definition_differs`]) and logged once per peer and limiter.
//! The batch is still acknowledged: it was received, and sending it again would not help.
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
//! When a peer joins (or restarts), every node sends it its bucket levels as `Lower`
//! batches of one *transfer* (`transfer` id, `parts` count), and the receiver lowers each
//! bucket to the level (never raising it). The receiver reports [`Effect::Synced`] once it
//! has every part of its first transfer, which `serve` waits for before reporting ready.

use crate::dedup::{Seen, Verdict};
use crate::effect::{Effect, Replica};
use crate::mismatch::MismatchLog;
use crate::wire::{self, Acks, Auth, Batch, Entry, Kind, LimiterRef, Op};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use tollgate_policy::{Consumed, Digest, Engine, LimiterId, LimiterSpec, Resolution};

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
/// State transfers a receiver tracks at once (a few peers join at a time).
pub const MAX_OPEN_TRANSFERS: usize = 64;
/// How long a peer declared down is still sent deltas (and its batches accepted). A node
/// falsely declared down (a lossy minute, a long GC-like stall) rejoins under a new
/// identity but the same boot; if it does so within this grace it has missed nothing and
/// needs no state transfer. A node that really crashed comes back with a new boot, which
/// resets its state here regardless. 10 s covers several suspect/down cycles with the
/// default timings while bounding traffic to a dead node to 10 s of deltas.
pub const DOWN_GRACE_NS: u64 = 10_000_000_000;
/// Shortest drain cadence: shards are asked for their consumption at most every
/// millisecond, whatever `sync_interval` or `lazy_sync` say, so the gossip thread never
/// spins.
pub const MIN_DRAIN_INTERVAL_NS: u64 = 1_000_000;

/// Settings of the replication core. Per-limiter cadences come from the engine
/// ([`ReplicationConfig::interval_for`]), never from a list indexed by position.
#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    /// The cluster's `sync_interval` in nanoseconds: the cadence of limiters without
    /// `lazy_sync`, and what the ack cadence and the RTO derive from.
    pub sync_interval_ns: u64,
    /// Retransmission timeout: an unacknowledged batch is resent after this long.
    pub rto_ns: u64,
}

impl ReplicationConfig {
    /// Settings for a cluster `sync_interval` (at least 1 ns), with the RTO it implies.
    pub fn new(sync_interval_ns: u64) -> ReplicationConfig {
        let sync_interval_ns = sync_interval_ns.max(1);
        ReplicationConfig {
            sync_interval_ns,
            rto_ns: ReplicationConfig::rto_for(sync_interval_ns),
        }
    }

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
        self.sync_interval_ns.clamp(1, MAX_ACK_DELAY_NS)
    }

    /// One limiter's cadence: its policy's `lazy_sync` (interval / num_sync), else the
    /// cluster's `sync_interval`.
    pub fn interval_for(&self, spec: &LimiterSpec) -> u64 {
        spec.lazy_sync_interval_ns
            .unwrap_or(self.sync_interval_ns)
            .max(1)
    }

    /// How often local consumption must be drained from the shards: the shortest cadence
    /// of `engine`'s limiters (at least [`MIN_DRAIN_INTERVAL_NS`]).
    pub fn drain_interval_ns(&self, engine: &Engine) -> u64 {
        engine
            .limiters()
            .iter()
            .map(|l| self.interval_for(l))
            .chain([self.sync_interval_ns])
            .min()
            .unwrap_or(self.sync_interval_ns)
            .max(MIN_DRAIN_INTERVAL_NS)
    }
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
    /// Local entries not replicated: a key longer than [`wire::MAX_KEY_LEN`], a policy name
    /// longer than [`wire::MAX_POLICY_NAME_LEN`], or a limiter the engine no longer has.
    pub skipped_entries: u64,
    /// Received entries dropped: the peer names a policy this node does not have.
    pub dropped_unknown_limiter: u64,
    /// Received entries dropped: this node has the policy with another definition.
    pub dropped_definition_differs: u64,
}

/// A batch sent and not yet acknowledged.
struct Pending {
    datagram: Vec<u8>,
    sent_at: u64,
    tries: u8,
}

/// What one peer has not acknowledged yet.
struct Outbound {
    /// The peer process's boot nonce.
    boot: u64,
    unacked: BTreeMap<u64, Pending>,
    /// Sealed batches waiting for room in the window: (seq, datagram).
    backlog: VecDeque<(u64, Vec<u8>)>,
    /// When membership declared it down (None = alive or suspect).
    down_since: Option<u64>,
}

/// One limiter's local consumption not yet sent.
struct Unsent {
    /// How peers name the limiter: resolved through the engine when the consumption was
    /// drained.
    limiter: LimiterRef,
    /// The limiter's cadence ([`ReplicationConfig::interval_for`]).
    interval_ns: u64,
    /// When its consumption goes out next.
    due_at: u64,
    /// key -> tokens consumed since the last send.
    sums: BTreeMap<String, f64>,
}

/// Entries for one limiter, as packed into batches: (how peers name it, (key, value)s).
type Group = (LimiterRef, Vec<(String, f64)>);

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
    /// Local consumption not yet sent, per limiter (and definition: a reload that changes
    /// a limiter's definition keeps its id, and consumption under the old one is sent under
    /// the old name). At most one entry per limiter the engines have had.
    unsent: BTreeMap<(LimiterId, Digest), Unsent>,
    /// Open transfers: (sender, boot, id) -> (parts expected, parts received).
    transfers: VecDeque<((SocketAddr, u64, u32), u32, u32)>,
    /// Limiter mismatches already logged.
    mismatches: MismatchLog,
    /// Whether a state transfer from some peer completed.
    caught_up: bool,
    next_ack_at: u64,
    /// Counters.
    pub stats: ReplicationStats,
}

impl Replicator {
    /// A replicator for a node whose process booted with nonce `boot`.
    pub fn new(config: ReplicationConfig, auth: Auth, boot: u64, now_ns: u64) -> Replicator {
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
            unsent: BTreeMap::new(),
            transfers: VecDeque::new(),
            mismatches: MismatchLog::default(),
            caught_up: false,
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

    /// Whether a state transfer from some peer has completed.
    pub fn caught_up(&self) -> bool {
        self.caught_up
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
        self.mismatches.forget(addr);
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

    /// A peer left gracefully (or stayed down past [`DOWN_GRACE_NS`]): stop at once.
    /// Returns the boot of the peer process that was removed, if it was a peer.
    pub fn peer_left(&mut self, addr: SocketAddr) -> Option<u64> {
        self.acks_due.remove(&addr);
        self.mismatches.forget(addr);
        self.peers.remove(&addr).map(|p| p.boot)
    }

    /// The boot of the peer process replicating at `addr`, if any.
    pub fn peer_boot(&self, addr: &SocketAddr) -> Option<u64> {
        self.peers.get(addr).map(|p| p.boot)
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

    /// Records consumption drained from a local shard at `now_ns`. The limiter is named
    /// for peers now, through `engine`; a limiter seen for the first time (or again after
    /// an idle interval) goes out at the next tick, later consumption at its cadence.
    pub fn record_local(&mut self, engine: &Engine, consumed: Consumed, now_ns: u64) {
        let tokens = f64::from(consumed.tokens);
        let Some(spec) = engine.get_limiter(consumed.limiter) else {
            self.stats.skipped_entries += 1;
            return;
        };
        if consumed.key.len() > wire::MAX_KEY_LEN
            || spec.policy_name.len() > wire::MAX_POLICY_NAME_LEN
            || !tokens.is_finite()
        {
            self.stats.skipped_entries += 1;
            return;
        }
        let interval_ns = self.config.interval_for(spec);
        let unsent = self
            .unsent
            .entry((spec.id, spec.digest))
            .or_insert_with(|| Unsent {
                limiter: LimiterRef::of(spec),
                interval_ns,
                due_at: now_ns,
                sums: BTreeMap::new(),
            });
        *unsent.sums.entry(consumed.key).or_insert(0.0) += tokens;
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
        let flush = self
            .unsent
            .values()
            .map(|u| u.due_at)
            .min()
            .unwrap_or(u64::MAX);
        retransmit.min(flush).min(self.next_ack_at).min(backlog)
    }

    /// Sends what is due: consumption of limiters whose interval elapsed, acks, and
    /// retransmissions. Peers down longer than [`DOWN_GRACE_NS`] are dropped
    /// ([`Effect::PeerGone`]).
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<Effect>) {
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
            if let Some(boot) = self.peer_left(addr) {
                out.push(Effect::PeerGone { boot });
            }
        }
        let due = self.take_unsent(now_ns, false);
        self.send_deltas(due, now_ns, out);
        if now_ns >= self.next_ack_at {
            self.next_ack_at = now_ns + self.config.ack_interval_ns();
            self.flush_all_acks(out);
        }
        self.retransmit(now_ns, out);
    }

    /// Sends everything unsent now, whatever its cadence: every limiter's consumption and
    /// every pending ack (shutdown). Retransmissions keep their own schedule.
    pub fn flush(&mut self, now_ns: u64, out: &mut Vec<Effect>) {
        let all = self.take_unsent(now_ns, true);
        self.send_deltas(all, now_ns, out);
        self.flush_all_acks(out);
    }

    /// Sends `levels` (this node's buckets) to a joining peer as one state transfer.
    pub fn send_transfer(
        &mut self,
        to: SocketAddr,
        levels: Vec<Replica>,
        engine: &Engine,
        now_ns: u64,
        out: &mut Vec<Effect>,
    ) {
        if !self.is_peer(&to) {
            return;
        }
        let transfer = self.next_transfer;
        self.next_transfer = self.next_transfer.wrapping_add(1).max(1);
        let mut by_limiter: BTreeMap<LimiterId, Group> = BTreeMap::new();
        for level in levels {
            let spec = engine.get_limiter(level.limiter);
            let replicable = spec.is_some_and(|s| {
                s.policy_name.len() <= wire::MAX_POLICY_NAME_LEN
                    && level.key.len() <= wire::MAX_KEY_LEN
                    && level.value.is_finite()
            });
            let Some(spec) = spec.filter(|_| replicable) else {
                self.stats.skipped_entries += 1;
                continue;
            };
            by_limiter
                .entry(spec.id)
                .or_insert_with(|| (LimiterRef::of(spec), Vec::new()))
                .1
                .push((level.key, level.value));
        }
        let mut batches = self.pack(Op::Lower, transfer, by_limiter.into_values().collect());
        if batches.is_empty() {
            batches.push(self.new_batch(Op::Lower, transfer, Vec::new(), Vec::new()));
        }
        let parts = batches.len() as u32;
        for mut batch in batches {
            batch.parts = parts;
            self.send_reliable(to, &batch, now_ns, out);
        }
    }

    /// Handles an authenticated BATCH from `from` (the caller checked it is a member),
    /// resolving its limiters with `engine`.
    ///
    /// Only batches of the peer process membership currently knows at that address are
    /// applied: membership, not the nonce's size, says which boot is current, so a replay
    /// from a previous process (or a clock that went backwards across a restart) cannot
    /// confuse the duplicate filter.
    pub fn handle_batch(
        &mut self,
        from: SocketAddr,
        batch: Batch,
        engine: &Engine,
        out: &mut Vec<Effect>,
    ) {
        if self.peers.get(&from).map(|p| p.boot) != Some(batch.boot) {
            self.stats.stale += 1;
            return;
        }
        if self.seen.get(&from).is_some_and(|s| s.boot != batch.boot) {
            self.seen.remove(&from);
        }
        let seen = self
            .seen
            .entry(from)
            .or_insert_with(|| Seen::new(batch.boot));
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
        let (boot, transfer, parts, op) = (batch.boot, batch.transfer, batch.parts, batch.op);
        let entries = self.resolve(from, batch.limiters, batch.entries, engine);
        if !entries.is_empty() {
            out.push(Effect::Apply { op, entries, boot });
        }
        // After the entries: a completed transfer reports Synced only once its last
        // levels are on their way to the buckets.
        if transfer != 0 {
            self.count_transfer_part(from, (boot, transfer, parts), out);
        }
    }

    /// Handles authenticated ACKS from `from`; sends queued batches the freed window allows.
    pub fn handle_acks(
        &mut self,
        from: SocketAddr,
        acks: Acks,
        now_ns: u64,
        out: &mut Vec<Effect>,
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

    /// The entries of a batch from `from` that name limiters this node shares, on this
    /// node's ids; the others are counted (and logged once per peer and limiter).
    fn resolve(
        &mut self,
        from: SocketAddr,
        limiters: Vec<LimiterRef>,
        entries: Vec<Entry>,
        engine: &Engine,
    ) -> Vec<Replica> {
        let resolutions: Vec<Resolution> = limiters
            .iter()
            .map(|l| engine.resolve(&l.policy, l.digest()))
            .collect();
        for (limiter, resolution) in limiters.iter().zip(&resolutions) {
            if !matches!(resolution, Resolution::Local(_)) {
                self.mismatches.note(from, limiter, *resolution);
            }
        }
        let mut applied = Vec::with_capacity(entries.len());
        for e in entries {
            match resolutions.get(usize::from(e.limiter)) {
                Some(Resolution::Local(limiter)) => applied.push(Replica {
                    limiter: *limiter,
                    key: e.key,
                    value: e.value,
                }),
                Some(Resolution::DefinitionDiffers { .. }) => {
                    self.stats.dropped_definition_differs += 1
                }
                // An index outside the table never passes `decode_batch`.
                Some(Resolution::Unknown) | None => self.stats.dropped_unknown_limiter += 1,
            }
        }
        applied
    }

    /// Takes the consumption of every limiter that is due (or of all, when `all`). A
    /// limiter that is due with nothing to send forgets its cadence: its next consumption
    /// goes out at once, which is still at most once per interval.
    fn take_unsent(&mut self, now_ns: u64, all: bool) -> Vec<Group> {
        let mut groups = Vec::new();
        self.unsent.retain(|_, u| {
            if !all && u.due_at > now_ns {
                return true;
            }
            if u.sums.is_empty() {
                return false;
            }
            // Skip missed ticks instead of bursting to catch up.
            u.due_at = u.due_at.saturating_add(u.interval_ns).max(now_ns + 1);
            let values: Vec<(String, f64)> = std::mem::take(&mut u.sums)
                .into_iter()
                .filter(|(_, v)| *v != 0.0)
                .collect();
            if !values.is_empty() {
                groups.push((u.limiter.clone(), values));
            }
            true
        });
        groups
    }

    /// Sends local consumption to every peer (nowhere, when there is none).
    fn send_deltas(&mut self, groups: Vec<Group>, now_ns: u64, out: &mut Vec<Effect>) {
        if groups.is_empty() || self.peers.is_empty() {
            return;
        }
        let peers: Vec<SocketAddr> = self.peers.keys().copied().collect();
        for batch in self.pack(Op::Debit, 0, groups) {
            for to in &peers {
                self.send_reliable(*to, &batch, now_ns, out);
            }
        }
    }

    fn count_transfer_part(
        &mut self,
        from: SocketAddr,
        (boot, transfer, parts): (u64, u32, u32),
        out: &mut Vec<Effect>,
    ) {
        let id = (from, boot, transfer);
        let pos = match self.transfers.iter().position(|(k, _, _)| *k == id) {
            Some(pos) => pos,
            None => {
                if self.transfers.len() >= MAX_OPEN_TRANSFERS {
                    self.transfers.pop_front();
                }
                self.transfers.push_back((id, parts, 0));
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
            if !self.caught_up {
                self.caught_up = true;
                tracing::info!(%from, "caught up: bucket state received");
                out.push(Effect::Synced);
            }
        }
    }

    fn ack(&mut self, to: SocketAddr, boot: u64, seq: u64, out: &mut Vec<Effect>) {
        let due = self.acks_due.entry(to).or_insert((boot, Vec::new()));
        if due.0 != boot {
            *due = (boot, Vec::new());
        }
        due.1.push(seq);
        if due.1.len() >= wire::MAX_ACKS_PER_DATAGRAM {
            self.flush_acks(to, out);
        }
    }

    fn flush_all_acks(&mut self, out: &mut Vec<Effect>) {
        let due: Vec<SocketAddr> = self.acks_due.keys().copied().collect();
        for to in due {
            self.flush_acks(to, out);
        }
    }

    fn flush_acks(&mut self, to: SocketAddr, out: &mut Vec<Effect>) {
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
                    out.push(Effect::Send { to, datagram });
                }
            }
        }
    }

    fn new_batch(
        &mut self,
        op: Op,
        transfer: u32,
        limiters: Vec<LimiterRef>,
        entries: Vec<Entry>,
    ) -> Batch {
        let seq = self.next_seq;
        self.next_seq += 1;
        Batch {
            boot: self.boot,
            seq,
            op,
            transfer,
            parts: 0,
            limiters,
            entries,
        }
    }

    /// Splits groups of entries into batches that each fit one datagram, each batch
    /// naming the limiters of its entries (at most [`wire::MAX_LIMITERS_PER_BATCH`]).
    fn pack(&mut self, op: Op, transfer: u32, groups: Vec<Group>) -> Vec<Batch> {
        let mut batches = Vec::new();
        let mut limiters: Vec<LimiterRef> = Vec::new();
        let mut entries: Vec<Entry> = Vec::new();
        let mut size = wire::BATCH_OVERHEAD;
        for (limiter, values) in groups {
            // This limiter's index in the current batch's table, once added.
            let mut index: Option<u16> = None;
            for (key, value) in values {
                let entry = wire::entry_cost(&key);
                let named = wire::limiter_cost(&limiter.policy);
                let cost = entry + if index.is_none() { named } else { 0 };
                let table_full = index.is_none() && limiters.len() >= wire::MAX_LIMITERS_PER_BATCH;
                if !entries.is_empty() && (size + cost > wire::MAX_PAYLOAD || table_full) {
                    let batch = self.new_batch(
                        op,
                        transfer,
                        std::mem::take(&mut limiters),
                        std::mem::take(&mut entries),
                    );
                    batches.push(batch);
                    size = wire::BATCH_OVERHEAD;
                    index = None;
                }
                let i = match index {
                    Some(i) => i,
                    None => {
                        limiters.push(limiter.clone());
                        size += named;
                        // < MAX_LIMITERS_PER_BATCH (64): fits.
                        let i = (limiters.len() - 1) as u16;
                        index = Some(i);
                        i
                    }
                };
                size += entry;
                entries.push(Entry {
                    limiter: i,
                    key,
                    value,
                });
            }
        }
        if !entries.is_empty() {
            let batch = self.new_batch(op, transfer, limiters, entries);
            batches.push(batch);
        }
        batches
    }

    fn send_reliable(&mut self, to: SocketAddr, batch: &Batch, now_ns: u64, out: &mut Vec<Effect>) {
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

    fn retransmit(&mut self, now_ns: u64, out: &mut Vec<Effect>) {
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
                out.push(Effect::Send {
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
fn fill_window(to: SocketAddr, peer: &mut Outbound, now_ns: u64, out: &mut Vec<Effect>) -> u64 {
    let mut sent = 0;
    while peer.unacked.len() < MAX_IN_FLIGHT_PER_PEER {
        let Some((seq, datagram)) = peer.backlog.pop_front() else {
            break;
        };
        out.push(Effect::Send {
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
    use tollgate_policy::parse_policies;

    const MS: u64 = 1_000_000;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A policy named `name` with bucket capacity `capacity`, on its own control point;
    /// `num_sync` turns on lazy sync (1 s / num_sync).
    fn policy(name: &str, capacity: u32, num_sync: Option<u32>) -> String {
        let lazy = num_sync.map_or(String::new(), |n| {
            format!(", lazy_sync: {{ enabled: true, num_sync: {n} }}")
        });
        format!(
            "  - policy_name: {name}\n    rate_limiter:\n      bucket_capacity: {capacity}\n      fill_amount: 1\n      parameters: {{ interval: 1s, limit_by_label_key: user{lazy} }}\n      selectors: [{{ control_point: {name} }}]\n"
        )
    }

    fn engine(policies: &[String]) -> Engine {
        let yaml = format!("policies:\n{}", policies.concat());
        Engine::new(&parse_policies(&yaml, "test").expect("valid policies"))
    }

    /// `fast` syncs at the cluster's 10 ms, `slow` every 100 ms (lazy sync 1 s / 10).
    fn fast_and_slow() -> Engine {
        engine(&[policy("fast", 10, None), policy("slow", 10, Some(10))])
    }

    fn id(engine: &Engine, name: &str) -> LimiterId {
        engine
            .limiters()
            .iter()
            .find(|l| l.policy_name == name)
            .expect("policy")
            .id
    }

    fn consumed(engine: &Engine, name: &str, key: &str, tokens: f32) -> Consumed {
        Consumed {
            limiter: id(engine, name),
            key: key.into(),
            tokens,
        }
    }

    fn replicator(boot: u64) -> Replicator {
        Replicator::new(
            ReplicationConfig {
                sync_interval_ns: 10 * MS,
                rto_ns: 30 * MS,
            },
            Auth::new(b"s"),
            boot,
            0,
        )
    }

    fn batches(out: &[Effect]) -> Vec<(SocketAddr, Batch)> {
        let auth = Auth::new(b"s");
        out.iter()
            .filter_map(|o| match o {
                Effect::Send { to, datagram } => {
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

    /// Every (limiter name, key, value) a set of batches carries.
    fn named_entries(sent: &[(SocketAddr, Batch)]) -> Vec<(String, String, f64)> {
        sent.iter()
            .flat_map(|(_, b)| {
                b.entries.iter().map(|e| {
                    (
                        b.limiters[usize::from(e.limiter)].policy.clone(),
                        e.key.clone(),
                        e.value,
                    )
                })
            })
            .collect()
    }

    fn applied(out: &[Effect]) -> Vec<(Op, Replica)> {
        out.iter()
            .flat_map(|o| match o {
                Effect::Apply { op, entries, .. } => {
                    entries.iter().map(|e| (*op, e.clone())).collect()
                }
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn the_drain_interval_is_the_shortest_cadence() {
        let config = ReplicationConfig::new(20 * MS);
        let e = engine(&[policy("a", 1, Some(4)), policy("b", 1, None)]);
        assert_eq!(config.interval_for(e.limiter(id(&e, "a"))), 250 * MS);
        assert_eq!(config.interval_for(e.limiter(id(&e, "b"))), 20 * MS);
        assert_eq!(config.drain_interval_ns(&e), 20 * MS);
        let lazy = engine(&[policy("a", 1, Some(100))]);
        assert_eq!(config.drain_interval_ns(&lazy), 10 * MS);
        assert_eq!(config.rto_ns, 100 * MS);
    }

    #[test]
    fn limiters_flush_on_their_own_interval() {
        let e = fast_and_slow();
        let mut r = replicator(1);
        r.peer_up(addr(2), 2);
        // What went out for the first time at `now` (the peer never acks, so older
        // batches are retransmitted meanwhile).
        let mut last_seq = 0;
        let mut sent_at = |r: &mut Replicator, now: u64| {
            let mut out = Vec::new();
            r.tick(now, &mut out);
            let fresh: Vec<_> = batches(&out)
                .into_iter()
                .filter(|(_, b)| b.seq > last_seq)
                .collect();
            last_seq = fresh.iter().map(|(_, b)| b.seq).max().unwrap_or(last_seq);
            named_entries(&fresh)
        };
        // Both are new: they go out at once.
        r.record_local(&e, consumed(&e, "fast", "a", 1.0), 0);
        r.record_local(&e, consumed(&e, "slow", "b", 2.0), 0);
        assert_eq!(
            sent_at(&mut r, 0),
            vec![
                ("fast".into(), "a".into(), 1.0),
                ("slow".into(), "b".into(), 2.0)
            ]
        );
        // Then each at its cadence: fast every 10 ms, slow every 100 ms.
        r.record_local(&e, consumed(&e, "fast", "a", 1.0), 5 * MS);
        r.record_local(&e, consumed(&e, "slow", "b", 2.0), 5 * MS);
        r.record_local(&e, consumed(&e, "fast", "a", 1.0), 5 * MS);
        assert!(
            sent_at(&mut r, 5 * MS).is_empty(),
            "nothing is due before 10 ms"
        );
        assert_eq!(
            sent_at(&mut r, 10 * MS),
            vec![("fast".into(), "a".into(), 2.0)]
        );
        assert!(sent_at(&mut r, 50 * MS).is_empty(), "slow is due at 100 ms");
        assert_eq!(
            sent_at(&mut r, 100 * MS),
            vec![("slow".into(), "b".into(), 2.0)]
        );
    }

    #[test]
    fn flush_sends_everything_unsent_at_once() {
        let e = fast_and_slow();
        let mut a = replicator(1);
        a.peer_up(addr(2), 2);
        let mut out = Vec::new();
        a.record_local(&e, consumed(&e, "slow", "b", 1.0), 0);
        a.tick(0, &mut out);
        out.clear();
        a.record_local(&e, consumed(&e, "slow", "b", 3.0), 1);
        a.tick(2, &mut out);
        assert!(batches(&out).is_empty(), "slow is not due for 100 ms");
        a.flush(2, &mut out);
        assert_eq!(
            named_entries(&batches(&out)),
            vec![("slow".into(), "b".into(), 3.0)]
        );
    }

    #[test]
    fn entries_of_limiters_gone_from_the_engine_are_skipped() {
        let old = fast_and_slow();
        let new = old.successor(
            &parse_policies(&format!("policies:\n{}", policy("fast", 10, None)), "t")
                .expect("valid"),
        );
        let mut r = replicator(1);
        r.record_local(&new, consumed(&old, "slow", "k", 1.0), 0);
        assert_eq!(r.stats.skipped_entries, 1);
        r.record_local(
            &new,
            consumed(&old, "fast", &"k".repeat(wire::MAX_KEY_LEN + 1), 1.0),
            0,
        );
        assert_eq!(r.stats.skipped_entries, 2);
    }

    #[test]
    fn duplicates_are_applied_once_and_acked_every_time() {
        let e = fast_and_slow();
        let mut a = replicator(1);
        let mut b = replicator(2);
        a.peer_up(addr(2), 2);
        b.peer_up(addr(1), 1);
        a.record_local(&e, consumed(&e, "fast", "k", 3.0), 0);
        let mut out = Vec::new();
        a.tick(0, &mut out);
        let (_, batch) = batches(&out).remove(0);
        let mut got = Vec::new();
        b.handle_batch(addr(1), batch.clone(), &e, &mut got);
        b.handle_batch(addr(1), batch.clone(), &e, &mut got);
        assert_eq!(applied(&got).len(), 1);
        assert_eq!(b.stats.duplicates, 1);
        // An older boot of the same address is stale.
        let mut old = batch;
        old.boot = 0;
        b.handle_batch(addr(1), old, &e, &mut got);
        assert_eq!(b.stats.stale, 1);
        out.clear();
        b.flush(0, &mut out);
        let auth = Auth::new(b"s");
        let acked: Vec<u64> = out
            .iter()
            .filter_map(|o| match o {
                Effect::Send { datagram, .. } => auth.open(datagram).ok(),
                _ => None,
            })
            .filter(|(kind, _)| *kind == Kind::Acks)
            .flat_map(|(_, p)| wire::decode_acks(p).expect("acks").seqs)
            .collect();
        assert_eq!(
            acked,
            vec![1, 1],
            "acked twice: the batch and its duplicate"
        );
    }

    /// Nodes with the same policies in another order apply each entry to their own id for
    /// the same policy.
    #[test]
    fn the_same_policies_in_another_order_resolve_by_name() {
        let ours = engine(&[
            policy("x", 10, None),
            policy("y", 20, None),
            policy("z", 30, None),
        ]);
        let theirs = engine(&[
            policy("z", 30, None),
            policy("x", 10, None),
            policy("y", 20, None),
        ]);
        let mut a = replicator(1);
        let mut b = replicator(2);
        a.peer_up(addr(2), 2);
        b.peer_up(addr(1), 1);
        for name in ["x", "y", "z"] {
            a.record_local(&ours, consumed(&ours, name, name, 1.0), 0);
        }
        let mut out = Vec::new();
        a.tick(0, &mut out);
        let mut got = Vec::new();
        for (_, batch) in batches(&out) {
            b.handle_batch(addr(1), batch, &theirs, &mut got);
        }
        let mut got: Vec<(String, String)> = applied(&got)
            .into_iter()
            .map(|(op, r)| {
                assert_eq!(op, Op::Debit);
                (theirs.limiter(r.limiter).policy_name.clone(), r.key)
            })
            .collect();
        got.sort();
        let expected: Vec<(String, String)> = ["x", "y", "z"]
            .iter()
            .map(|n| (n.to_string(), n.to_string()))
            .collect();
        assert_eq!(
            got, expected,
            "each entry lands on the policy of the same name"
        );
        assert_eq!(
            b.stats.dropped_unknown_limiter + b.stats.dropped_definition_differs,
            0
        );
    }

    /// A peer with one policy changed and one extra: the shared one applies, the others are
    /// dropped and counted, and the batch is still acknowledged.
    #[test]
    fn entries_of_limiters_not_shared_are_dropped_and_counted() {
        let ours = engine(&[
            policy("shared", 10, None),
            policy("changed", 10, None),
            policy("extra", 5, None),
        ]);
        let theirs = engine(&[policy("changed", 99, None), policy("shared", 10, None)]);
        let mut a = replicator(1);
        let mut b = replicator(2);
        a.peer_up(addr(2), 2);
        b.peer_up(addr(1), 1);
        for (name, key) in [
            ("shared", "k1"),
            ("changed", "k1"),
            ("changed", "k2"),
            ("extra", "k1"),
        ] {
            a.record_local(&ours, consumed(&ours, name, key, 1.0), 0);
        }
        let mut out = Vec::new();
        a.tick(0, &mut out);
        let sent = batches(&out);
        assert_eq!(sent.len(), 1);
        let mut got = Vec::new();
        b.handle_batch(addr(1), sent[0].1.clone(), &theirs, &mut got);
        let applied = applied(&got);
        assert_eq!(applied.len(), 1);
        assert_eq!(applied[0].1.limiter, id(&theirs, "shared"));
        assert_eq!(applied[0].1.key, "k1");
        assert_eq!(b.stats.dropped_definition_differs, 2);
        assert_eq!(b.stats.dropped_unknown_limiter, 1);
        assert_eq!(b.stats.batches_applied, 1);
        assert_eq!(b.mismatches.len(), 2, "one per peer and limiter");
        // The same again (a later batch): counted again, logged no more.
        let mut again = sent[0].1.clone();
        again.seq += 1;
        b.handle_batch(addr(1), again, &theirs, &mut got);
        assert_eq!(b.stats.dropped_definition_differs, 4);
        assert_eq!(b.mismatches.len(), 2);
    }

    /// More limiters than one table holds: several batches, each within the limits.
    #[test]
    fn many_limiters_are_packed_into_several_batches() {
        let n = wire::MAX_LIMITERS_PER_BATCH + 10;
        let policies: Vec<String> = (0..n)
            .map(|i| policy(&format!("p{i:03}"), 10, None))
            .collect();
        let e = engine(&policies);
        let mut a = replicator(1);
        a.peer_up(addr(2), 2);
        for l in e.limiters() {
            a.record_local(
                &e,
                Consumed {
                    limiter: l.id,
                    key: "k".into(),
                    tokens: 1.0,
                },
                0,
            );
        }
        let mut out = Vec::new();
        a.tick(0, &mut out);
        let sent = batches(&out);
        assert!(sent.len() >= 2);
        assert!(sent
            .iter()
            .all(|(_, b)| b.limiters.len() <= wire::MAX_LIMITERS_PER_BATCH));
        assert_eq!(named_entries(&sent).len(), n);
    }

    #[test]
    fn unacked_batches_are_retransmitted_then_given_up() {
        let e = fast_and_slow();
        let mut a = replicator(1);
        a.peer_up(addr(2), 2);
        a.record_local(&e, consumed(&e, "fast", "k", 1.0), 0);
        let mut out = Vec::new();
        a.tick(0, &mut out);
        let mut now = 0;
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
        let e = fast_and_slow();
        let mut a = replicator(1);
        let mut b = replicator(2);
        a.peer_up(addr(2), 2);
        b.peer_up(addr(1), 1);
        a.record_local(&e, consumed(&e, "fast", "k", 1.0), 0);
        let mut out = Vec::new();
        a.tick(0, &mut out);
        let (_, batch) = batches(&out).remove(0);
        let mut back = Vec::new();
        b.handle_batch(addr(1), batch, &e, &mut back);
        b.tick(20 * MS, &mut back);
        let auth = Auth::new(b"s");
        for o in back {
            if let Effect::Send { datagram, .. } = o {
                let (kind, payload) = auth.open(&datagram).expect("authentic");
                if kind == Kind::Acks {
                    let mut more = Vec::new();
                    a.handle_acks(
                        addr(2),
                        wire::decode_acks(payload).expect("acks"),
                        30 * MS,
                        &mut more,
                    );
                }
            }
        }
        assert_eq!(a.unacked(&addr(2)), 0);
    }

    fn levels(e: &Engine, n: usize, key_len: usize) -> Vec<Replica> {
        let limiter = id(e, "fast");
        (0..n)
            .map(|i| Replica {
                limiter,
                key: format!("user-{i:0>key_len$}"),
                value: 1.0,
            })
            .collect()
    }

    #[test]
    fn transfer_completes_when_all_parts_arrive_in_any_order() {
        let e = fast_and_slow();
        let mut a = replicator(1);
        let mut b = replicator(2);
        a.peer_up(addr(2), 2);
        b.peer_up(addr(1), 1);
        let mut out = Vec::new();
        a.send_transfer(addr(2), levels(&e, 200, 6), &e, 0, &mut out);
        let mut sent = batches(&out);
        assert!(sent.len() > 1);
        assert!(out.iter().all(|o| match o {
            Effect::Send { datagram, .. } => datagram.len() <= wire::MAX_DATAGRAM,
            _ => true,
        }));
        sent.reverse();
        let mut got = Vec::new();
        let n = sent.len();
        for (i, (_, batch)) in sent.into_iter().enumerate() {
            b.handle_batch(addr(1), batch, &e, &mut got);
            let complete = got.iter().any(|o| matches!(o, Effect::Synced));
            assert_eq!(complete, i + 1 == n);
        }
        assert_eq!(
            got.last(),
            Some(&Effect::Synced),
            "Synced follows the last levels"
        );
        let lowered = applied(&got);
        assert_eq!(lowered.len(), 200);
        assert!(lowered.iter().all(|(op, _)| *op == Op::Lower));
        assert!(b.caught_up());
    }

    /// A transfer larger than the window is paced by acks and completes.
    #[test]
    fn large_transfer_is_paced_by_the_window() {
        let e = fast_and_slow();
        let mut a = replicator(1);
        let mut b = replicator(2);
        a.peer_up(addr(2), 2);
        b.peer_up(addr(1), 1);
        let n = 60_000;
        let mut to_b = Vec::new();
        a.send_transfer(addr(2), levels(&e, n, 7), &e, 0, &mut to_b);
        assert_eq!(
            to_b.len(),
            MAX_IN_FLIGHT_PER_PEER,
            "only a window's worth goes out at once"
        );
        let auth = Auth::new(b"s");
        let (mut lowered, mut complete, mut now) = (0, false, 0);
        for _round in 0..200 {
            now += 5 * MS;
            let mut to_a = Vec::new();
            for o in std::mem::take(&mut to_b) {
                if let Effect::Send { datagram, .. } = o {
                    let (_, payload) = auth.open(&datagram).expect("authentic");
                    let batch = wire::decode_batch(payload).expect("batch");
                    b.handle_batch(addr(1), batch, &e, &mut to_a);
                }
            }
            b.tick(now, &mut to_a);
            for o in to_a {
                match o {
                    Effect::Apply { op, entries, .. } => {
                        assert_eq!(op, Op::Lower, "no debits in a transfer");
                        lowered += entries.len();
                    }
                    Effect::Synced => complete = true,
                    Effect::Send { datagram, .. } => {
                        let (kind, payload) = auth.open(&datagram).expect("authentic");
                        assert_eq!(kind, Kind::Acks);
                        let acks = wire::decode_acks(payload).expect("acks");
                        a.handle_acks(addr(2), acks, now, &mut to_b);
                    }
                    Effect::SnapshotFor(_) => unreachable!("replication asks for no snapshot"),
                    Effect::PeerGone { .. } => unreachable!("no peer leaves in this test"),
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
}
