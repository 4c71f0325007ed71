//! The gRPC port's part of the `server:` section: TLS, cache bounds and connection bounds,
//! with their validation, and [`GrpcSettings`], everything [`crate::start`] needs.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;
use tollgate_policy::config::{join, Problems};
use tollgate_policy::duration::ConfigDuration;

/// What the gRPC port runs with (taken from the `server:` section by the server crate).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GrpcSettings {
    /// API keys accepted (`x-api-key`). Empty = no authentication.
    pub api_keys: Vec<String>,
    /// TLS; None = plaintext.
    pub tls: Option<TlsConfig>,
    /// Bounds of the result/global cache.
    pub cache: CacheConfig,
    /// Bounds on the port's connections.
    pub connections: ConnectionConfig,
}

/// `server.grpc_connections` — bounds on the gRPC port's TCP connections
/// ([`crate::connections`]).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionConfig {
    /// Open connections beyond which a new one is closed at once. Default 10,000: as the
    /// binary port's `server.max_connections`, far above what a service fleet opens (each SDK
    /// client keeps one or two), well below file-descriptor limits.
    pub max_connections: usize,
    /// How long a new connection has to send its first bytes (the HTTP/2 connection preface,
    /// or with TLS the start of its handshake), and with TLS to finish its handshake; a
    /// connection that has not by then is closed.
    /// Default 10s: SDKs send the preface as soon as they connect, and 10 s leaves room for a
    /// slow network while a silent connection cannot hold its slot for long.
    pub handshake_timeout: ConfigDuration,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            max_connections: 10_000,
            handshake_timeout: ConfigDuration(Duration::from_secs(10)),
        }
    }
}

impl ConnectionConfig {
    /// Checks the bounds at `at` (e.g. `server.grpc_connections`).
    pub fn validate(&self, at: &str, problems: &mut Problems) {
        if self.max_connections == 0 {
            problems.at(join(at, "max_connections"), "must be at least 1");
        }
        if self.handshake_timeout.0.is_zero() {
            problems.at(join(at, "handshake_timeout"), "must be more than 0s");
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

impl CacheConfig {
    /// Checks the cache bounds at `at` (e.g. `server.cache`).
    pub fn validate(&self, at: &str, problems: &mut Problems) {
        if self.max_entries == 0 {
            problems.at(join(at, "max_entries"), "must be at least 1");
        }
        if self.max_entry_bytes > self.max_total_bytes {
            problems.at(
                join(at, "max_entry_bytes"),
                "must not exceed server.cache.max_total_bytes",
            );
        }
    }
}
