//! The YAML configuration file: `server:`, `policies:` and `cluster:`, or an Aperture
//! `rate-limiting/base` blueprint values file.
//!
//! Parsing is two steps, both reporting the file, the field path and the reason:
//! 1. serde (with `deny_unknown_fields`, so a typo is an error, not a silent default),
//!    tracked by `serde_path_to_error` for the path;
//! 2. `Config::validate`, for rules serde cannot express (ranges, required-if, duplicates).
//!
//! Defaults are documented on each field together with what they assume.

use crate::duration::ConfigDuration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole configuration file.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listeners and limits of this node.
    #[serde(default)]
    pub server: ServerConfig,
    /// The rate-limit policies. An empty list admits everything.
    #[serde(default)]
    pub policies: Vec<PolicyConfig>,
    /// Cluster membership and replication; absent = this node runs alone.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
}

/// `server:` — listeners and per-node limits.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Shared binary-protocol port, bound once per shard with SO_REUSEPORT.
    /// Shard-aware ports are `listen port + 1 + shard index` (OS-chosen when the port is 0).
    /// Default 127.0.0.1:7070: loopback, so a first run exposes nothing.
    pub listen: SocketAddr,
    /// Number of shards (one pinned executor each). Default: every available core.
    pub shards: Option<usize>,
    /// gRPC compat port (Aperture FlowControlService, Envoy RLS). Default 127.0.0.1:8089,
    /// the address in Aperture's SDK examples; `off` disables it.
    #[serde(with = "optional_addr")]
    pub grpc: Option<SocketAddr>,
    /// API keys accepted on the gRPC port (`x-api-key`). Empty = no authentication.
    pub api_keys: Vec<String>,
    /// TLS for the gRPC port (the Aperture SDKs default to TLS). Absent = plaintext.
    pub tls: Option<TlsConfig>,
    /// Bounds of the gRPC result/global cache.
    pub cache: CacheConfig,
    /// Open binary connections per node beyond which new ones are closed at once.
    /// Default 10,000: far above what a service fleet needs, well below fd limits.
    pub max_connections: usize,
    /// Requests one binary connection may have in flight before it is answered OVERLOADED.
    /// Default 4,096: enough for deep pipelining, bounds per-connection memory.
    pub max_in_flight: usize,
    /// Largest binary frame accepted, in bytes. Default 1 MiB (a batch of 1,024 checks
    /// with a few labels each fits many times over).
    pub max_frame_len: u32,
    /// How long shutdown waits for connections to finish before closing them. Default 5s.
    pub drain_timeout: ConfigDuration,
    /// Name this node reports in HELLO. Default: the cluster node id, else "tollgate".
    pub node_id: Option<String>,
    /// How long an idle shard spins before it sleeps. Default 0s: sleep at once, leaving
    /// the core to other processes. On dedicated cores, e.g. 100us cuts the latency of a
    /// wake-up (a cross-shard hop, a gRPC check) from hundreds to tens of microseconds
    /// (docs/performance.md), at the price of a busy core while traffic trickles.
    pub idle_spin: ConfigDuration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            shards: None,
            grpc: Some(SocketAddr::from(([127, 0, 0, 1], 8089))),
            api_keys: Vec::new(),
            tls: None,
            cache: CacheConfig::default(),
            max_connections: 10_000,
            max_in_flight: 4_096,
            max_frame_len: 1 << 20,
            drain_timeout: ConfigDuration(Duration::from_secs(5)),
            node_id: None,
            idle_spin: ConfigDuration(Duration::ZERO),
        }
    }
}

/// `server.tls` — PEM files for the gRPC port.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

/// `server.cache` — bounds of the result and global caches behind the gRPC Cache* calls.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Entries kept at most (result + global). Default 100,000.
    pub max_entries: usize,
    /// Bytes of keys + values kept at most. Default 64 MiB.
    pub max_total_bytes: usize,
    /// Largest single value accepted. Default 1 MiB.
    pub max_entry_bytes: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: 100_000,
            max_total_bytes: 64 << 20,
            max_entry_bytes: 1 << 20,
        }
    }
}

/// `cluster:` — gossip membership and replication.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name. Default: host name + gossip port.
    #[serde(default)]
    pub node_id: Option<String>,
    /// UDP address for membership and deltas. Default 127.0.0.1:7946.
    #[serde(default = "default_gossip")]
    pub gossip: String,
    /// Address peers should send to, when `gossip` binds 0.0.0.0 / `[::]` (containers).
    /// Default: the bound address, or, for a wildcard bind, the local IP that routes to the
    /// first seed, with the gossip port.
    #[serde(default)]
    pub advertise: Option<String>,
    /// Peers to join through: `host:port` or DNS names, re-resolved periodically.
    #[serde(default)]
    pub seeds: Vec<String>,
    /// How often consumed tokens are sent to peers. Default 50ms. A policy's
    /// `lazy_sync.num_sync` gives `interval / num_sync` for that policy instead.
    #[serde(default = "default_sync_interval")]
    pub sync_interval: ConfigDuration,
    /// File holding the shared gossip secret. Required (or `secret`) when gossip binds a
    /// non-loopback address.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// The shared gossip secret inline (prefer `secret_file`).
    #[serde(default)]
    pub secret: Option<String>,
    /// SWIM failure-detection timings. The defaults suit a LAN; tests shorten them.
    #[serde(default)]
    pub failure_detection: FailureDetection,
    /// How long `serve` waits at start for a peer's bucket state before reporting ready
    /// (only when seeds other than this node are configured). Default 2s: a LAN join takes
    /// one round trip plus the transfer; a first node whose seeds are all down waits this
    /// long once, then serves alone.
    #[serde(default = "default_join_timeout")]
    pub join_timeout: ConfigDuration,
}

/// `cluster.failure_detection` — how fast a dead node is suspected and declared down.
///
/// A node stopped without leaving is suspected after at most about
/// `(members - 1) * probe_period` (probes go round-robin over a shuffled member list) and
/// declared down `suspect_to_down_after` later. Defaults (1s, 400ms, 3s) give about 5s in a
/// three-node cluster, as memberlist's LAN profile.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FailureDetection {
    /// How often a random member is probed. Default 1s.
    pub probe_period: ConfigDuration,
    /// How long a direct probe waits before asking others to probe indirectly. Must be
    /// less than `probe_period`. Default 400ms (far above a LAN round trip).
    pub probe_rtt: ConfigDuration,
    /// How long a suspect has to refute before it is declared down. Default 3s.
    pub suspect_to_down_after: ConfigDuration,
}

impl Default for FailureDetection {
    fn default() -> Self {
        FailureDetection {
            probe_period: ConfigDuration(Duration::from_secs(1)),
            probe_rtt: ConfigDuration(Duration::from_millis(400)),
            suspect_to_down_after: ConfigDuration(Duration::from_secs(3)),
        }
    }
}

fn default_join_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(2))
}

fn default_gossip() -> String {
    "127.0.0.1:7946".to_string()
}

fn default_sync_interval() -> ConfigDuration {
    ConfigDuration(Duration::from_millis(50))
}

/// One Aperture-shaped policy: a name and its rate limiter.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Unique name, reported in every decision.
    pub policy_name: String,
    /// The limiter.
    pub rate_limiter: RateLimiterConfig,
}

/// `rate_limiter:` of a policy.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    /// Tokens a bucket holds at most; a new bucket starts full.
    pub bucket_capacity: f64,
    /// Tokens added per `parameters.interval`.
    pub fill_amount: f64,
    /// Bucket keying and fill behaviour.
    pub parameters: RateLimiterParameters,
    /// How each request is costed and denied.
    #[serde(default)]
    pub request_parameters: RequestParameters,
    /// Which flows this limiter applies to (any selector matching is enough).
    pub selectors: Vec<Selector>,
    /// Per label value scaling (Aperture before 2.2): capacity and fill x factor.
    #[serde(default)]
    pub overrides: Vec<Override>,
}

/// `rate_limiter.parameters`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterParameters {
    /// The label whose value keys the bucket. Absent: one bucket shared by all flows.
    #[serde(default)]
    pub limit_by_label_key: Option<String>,
    /// The fill period (required).
    pub interval: ConfigDuration,
    /// Fill continuously (default true) or in whole intervals only.
    #[serde(default = "default_true")]
    pub continuous_fill: bool,
    /// Buckets untouched this long are dropped (they would be full again anyway once
    /// idle longer than a fill time). Default 7200s, as Aperture.
    #[serde(default = "default_max_idle")]
    pub max_idle_time: ConfigDuration,
    /// Replication cadence for this policy when clustered.
    #[serde(default)]
    pub lazy_sync: LazySync,
    /// A new bucket starts full but waits a full fill time before filling. Default false.
    #[serde(default)]
    pub delay_initial_fill: bool,
}

fn default_true() -> bool {
    true
}

fn default_max_idle() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(7200))
}

/// `parameters.lazy_sync`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LazySync {
    /// When true, this policy syncs every `interval / num_sync` instead of the cluster's
    /// `sync_interval`. Default false.
    pub enabled: bool,
    /// Syncs per interval. Default 4, as Aperture.
    pub num_sync: u32,
}

impl Default for LazySync {
    fn default() -> Self {
        LazySync {
            enabled: false,
            num_sync: 4,
        }
    }
}

/// `rate_limiter.request_parameters`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RequestParameters {
    /// Label holding the request's token cost. Absent or label missing: 1 token.
    pub tokens_label_key: Option<String>,
    /// HTTP status a denied request should get. Default 429 Too Many Requests.
    pub denied_response_status_code: Option<StatusCode>,
}

/// An HTTP status code, given as a number (429) or Aperture's enum name (`TooManyRequests`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct StatusCode(pub u16);

impl<'de> Deserialize<'de> for StatusCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u16),
            Name(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(StatusCode(n)),
            Raw::Name(name) => crate::status::code_for_name(&name).map(StatusCode).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "unknown status code name {name:?} (use a number such as 429 or a name such as TooManyRequests)"
                ))
            }),
        }
    }
}

/// A selector: control point plus optional label matcher.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// The control point a flow must name (required).
    pub control_point: String,
    /// Aperture agent group: absent or `default` (every Tollgate node is one group).
    #[serde(default)]
    pub agent_group: Option<String>,
    /// Aperture service: absent or `any` (Tollgate does not resolve services).
    #[serde(default)]
    pub service: Option<String>,
    /// Label conditions, all of which must hold.
    #[serde(default)]
    pub label_matcher: Option<LabelMatcher>,
}

/// `label_matcher:` — every condition must hold.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LabelMatcher {
    /// Labels that must be present with exactly these values.
    pub match_labels: BTreeMap<String, String>,
    /// Set-based conditions.
    pub match_expressions: Vec<MatchExpression>,
}

/// One `match_expressions` entry.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MatchExpression {
    /// The label.
    pub key: String,
    /// The test.
    pub operator: Operator,
    /// Values for In / NotIn.
    #[serde(default)]
    pub values: Vec<String>,
}

/// Label matcher operators, as Kubernetes and Aperture spell them.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum Operator {
    /// The label is present with one of `values`.
    In,
    /// The label is absent, or present with none of `values`.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// `overrides:` entry: scale a bucket for one label value.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Override {
    /// The limit label's value this applies to.
    pub label_value: String,
    /// Capacity and fill multiplier (> 0).
    pub limit_scale_factor: f64,
}

/// An Aperture `rate-limiting/base` blueprint values file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlueprintFile {
    blueprint: String,
    /// Where the blueprint came from; informational.
    #[serde(default)]
    #[allow(dead_code)]
    uri: Option<String>,
    policy: BlueprintPolicy,
    /// Aperture's Grafana dashboard settings; Tollgate has none, accepted and ignored.
    #[serde(default)]
    #[allow(dead_code)]
    dashboard: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    server: ServerConfig,
    #[serde(default)]
    cluster: Option<ClusterConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlueprintPolicy {
    policy_name: String,
    rate_limiter: RateLimiterConfig,
    /// Aperture's extra circuit components; Tollgate runs none of them.
    #[serde(default)]
    components: Option<serde_yaml_ng::Value>,
    /// Aperture's classifiers/flux meters; not supported.
    #[serde(default)]
    resources: Option<serde_yaml_ng::Value>,
}

/// The one blueprint Tollgate understands.
pub const RATE_LIMITING_BLUEPRINT: &str = "rate-limiting/base";

/// One problem in a config: where and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path, e.g. `policies[0].rate_limiter.parameters.interval`.
    pub path: String,
    /// What is wrong, e.g. `missing`.
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

/// A config that could not be used: the file it came from and every problem found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// File name (or `<embedded default>`, `<string>`).
    pub origin: String,
    /// At least one problem.
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}", self.origin, e)?;
        }
        Ok(())
    }
}

/// Reads and validates a config file.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        origin: origin.clone(),
        errors: vec![FieldError {
            path: String::new(),
            reason: format!("cannot read file: {e}"),
        }],
    })?;
    parse_str(&text, &origin)
}

/// Parses and validates config text; `origin` names it in errors.
pub fn parse_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let fail = |errors| ConfigError {
        origin: origin.to_string(),
        errors,
    };
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| {
        fail(vec![FieldError {
            path: String::new(),
            reason: format!("not valid YAML: {e}"),
        }])
    })?;
    let is_blueprint = value
        .as_mapping()
        .is_some_and(|m| m.contains_key("blueprint"));
    let config = if is_blueprint {
        let file: BlueprintFile = deserialize_tracked(value).map_err(|e| fail(vec![e]))?;
        if file.blueprint != RATE_LIMITING_BLUEPRINT {
            return Err(fail(vec![FieldError {
                path: "blueprint".into(),
                reason: format!(
                    "unsupported blueprint {:?} (Tollgate runs {RATE_LIMITING_BLUEPRINT:?})",
                    file.blueprint
                ),
            }]));
        }
        let mut errors = Vec::new();
        if file.policy.components.is_some() {
            errors.push(FieldError {
                path: "policy.components".into(),
                reason: "not supported: Tollgate runs only the rate limiter".into(),
            });
        }
        if file.policy.resources.is_some() {
            errors.push(FieldError {
                path: "policy.resources".into(),
                reason: "not supported: Tollgate has no classifiers or flux meters".into(),
            });
        }
        if !errors.is_empty() {
            return Err(fail(errors));
        }
        Config {
            server: file.server,
            policies: vec![PolicyConfig {
                policy_name: file.policy.policy_name,
                rate_limiter: file.policy.rate_limiter,
            }],
            cluster: file.cluster,
        }
    } else {
        deserialize_tracked(value).map_err(|e| fail(vec![e]))?
    };
    let errors = config.validate(is_blueprint);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(fail(errors))
    }
}

/// serde with the path of the failing field, and serde's wording turned into ours
/// (`missing field `x`` at `a.b` becomes `a.b.x: missing`).
fn deserialize_tracked<T: serde::de::DeserializeOwned>(
    value: serde_yaml_ng::Value,
) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let mut path = e.path().to_string();
        if path == "." {
            path.clear();
        }
        let message = e.inner().to_string();
        let join = |path: &str, field: &str| {
            if path.is_empty() {
                field.to_string()
            } else {
                format!("{path}.{field}")
            }
        };
        if let Some(field) = backticked_after(&message, "missing field ") {
            FieldError {
                path: join(&path, field),
                reason: "missing".into(),
            }
        } else if let Some(field) = backticked_after(&message, "unknown field ") {
            let expected = message
                .split_once(", expected ")
                .map(|(_, rest)| rest.to_string());
            let reason = match expected {
                Some(rest) => format!("unknown field (expected {rest})"),
                None => "unknown field".into(),
            };
            // serde_path_to_error already ends the path with the unknown field.
            let path = if path.ends_with(field) {
                path
            } else {
                join(&path, field)
            };
            FieldError { path, reason }
        } else {
            FieldError {
                path,
                reason: message,
            }
        }
    })
}

fn backticked_after<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = message.strip_prefix(prefix)?.strip_prefix('`')?;
    rest.split('`').next()
}

impl Config {
    /// Rules serde cannot express. Returns every problem, not just the first.
    fn validate(&self, is_blueprint: bool) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut err = |path: String, reason: &str| {
            errors.push(FieldError {
                path,
                reason: reason.to_string(),
            })
        };

        let s = &self.server;
        if let Some(shards) = s.shards {
            if shards == 0 || shards > 1024 {
                err("server.shards".into(), "must be between 1 and 1024");
            }
        }
        if s.max_connections == 0 {
            err("server.max_connections".into(), "must be at least 1");
        }
        if s.max_in_flight == 0 {
            err("server.max_in_flight".into(), "must be at least 1");
        }
        if s.max_frame_len < 1024 || s.max_frame_len > 64 << 20 {
            err(
                "server.max_frame_len".into(),
                "must be between 1024 and 67108864 bytes",
            );
        }
        if s.idle_spin.0 > Duration::from_millis(10) {
            err(
                "server.idle_spin".into(),
                "must be at most 10ms (it keeps an idle core busy)",
            );
        }
        if s.api_keys.iter().any(|k| k.is_empty()) {
            err("server.api_keys".into(), "an API key must not be empty");
        }
        if s.cache.max_entries == 0 {
            err("server.cache.max_entries".into(), "must be at least 1");
        }
        if s.cache.max_entry_bytes > s.cache.max_total_bytes {
            err(
                "server.cache.max_entry_bytes".into(),
                "must not exceed server.cache.max_total_bytes",
            );
        }

        let mut names = std::collections::HashSet::new();
        for (i, p) in self.policies.iter().enumerate() {
            let at = if is_blueprint {
                "policy".to_string()
            } else {
                format!("policies[{i}]")
            };
            if p.policy_name.trim().is_empty() {
                err(format!("{at}.policy_name"), "must not be empty");
            } else if !names.insert(p.policy_name.as_str()) {
                err(format!("{at}.policy_name"), "duplicate policy name");
            }
            let rl = &p.rate_limiter;
            let at = format!("{at}.rate_limiter");
            if !(rl.bucket_capacity.is_finite() && rl.bucket_capacity > 0.0) {
                err(
                    format!("{at}.bucket_capacity"),
                    "must be a number greater than 0",
                );
            }
            if !(rl.fill_amount.is_finite() && rl.fill_amount >= 0.0) {
                err(format!("{at}.fill_amount"), "must be a number, 0 or more");
            }
            if rl.parameters.interval.0.is_zero() {
                err(
                    format!("{at}.parameters.interval"),
                    "must be greater than 0",
                );
            }
            if rl.parameters.max_idle_time.0.is_zero() {
                err(
                    format!("{at}.parameters.max_idle_time"),
                    "must be greater than 0",
                );
            }
            if rl.parameters.lazy_sync.num_sync == 0 {
                err(
                    format!("{at}.parameters.lazy_sync.num_sync"),
                    "must be at least 1",
                );
            }
            if rl.parameters.limit_by_label_key.as_deref() == Some("") {
                err(
                    format!("{at}.parameters.limit_by_label_key"),
                    "must not be empty (omit it for one shared bucket)",
                );
            }
            if rl.request_parameters.tokens_label_key.as_deref() == Some("") {
                err(
                    format!("{at}.request_parameters.tokens_label_key"),
                    "must not be empty",
                );
            }
            if let Some(StatusCode(code)) = rl.request_parameters.denied_response_status_code {
                if !(100..=599).contains(&code) {
                    err(
                        format!("{at}.request_parameters.denied_response_status_code"),
                        "must be an HTTP status between 100 and 599",
                    );
                }
            }
            if rl.selectors.is_empty() {
                err(
                    format!("{at}.selectors"),
                    "at least one selector is required",
                );
            }
            for (j, sel) in rl.selectors.iter().enumerate() {
                let at = format!("{at}.selectors[{j}]");
                if sel.control_point.is_empty() {
                    err(format!("{at}.control_point"), "must not be empty");
                }
                if sel.service.as_deref().is_some_and(|s| s != "any") {
                    err(format!("{at}.service"), "Tollgate does not resolve services: omit it or use `any`, and select with a label matcher");
                }
                if sel.agent_group.as_deref().is_some_and(|g| g != "default") {
                    err(
                        format!("{at}.agent_group"),
                        "Tollgate nodes form one agent group: omit it or use `default`",
                    );
                }
                let Some(m) = &sel.label_matcher else {
                    continue;
                };
                for (k, e) in m.match_expressions.iter().enumerate() {
                    let at = format!("{at}.label_matcher.match_expressions[{k}]");
                    if e.key.is_empty() {
                        err(format!("{at}.key"), "must not be empty");
                    }
                    match e.operator {
                        Operator::In | Operator::NotIn if e.values.is_empty() => err(
                            format!("{at}.values"),
                            "In and NotIn need at least one value",
                        ),
                        Operator::Exists | Operator::DoesNotExist if !e.values.is_empty() => err(
                            format!("{at}.values"),
                            "Exists and DoesNotExist take no values",
                        ),
                        _ => {}
                    }
                }
            }
            let mut seen = std::collections::HashSet::new();
            for (j, o) in rl.overrides.iter().enumerate() {
                let at = format!("{at}.overrides[{j}]");
                if !(o.limit_scale_factor.is_finite() && o.limit_scale_factor > 0.0) {
                    err(
                        format!("{at}.limit_scale_factor"),
                        "must be a number greater than 0",
                    );
                }
                if !seen.insert(o.label_value.as_str()) {
                    err(
                        format!("{at}.label_value"),
                        "duplicate override for this label value",
                    );
                }
                if rl.parameters.limit_by_label_key.is_none() {
                    err(at.clone(), "overrides need parameters.limit_by_label_key (there is only one shared bucket)");
                }
            }
        }

        if let Some(c) = &self.cluster {
            if c.sync_interval.0.is_zero() {
                err("cluster.sync_interval".into(), "must be greater than 0");
            }
            if c.secret_file.is_some() && c.secret.is_some() {
                err(
                    "cluster.secret".into(),
                    "give either secret or secret_file, not both",
                );
            }
            if c.secret.as_deref() == Some("") {
                err("cluster.secret".into(), "must not be empty");
            }
            if c.gossip.trim().is_empty() {
                err("cluster.gossip".into(), "must not be empty");
            }
            if c.node_id.as_deref() == Some("") {
                err("cluster.node_id".into(), "must not be empty");
            }
            if c.node_id.as_ref().is_some_and(|n| n.len() > 64) {
                err("cluster.node_id".into(), "must be at most 64 bytes");
            }
            match c.gossip.parse::<SocketAddr>() {
                Err(_) if !c.gossip.trim().is_empty() => err(
                    "cluster.gossip".into(),
                    "must be an IP address and port, e.g. 0.0.0.0:7946",
                ),
                Ok(addr)
                    if !addr.ip().is_loopback()
                        && c.secret.is_none()
                        && c.secret_file.is_none() =>
                {
                    err(
                        "cluster.secret".into(),
                        "required (or secret_file) when gossip binds a non-loopback address",
                    )
                }
                _ => {}
            }
            if let Some(a) = &c.advertise {
                match a.parse::<SocketAddr>() {
                    Ok(addr) if !addr.ip().is_unspecified() && addr.port() != 0 => {}
                    _ => err(
                        "cluster.advertise".into(),
                        "must be a specific IP address and port, e.g. 10.0.0.5:7946",
                    ),
                }
            }
            if c.seeds
                .iter()
                .any(|s| s.trim().is_empty() || !s.contains(':'))
            {
                err("cluster.seeds".into(), "each seed must be host:port");
            }
            let fd = &c.failure_detection;
            if fd.probe_period.0.is_zero() || fd.probe_rtt.0.is_zero() {
                err(
                    "cluster.failure_detection".into(),
                    "probe_period and probe_rtt must be greater than 0",
                );
            } else if fd.probe_rtt.0 >= fd.probe_period.0 {
                err(
                    "cluster.failure_detection.probe_rtt".into(),
                    "must be less than probe_period",
                );
            }
            if fd.suspect_to_down_after.0.is_zero() {
                err(
                    "cluster.failure_detection.suspect_to_down_after".into(),
                    "must be greater than 0",
                );
            }
        }
        errors
    }
}

mod optional_addr {
    //! `grpc: 127.0.0.1:8089` or `grpc: off`.
    use serde::{Deserialize, Deserializer, Serializer};
    use std::net::SocketAddr;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let s = String::deserialize(d)?;
        if s == "off" {
            return Ok(None);
        }
        s.parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!(
                "{s:?} is not an address like 127.0.0.1:8089 (or `off` to disable)"
            ))
        })
    }

    pub fn serialize<S: Serializer>(v: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str("off"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
server: { listen: 127.0.0.1:7070, shards: 2 }
policies:
  - policy_name: per_user
    rate_limiter:
      bucket_capacity: 60
      fill_amount: 60
      parameters: { interval: 3600s, limit_by_label_key: user, max_idle_time: 7200s,
                    lazy_sync: { enabled: true, num_sync: 4 } }
      request_parameters: { tokens_label_key: tokens, denied_response_status_code: 429 }
      overrides: [ { label_value: admin, limit_scale_factor: 10 } ]
      selectors:
        - control_point: checkout
          label_matcher:
            match_labels: { region: eu }
            match_expressions: [ { key: tier, operator: In, values: [premium] } ]
"#;

    fn errors_of(text: &str) -> Vec<String> {
        parse_str(text, "test.yaml")
            .unwrap_err()
            .errors
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn parses_the_documented_sample() {
        let c = parse_str(SAMPLE, "sample").unwrap();
        assert_eq!(c.server.shards, Some(2));
        let rl = &c.policies[0].rate_limiter;
        assert_eq!(rl.parameters.interval.0, Duration::from_secs(3600));
        assert_eq!(rl.parameters.limit_by_label_key.as_deref(), Some("user"));
        assert_eq!(rl.overrides[0].limit_scale_factor, 10.0);
        assert_eq!(
            rl.request_parameters.denied_response_status_code,
            Some(StatusCode(429))
        );
        assert_eq!(c.server.grpc, Some("127.0.0.1:8089".parse().unwrap()));
    }

    #[test]
    fn missing_interval_names_the_field() {
        let text = SAMPLE.replace("interval: 3600s, ", "");
        assert_eq!(
            errors_of(&text),
            vec!["policies[0].rate_limiter.parameters.interval: missing"]
        );
        let err = parse_str(&text, "p.yaml").unwrap_err().to_string();
        assert_eq!(
            err,
            "p.yaml: policies[0].rate_limiter.parameters.interval: missing"
        );
    }

    #[test]
    fn unknown_field_is_an_error_not_a_default() {
        let text = SAMPLE.replace("bucket_capacity", "bucket_capcity");
        let errs = errors_of(&text);
        assert!(
            errs[0].starts_with("policies[0].rate_limiter.bucket_capcity: unknown field"),
            "{errs:?}"
        );
    }

    #[test]
    fn bad_duration_names_the_field_and_reason() {
        let text = SAMPLE.replace("interval: 3600s", "interval: 3600");
        let errs = errors_of(&text);
        assert!(
            errs[0].starts_with("policies[0].rate_limiter.parameters.interval: invalid duration"),
            "{errs:?}"
        );
    }

    #[test]
    fn validation_reports_every_problem() {
        let text = SAMPLE
            .replace("bucket_capacity: 60", "bucket_capacity: 0")
            .replace("values: [premium]", "values: []")
            .replace("shards: 2", "shards: 0");
        let errs = errors_of(&text);
        assert_eq!(
            errs,
            vec![
                "server.shards: must be between 1 and 1024",
                "policies[0].rate_limiter.bucket_capacity: must be a number greater than 0",
                "policies[0].rate_limiter.selectors[0].label_matcher.match_expressions[0].values: In and NotIn need at least one value",
            ]
        );
    }

    #[test]
    fn accepts_an_aperture_blueprint_values_file() {
        let text = r#"
blueprint: rate-limiting/base
uri: github.com/fluxninja/aperture/blueprints@latest
policy:
  policy_name: api_limit
  rate_limiter:
    bucket_capacity: 40
    fill_amount: 2
    parameters:
      interval: 1s
      limit_by_label_key: user_id
    selectors:
      - control_point: api
    request_parameters:
      denied_response_status_code: TooManyRequests
"#;
        let c = parse_str(text, "bp").unwrap();
        assert_eq!(c.policies.len(), 1);
        assert_eq!(c.policies[0].policy_name, "api_limit");
        assert_eq!(
            c.policies[0]
                .rate_limiter
                .request_parameters
                .denied_response_status_code,
            Some(StatusCode(429))
        );
    }

    #[test]
    fn blueprint_errors_use_blueprint_paths() {
        let text = "blueprint: rate-limiting/base\npolicy:\n  policy_name: x\n  rate_limiter:\n    bucket_capacity: 1\n    fill_amount: 1\n    parameters: {}\n    selectors: [ { control_point: a } ]\n";
        assert_eq!(
            errors_of(text),
            vec!["policy.rate_limiter.parameters.interval: missing"]
        );
        let other = "blueprint: quota-scheduling/base\npolicy: { policy_name: x, rate_limiter: { bucket_capacity: 1, fill_amount: 1, parameters: { interval: 1s }, selectors: [ { control_point: a } ] } }\n";
        assert!(errors_of(other)[0].starts_with("blueprint: unsupported blueprint"));
    }

    #[test]
    fn grpc_can_be_turned_off() {
        let c = parse_str("server: { grpc: off }", "x").unwrap();
        assert_eq!(c.server.grpc, None);
        assert!(errors_of("server: { grpc: nowhere }")[0].starts_with("server.grpc: "));
    }

    #[test]
    fn not_yaml_is_reported() {
        assert!(errors_of("policies: [")[0].starts_with("not valid YAML"));
    }
}
