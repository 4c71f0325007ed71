//! The file-descriptor budget: each port's connection cap must fit the process's
//! `RLIMIT_NOFILE`, so that a flood on one port cannot take the descriptors another needs.
//!
//! At start-up the soft limit is raised to the hard one (what an unprivileged process may
//! do), then the caps are checked against it, with a reserve for everything that is not a
//! client connection:
//!
//! - **one port's cap** (`server.max_connections`, or `server.grpc_connections.max_connections`
//!   with the gRPC port on) plus the reserve above the limit: that port alone could exhaust
//!   the descriptors, so the node **refuses to start**, naming the field and the numbers;
//! - **the sum of the caps** plus the reserve above the limit: each port fits, but floods on
//!   both at once could not be served together and would starve the gossip socket, config
//!   reloads and new io_uring rings: the node starts and logs a **warning** naming the fields
//!   and the numbers. Nothing is lowered: the caps stay as configured.
//!
//! docs/configuration.md ("File descriptors") documents the rule and the reserve.

use anyhow::{bail, Result};

/// Descriptors set aside for the process itself, whatever the shard count. Why this value:
/// standard streams, the listening sockets of the shared, gRPC and admin ports, the gossip
/// socket and its resolver, the config file and its watcher, `/proc` reads, the gRPC and
/// admin runtimes' epoll and event descriptors, and the admin port's connections (it has no
/// cap of its own; an operator's scrapes and CLI calls use a handful) — about 60 in use on
/// a running node, with room for bursts of admin connections.
pub const RESERVED_BASE: u64 = 256;
/// Descriptors set aside per shard. Why this value: glommio opens three io_uring rings per
/// executor (main, latency, poll), an eventfd, a timerfd and a blocking-thread pool's pipes;
/// each shard also has its own listening socket and channel-mesh eventfds, one per peer
/// shard, up to 30 for the largest machines Tollgate targets.
pub const RESERVED_PER_SHARD: u64 = 48;

/// One port's connection cap, named by its config field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortCap {
    /// The config field that sets it, e.g. `server.max_connections`.
    pub field: &'static str,
    /// Its value.
    pub cap: u64,
}

/// What [`judge`] concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every cap fits together.
    Fits,
    /// Each cap fits alone, not all together: the message names the fields and numbers.
    Shared(String),
    /// A cap does not fit even alone: the message names the field and numbers.
    TooSmall(String),
}

/// The reserve for `shards` shards.
pub fn reserve(shards: usize) -> u64 {
    RESERVED_BASE + RESERVED_PER_SHARD * shards as u64
}

/// Checks `caps` against a descriptor `limit` with the reserve for `shards` shards.
pub fn judge(caps: &[PortCap], shards: usize, limit: u64) -> Verdict {
    let reserve = reserve(shards);
    if let Some(p) = caps.iter().find(|p| p.cap.saturating_add(reserve) > limit) {
        return Verdict::TooSmall(format!(
            "{} ({}) plus the reserve for {shards} shard(s) ({reserve}) is {}, above the \
             open-file limit (RLIMIT_NOFILE {limit}): that port alone could exhaust the \
             descriptors; lower {} or raise the limit (ulimit -n, systemd LimitNOFILE=)",
            p.field,
            p.cap,
            p.cap.saturating_add(reserve),
            p.field
        ));
    }
    let sum = caps
        .iter()
        .fold(reserve, |acc, p| acc.saturating_add(p.cap));
    if sum > limit {
        let terms: Vec<String> = caps
            .iter()
            .map(|p| format!("{} ({})", p.field, p.cap))
            .collect();
        return Verdict::Shared(format!(
            "{} plus the reserve for {shards} shard(s) ({reserve}) is {sum}, above the \
             open-file limit (RLIMIT_NOFILE {limit}): a flood on one port can take \
             descriptors the others need; lower the caps or raise the limit",
            terms.join(" + ")
        ));
    }
    Verdict::Fits
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft limit in force
/// (`None` when it cannot be read, or is unlimited).
pub fn raise_open_file_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit; raising the soft limit up to the hard one is
        // always allowed (it fails only above the kernel's nr_open, and then nothing changes).
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    (lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

/// Raises the open-file limit and checks `caps` against it: an error when a cap cannot fit
/// even alone, a warning when they fit only one at a time.
pub fn check(caps: &[PortCap], shards: usize) -> Result<()> {
    let Some(limit) = raise_open_file_limit() else {
        return Ok(());
    };
    match judge(caps, shards, limit) {
        Verdict::Fits => {
            tracing::debug!(limit, reserve = reserve(shards), "descriptor budget fits");
            Ok(())
        }
        Verdict::Shared(message) => {
            tracing::warn!("{message}");
            Ok(())
        }
        Verdict::TooSmall(message) => bail!("{message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BINARY: PortCap = PortCap {
        field: "server.max_connections",
        cap: 10_000,
    };
    const GRPC: PortCap = PortCap {
        field: "server.grpc_connections.max_connections",
        cap: 10_000,
    };

    #[test]
    fn caps_that_fit_together_fit() {
        let limit = 20_000 + reserve(4);
        assert_eq!(judge(&[BINARY, GRPC], 4, limit), Verdict::Fits);
        assert_eq!(judge(&[BINARY], 4, 10_000 + reserve(4)), Verdict::Fits);
    }

    #[test]
    fn caps_that_fit_only_alone_are_a_warning_naming_every_field() {
        let limit = 20_000 + reserve(4) - 1;
        let Verdict::Shared(message) = judge(&[BINARY, GRPC], 4, limit) else {
            panic!("not a warning")
        };
        assert!(
            message.contains("server.max_connections (10000)"),
            "{message}"
        );
        assert!(
            message.contains("server.grpc_connections.max_connections (10000)"),
            "{message}"
        );
        assert!(
            message.contains(&format!("RLIMIT_NOFILE {limit}")),
            "{message}"
        );
    }

    #[test]
    fn a_cap_that_cannot_fit_alone_is_refused_with_its_field() {
        let small = PortCap {
            field: "server.grpc_connections.max_connections",
            cap: 100,
        };
        let Verdict::TooSmall(message) = judge(&[BINARY, small], 2, 2_000) else {
            panic!("not refused")
        };
        assert!(
            message.starts_with(&format!(
                "server.max_connections (10000) plus the reserve for 2 shard(s) ({})",
                reserve(2)
            )),
            "{message}"
        );
        assert!(message.contains("RLIMIT_NOFILE 2000"), "{message}");
        assert_eq!(
            judge(&[BINARY], 2, u64::MAX),
            Verdict::Fits,
            "no overflow at an unlimited limit"
        );
    }
}
