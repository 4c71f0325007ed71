//! One cross-shard hop: a check planned on shard 0 whose bucket lives on shard 1 is
//! forwarded over the glommio channel mesh and answered — against the same check decided
//! locally on its owner, in the same run.
#![allow(clippy::unwrap_used)] // benchmark set-up: a panic is the failure report

use criterion::{criterion_group, criterion_main, Criterion};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_benches::{bench_engine, key};
use tollgate_protocol::routing;
use tollgate_server::node::Node;
use tollgate_server::shard::{Planned, Shard};

/// (iterations, local?) -> elapsed, served by shard 0's executor.
type Job = (u64, bool, flume::Sender<Duration>);

/// Two shards on their own executors; shard 0 serves benchmark jobs.
struct Pair {
    jobs: flume::Sender<Job>,
    stop: flume::Sender<()>,
    executors: Vec<glommio::ExecutorJoinHandle<()>>,
}

impl Pair {
    fn run(&self, iters: u64, local: bool) -> Duration {
        let (tx, rx) = flume::bounded(1);
        self.jobs.send((iters, local, tx)).unwrap();
        rx.recv().unwrap()
    }

    fn stop(self) {
        drop(self.jobs);
        let _ = self.stop.send(());
        for e in self.executors {
            let _ = e.join();
        }
    }
}

fn shard_hop(c: &mut Criterion) {
    let mut group = c.benchmark_group("shard_hop");
    for (label, spin) in [
        ("idle_spin 0", None),
        ("idle_spin 100us", Some(Duration::from_micros(100))),
    ] {
        let pair = start_pair(spin);
        group.bench_function(format!("cross-shard decision, {label}"), |b| {
            b.iter_custom(|iters| pair.run(iters, false))
        });
        group.bench_function(
            format!("baseline: local decision on the owner, {label}"),
            |b| b.iter_custom(|iters| pair.run(iters, true)),
        );
        pair.stop();
    }
    group.finish();
}

fn start_pair(spin: Option<Duration>) -> Pair {
    let node = Arc::new(Node::without_ports(bench_engine(), 2, "bench"));
    // A key owned by shard 1.
    let remote_key = (0..)
        .map(key)
        .find(|k| routing::shard_for(routing::routing_hash(k.as_bytes()), 2) == 1)
        .unwrap();
    let local_key = (0..)
        .map(key)
        .find(|k| routing::shard_for(routing::routing_hash(k.as_bytes()), 2) == 0)
        .unwrap();
    let mesh = MeshBuilder::full(2, 1024);
    let (jobs_tx, jobs_rx) = flume::unbounded::<Job>();
    let (stop_tx, stop_rx) = flume::bounded::<()>(1);
    let mut executors = Vec::new();
    for i in 0..2 {
        let (node, mesh, jobs_rx, stop_rx) =
            (node.clone(), mesh.clone(), jobs_rx.clone(), stop_rx.clone());
        let (remote_key, local_key) = (remote_key.clone(), local_key.clone());
        executors.push(
            spin.map_or_else(
                || LocalExecutorBuilder::new(Placement::Fixed(i % 2)),
                |spin| LocalExecutorBuilder::new(Placement::Fixed(i % 2)).spin_before_park(spin),
            )
            .io_memory(64 * 1024)
            .spawn(move || async move {
                let (senders, receivers) = mesh.join().await.unwrap();
                let id = senders.peer_id();
                let shard = Shard::start(id, node, senders, receivers);
                if id != 0 {
                    let _ = stop_rx.recv_async().await;
                    return;
                }
                while let Ok((iters, local, done)) = jobs_rx.recv_async().await {
                    let k = if local {
                        local_key.as_str()
                    } else {
                        remote_key.as_str()
                    };
                    let labels = [("user", k)];
                    let start = Instant::now();
                    for _ in 0..iters {
                        match shard
                            .decide_now("bench", &labels[..], None, Some(1), 1)
                            .unwrap()
                        {
                            Planned::Decided(d) => assert!(d.accepted),
                            Planned::Pending(p) => assert!(p.decide().await.accepted),
                        }
                    }
                    let _ = done.send(start.elapsed());
                }
            })
            .unwrap(),
        );
    }
    Pair {
        jobs: jobs_tx,
        stop: stop_tx,
        executors,
    }
}

criterion_group!(benches, shard_hop);
criterion_main!(benches);
