//! The vendored glommio keeps its preempt timer armed across the executor's loop turns instead
//! of cancelling and re-arming it on each (third_party/glommio/TOLLGATE.md, change 3). These
//! tests hold what that must not break: a task that never yields on its own is still told to
//! yield, again and again, however many loop turns ran before, on a shard's kind of executor
//! (cooperative main ring) and on upstream's kind.

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
