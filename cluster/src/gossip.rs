//! One node's whole gossip logic, sans-IO: datagram in + `now` -> effects out.
//!
//! [`Gossip`] joins three parts: the envelope ([`crate::wire::Auth`]) that every datagram
//! passes first, SWIM membership ([`crate::membership`]) and delta replication
//! ([`crate::replication`]). Membership decides who the replication peers are: a member
//! that comes up (or restarts under a new instance) becomes a peer and is sent a state
//! transfer; a member declared down stops being one. Replication datagrams from an address
//! that is not a live member are dropped (and counted), so a stranger that knows the secret
//! still has to join first.
//!
//! Everything it asks of its shell is an [`Effect`]; the policies it names limiters with are
//! an `&Engine` argument of the calls that need them.
//!
//! Each node also announces the digest of its policy set (POLICIES datagrams: when it
//! changes, to a peer that comes up, and every [`POLICY_DIGEST_REFRESH`] to heal a lost
//! one), so [`Gossip::members`] shows which members run other policies. The IO shell (the server's gossip
//! thread) and the simulation (`sim.rs`, tests only) drive the same code.

use crate::effect::{Effect, Replica};
use crate::membership::{Membership, Recorder, Timings};
use crate::node_id::NodeId;
use crate::replication::{ReplicationConfig, ReplicationStats, Replicator};
use crate::wire::{self, Auth, Kind, Leave, Policies, WireError};
use foca::{OwnedNotification, State};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tollgate_policy::{Consumed, Digest, Engine};

/// While a node knows no live member, it announces itself to its seeds this often.
pub const JOIN_RETRY: Duration = Duration::from_millis(500);
/// Once joined, seeds are re-announced this often (heals a partition where both sides
/// forgot each other, and finds new pods behind a headless Service).
pub const SEED_REANNOUNCE: Duration = Duration::from_secs(15);
/// Every live peer is re-sent our policy digest this often. Why this value: an announcement
/// lost on the network is repaired within 2 s, for one datagram of 60 bytes per peer every
/// 2 s (a probe period's order of traffic).
pub const POLICY_DIGEST_REFRESH: Duration = Duration::from_secs(2);

/// Settings of one node's gossip.
#[derive(Clone, Debug)]
pub struct GossipConfig {
    /// Our identity (address, boot instance, name).
    pub identity: NodeId,
    /// Failure-detection timings.
    pub timings: Timings,
    /// Replication cadence and retransmission timeout.
    pub replication: ReplicationConfig,
    /// Seed for foca's randomness.
    pub rng_seed: u64,
    /// The digest of our policy set at start ([`Engine::digest`]); a reload changes it
    /// through [`Gossip::set_policy_digest`].
    pub policy_digest: Digest,
}

/// Monotonic counters (the `cluster stats` log line and tests read them).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GossipStats {
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Bytes sent (UDP payload).
    pub bytes_out: u64,
    /// Datagrams received.
    pub datagrams_in: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Dropped: failed authentication.
    pub auth_failed: u64,
    /// Dropped: authentic but malformed.
    pub invalid: u64,
    /// Dropped: replication datagram from an address that is not a live member.
    pub not_member: u64,
    /// foca refused a membership message (malformed, from a down member, ...).
    pub membership_rejected: u64,
    /// Replication counters.
    pub replication: ReplicationStats,
}

/// A member as this node sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberInfo {
    /// Its configured node id.
    pub node_id: String,
    /// Its gossip address.
    pub address: SocketAddr,
    /// Its state.
    pub state: MemberState,
    /// When we last received an authentic datagram from it (ns on our clock).
    pub last_contact_ns: Option<u64>,
    /// The digest of its policy set, as it last announced it (ours for this node); None
    /// until its current process has announced one.
    pub policy_digest: Option<Digest>,
}

/// A member's state, as `tollgate members` prints it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed probes; not yet declared down.
    Suspect,
    /// Declared down by failure detection.
    Down,
    /// Left gracefully.
    Left,
}

/// The sans-IO gossip node.
pub struct Gossip {
    membership: Membership,
    replication: Replicator,
    auth: Auth,
    /// Last authentic datagram per address.
    last_contact: HashMap<SocketAddr, u64>,
    /// Addresses whose current instance said LEAVE (boot nonce).
    left: HashMap<SocketAddr, u64>,
    /// Counters.
    stats: GossipStats,
    /// Our policy set's digest, and the number of its announcement (bumped on a change).
    policy_digest: Digest,
    policy_seq: u64,
    /// When every live peer is next re-sent our digest.
    next_digest_refresh: u64,
    /// The last announcement heard per member address (at most one entry per member:
    /// only announcements of a known member's current boot are kept).
    peer_digests: HashMap<SocketAddr, Policies>,
}

impl Gossip {
    /// A node that knows nobody yet; `secret` keys the HMAC.
    pub fn new(config: GossipConfig, secret: &[u8], now_ns: u64) -> Gossip {
        let auth = Auth::new(secret);
        let boot = config.identity.instance;
        Gossip {
            membership: Membership::new(config.identity, config.timings, config.rng_seed),
            replication: Replicator::new(config.replication, auth.clone(), boot, now_ns),
            auth,
            last_contact: HashMap::new(),
            left: HashMap::new(),
            stats: GossipStats::default(),
            policy_digest: config.policy_digest,
            policy_seq: 1,
            next_digest_refresh: now_ns,
            peer_digests: HashMap::new(),
        }
    }

    /// Our policy set's digest, as announced to peers.
    pub fn policy_digest(&self) -> Digest {
        self.policy_digest
    }

    /// Our policy set is now `digest` (the shell calls this with its engine's digest; a
    /// reload changes it): a new digest is announced to every live peer at once.
    pub fn set_policy_digest(&mut self, digest: Digest, now_ns: u64, out: &mut Vec<Effect>) {
        if digest == self.policy_digest {
            return;
        }
        self.policy_digest = digest;
        self.policy_seq += 1;
        let start = out.len();
        self.announce_policies(now_ns, out);
        self.count_sent(&out[start..]);
    }

    /// Our current identity.
    pub fn identity(&self) -> &NodeId {
        self.membership.foca.identity()
    }

    /// Whether a state transfer from some peer has completed.
    pub fn synced(&self) -> bool {
        self.replication.caught_up()
    }

    /// Live peers (alive or suspect).
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.membership.active_peers().map(|id| id.addr).collect()
    }

    /// Whether BATCH and ACKS datagrams from `addr` are accepted: it came up as a member
    /// and has not left (nor stayed down past the replication grace).
    pub fn is_replication_peer(&self, addr: &SocketAddr) -> bool {
        self.replication.is_peer(addr)
    }

    /// How often the shell must drain local consumption ([`Gossip::record_local`]): the
    /// shortest cadence of `engine`'s limiters.
    pub fn drain_interval_ns(&self, engine: &Engine) -> u64 {
        self.replication.config().drain_interval_ns(engine)
    }

    /// Announces us to every seed that is not us and not already a live member.
    pub fn join(&mut self, seeds: &[SocketAddr], now_ns: u64, out: &mut Vec<Effect>) {
        let start = out.len();
        let me = self.identity().addr;
        let known = self.peers();
        for &seed in seeds {
            if seed == me || known.contains(&seed) {
                continue;
            }
            let mut calls = Recorder::default();
            if self
                .membership
                .foca
                .announce(NodeId::seed(seed), &mut calls)
                .is_err()
            {
                self.stats.membership_rejected += 1;
            }
            self.apply_membership(calls, now_ns, out);
        }
        self.count_sent(&out[start..]);
    }

    /// Handles one datagram received from `from`; replicated entries are resolved against
    /// `engine` (entries of limiters it does not share are dropped and counted).
    pub fn handle_datagram(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        now_ns: u64,
        engine: &Engine,
        out: &mut Vec<Effect>,
    ) {
        let start = out.len();
        self.receive(from, datagram, now_ns, engine, out);
        self.count_sent(&out[start..]);
    }

    /// Fires due timers, sends due deltas, acks and retransmissions.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<Effect>) {
        let start = out.len();
        while let Some(timer) = self.membership.pop_due(now_ns) {
            let mut calls = Recorder::default();
            if self
                .membership
                .foca
                .handle_timer(timer, &mut calls)
                .is_err()
            {
                self.stats.membership_rejected += 1;
            }
            self.apply_membership(calls, now_ns, out);
        }
        self.replication.tick(now_ns, out);
        if now_ns >= self.next_digest_refresh {
            self.announce_policies(now_ns, out);
        }
        self.count_sent(&out[start..]);
    }

    /// Sends everything unsent now, whatever its cadence: local consumption and pending
    /// acks (before leaving). Timers are not fired.
    pub fn flush(&mut self, now_ns: u64, out: &mut Vec<Effect>) {
        let start = out.len();
        self.replication.flush(now_ns, out);
        self.count_sent(&out[start..]);
    }

    /// The next time [`Gossip::tick`] has work.
    pub fn next_deadline(&self) -> u64 {
        self.membership
            .next_deadline()
            .min(self.replication.next_deadline())
            .min(self.next_digest_refresh)
    }

    /// Consumption drained from a local shard at `now_ns`; `engine` names its limiter for
    /// peers.
    pub fn record_local(&mut self, engine: &Engine, consumed: Consumed, now_ns: u64) {
        self.replication.record_local(engine, consumed, now_ns);
    }

    /// Sends our bucket levels to `to` (answer to [`Effect::SnapshotFor`]); `engine` names
    /// their limiters for the peer.
    pub fn send_transfer(
        &mut self,
        to: SocketAddr,
        levels: Vec<Replica>,
        engine: &Engine,
        now_ns: u64,
        out: &mut Vec<Effect>,
    ) {
        let start = out.len();
        self.replication
            .send_transfer(to, levels, engine, now_ns, out);
        self.count_sent(&out[start..]);
    }

    /// Leaves gracefully: tells every live member (LEAVE, then foca's own leave).
    pub fn leave(&mut self, now_ns: u64, out: &mut Vec<Effect>) {
        let start = out.len();
        let leave = Leave {
            boot: self.identity().instance,
        };
        if let Ok(payload) = wire::encode(&leave) {
            if let Ok(datagram) = self.auth.seal(Kind::Leave, &payload) {
                for to in self.peers() {
                    out.push(Effect::Send {
                        to,
                        datagram: datagram.clone(),
                    });
                }
            }
        }
        let mut calls = Recorder::default();
        if self.membership.foca.leave_cluster(&mut calls).is_err() {
            self.stats.membership_rejected += 1;
        }
        self.apply_membership(calls, now_ns, out);
        self.count_sent(&out[start..]);
    }

    /// Every member known, this node first.
    pub fn members(&self) -> Vec<MemberInfo> {
        let me = self.identity();
        let mut list = vec![MemberInfo {
            node_id: me.name.clone(),
            address: me.addr,
            state: MemberState::Alive,
            last_contact_ns: None,
            policy_digest: Some(self.policy_digest),
        }];
        let mut others: Vec<MemberInfo> = self
            .membership
            .all()
            .filter(|(id, _)| id.addr != me.addr)
            .map(|(id, state)| MemberInfo {
                node_id: id.name.clone(),
                address: id.addr,
                state: match state {
                    State::Alive => MemberState::Alive,
                    State::Suspect => MemberState::Suspect,
                    State::Down if self.left.get(&id.addr) == Some(&id.instance) => {
                        MemberState::Left
                    }
                    State::Down => MemberState::Down,
                },
                last_contact_ns: self.last_contact.get(&id.addr).copied(),
                policy_digest: self
                    .peer_digests
                    .get(&id.addr)
                    .filter(|p| p.boot == id.boot)
                    .map(|p| Digest(p.digest)),
            })
            .collect();
        others.sort_by(|a, b| a.node_id.cmp(&b.node_id).then(a.address.cmp(&b.address)));
        list.extend(others);
        list
    }

    /// Counters, with the replication core's folded in.
    pub fn stats(&self) -> GossipStats {
        GossipStats {
            replication: self.replication.stats.clone(),
            ..self.stats.clone()
        }
    }

    fn receive(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        now_ns: u64,
        engine: &Engine,
        out: &mut Vec<Effect>,
    ) {
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += datagram.len() as u64;
        let (kind, payload) = match self.auth.open(datagram) {
            Ok(opened) => opened,
            Err(e) => {
                self.count_dropped(e);
                return;
            }
        };
        self.last_contact.insert(from, now_ns);
        match kind {
            Kind::Membership => {
                let mut calls = Recorder::default();
                if self
                    .membership
                    .foca
                    .handle_data(payload, &mut calls)
                    .is_err()
                {
                    self.stats.membership_rejected += 1;
                }
                self.apply_membership(calls, now_ns, out);
            }
            Kind::Batch | Kind::Acks if !self.replication.is_peer(&from) => {
                self.stats.not_member += 1;
            }
            Kind::Batch => match wire::decode_batch(payload) {
                Ok(batch) => self.replication.handle_batch(from, batch, engine, out),
                Err(e) => self.count_dropped(e),
            },
            Kind::Acks => match wire::decode_acks(payload) {
                Ok(acks) => self.replication.handle_acks(from, acks, now_ns, out),
                Err(e) => self.count_dropped(e),
            },
            Kind::Leave => match wire::decode_leave(payload) {
                Ok(Leave { boot }) => {
                    let current = self
                        .membership
                        .all()
                        .find(|(id, _)| id.addr == from)
                        .map(|(id, _)| id.instance);
                    if current == Some(boot) {
                        self.left.insert(from, boot);
                        self.peer_left(from, out);
                    }
                }
                Err(e) => self.count_dropped(e),
            },
            Kind::Policies if !self.membership.all().any(|(id, _)| id.addr == from) => {
                self.stats.not_member += 1;
            }
            Kind::Policies => match wire::decode_policies(payload) {
                Ok(policies) => self.heard_policies(from, policies),
                Err(e) => self.count_dropped(e),
            },
        }
    }

    /// A member's announcement: kept if it comes from a known member's current process and
    /// is newer than the one we hold. From another process at that address (an old boot,
    /// or one we have not heard of yet): counted `not_member`, nothing kept.
    fn heard_policies(&mut self, from: SocketAddr, policies: Policies) {
        let current_boot = self
            .membership
            .all()
            .find(|(id, _)| id.addr == from)
            .map(|(id, _)| id.boot);
        if current_boot != Some(policies.boot) {
            self.stats.not_member += 1;
            return;
        }
        let newer = self
            .peer_digests
            .get(&from)
            .is_none_or(|held| held.boot != policies.boot || held.seq < policies.seq);
        if newer {
            self.peer_digests.insert(from, policies);
        }
    }

    /// Sends our digest to every live peer and schedules the next refresh.
    fn announce_policies(&mut self, now_ns: u64, out: &mut Vec<Effect>) {
        self.next_digest_refresh = now_ns.saturating_add(POLICY_DIGEST_REFRESH.as_nanos() as u64);
        // Forget announcements of addresses the membership no longer lists (pods gone).
        let membership = &self.membership;
        self.peer_digests
            .retain(|addr, _| membership.all().any(|(id, _)| id.addr == *addr));
        for to in self.peers() {
            self.announce_policies_to(to, out);
        }
    }

    /// Sends our digest to one peer.
    fn announce_policies_to(&mut self, to: SocketAddr, out: &mut Vec<Effect>) {
        let announcement = Policies {
            boot: self.identity().boot,
            seq: self.policy_seq,
            digest: self.policy_digest.0,
        };
        match wire::encode(&announcement).and_then(|p| self.auth.seal(Kind::Policies, &p)) {
            Ok(datagram) => out.push(Effect::Send { to, datagram }),
            Err(_) => self.stats.invalid += 1,
        }
    }

    fn count_dropped(&mut self, e: WireError) {
        match e {
            WireError::Auth(_) => self.stats.auth_failed += 1,
            WireError::Invalid(_) | WireError::TooLarge => self.stats.invalid += 1,
        }
    }

    /// Counts the datagrams among freshly produced effects: every public entry point
    /// calls it once on what it appended, so each send is counted exactly once.
    fn count_sent(&mut self, fresh: &[Effect]) {
        for effect in fresh {
            if let Effect::Send { datagram, .. } = effect {
                self.stats.datagrams_out += 1;
                self.stats.bytes_out += datagram.len() as u64;
            }
        }
    }

    /// A peer process is alive (see [`Replicator::peer_up`]). When it replaces another
    /// process at that address (a restart: new boot), the old one is gone for good.
    fn peer_up(&mut self, addr: SocketAddr, boot: u64, out: &mut Vec<Effect>) -> bool {
        if let Some(old) = self.replication.peer_boot(&addr).filter(|b| *b != boot) {
            out.push(Effect::PeerGone { boot: old });
        }
        // A new member or process learns our policies at once, not at the next refresh.
        self.announce_policies_to(addr, out);
        self.replication.peer_up(addr, boot)
    }

    /// A peer process left (or stayed down past the grace): it is gone for good.
    fn peer_left(&mut self, addr: SocketAddr, out: &mut Vec<Effect>) {
        self.peer_digests.remove(&addr);
        if let Some(boot) = self.replication.peer_left(addr) {
            out.push(Effect::PeerGone { boot });
        }
    }

    /// Turns what foca asked for into effects, reacting to membership changes.
    fn apply_membership(&mut self, calls: Recorder, now_ns: u64, out: &mut Vec<Effect>) {
        self.membership.schedule(now_ns, calls.timers);
        for (to, payload) in calls.sends {
            match self.auth.seal(Kind::Membership, &payload) {
                Ok(datagram) => out.push(Effect::Send { to, datagram }),
                Err(_) => self.stats.invalid += 1,
            }
        }
        let mut snapshot_for: Vec<SocketAddr> = Vec::new();
        for n in calls.notifications {
            match n {
                OwnedNotification::MemberUp(id) => {
                    tracing::info!(node = %id.name, addr = %id.addr, "cluster member up");
                    self.left.remove(&id.addr);
                    if self.peer_up(id.addr, id.boot, out) && !snapshot_for.contains(&id.addr) {
                        snapshot_for.push(id.addr);
                    }
                }
                OwnedNotification::MemberDown(id) => {
                    if self.left.get(&id.addr) == Some(&id.instance) {
                        tracing::info!(node = %id.name, addr = %id.addr, "cluster member left");
                        self.peer_left(id.addr, out);
                    } else {
                        tracing::warn!(node = %id.name, addr = %id.addr, "cluster member down");
                        self.replication.peer_down(id.addr, now_ns);
                    }
                    snapshot_for.retain(|a| *a != id.addr);
                }
                OwnedNotification::Rename(old, new) => {
                    let restarted = old.boot != new.boot;
                    tracing::info!(node = %new.name, addr = %new.addr, restarted, "cluster member has a new identity");
                    let active = self.membership.active_peers().any(|id| *id == new);
                    if active {
                        self.left.remove(&new.addr);
                        if self.peer_up(new.addr, new.boot, out)
                            && !snapshot_for.contains(&new.addr)
                        {
                            snapshot_for.push(new.addr);
                        }
                    }
                }
                OwnedNotification::Rejoin(id) => {
                    tracing::warn!(
                        instance = id.instance,
                        "declared down by the cluster; rejoined"
                    );
                }
                OwnedNotification::Idle => {
                    tracing::warn!("no live cluster members");
                }
                _ => {}
            }
        }
        for to in snapshot_for {
            out.push(Effect::SnapshotFor(to));
        }
    }
}

// Property tests with arbitrary datagrams, raw and authentic, are in `crate::fuzzing`: the
// body of the `gossip_datagram` fuzz target, which `cargo test` runs too.
#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Gossip {
        let identity = NodeId {
            addr: SocketAddr::from(([127, 0, 0, 1], 7000)),
            instance: 5,
            boot: 5,
            name: "n".into(),
        };
        let config = GossipConfig {
            identity,
            timings: Timings::default(),
            replication: ReplicationConfig::new(50_000_000),
            rng_seed: 1,
            policy_digest: Digest(7),
        };
        Gossip::new(config, b"k", 0)
    }

    #[test]
    fn wrong_secret_is_counted_and_ignored() {
        let mut g = node();
        let datagram = Auth::new(b"other")
            .seal(Kind::Membership, b"x")
            .expect("fits");
        let mut out = Vec::new();
        g.handle_datagram(
            SocketAddr::from(([127, 0, 0, 1], 7001)),
            &datagram,
            1,
            &Engine::default(),
            &mut out,
        );
        assert!(out.is_empty());
        assert_eq!(g.stats().auth_failed, 1);
        assert_eq!(g.members().len(), 1);
    }
}
