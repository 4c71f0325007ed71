//! The vendored glommio keeps its preempt timer armed across the executor's loop turns instead
//! of cancelling and re-arming it on each (third_party/glommio/TOLLGATE.md, change 3). These
//! tests hold what that must not break: a task that never yields on its own is still told to
//! yield, again and again, however many loop turns ran before, on a shard's kind of executor
//! (cooperative main ring) and on upstream's kind; and a kept timer that fires at the start of
//! a turn does not make a shard park with work queued.
//!
//! A park keeps the preempt timer too, and a sleep keeps it when it fires no later than the
//! next user timer (TOLLGATE.md, change 5). The last two tests hold what that must not break:
//! an executor going idle sleeps (rather than spinning on the timers it cancels and arms),
//! a user timer fires on time whichever timer the executor slept on, and a user timer that
//! fires while the executor is about to sleep still ends the sleep.

use std::time::{Duration, Instant};

use glommio::LocalExecutorBuilder;

/// The preempt timer of the executors under test.
const PREEMPT: Duration = Duration::from_millis(5);

/// Preemptions a spinning task must see: far more than one, so a timer that is kept forever
/// and never re-armed once it fired fails.
const PREEMPTIONS: usize = 20;

/// Bound on the whole spin, only so that a broken timer fails the test instead of hanging it.
/// 20 preemptions of 5 ms take about 100 ms.
const GIVE_UP: Duration = Duration::from_secs(30);

/// Runs, on an executor built with `coop_taskrun`: many short loop turns (each task yields at
/// once), then a task that spins until told to yield, `PREEMPTIONS` times. Returns the count
/// of preemptions it saw.
fn preemptions_after_many_loop_turns(coop_taskrun: bool) -> usize {
    LocalExecutorBuilder::default()
        .preempt_timer(PREEMPT)
        .coop_taskrun(coop_taskrun)
        .make()
        .expect("an executor (glommio needs io_uring)")
        .run(async {
            // Loop turns that find a preempt timer still pending: the path that keeps it.
            for _ in 0..10_000 {
                glommio::executor().yield_task_queue_now().await;
            }
            let started = Instant::now();
            let mut seen = 0;
            while seen < PREEMPTIONS && started.elapsed() < GIVE_UP {
                if glommio::executor().need_preempt() {
                    seen += 1;
                    glommio::executor().yield_task_queue_now().await;
                }
                std::hint::spin_loop();
            }
            seen
        })
}

#[test]
fn a_busy_task_is_preempted_again_and_again_on_a_cooperative_ring() {
    assert_eq!(preemptions_after_many_loop_turns(true), PREEMPTIONS);
}

#[test]
fn a_busy_task_is_preempted_again_and_again_on_an_interrupting_ring() {
    assert_eq!(preemptions_after_many_loop_turns(false), PREEMPTIONS);
}

/// How long [`hops_between_spinning_shards_keep_being_answered`] keeps hopping: long enough
/// that the kept preempt timer fires many times mid-hop.
const HOPPING: Duration = Duration::from_secs(3);

/// Two shards whose executors spin before they park (`server.idle_spin`), shard 0 deciding
/// checks whose bucket shard 1 owns, one after the other, for `HOPPING`. A kept preempt
/// timer that fired after a loop turn's poll and before its first task queue ran used to end
/// the turn as if no task were left: the executor parked with the task a hop's answer had
/// just woken, and nothing left to wake it, so the hops stopped within seconds (found by the
/// `shard_hop` bench at `idle_spin 100us`; third_party/glommio/TOLLGATE.md, change 3).
#[test]
fn hops_between_spinning_shards_keep_being_answered() {
    use glommio::channels::channel_mesh::MeshBuilder;
    use glommio::Placement;
    use std::sync::Arc;
    use tollgate_protocol::routing;
    use tollgate_server::node::Node;
    use tollgate_server::shard::{Planned, Shard};

    let policy = "policies:\n  - policy_name: hop\n    rate_limiter:\n      bucket_capacity: 1000000000\n      fill_amount: 1000000000\n      parameters: { interval: 1s, limit_by_label_key: user }\n      selectors: [ { control_point: hop } ]\n";
    let engine = tollgate_policy::Engine::new(
        &tollgate_policy::parse_policies(policy, "test").expect("a valid policy"),
    );
    let node = Arc::new(Node::without_ports(engine, 2, "hops"));
    // A key whose bucket shard 1 owns: each check shard 0 decides on it hops there and back.
    let remote = (0..)
        .map(|i| format!("user-{i}"))
        .find(|k| routing::shard_for(routing::routing_hash(k.as_bytes()), 2) == 1)
        .expect("some key lives on shard 1");
    let mesh = MeshBuilder::full(2, 1024);
    let (hopped_tx, hopped) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = flume::bounded::<()>(1);
    let executors: Vec<_> = (0..2)
        .map(|cpu| {
            let (node, mesh, remote) = (node.clone(), mesh.clone(), remote.clone());
            let (hopped_tx, stop_rx) = (hopped_tx.clone(), stop_rx.clone());
            // A short preempt timer fires often, so a test build (slower than the bench's)
            // meets the window too.
            LocalExecutorBuilder::new(Placement::Fixed(cpu))
                .preempt_timer(Duration::from_millis(1))
                .spin_before_park(Duration::from_micros(100))
                .spawn(move || async move {
                    let (senders, receivers) = mesh.join().await.expect("the mesh");
                    let id = senders.peer_id();
                    let shard = Shard::start(id, node, senders, receivers);
                    if id != 0 {
                        let _ = stop_rx.recv_async().await;
                        return;
                    }
                    let labels = [("user", remote.as_str())];
                    let started = Instant::now();
                    let mut hops = 0u64;
                    while started.elapsed() < HOPPING {
                        let planned = shard.decide_now("hop", &labels[..], None, Some(1), 1);
                        let accepted = match planned.expect("a valid check") {
                            Planned::Decided(d) => d.accepted,
                            Planned::Pending(p) => p.decide().await.accepted,
                        };
                        assert!(accepted, "a bucket of 10^9 accepts");
                        hops += 1;
                    }
                    let _ = hopped_tx.send(hops);
                })
                .expect("an executor (glommio needs io_uring)")
        })
        .collect();
    let hops = hopped.recv_timeout(HOPPING + GIVE_UP);
    assert!(matches!(hops, Ok(n) if n > 0), "the hops stopped: {hops:?}");
    let _ = stop_tx.send(());
    for executor in executors {
        executor.join().expect("a shard's executor");
    }
}

/// CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID needs nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// What [`sleep_after_busy_turns`] measured of one sleep.
#[derive(Debug)]
struct Slept {
    /// Wall time the sleep took.
    wall: Duration,
    /// CPU time the executor's thread used meanwhile.
    cpu: Duration,
}

/// Runs `body` on a shard's kind of executor (cooperative main ring) with preempt timer
/// `preempt`, after many loop turns (the preempt timer armed and kept). On its own thread, so
/// that an executor that never wakes fails the test after `within` instead of hanging it.
fn after_busy_turns<T, F>(
    preempt: Duration,
    within: Duration,
    body: impl FnOnce() -> F + Send + 'static,
) -> T
where
    F: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let executor = std::thread::spawn(move || {
        let out = LocalExecutorBuilder::default()
            .preempt_timer(preempt)
            .coop_taskrun(true)
            .make()
            .expect("an executor (glommio needs io_uring)")
            .run(async move {
                for _ in 0..1_000 {
                    glommio::executor().yield_task_queue_now().await;
                }
                body().await
            });
        let _ = tx.send(out);
    });
    let out = rx
        .recv_timeout(within)
        .expect("the executor woke from its sleeps (one that slept with the timer meant to wake it already consumed sleeps for good)");
    executor.join().expect("the executor's thread");
    out
}

/// One `glommio::timer::sleep(nap)` with nothing else to run, after busy turns.
fn sleep_after_busy_turns(preempt: Duration, nap: Duration) -> Slept {
    after_busy_turns(preempt, nap + GIVE_UP, move || async move {
        let (wall, cpu) = (Instant::now(), thread_cpu_time());
        glommio::timer::sleep(nap).await;
        Slept {
            wall: wall.elapsed(),
            cpu: thread_cpu_time() - cpu,
        }
    })
}

impl Slept {
    /// Holds that the sleep lasted `nap` and ended on its timer, without spinning meanwhile.
    fn assert_slept_until_its_timer(&self, nap: Duration) {
        assert!(self.wall >= nap, "woke before its timer: {self:?}");
        // Woken by a far later timer instead (a minute, in the first test below) would take
        // longer than GIVE_UP.
        assert!(self.wall < GIVE_UP, "slept past its timer: {self:?}");
        // A sleeping executor uses next to no CPU; a spinning one most of the nap, even
        // sharing its core with the other tests.
        assert!(self.cpu < nap / 3, "spun instead of sleeping: {self:?}");
    }
}

/// The user timer (300 ms) comes before the kept preempt timer (60 s): the executor cancels
/// the preempt timer and sleeps on the user timer. That path once left the cancellation
/// unsubmitted, could not sleep, and cancelled and armed timers in a loop at full CPU.
#[test]
fn an_executor_going_idle_sleeps_until_its_timer() {
    let nap = Duration::from_millis(300);
    sleep_after_busy_turns(Duration::from_secs(60), nap).assert_slept_until_its_timer(nap);
}

/// The kept preempt timer (50 ms) comes before the user timer (1 s): the executor sleeps on
/// it, wakes once with nothing to do, then must arm the user timer and sleep until it.
#[test]
fn a_timer_fires_after_the_kept_preempt_timer_woke_the_executor() {
    let nap = Duration::from_secs(1);
    sleep_after_busy_turns(Duration::from_millis(50), nap).assert_slept_until_its_timer(nap);
}

/// `NAPS` sleeps of `nap(i)` after busy turns; all must end within `GIVE_UP`.
fn naps_all_end(preempt: Duration, nap: fn(u32) -> Duration) {
    const NAPS: u32 = 2_000;
    after_busy_turns(preempt, GIVE_UP, move || async move {
        for i in 0..NAPS {
            glommio::timer::sleep(nap(i)).await;
        }
    });
}

/// Sleeps so short that their io_uring timer can fire, and its completion be consumed, in the
/// very turn the executor arms it on its way to sleep, each after the preempt timer (60 s)
/// was kept from the turn before. A first version consumed that completion and slept on
/// regardless, with nothing left to wake it: the quota scheduler's deadlines then came seconds
/// late (`sdk_scheduling`), and here a sleep never ended.
#[test]
fn a_user_timer_firing_on_the_way_to_sleep_still_ends_the_sleep() {
    naps_all_end(Duration::from_secs(60), |i| {
        Duration::from_micros(u64::from(i % 50))
    });
}

/// The other way round: a preempt timer so short (10 µs) that it can fire, and its completion
/// be consumed, between the moment a park decides to keep it and the moment it would sleep on
/// it instead of arming the user timer (1 ms). It must not then sleep on it.
#[test]
fn a_preempt_timer_firing_on_the_way_to_sleep_does_not_strand_the_executor() {
    naps_all_end(Duration::from_micros(10), |_| Duration::from_millis(1));
}
