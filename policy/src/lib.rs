//! Tollgate's policy engine: pure, sans-IO token-bucket rate limiting with Aperture's
//! semantics.
//!
//! This crate owns *what* a decision is and never *when* or *where*: it reads no clock
//! (every call takes `now_ns`, nanoseconds on a caller-chosen monotonic clock), opens no
//! file, and knows nothing of shards or sockets. That makes
//! every rule testable on a virtual clock and lets the server decide where state lives.
//!
//! A check flows through it like this:
//! 1. [`config`] parses the policies (native `policies:` or an Aperture `rate-limiting/base`
//!    blueprint) into validated [`PolicyConfig`]s, reporting `file: field.path: reason`.
//!    Other sections of the file (`server:`, `cluster:`) belong to the crates that use them.
//! 2. [`Engine::new`] compiles the policies: selectors indexed by control point, bucket
//!    shapes, token labels, overrides, and each limiter's identity ([`identity`]).
//! 3. [`Engine::plan`] turns a flow (control point + labels + optional [`Tokens`]) into the
//!    buckets it must take from: one [`engine::PlannedTake`] per matching limiter. A cost
//!    from a label is checked there, once, into [`Tokens`] (finite, never negative).
//! 4. A [`ShardState`] (one per shard, single-threaded, its buckets in a [`BucketStore`])
//!    takes tokens: [`ShardState::take_group`] returns per-limiter outcomes, handing tokens
//!    back when one limiter rejects; [`Decision::from_outcomes`] combines them.
//!
//! # Layout
//! - [`duration`]: `50ms` / `3600s` parsing for config.
//! - [`tokens`]: [`Tokens`], a validated token cost.
//! - [`bucket`]: [`TokenBucket`] and [`BucketParams`]: fill, take, put back, wait.
//! - [`config`]: the policy schema, defaults and validation with field paths; the
//!   [`config::Problems`] list every config section reports into.
//! - [`matcher`]: selectors and label matchers (In, NotIn, Exists, DoesNotExist).
//! - [`identity`]: [`LimiterId`] (this process's handle) and the stable identity (policy
//!   name + definition [`Digest`]) that replication and reloads use.
//! - [`limiter`]: [`LimiterSpec`], one compiled limiter.
//! - [`engine`]: [`Engine`], planning, [`OwnedFlow`] and its [`Checked`] answer, [`FlowError`].
//! - [`decision`]: [`Decision`] and its per-limiter [`LimiterOutcome`]s.
//! - [`store`]: [`BucketStore`], a shard's buckets in segmented tables that grow a piece
//!   at a time, the cap on live buckets, the incremental idle sweep, replication hooks.
//! - [`flow`]: [`FlowId`], the handle of a flow holding concurrency tokens.
//! - [`flow_ids`]: [`flow_ids::FlowIds`], a shard's source of flow ids no client can guess.
//! - [`inflight`]: a shard's ledger of flows in flight, with expiry.
//! - [`workload`]: schedulers' workloads: how labels pick a workload, priority, fairness.
//! - [`wfq`]: the weighted fair queue of one scheduler bucket.
//! - [`shard_state`]: [`ShardState`], a shard's buckets + flows in flight + wait queues as
//!   one state machine (take, offer, poll, end, give back).
//! - [`status`]: HTTP status names as Aperture spells them.
//! - [`LocalLimiter`]: engine + one store, for single-threaded callers and tests.
#![warn(missing_docs)]

pub mod bucket;
pub mod config;
pub mod decision;
pub mod duration;
pub mod engine;
pub mod flow;
pub mod flow_ids;
pub mod identity;
pub mod inflight;
pub mod limiter;
pub mod matcher;
pub mod shard_state;
pub mod status;
pub mod store;
pub mod tokens;
pub mod wfq;
pub mod workload;

pub use bucket::{BucketParams, Refill, Take, TokenBucket, WAIT_FOREVER};
pub use config::{parse_policies, ConfigError, FieldError, PolicyConfig, Problems};
pub use decision::{Decision, LimiterOutcome, OutcomeKind, Outcomes, Refusal};
pub use engine::{Checked, Engine, FlowError, LimitChangeError, OwnedFlow, Plan, PlannedTake};
pub use flow::FlowId;
pub use identity::{ComponentKind, Digest, LimiterId, RejectReason, Resolution, Stage};
pub use limiter::LimiterSpec;
pub use shard_state::{Resolved, ShardLimits, ShardState};
pub use store::{BucketHash, BucketStore, BucketView, Consumed, StoreStats, Swept};
pub use tokens::{Tokens, TokensError};
pub use wfq::Ticket;
pub use workload::{WorkloadName, WorkloadPick};

use std::sync::Arc;

/// Read access to a flow's labels, whatever holds them.
pub trait Labels {
    /// The value of `key`, if the flow carries it.
    fn get(&self, key: &str) -> Option<&str>;
}

impl<K: AsRef<str>, V: AsRef<str>> Labels for [(K, V)] {
    fn get(&self, key: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.as_ref() == key)
            .map(|(_, v)| v.as_ref())
    }
}

impl<K: AsRef<str>, V: AsRef<str>, const N: usize> Labels for [(K, V); N] {
    fn get(&self, key: &str) -> Option<&str> {
        Labels::get(self.as_slice(), key)
    }
}

impl<K: AsRef<str>, V: AsRef<str>> Labels for Vec<(K, V)> {
    fn get(&self, key: &str) -> Option<&str> {
        Labels::get(self.as_slice(), key)
    }
}

impl<K: AsRef<str>, V: AsRef<str>, const N: usize> Labels for smallvec::SmallVec<[(K, V); N]> {
    fn get(&self, key: &str) -> Option<&str> {
        Labels::get(self.as_slice(), key)
    }
}

impl<V: AsRef<str>> Labels for std::collections::BTreeMap<String, V> {
    fn get(&self, key: &str) -> Option<&str> {
        std::collections::BTreeMap::get(self, key).map(|v| v.as_ref())
    }
}

impl<V: AsRef<str>, S: std::hash::BuildHasher> Labels for std::collections::HashMap<String, V, S> {
    fn get(&self, key: &str) -> Option<&str> {
        std::collections::HashMap::get(self, key).map(|v| v.as_ref())
    }
}

/// An engine and one shard's state: the whole decision on one thread, without waiting
/// (a scheduler admits or refuses at once).
///
/// The server splits these across shards; tests, benchmarks and single-threaded
/// embedders use this.
pub struct LocalLimiter {
    engine: Arc<Engine>,
    state: ShardState,
}

impl LocalLimiter {
    /// A limiter with no buckets yet.
    pub fn new(engine: Arc<Engine>) -> LocalLimiter {
        LocalLimiter {
            engine,
            state: ShardState::new(0, ShardLimits::default()),
        }
    }

    /// The compiled policies.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The bucket store.
    pub fn store_mut(&mut self) -> &mut BucketStore {
        self.state.store_mut()
    }

    /// The shard state (buckets, flows in flight).
    pub fn state_mut(&mut self) -> &mut ShardState {
        &mut self.state
    }

    /// Decides one flow at `now_ns`.
    pub fn check(&mut self, flow: &OwnedFlow, now_ns: u64) -> Result<Decision, FlowError> {
        self.check_labels(
            &flow.control_point,
            flow.labels.as_slice(),
            flow.tokens,
            now_ns,
        )
    }

    /// Drops buckets idle past their limiter's `max_idle_time`; returns how many.
    pub fn evict_idle(&mut self, now_ns: u64) -> usize {
        self.state.store_mut().evict_idle(&self.engine, now_ns)
    }

    /// Decides one flow given borrowed parts.
    pub fn check_labels<L: Labels + ?Sized>(
        &mut self,
        control_point: &str,
        labels: &L,
        tokens: Option<Tokens>,
        now_ns: u64,
    ) -> Result<Decision, FlowError> {
        let plan = self.engine.plan(control_point, labels, tokens)?;
        let outcomes = self.state.take_group(&self.engine, &plan, now_ns);
        Ok(Decision::from_outcomes(outcomes))
    }
}
