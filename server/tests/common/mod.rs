//! Starting the real `tollgate` binary for integration tests: free ports (port 0), a
//! config file in a temp dir, and readiness from the server's own "tollgate ready" log
//! line rather than a sleep.
#![allow(dead_code)]

pub mod certs;
pub mod deps;
pub mod script;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a test waits for the ready line before failing (a debug build on a loaded
/// 2-core CI machine starts in well under a second; this only bounds a hang).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running server process; killed on drop.
pub struct RunningServer {
    /// The shared binary-protocol address.
    pub listen: SocketAddr,
    /// The gRPC compat address, when enabled.
    pub grpc: Option<SocketAddr>,
    /// The admin HTTP address, when enabled.
    pub admin: Option<SocketAddr>,
    /// Shard-aware ports, index = shard.
    pub shard_ports: Vec<u16>,
    /// The process.
    pub child: Child,
    /// Log lines after the ready line (stderr), for tests that look at logs.
    pub logs: mpsc::Receiver<String>,
    /// The config file's directory (kept alive with the server).
    pub dir: PathBuf,
}

impl RunningServer {
    /// `host:port` of the shared port.
    pub fn addr(&self) -> String {
        self.listen.to_string()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().expect("wait for server")
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh temp directory for one test.
pub fn temp_dir(tag: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tollgate-test-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// The binary under test.
pub fn tollgate_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tollgate")
}

/// Writes `yaml` to a temp file and starts `tollgate serve --config FILE extra_args...`,
/// returning once the server logged its ready line. Unless the config or the arguments
/// name an admin address, the admin port binds port 0 (its default, 9090, would collide
/// between tests running in parallel).
pub fn start_server_with_args(yaml: &str, extra_args: &[&str]) -> RunningServer {
    let mut extra_args = extra_args.to_vec();
    if !yaml.contains("admin:") && !extra_args.contains(&"--admin") {
        extra_args.extend(["--admin", "127.0.0.1:0"]);
    }
    let dir = temp_dir("server");
    let config = dir.join("config.yaml");
    std::fs::write(&config, yaml).expect("write config");
    let mut child = Command::new(tollgate_bin())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .args(&extra_args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tollgate");
    let stderr = child.stderr.take().expect("stderr piped");
    let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
    let (log_tx, log_rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut ready_sent = false;
        let mut early = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if !ready_sent {
                if line.contains("tollgate ready") {
                    let _ = ready_tx.send(Ok(line));
                    ready_sent = true;
                } else {
                    early.push(line);
                }
            } else {
                let _ = log_tx.send(line);
            }
        }
        if !ready_sent {
            let _ = ready_tx.send(Err(early.join("\n")));
        }
    });
    let line = match ready_rx.recv_timeout(READY_TIMEOUT) {
        Ok(Ok(line)) => line,
        Ok(Err(output)) => {
            let status = child.wait().ok();
            panic!("server exited before ready ({status:?}):\n{output}");
        }
        Err(_) => {
            let _ = child.kill();
            panic!("server not ready within {READY_TIMEOUT:?}");
        }
    };
    let field = |name: &str| -> Option<String> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .map(|v| v.trim_matches('"').to_string())
    };
    let listen: SocketAddr = field("listen")
        .expect("listen= in ready line")
        .parse()
        .expect("listen addr");
    let grpc = field("grpc")
        .filter(|g| g != "off")
        .map(|g| g.parse().expect("grpc addr"));
    let admin = field("admin")
        .filter(|a| a != "off")
        .map(|a| a.parse().expect("admin addr"));
    let shard_ports = field("shard_ports")
        .unwrap_or_default()
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().expect("port"))
        .collect();
    RunningServer {
        listen,
        grpc,
        admin,
        shard_ports,
        child,
        logs: log_rx,
        dir,
    }
}

/// Starts the server with this config (which should bind port 0 everywhere).
pub fn start_server(yaml: &str) -> RunningServer {
    start_server_with_args(yaml, &[])
}

/// The sum over shards (and any other labels) of the counter family `family` (e.g.
/// `tollgate_binary_idle_closes_total`) on `server`'s `/metrics`; 0 when absent.
pub fn metric_sum(server: &RunningServer, family: &str) -> f64 {
    let admin = server.admin.expect("the admin port is on").to_string();
    let client =
        tollgate_server::admin::client::AdminClient::new(&admin, None, Duration::from_secs(10));
    let (status, text) = client.get("/metrics").expect("scrape");
    assert_eq!(status, 200, "{text}");
    let labelled = format!("{family}{{");
    text.lines()
        .filter(|l| l.starts_with(&labelled) || l.starts_with(&format!("{family} ")))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// `tollgate check` of one flow labelled `user=USER` at `control_point`: whether it was
/// accepted (exit 0; exit 1 is a rejection, anything else fails the test).
pub fn cli_check(server: &RunningServer, control_point: &str, user: &str) -> bool {
    let label = format!("user={user}");
    let (code, _, err) = run_cli(&[
        "check",
        "--server",
        &server.addr(),
        "--control-point",
        control_point,
        "--label",
        &label,
    ]);
    assert!(code == 0 || code == 1, "check failed: {err}");
    code == 0
}

/// Runs `tollgate ARGS...` to completion: (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(tollgate_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run tollgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
