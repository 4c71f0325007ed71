//! [`AdminState`]: what the admin port's handlers read, filled in as the node starts.
//!
//! The port starts before the shards (so probes get an answer — "starting" — from the
//! first moment), so the node's parts arrive later, each set once: the shards, then the
//! cluster, then the gRPC port. Reads of a shard go through its inbox
//! ([`AdminQuery`]) and wait at most [`SHARD_ANSWER_TIMEOUT`].

use super::readiness::Readiness;
use super::shard_query::AdminQuery;
use crate::bridge::{DecisionHandle, Inbound};
use crate::cluster::ClusterObserver;
use crate::metrics::collector::{CacheReading, ClusterReading, Gathered, ShardGauges};
use crate::metrics::top_keys::Counted;
use crate::node::Node;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::oneshot;
use tollgate_grpc::GrpcObserver;
use tollgate_policy::{BucketView, Engine, LimiterId};

/// How long a read waits for a shard's answer. Why this value: a shard answers between
/// decisions, within microseconds when healthy; a shard that takes a second is stuck, and a
/// probe or scrape should say so rather than hang.
pub const SHARD_ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// The shards, once started.
#[derive(Clone)]
pub struct Shards {
    /// Node facts (engine, metrics, members, connections).
    pub node: Arc<Node>,
    /// The shards' inboxes.
    pub handle: DecisionHandle,
}

/// Everything the handlers read.
pub struct AdminState {
    /// The node's phase.
    pub readiness: Readiness,
    /// `server.admin_token`.
    pub token: Option<String>,
    shards: OnceLock<Shards>,
    cluster: OnceLock<ClusterObserver>,
    grpc: OnceLock<GrpcObserver>,
    reloader: OnceLock<Arc<crate::reload::Reloader>>,
}

impl AdminState {
    /// State for a node that is starting.
    pub fn new(readiness: Readiness, token: Option<String>) -> AdminState {
        AdminState {
            readiness,
            token,
            shards: OnceLock::new(),
            cluster: OnceLock::new(),
            grpc: OnceLock::new(),
            reloader: OnceLock::new(),
        }
    }

    /// The shards are serving.
    pub fn set_shards(&self, shards: Shards) {
        let _ = self.shards.set(shards);
    }

    /// The policies in force (None until the shards start).
    pub fn engine(&self) -> Option<Arc<Engine>> {
        self.shards().map(|s| s.handle.engine())
    }

    /// Whether the node runs a cluster layer (limit changes are refused then).
    pub fn clustered(&self) -> bool {
        self.cluster.get().is_some() || self.shards().is_some_and(|s| s.node.members.is_some())
    }

    /// Makes every shard decide with `change(current policies)` from its next decision on,
    /// one change of the policies at a time, reloads included
    /// ([`crate::bridge::DecisionHandle::update_policies`]). Err(shards that did not
    /// confirm within [`SHARD_ANSWER_TIMEOUT`]); the others decide with the new policies
    /// already.
    pub async fn change_engine<E: Send + 'static>(
        &self,
        shards: &Shards,
        change: impl FnOnce(&Engine) -> Result<Engine, E> + Send + 'static,
    ) -> Result<Result<Arc<Engine>, Vec<usize>>, E> {
        let handle = shards.handle.clone();
        // It waits for the shards with blocking calls: off this thread.
        let done = tokio::task::spawn_blocking(move || {
            handle.update_policies(change, SHARD_ANSWER_TIMEOUT)
        })
        .await;
        let Ok(update) = done else {
            return Ok(Err((0..shards.handle.nr_shards()).collect()));
        };
        let update = update?;
        Ok(if update.silent.is_empty() {
            Ok(update.new)
        } else {
            Err(update.silent)
        })
    }

    /// The cluster layer is running.
    pub fn set_cluster(&self, cluster: ClusterObserver) {
        let _ = self.cluster.set(cluster);
    }

    /// The gRPC port is serving.
    pub fn set_grpc(&self, grpc: GrpcObserver) {
        let _ = self.grpc.set(grpc);
    }

    /// Reloads can be asked for (`POST /api/v1/reload`).
    pub fn set_reloader(&self, reloader: Arc<crate::reload::Reloader>) {
        let _ = self.reloader.set(reloader);
    }

    /// The node's reloader, once the node serves.
    pub fn reloader(&self) -> Option<Arc<crate::reload::Reloader>> {
        self.reloader.get().cloned()
    }

    /// The shards, once started.
    pub fn shards(&self) -> Option<&Shards> {
        self.shards.get()
    }

    /// Asks every shard, each answer awaited at most [`SHARD_ANSWER_TIMEOUT`]; index =
    /// shard, None for a shard that did not answer.
    async fn ask_all<T>(
        shards: &Shards,
        query: impl Fn(oneshot::Sender<T>) -> AdminQuery,
    ) -> Vec<Option<T>> {
        let mut waiting = Vec::with_capacity(shards.handle.nr_shards());
        for shard in 0..shards.handle.nr_shards() {
            let (tx, rx) = oneshot::channel();
            let sent = shards
                .handle
                .send(shard, Inbound::Admin(query(tx)))
                .await
                .is_ok();
            waiting.push(sent.then_some(rx));
        }
        let mut answers = Vec::with_capacity(waiting.len());
        for rx in waiting {
            let answer = match rx {
                Some(rx) => tokio::time::timeout(SHARD_ANSWER_TIMEOUT, rx)
                    .await
                    .ok()
                    .and_then(Result::ok),
                None => None,
            };
            answers.push(answer);
        }
        answers
    }

    /// Every shard's gauges (None for a shard that did not answer in time).
    pub async fn shard_gauges(shards: &Shards) -> Vec<Option<ShardGauges>> {
        Self::ask_all(shards, AdminQuery::Gauges).await
    }

    /// Everything a scrape reads besides the counters.
    pub async fn gather(&self, shards: &Shards) -> Gathered {
        Gathered {
            shards: Self::shard_gauges(shards).await,
            grpc_cache: self.grpc.get().map(|g| {
                let usage = g.cache_usage();
                CacheReading {
                    entries: usage.entries,
                    bytes: usage.bytes,
                }
            }),
            cluster: self.cluster.get().map(|c| ClusterReading {
                stats: c.stats(),
                members: shards.node.member_list(),
                policy_digest: shards.handle.engine().digest().0,
            }),
            resident_bytes: crate::metrics::process::resident_bytes(),
        }
    }

    /// One bucket, read on its owner shard: Err(()) when the shard did not answer.
    pub async fn bucket(
        shards: &Shards,
        owner: usize,
        limiter: LimiterId,
        key: String,
    ) -> Result<Option<BucketView>, ()> {
        let (reply, answer) = oneshot::channel();
        let query = AdminQuery::Bucket {
            limiter,
            key,
            reply,
        };
        shards
            .handle
            .send(owner, Inbound::Admin(query))
            .await
            .map_err(|_| ())?;
        match tokio::time::timeout(SHARD_ANSWER_TIMEOUT, answer).await {
            Ok(Ok(view)) => Ok(view),
            _ => Err(()),
        }
    }

    /// Every shard's top-keys counts for `limiter`: index = shard; the outer None for a
    /// shard that did not answer, the inner for one that counted nothing.
    pub async fn top_keys(
        shards: &Shards,
        limiter: LimiterId,
    ) -> Vec<Option<Option<(Vec<Counted>, u64)>>> {
        Self::ask_all(shards, |reply| AdminQuery::TopKeys { limiter, reply }).await
    }
}
