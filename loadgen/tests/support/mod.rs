//! What the e2e tests need beyond cargo — redis-server, for the Redis+Lua baseline
//! (`scripts/install-redis.sh` installs it) — and the one rule for when it is missing: under CI
//! the test fails with the reason; elsewhere it prints why it skips and passes, so
//! `cargo test` works on a machine without Redis.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether this run is CI: `CI` is set to anything but "", "0" or "false" (CI services set
/// `CI=true`; `.ci/run` does too). A test that cannot run under CI must fail, not pass.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

/// The dependency `what` when `probe` found it. When it did not: under CI, fails the calling
/// test with the reason; elsewhere prints `skipped: <test>: <what>: <reason>` and returns
/// `None`, and the test returns early.
#[track_caller]
pub fn require<T>(what: &str, probe: Result<T, String>) -> Option<T> {
    match probe {
        Ok(dep) => Some(dep),
        Err(reason) if under_ci() => panic!("{what}: missing, and required under CI: {reason}"),
        Err(reason) => {
            let test = std::thread::current().name().unwrap_or("test").to_string();
            println!("skipped: {test}: {what}: {reason}");
            None
        }
    }
}

/// How long redis-server may take to accept connections (it starts in milliseconds; this only
/// bounds a hang).
const REDIS_START_TIMEOUT: Duration = Duration::from_secs(10);

/// A private redis-server on a free port; killed on drop.
pub struct Redis {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts redis-server (no persistence) on a free port and waits until it accepts connections.
pub fn redis_server() -> Result<Redis, String> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))?;
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run redis-server ({e}): run scripts/install-redis.sh"))?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let redis = Redis { child, addr };
    let deadline = Instant::now() + REDIS_START_TIMEOUT;
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return Err(format!(
                "redis-server did not listen on {addr} within {REDIS_START_TIMEOUT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(redis)
}
