//! SWIM membership through foca: configuration, a recording runtime and a timer queue on
//! the caller's clock.
//!
//! foca is sans-IO already: it takes bytes and timer events and reports what to send, what
//! to schedule and what changed through its `Runtime` trait. [`Recorder`] implements that
//! trait by recording everything; [`Membership`] owns foca, the pending timers and the
//! random generator, and hands the recorded effects back to [`crate::gossip`].

use crate::node_id::NodeId;
use crate::wire::{FocaCodec, MAX_PAYLOAD};
use foca::{Foca, Notification, OwnedNotification, Runtime, State, Timer};
use rand_foca::rngs::SmallRng;
use rand_foca::SeedableRng;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

/// Failure-detection timings (from `cluster.failure_detection`, see
/// [`crate::config::FailureDetection::timings`]).
#[derive(Clone, Copy, Debug)]
pub struct Timings {
    /// How often a random member is probed.
    pub probe_period: Duration,
    /// How long a direct probe waits before indirect probes.
    pub probe_rtt: Duration,
    /// Suspect -> down.
    pub suspect_to_down_after: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            probe_period: Duration::from_secs(1),
            probe_rtt: Duration::from_millis(400),
            suspect_to_down_after: Duration::from_secs(3),
        }
    }
}

/// foca's configuration for our timings: memberlist's LAN profile with our probe timings
/// and packet size. A down identity is remembered for a day (foca's default) so stale
/// gossip cannot resurrect it; a restarted node rejoins under a new instance anyway.
pub fn foca_config(t: Timings) -> foca::Config {
    let mut c = foca::Config::new_lan(NonZeroU32::MIN.saturating_add(7));
    c.probe_period = t.probe_period;
    c.probe_rtt = t.probe_rtt;
    c.suspect_to_down_after = t.suspect_to_down_after;
    c.max_packet_size = NonZeroUsize::new(MAX_PAYLOAD).unwrap_or(NonZeroUsize::MIN);
    // Spread membership updates quickly: small clusters, cheap messages.
    c.periodic_gossip = Some(foca::PeriodicParams {
        frequency: t.probe_period.min(Duration::from_millis(200)),
        num_members: NonZeroUsize::MIN.saturating_add(2),
    });
    // Retry members we consider down, so a healed partition or a restarted node whose
    // seeds were wrong is found again.
    c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: t.probe_period.saturating_mul(5),
        num_members: NonZeroUsize::MIN.saturating_add(1),
    });
    c
}

/// Everything one foca call asked for: foca's `Runtime`, recorded, for
/// [`crate::Gossip`] to turn into [`crate::Effect`]s.
#[derive(Default)]
pub struct Recorder {
    /// (destination, foca payload) to seal and send.
    pub sends: Vec<(SocketAddr, Vec<u8>)>,
    /// Timers to deliver after a delay.
    pub timers: Vec<(Duration, Timer<NodeId>)>,
    /// Membership changes.
    pub notifications: Vec<OwnedNotification<NodeId>>,
}

impl Runtime<NodeId> for Recorder {
    fn notify(&mut self, notification: Notification<'_, NodeId>) {
        self.notifications.push(notification.to_owned());
    }

    fn send_to(&mut self, to: NodeId, data: &[u8]) {
        self.sends.push((to.addr, data.to_vec()));
    }

    fn submit_after(&mut self, event: Timer<NodeId>, after: Duration) {
        self.timers.push((after, event));
    }
}

/// A timer due at `at` (ns); `seq` keeps equal deadlines in submission order.
struct Due {
    at: u64,
    seq: u64,
    timer: Timer<NodeId>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// foca timers are bounded by what foca schedules: a handful per member.
pub struct Membership {
    /// The SWIM state machine.
    pub foca: Foca<NodeId, FocaCodec, SmallRng, foca::NoCustomBroadcast>,
    timers: BinaryHeap<Reverse<Due>>,
    timer_seq: u64,
}

impl Membership {
    /// A membership for `identity`, its randomness seeded (deterministic in simulations).
    pub fn new(identity: NodeId, timings: Timings, seed: u64) -> Membership {
        let foca = Foca::new(
            identity,
            foca_config(timings),
            SmallRng::seed_from_u64(seed),
            FocaCodec,
        );
        Membership {
            foca,
            timers: BinaryHeap::new(),
            timer_seq: 0,
        }
    }

    /// Queues the timers an effect set asked for.
    pub fn schedule(&mut self, now_ns: u64, timers: Vec<(Duration, Timer<NodeId>)>) {
        for (after, timer) in timers {
            let at = now_ns.saturating_add(u64::try_from(after.as_nanos()).unwrap_or(u64::MAX));
            self.timer_seq += 1;
            self.timers.push(Reverse(Due {
                at,
                seq: self.timer_seq,
                timer,
            }));
        }
    }

    /// The earliest pending timer.
    pub fn next_deadline(&self) -> u64 {
        self.timers.peek().map_or(u64::MAX, |Reverse(d)| d.at)
    }

    /// Removes and returns the next timer due at or before `now_ns`.
    pub fn pop_due(&mut self, now_ns: u64) -> Option<Timer<NodeId>> {
        if self.timers.peek().is_some_and(|Reverse(d)| d.at <= now_ns) {
            self.timers.pop().map(|Reverse(d)| d.timer)
        } else {
            None
        }
    }

    /// Members other than us that are alive or suspect.
    pub fn active_peers(&self) -> impl Iterator<Item = &NodeId> {
        self.foca.iter_members().map(|m| m.id())
    }

    /// Every member foca knows (down ones included), with their state.
    pub fn all(&self) -> impl Iterator<Item = (&NodeId, State)> {
        self.foca
            .iter_membership_state()
            .map(|m| (m.id(), m.state()))
    }
}
