//! Hot reload: the running node takes the policies of its config file again, keeping the
//! state of every limiter whose identity is unchanged.
//!
//! What a reload does, in order:
//! 1. reads and validates the whole file; if anything is wrong, nothing changes and the
//!    errors are returned (and logged by the caller);
//! 2. compares the file's `server:` and `cluster:` sections with those the node started
//!    with: a change there needs a restart, and is reported as such (never silently
//!    ignored, never half-applied);
//! 3. compiles the policies as the successor of the running engine
//!    ([`Engine::successor`]): a limiter keeps its id, and so its buckets, flows in flight and
//!    waiting queues, when its identity (policy name and component kind) is unchanged;
//! 4. stores the new engine for the other threads (gRPC, gossip), then switches every shard
//!    between two of its messages (`Shard::reload`) and waits until all have.
//!
//! What each limiter sees: unchanged ones carry on; changed parameters apply to the
//! existing buckets without a reset (a token bucket is capped at its new capacity and fills
//! at its new rate from its next use; a concurrency counter moves by the change in capacity,
//! so its flows in flight stay counted); removed ones stop deciding at once (their waiters
//! are refused `removed`; their buckets are freed by the next idle sweep); new ones start
//! like any new limiter (a new key's bucket starts full). While the switch reaches the shards
//! one by one (microseconds), a check that hops between shards on either side of it is
//! decided by each shard with the limiters that shard knows.
//!
//! Three triggers call [`Reloader::reload`]: SIGHUP, `--watch` (the file changed:
//! [`crate::watch`]) and the admin API. One change of the policies runs at a time, reload or
//! runtime limit change ([`DecisionHandle::update_policies`]).

use crate::bridge::DecisionHandle;
use crate::config::{self, Config, ConfigError};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tollgate_policy::config::Problems;
use tollgate_policy::Engine;

/// How long a reload waits for every shard to switch (a shard answers within one message;
/// this bounds a wedged one).
const SWITCH_TIMEOUT: Duration = Duration::from_secs(10);

/// What a reload changed.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ReloadReport {
    /// Digest of the new policy set (what `tollgate members` compares across nodes).
    pub digest: String,
    /// Policies whose definition is unchanged: their state carries on.
    pub unchanged: Vec<String>,
    /// Policies with the same identity and new parameters: applied to existing state.
    pub changed: Vec<String>,
    /// New policies.
    pub added: Vec<String>,
    /// Policies no longer in the file: their state is dropped.
    pub removed: Vec<String>,
    /// `server:` / `cluster:` fields that differ from the running ones and need a restart.
    pub needs_restart: Vec<String>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The node runs the embedded default policy: there is no file to read again.
    #[error("no config file to reload: the node runs the embedded default policy (start it with --config FILE)")]
    NoFile,
    /// The file could not be read or is invalid: nothing changed.
    #[error("{0}")]
    Invalid(ConfigError),
    /// A shard did not switch in time (the server is stopping or wedged).
    #[error("{switched} of {shards} shards switched to the new policies; the rest did not answer (the server is stopping?)")]
    Incomplete {
        /// Shards that switched.
        switched: usize,
        /// Shards on the node.
        shards: usize,
    },
}

/// Reloads one node's policies from its config file.
pub struct Reloader {
    path: Option<PathBuf>,
    /// The config file as the node started with it, before command-line overrides: what
    /// a changed `server:` or `cluster:` section is compared with.
    started: Config,
    handle: DecisionHandle,
}

impl Reloader {
    /// A reloader of the file at `path` (None: the embedded default policy, which cannot be
    /// reloaded), which the node started from as `started` (before command-line overrides).
    pub fn new(path: Option<&Path>, started: Config, handle: DecisionHandle) -> Reloader {
        Reloader {
            path: path.map(Path::to_path_buf),
            started,
            handle,
        }
    }

    /// The file this reloader reads, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Reads the file again and applies its policies (see the module docs).
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let path = self.path.as_deref().ok_or(ReloadError::NoFile)?;
        let next = config::load_file(path).map_err(ReloadError::Invalid)?;
        // The node keeps the cluster it started with (a changed `cluster:` waits for a
        // restart), so the new policies are held to its rules even when the file no longer
        // has the section: peers would refuse what they cannot replicate.
        if let Some(cluster) = &self.started.cluster {
            let mut problems = Problems::new();
            cluster.validate_policies(&next.policies, &mut problems);
            problems
                .into_result(&path.display().to_string(), ())
                .map_err(ReloadError::Invalid)?;
        }
        let update = self.handle.update_policies(
            |old| Ok::<_, std::convert::Infallible>(old.successor(&next.policies)),
            SWITCH_TIMEOUT,
        );
        let Ok(update) = update;
        if !update.silent.is_empty() {
            let shards = self.handle.nr_shards();
            return Err(ReloadError::Incomplete {
                switched: shards - update.silent.len(),
                shards,
            });
        }
        let mut report = diff(&update.old, &update.new);
        report.needs_restart = needs_restart(&self.started, &next);
        Ok(report)
    }

    /// [`Reloader::reload`], logged: what changed (info), fields that need a restart
    /// (warn), or why nothing changed (error, one line per problem). `trigger` says what
    /// asked (`SIGHUP`, `file change`, `admin API`).
    pub fn reload_and_log(&self, trigger: &str) -> Result<ReloadReport, ReloadError> {
        let result = self.reload();
        match &result {
            Ok(r) => {
                tracing::info!(
                    trigger,
                    digest = %r.digest,
                    unchanged = r.unchanged.len(),
                    changed = ?r.changed,
                    added = ?r.added,
                    removed = ?r.removed,
                    "policies reloaded"
                );
                if !r.needs_restart.is_empty() {
                    tracing::warn!(
                        trigger,
                        fields = ?r.needs_restart,
                        "these settings changed in the file but apply only after a restart; \
                         the node keeps running with the old ones"
                    );
                }
            }
            Err(ReloadError::Invalid(e)) => {
                for problem in e.to_string().lines() {
                    tracing::error!(trigger, "reload refused, nothing changed: {problem}");
                }
            }
            Err(e) => tracing::error!(trigger, "reload failed: {e}"),
        }
        result
    }
}

/// Which policies are unchanged, changed, added and removed from `old` to `new`.
fn diff(old: &Engine, new: &Engine) -> ReloadReport {
    let mut report = ReloadReport {
        digest: format!("{:016x}", new.digest().0),
        ..ReloadReport::default()
    };
    for spec in new.limiters() {
        match old.get_limiter(spec.id) {
            None => report.added.push(spec.policy_name.clone()),
            // Anything written differently (selectors, workloads, idle time, ...), or limits
            // a runtime change set apart from the file's, is a change, not only a new digest.
            Some(before)
                if before.digest == spec.digest
                    && before.params == spec.params
                    && before.source == spec.source =>
            {
                report.unchanged.push(spec.policy_name.clone())
            }
            Some(_) => report.changed.push(spec.policy_name.clone()),
        }
    }
    report.removed = old
        .limiters()
        .iter()
        .filter(|l| new.get_limiter(l.id).is_none())
        .map(|l| l.policy_name.clone())
        .collect();
    report
}

/// The `server.*` and `cluster.*` fields that differ between `running` and `next`: none of
/// them can change without a restart (listeners, shard count, bounds sized at start,
/// membership).
fn needs_restart(running: &Config, next: &Config) -> Vec<String> {
    let mut fields = changed_fields("server", &yaml(&running.server), &yaml(&next.server));
    fields.extend(changed_fields(
        "cluster",
        &yaml(&running.cluster),
        &yaml(&next.cluster),
    ));
    fields
}

fn yaml<T: serde::Serialize>(value: &T) -> serde_yaml_ng::Value {
    serde_yaml_ng::to_value(value).unwrap_or(serde_yaml_ng::Value::Null)
}

/// `section.field` for every top-level field whose value differs (the whole section when
/// one side is absent).
fn changed_fields(
    section: &str,
    a: &serde_yaml_ng::Value,
    b: &serde_yaml_ng::Value,
) -> Vec<String> {
    use serde_yaml_ng::Value;
    match (a, b) {
        (Value::Mapping(a), Value::Mapping(b)) => {
            let keys: BTreeSet<String> = a
                .keys()
                .chain(b.keys())
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect();
            keys.into_iter()
                .filter(|k| a.get(k.as_str()) != b.get(k.as_str()))
                .map(|k| format!("{section}.{k}"))
                .collect()
        }
        (a, b) if a == b => Vec::new(),
        _ => vec![section.to_string()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_policy::BucketParams;

    fn config(text: &str) -> Config {
        config::parse_str(text, "test").unwrap_or_else(|e| panic!("{e}"))
    }

    const BASE: &str = "
server: { listen: 127.0.0.1:7070, shards: 2 }
policies:
  - policy_name: a
    rate_limiter: { bucket_capacity: 10, fill_amount: 1, parameters: { interval: 1s }, selectors: [ { control_point: x } ] }
  - policy_name: b
    rate_limiter: { bucket_capacity: 10, fill_amount: 1, parameters: { interval: 1s }, selectors: [ { control_point: x } ] }
  - policy_name: c
    rate_limiter: { bucket_capacity: 10, fill_amount: 1, parameters: { interval: 1s }, selectors: [ { control_point: x } ] }
";

    #[test]
    fn diff_sorts_policies_by_what_happened_to_them() {
        let before = config(BASE);
        let after = config(
            "
policies:
  - policy_name: d
    rate_limiter: { bucket_capacity: 10, fill_amount: 1, parameters: { interval: 1s }, selectors: [ { control_point: x } ] }
  - policy_name: b
    rate_limiter: { bucket_capacity: 5, fill_amount: 1, parameters: { interval: 1s }, selectors: [ { control_point: x } ] }
  - policy_name: a
    rate_limiter: { bucket_capacity: 10, fill_amount: 1, parameters: { interval: 1s }, selectors: [ { control_point: x } ] }
",
        );
        let old = Engine::new(&before.policies);
        let new = old.successor(&after.policies);
        let r = diff(&old, &new);
        assert_eq!(r.unchanged, ["a"]);
        assert_eq!(r.changed, ["b"]);
        assert_eq!(r.added, ["d"]);
        assert_eq!(r.removed, ["c"]);
        assert_eq!(r.digest, format!("{:016x}", new.digest().0));
    }

    #[test]
    fn a_change_beside_the_bucket_shape_or_a_runtime_limit_is_reported_as_a_change() {
        let before = config(BASE);
        let old = Engine::new(&before.policies);
        // a: another control point; b: another idle time; c: as it was.
        let after = config(
            &BASE
                .replacen("control_point: x", "control_point: y", 1)
                .replacen("interval: 1s }", "interval: 1s, max_idle_time: 60s }", 2)
                .replacen("interval: 1s, max_idle_time: 60s }", "interval: 1s }", 1),
        );
        let r = diff(&old, &old.successor(&after.policies));
        assert_eq!(r.changed, ["a", "b"]);
        assert_eq!(r.unchanged, ["c"]);
        // A limit changed at runtime, then the file's own limit again: a change back.
        let c = old.limiters()[2].id;
        let runtime = old
            .with_bucket_params(
                c,
                BucketParams {
                    capacity: 99.0,
                    ..old.limiter(c).params
                },
            )
            .expect("c exists");
        let r = diff(&runtime, &runtime.successor(&before.policies));
        assert_eq!(r.changed, ["c"]);
        assert_eq!(r.unchanged, ["a", "b"]);
    }

    #[test]
    fn server_and_cluster_changes_need_a_restart() {
        let running = config(BASE);
        assert!(needs_restart(&running, &running.clone()).is_empty());
        let moved = config(
            &BASE
                .replace("7070", "7171")
                .replace("shards: 2", "shards: 3"),
        );
        assert_eq!(
            needs_restart(&running, &moved),
            ["server.listen", "server.shards"]
        );
        let clustered = config(&format!("{BASE}cluster: {{ gossip: 127.0.0.1:7946 }}\n"));
        assert_eq!(needs_restart(&running, &clustered), ["cluster"]);
    }
}
