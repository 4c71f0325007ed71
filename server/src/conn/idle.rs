//! `server.idle_timeout` for binary connections: a connection that completes no frame for
//! the timeout while none of its requests is pending is closed.
//!
//! The connection only notes, in its [`Activity`], when a read completed a frame; a shard's
//! sweep ([`Activity::idle_at`], every [`sweep_period`]) finds the idle ones and shuts their
//! read side, so the reader sees end of stream and the connection closes as after a client's
//! FIN (`runtime`'s connection registry does the shutting).
//!
//! Why a sweep and not a read timer per connection: the timer was armed and cancelled on
//! every read that had to wait (a clock reading, an insert into and a removal from the
//! reactor's timer map, a waker clone), which cost 2–4% of a shard's CPU at 50 connections
//! × depth 1 (docs/performance.md, section:binary-costs item 9). A sweep costs one pass over
//! a shard's connections per period, whatever the traffic.
//!
//! Precision: a connection is closed between `idle_timeout` and `idle_timeout` plus one
//! period after its last complete frame. Requests pending (hops, waits in a queue) keep it
//! open: each sweep that sees one counts as activity.

use std::cell::Cell;
use std::time::Duration;

/// Longest pause between two sweeps. Why this value: a sweep visits a few thousand
/// connections at most on a shard (microseconds), and a second is small against any
/// idle timeout (at least 1 s).
const MAX_SWEEP_PERIOD: Duration = Duration::from_secs(1);

/// How often a shard looks for idle connections: a quarter of the timeout, at most
/// [`MAX_SWEEP_PERIOD`], so a connection is closed at most 25% (and 1 s) late.
pub fn sweep_period(idle_timeout: Duration) -> Duration {
    (idle_timeout / 4).min(MAX_SWEEP_PERIOD)
}

/// What the idle sweep knows of one connection. Shared by the connection's tasks and the
/// shard's registry; shard-local (no atomics).
#[derive(Debug)]
pub struct Activity {
    /// When a read last completed a frame, or a sweep last saw a request pending
    /// ([`crate::clock::now_ns`]); the accept time at first.
    last_active_ns: Cell<u64>,
    /// Requests of this connection not yet answered (hops to other shards, waits in a
    /// scheduler's queue).
    in_flight: Cell<usize>,
    /// A sweep found it idle and shut its reads: later sweeps leave it alone.
    closing: Cell<bool>,
}

impl Activity {
    /// A connection accepted at `now_ns`.
    pub fn new(now_ns: u64) -> Activity {
        Activity {
            last_active_ns: Cell::new(now_ns),
            in_flight: Cell::new(0),
            closing: Cell::new(false),
        }
    }

    /// A read at `now_ns` completed a frame (bytes that complete none do not count: a peer
    /// trickling a frame is closed like a silent one).
    #[inline]
    pub fn frame_completed(&self, now_ns: u64) {
        self.last_active_ns.set(now_ns);
    }

    /// Requests pending on the connection.
    #[inline]
    pub fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    /// One more request pending.
    #[inline]
    pub fn request_started(&self) {
        self.in_flight.set(self.in_flight.get() + 1);
    }

    /// A pending request was answered (or cancelled).
    #[inline]
    pub fn request_finished(&self) {
        let in_flight = self.in_flight.get();
        debug_assert!(in_flight > 0, "a request finished that never started");
        self.in_flight.set(in_flight.saturating_sub(1));
    }

    /// The sweep's question at `now_ns`: has the connection been idle for `idle_ns`? Yes at
    /// most once per connection (it is then marked closing); a pending request counts as
    /// activity at `now_ns`.
    pub fn idle_at(&self, now_ns: u64, idle_ns: u64) -> bool {
        if self.closing.get() {
            return false;
        }
        if self.in_flight.get() > 0 {
            self.last_active_ns.set(now_ns);
            return false;
        }
        let idle = now_ns.saturating_sub(self.last_active_ns.get()) >= idle_ns;
        self.closing.set(idle);
        idle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_silent_connection_is_idle_once_the_timeout_has_passed_and_only_once() {
        let a = Activity::new(10 * SEC);
        assert!(!a.idle_at(10 * SEC, SEC));
        assert!(!a.idle_at(11 * SEC - 1, SEC), "a nanosecond early");
        assert!(a.idle_at(11 * SEC, SEC));
        assert!(!a.idle_at(12 * SEC, SEC), "already closing: reported once");
    }

    #[test]
    fn a_completed_frame_starts_the_idle_time_again() {
        let a = Activity::new(0);
        a.frame_completed(SEC / 2);
        assert!(!a.idle_at(SEC, SEC));
        assert!(a.idle_at(SEC + SEC / 2, SEC));
    }

    #[test]
    fn a_pending_request_keeps_the_connection_and_counts_as_activity() {
        let a = Activity::new(0);
        a.request_started();
        assert!(!a.idle_at(5 * SEC, SEC), "a check waits in a queue");
        a.request_finished();
        assert_eq!(a.in_flight(), 0);
        // Idle time counts from the sweep that last saw the request pending.
        assert!(!a.idle_at(5 * SEC + SEC / 2, SEC));
        assert!(a.idle_at(6 * SEC, SEC));
    }

    #[test]
    fn the_sweep_period_is_a_quarter_of_the_timeout_and_at_most_a_second() {
        assert_eq!(
            sweep_period(Duration::from_secs(1)),
            Duration::from_millis(250)
        );
        assert_eq!(
            sweep_period(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        assert_eq!(sweep_period(Duration::from_secs(300)), MAX_SWEEP_PERIOD);
    }
}
