//! One load thread: a single-threaded tokio runtime that dials its connection slots, reports
//! that it is ready, waits for the start, then runs the slots' tasks.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::drivers::Conn;
use crate::run::event_loop::{self, Slot};
use crate::run::plan::Plan;
use crate::run::shared::Shared;
use crate::run::task::Task;

/// One load thread: dial `slots`, report, wait for the start, run the slots' tasks.
pub(super) fn load_thread(
    plan: &Arc<Plan>,
    slots: &[usize],
    ready: &std::sync::mpsc::Sender<Result<(), String>>,
    go: tokio::sync::oneshot::Receiver<Arc<Shared>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot start a runtime: {e}")));
            return;
        }
    };
    if event_loop::handles(&plan.cfg) {
        rt.block_on(event_loop_thread(plan, slots, ready, go));
        return;
    }
    rt.block_on(async {
        let cfg = &plan.cfg;
        let mut conns: Vec<(usize, Arc<Vec<Conn>>)> = Vec::with_capacity(slots.len());
        for &c in slots {
            let mut slot = Vec::with_capacity(cfg.targets.len());
            for t in &cfg.targets {
                match Conn::connect(t, &plan.settings).await {
                    Ok(conn) => slot.push(conn),
                    Err(e) => {
                        let _ = ready.send(Err(format!("{t}: {e}")));
                        return;
                    }
                }
            }
            conns.push((c, Arc::new(slot)));
        }
        let _ = ready.send(Ok(()));
        let Ok(shared) = go.await else { return };
        let mut handles = Vec::with_capacity(conns.len() * cfg.pipeline);
        for (c, slot) in &conns {
            for d in 0..cfg.pipeline {
                let task = Task::new(c * cfg.pipeline + d, slot.clone(), shared.clone(), plan);
                handles.push(tokio::spawn(task.run()));
            }
        }
        for h in handles {
            let _ = h.await;
            shared.tasks_done.fetch_add(1, Ordering::Relaxed);
        }
    });
}

/// The same for the event-loop driver ([`event_loop`]): one task per connection slot.
async fn event_loop_thread(
    plan: &Arc<Plan>,
    slots: &[usize],
    ready: &std::sync::mpsc::Sender<Result<(), String>>,
    go: tokio::sync::oneshot::Receiver<Arc<Shared>>,
) {
    let mut dialled = Vec::with_capacity(slots.len());
    for &c in slots {
        match Slot::connect(plan).await {
            Ok(slot) => dialled.push((c, slot)),
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        }
    }
    let _ = ready.send(Ok(()));
    let Ok(shared) = go.await else { return };
    let handles: Vec<_> = dialled
        .into_iter()
        .map(|(c, slot)| tokio::spawn(event_loop::run(slot, c, shared.clone(), plan.clone())))
        .collect();
    for h in handles {
        let _ = h.await;
        // The controller counts request tasks: this slot stood for `pipeline` of them.
        shared
            .tasks_done
            .fetch_add(plan.cfg.pipeline, Ordering::Relaxed);
    }
}
