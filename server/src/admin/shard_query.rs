//! Reads the admin API needs from a shard's own state, asked through its inbox
//! ([`crate::bridge::Inbound::Admin`]) and answered on the shard between decisions, so
//! nothing outside the shard ever touches its buckets or sketches.

use crate::clock;
use crate::metrics::collector::ShardGauges;
use crate::metrics::top_keys::Counted;
use crate::shard::Shard;
use std::rc::Rc;
use tokio::sync::oneshot;
use tollgate_policy::{BucketView, LimiterId};

/// A read answered by one shard.
#[derive(Debug)]
pub enum AdminQuery {
    /// Live buckets, queue depth, flows in flight.
    Gauges(oneshot::Sender<ShardGauges>),
    /// One bucket this shard owns (None: no live bucket for the key).
    Bucket {
        /// Which limiter.
        limiter: LimiterId,
        /// The bucket key.
        key: String,
        /// The answer.
        reply: oneshot::Sender<Option<BucketView>>,
    },
    /// What the shard's top-keys sketch of `limiter` counted, and since when (ns on the
    /// server clock); None when it counted nothing.
    TopKeys {
        /// Which limiter.
        limiter: LimiterId,
        /// The answer.
        reply: oneshot::Sender<Option<(Vec<Counted>, u64)>>,
    },
}

/// Answers `query` on `shard` (called by the shard's inbox loop).
pub fn answer(shard: &Rc<Shard>, query: AdminQuery) {
    match query {
        AdminQuery::Gauges(reply) => {
            let gauges = shard.with_state(|state, engine| {
                let store = state.store();
                let stats = store.stats();
                let slots = engine
                    .limiters()
                    .iter()
                    .map(|l| l.id.get() as usize + 1)
                    .max()
                    .unwrap_or(0);
                let mut live_by_limiter = vec![0; slots];
                for l in engine.limiters() {
                    if let Some(n) = live_by_limiter.get_mut(l.id.get() as usize) {
                        *n = store.live_of(l.id);
                    }
                }
                ShardGauges {
                    live_buckets: store.len(),
                    live_by_limiter,
                    evicted_full: stats.evicted_full,
                    evicted_not_full: stats.evicted_not_full,
                    refused: stats.refused,
                    waiting: state.waiting(),
                    in_flight: state.in_flight(),
                }
            });
            let _ = reply.send(gauges);
        }
        AdminQuery::Bucket {
            limiter,
            key,
            reply,
        } => {
            let now = clock::now_ns();
            let view =
                shard.with_state(|state, engine| state.store().inspect(engine, limiter, &key, now));
            let _ = reply.send(view);
        }
        AdminQuery::TopKeys { limiter, reply } => {
            let counted = shard
                .metrics()
                .top_keys()
                .borrow_mut()
                .counted(limiter.get(), clock::now_ns());
            let _ = reply.send(counted);
        }
    }
}
