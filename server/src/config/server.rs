//! `server:` — this node's listeners and per-node limits.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;
use tollgate_grpc::{CacheConfig, ConnectionConfig, GrpcSettings, TlsConfig};
use tollgate_policy::config::problems::check_name_len;
use tollgate_policy::config::{join, Problems};
use tollgate_policy::duration::ConfigDuration;
use tollgate_policy::ShardLimits;
use tollgate_protocol::MAX_API_KEY_LEN;

/// Most threads `server.grpc_threads` may ask for: far above any core count a node gives
/// the port; beyond it threads only add context switches.
pub const MAX_GRPC_THREADS: usize = 64;

/// Shards a node may run: at least one, and no more than 1,024 (far above any core count
/// this runs on; bounds the channel mesh, which is quadratic in shards).
pub const MAX_SHARDS: usize = 1024;

/// Most waiters or flows in flight one shard may be configured to hold: 16,777,216, about
/// 2.5 GB of waiter state or 2 GB of flows per shard. Far above any real need; it keeps a
/// typo (an extra digit or three) from letting a flood exhaust memory.
pub const MAX_PER_SHARD_BOUND: usize = 1 << 24;

/// Longest `max_queue_wait` accepted: an hour. A flow that waits longer is better refused
/// and retried by its client.
pub const MAX_QUEUE_WAIT: Duration = Duration::from_secs(3600);

/// Default `idle_timeout`: five minutes, far above any client's gap between requests on a
/// connection it means to keep.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Longest `idle_timeout` accepted: a day.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(86_400);

/// Checks a shard count (from `server.shards` or `--shards`).
pub fn check_shards(shards: usize) -> Result<(), String> {
    if shards == 0 || shards > MAX_SHARDS {
        Err(format!("must be between 1 and {MAX_SHARDS}"))
    } else {
        Ok(())
    }
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
    /// API keys accepted on the gRPC port (`x-api-key`) and the binary ports (in `HELLO`,
    /// before any other request). Empty = no authentication.
    pub api_keys: Vec<String>,
    /// TLS for the gRPC port (the Aperture SDKs default to TLS). Absent = plaintext.
    pub tls: Option<TlsConfig>,
    /// TLS for the binary ports, shared and shard-aware alike (`cert`, `key`: PEM files, as
    /// `tls`; the same files may serve both). Absent = plaintext.
    pub binary_tls: Option<TlsConfig>,
    /// Bounds of the gRPC result/global cache.
    pub cache: CacheConfig,
    /// Bounds on the gRPC port's connections (cap, handshake timeout).
    pub grpc_connections: ConnectionConfig,
    /// Threads serving the gRPC port, each its own tokio runtime and listener on the same
    /// address (SO_REUSEPORT: the kernel spreads connections over them). Default 1: one
    /// thread's HTTP/2 work keeps up with what the shards decide on small nodes; raise it
    /// when that thread is the busy one (docs/grpc.md, "Threads"). 1 to
    /// [`MAX_GRPC_THREADS`].
    pub grpc_threads: usize,
    /// Open binary connections per node beyond which new ones are closed at once.
    /// Default 10,000: far above what a service fleet needs, well below fd limits.
    pub max_connections: usize,
    /// Open binary connections from one peer address (IP, any port) beyond which new ones
    /// from it are refused (an `ERROR` `OVERLOADED` frame, then close). Default 1,000: a
    /// client process needs one per shard; it keeps one runaway host from taking the whole
    /// `max_connections`.
    pub max_connections_per_peer: usize,
    /// A binary connection that sends no complete frame for this long, with no request of
    /// it pending, is closed (a client that vanished without a FIN, or a peer trickling a
    /// frame byte by byte). Default 300s; `0s` disables it.
    pub idle_timeout: ConfigDuration,
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
    /// Run the completions of each shard's main io_uring ring cooperatively
    /// (`IORING_SETUP_COOP_TASKRUN`, Linux 5.19+; ignored with a warning on older kernels).
    /// Default true: a socket that becomes readable no longer interrupts its busy shard with
    /// an inter-processor interrupt; the shard picks the completion up at its next system
    /// call, or, when it has none to make, enters the kernel for it on the next poll of its
    /// rings (the ring flags waiting completions). Measured at 50 connections x
    /// depth 1: about a fifth less CPU per request on both server and client
    /// (docs/performance.md). false = glommio's upstream behaviour. Applies only while
    /// `idle_spin` is 0s: a spinning shard makes no system call to pick the completion up,
    /// so with `idle_spin` the shards keep the interrupt.
    pub coop_taskrun: bool,
    /// Live buckets per node, split evenly over the shards; at the cap a new key evicts a
    /// bucket (full ones first). Default (absent): sized from this machine's memory, see
    /// [`default_max_buckets`].
    pub max_buckets: Option<u64>,
    /// Flows one shard lets wait in its scheduler queues (quota and concurrency
    /// schedulers); beyond it a flow that would wait is refused at once (`queue_full`).
    /// Default 65,536 (about 10 MB of waiter state per shard).
    pub max_waiters_per_shard: usize,
    /// Flows one shard keeps in flight on its concurrency components; beyond it a flow is
    /// refused (`too_many_flows`). Default 262,144 (about 30 MB per shard).
    pub max_flows_per_shard: usize,
    /// Longest a flow that brings no deadline of its own (a gRPC call without
    /// `grpc-timeout`) waits in a scheduler queue. Default 60s.
    pub max_queue_wait: ConfigDuration,
    /// The admin HTTP port (`/healthz`, `/readyz`, `/metrics`, the JSON API: docs/admin.md).
    /// Default 127.0.0.1:9090, loopback like the other defaults; `off` disables it.
    #[serde(with = "optional_addr")]
    pub admin: Option<SocketAddr>,
    /// Bearer token the admin port requires (`Authorization: Bearer TOKEN`) on every path
    /// but `/healthz`. Absent = no authentication (keep the port on loopback then).
    pub admin_token: Option<String>,
    /// Record metrics (`/metrics`, top keys). Default true; false turns every recording
    /// call on the decision path into an early return, e.g. to measure their cost.
    pub metrics: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            shards: None,
            grpc: Some(SocketAddr::from(([127, 0, 0, 1], 8089))),
            api_keys: Vec::new(),
            tls: None,
            binary_tls: None,
            cache: CacheConfig::default(),
            grpc_connections: ConnectionConfig::default(),
            grpc_threads: 1,
            max_connections: 10_000,
            max_connections_per_peer: 1_000,
            idle_timeout: ConfigDuration(DEFAULT_IDLE_TIMEOUT),
            max_in_flight: 4_096,
            max_frame_len: 1 << 20,
            drain_timeout: ConfigDuration(Duration::from_secs(5)),
            node_id: None,
            idle_spin: ConfigDuration(Duration::ZERO),
            coop_taskrun: true,
            max_buckets: None,
            max_waiters_per_shard: ShardLimits::default().max_waiters,
            max_flows_per_shard: ShardLimits::default().max_flows,
            max_queue_wait: ConfigDuration(Duration::from_nanos(
                ShardLimits::default().max_wait_ns,
            )),
            admin: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            admin_token: None,
            metrics: true,
        }
    }
}

impl ServerConfig {
    /// Checks the section (its path is `server`).
    pub fn validate(&self, problems: &mut Problems) {
        let at = "server";
        if let Some(shards) = self.shards {
            if let Err(reason) = check_shards(shards) {
                problems.at(join(at, "shards"), reason);
            }
        }
        if self.max_connections == 0 {
            problems.at(join(at, "max_connections"), "must be at least 1");
        }
        if self.max_connections_per_peer == 0 {
            problems.at(join(at, "max_connections_per_peer"), "must be at least 1");
        }
        let idle = self.idle_timeout.0;
        if !idle.is_zero() && (idle < Duration::from_secs(1) || idle > MAX_IDLE_TIMEOUT) {
            problems.at(
                join(at, "idle_timeout"),
                "must be between 1s and 86400s (or 0s to disable)",
            );
        }
        if self.max_in_flight == 0 {
            problems.at(join(at, "max_in_flight"), "must be at least 1");
        }
        match self.node_id.as_deref() {
            Some("") => problems.at(
                join(at, "node_id"),
                "must not be empty (omit it for the host name)",
            ),
            // Every client's HELLO is answered with it.
            Some(id) => check_name_len(id, || join(at, "node_id"), problems),
            None => {}
        }
        if self.max_frame_len < 1024 || self.max_frame_len > 64 << 20 {
            problems.at(
                join(at, "max_frame_len"),
                "must be between 1024 and 67108864 bytes",
            );
        }
        if self.idle_spin.0 > Duration::from_millis(10) {
            problems.at(
                join(at, "idle_spin"),
                "must be at most 10ms (it keeps an idle core busy)",
            );
        }
        if let Some(max) = self.max_buckets {
            if max == 0 {
                problems.at(join(at, "max_buckets"), "must be at least 1");
            } else if let Some(shards) = self.shards.filter(|&s| max < s as u64) {
                problems.at(
                    join(at, "max_buckets"),
                    format!("must be at least the number of shards ({shards}): each shard needs room for one"),
                );
            }
        }
        for (field, value) in [
            ("max_waiters_per_shard", self.max_waiters_per_shard),
            ("max_flows_per_shard", self.max_flows_per_shard),
        ] {
            if value == 0 || value > MAX_PER_SHARD_BOUND {
                problems.at(
                    join(at, field),
                    format!("must be between 1 and {MAX_PER_SHARD_BOUND}"),
                );
            }
        }
        if self.max_queue_wait.0 < Duration::from_millis(1)
            || self.max_queue_wait.0 > MAX_QUEUE_WAIT
        {
            problems.at(join(at, "max_queue_wait"), "must be between 1ms and 3600s");
        }
        if let Some(token) = &self.admin_token {
            if let Err(reason) = check_admin_token(token) {
                problems.at(join(at, "admin_token"), reason);
            }
        }
        if self.api_keys.iter().any(|k| k.is_empty()) {
            problems.at(join(at, "api_keys"), "an API key must not be empty");
        }
        if self.api_keys.iter().any(|k| k.len() > MAX_API_KEY_LEN) {
            problems.at(
                join(at, "api_keys"),
                format!(
                    "an API key is at most {MAX_API_KEY_LEN} bytes (binary clients send it in HELLO)"
                ),
            );
        }
        if let Some(tls) = &self.binary_tls {
            for (field, path) in [("cert", &tls.cert), ("key", &tls.key)] {
                if path.as_os_str().is_empty() {
                    problems.at(join(&join(at, "binary_tls"), field), "must name a PEM file");
                }
            }
        }
        self.cache.validate(&join(at, "cache"), problems);
        self.grpc_connections
            .validate(&join(at, "grpc_connections"), problems);
        if !(1..=MAX_GRPC_THREADS).contains(&self.grpc_threads) {
            problems.at(
                join(at, "grpc_threads"),
                format!("must be from 1 to {MAX_GRPC_THREADS}"),
            );
        }
    }

    /// The node's cap on live buckets: `max_buckets`, else [`default_max_buckets`].
    pub fn bucket_cap(&self) -> BucketCap {
        match self.max_buckets {
            Some(max) => BucketCap {
                max_buckets: usize::try_from(max).unwrap_or(usize::MAX),
                source: "server.max_buckets".to_string(),
            },
            None => default_max_buckets(),
        }
    }

    /// The bounds of each shard's state (waiters, flows in flight, longest wait).
    pub fn shard_limits(&self) -> ShardLimits {
        ShardLimits {
            max_waiters: self.max_waiters_per_shard,
            max_flows: self.max_flows_per_shard,
            max_wait_ns: u64::try_from(self.max_queue_wait.0.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// What the gRPC port runs with.
    pub fn grpc_settings(&self) -> GrpcSettings {
        GrpcSettings {
            api_keys: self.api_keys.clone(),
            tls: self.tls.clone(),
            cache: self.cache.clone(),
            connections: self.grpc_connections.clone(),
        }
    }
}

/// Checks an admin token (from `server.admin_token`): it travels in an HTTP header, so
/// it must be visible ASCII, and long enough not to be guessed.
pub fn check_admin_token(token: &str) -> Result<(), String> {
    if token.len() < 16 {
        return Err("must be at least 16 characters".into());
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be printable ASCII without spaces (it is sent in an HTTP header)".into());
    }
    Ok(())
}

mod optional_addr {
    //! `grpc: 127.0.0.1:8089` or `grpc: off` (also `admin:`).
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

/// Bytes the default cap assumes one live bucket costs. Why this value: the
/// `bucket_memory` bench measures 66–94 bytes per bucket with keys of up to 13 bytes
/// (stored inline) depending on how full the tables are, and the allocator adds a little;
/// 128 leaves a margin. A bucket with a longer key costs ~56 bytes plus the key rounded up
/// to the allocator's size class (docs/configuration.md).
pub const ASSUMED_BYTES_PER_BUCKET: u64 = 128;

/// Share of the memory limit the default cap lets buckets use: half, leaving the rest to
/// connections, the gRPC cache, transient growth steps and the OS.
pub const BUCKET_MEMORY_SHARE_DIVISOR: u64 = 2;

/// Memory assumed when no limit can be read (not Linux, /proc unreadable): 1 GiB.
const FALLBACK_MEMORY: u64 = 1 << 30;

/// A node's cap on live buckets, and where it came from (logged at start).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketCap {
    /// Live buckets on the node, all shards together.
    pub max_buckets: usize,
    /// `server.max_buckets`, or the memory limit the default was sized from.
    pub source: String,
}

impl BucketCap {
    /// Shard `shard`'s share of the cap: an even split, the first `max % shards` shards
    /// taking one more.
    pub fn per_shard(&self, shard: usize, shards: usize) -> usize {
        let shards = shards.max(1);
        self.max_buckets / shards + usize::from(shard < self.max_buckets % shards)
    }
}

/// The default cap: half the memory this process may use, at
/// [`ASSUMED_BYTES_PER_BUCKET`] each. The memory limit is the smallest of the machine's
/// memory (`MemTotal`), the cgroup's limit (`memory.max`, v1 `memory.limit_in_bytes`) and
/// the address-space limit (`RLIMIT_AS`); 1 GiB if none can be read. 24 GiB gives
/// ~100 M buckets; a 1 GiB container ~4.2 M.
pub fn default_max_buckets() -> BucketCap {
    let (memory, source) = memory_limit().unwrap_or((FALLBACK_MEMORY, "no readable limit: 1 GiB"));
    let max = memory / BUCKET_MEMORY_SHARE_DIVISOR / ASSUMED_BYTES_PER_BUCKET;
    BucketCap {
        max_buckets: usize::try_from(max).unwrap_or(usize::MAX).max(1),
        source: format!("default: {source} {memory} bytes / {BUCKET_MEMORY_SHARE_DIVISOR} / {ASSUMED_BYTES_PER_BUCKET} bytes per bucket"),
    }
}

/// The smallest memory limit that applies to this process, and which one it is.
fn memory_limit() -> Option<(u64, &'static str)> {
    let limits = [
        (meminfo_total(), "MemTotal"),
        (cgroup_limit(), "cgroup memory limit"),
        (address_space_limit(), "RLIMIT_AS"),
    ];
    limits
        .into_iter()
        .filter_map(|(limit, name)| limit.map(|bytes| (bytes, name)))
        .min_by_key(|&(bytes, _)| bytes)
}

/// `MemTotal` from /proc/meminfo, in bytes.
fn meminfo_total() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    kib.checked_mul(1024)
}

/// This process's cgroup memory limit (v2 `memory.max`, else v1 `memory.limit_in_bytes`),
/// if one is set.
fn cgroup_limit() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut candidates = Vec::new();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            candidates.push(format!("/sys/fs/cgroup{path}/memory.max"));
        } else if controllers.split(',').any(|c| c == "memory") {
            candidates.push(format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"));
        }
    }
    // Inside a container's cgroup namespace the paths above may not resolve: its own
    // cgroup is the mount's root.
    candidates.push("/sys/fs/cgroup/memory.max".to_string());
    candidates.push("/sys/fs/cgroup/memory/memory.limit_in_bytes".to_string());
    candidates.iter().find_map(|path| {
        let text = std::fs::read_to_string(path).ok()?;
        // "max" (v2) or a huge number (v1) means no limit.
        text.trim().parse::<u64>().ok().filter(|&b| b < 1 << 60)
    })
}

/// RLIMIT_AS (address space), if limited.
fn address_space_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `limit`.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } == 0;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems_of(server: &ServerConfig) -> Vec<String> {
        let mut problems = Problems::new();
        server.validate(&mut problems);
        problems
            .errors()
            .iter()
            .map(|p| format!("{}: {}", p.path, p.reason))
            .collect()
    }

    #[test]
    fn max_buckets_needs_room_for_every_shard() {
        let mut server = ServerConfig {
            max_buckets: Some(0),
            ..ServerConfig::default()
        };
        assert_eq!(
            problems_of(&server),
            ["server.max_buckets: must be at least 1"]
        );
        server.max_buckets = Some(3);
        server.shards = Some(4);
        assert_eq!(
            problems_of(&server),
            ["server.max_buckets: must be at least the number of shards (4): each shard needs room for one"]
        );
        server.shards = Some(3);
        assert!(problems_of(&server).is_empty());
    }

    #[test]
    fn the_cap_splits_evenly_over_shards() {
        let cap = BucketCap {
            max_buckets: 10,
            source: "test".into(),
        };
        let shares: Vec<usize> = (0..4).map(|s| cap.per_shard(s, 4)).collect();
        assert_eq!(shares, [3, 3, 2, 2]);
        assert_eq!(shares.iter().sum::<usize>(), 10);
    }

    #[test]
    fn the_default_cap_follows_the_memory_limit() {
        let cap = default_max_buckets();
        let (memory, _) = memory_limit().unwrap_or((FALLBACK_MEMORY, ""));
        assert_eq!(
            cap.max_buckets as u64,
            (memory / BUCKET_MEMORY_SHARE_DIVISOR / ASSUMED_BYTES_PER_BUCKET).max(1)
        );
        assert!(cap.source.starts_with("default: "), "{}", cap.source);
    }
}
