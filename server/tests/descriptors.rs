//! The descriptor budget with the real binary under a given `RLIMIT_NOFILE` (set in the
//! child before it runs): a connection cap that cannot fit the limit even alone refuses
//! the start with the field and the numbers; caps that fit only one at a time start with a
//! warning; the defaults start under the limit the test itself runs with.
//!
//! Nothing sleeps: each run reads the server's stderr until its ready line or its exit.

mod common;

use common::{temp_dir, tollgate_bin, READY_TIMEOUT};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use tollgate_server::descriptors::reserve;

/// How a run ended: ready (then killed) or exited, with every stderr line up to then.
struct Outcome {
    ready: bool,
    code: Option<i32>,
    stderr: String,
}

/// Runs `tollgate serve` on `yaml` with `RLIMIT_NOFILE` set to (`soft`, `hard`) before
/// exec, until its ready line (then stops it) or its exit.
fn serve_with_nofile(yaml: &str, soft: u64, hard: u64) -> Outcome {
    let dir = temp_dir("nofile");
    let config = dir.join("config.yaml");
    std::fs::write(&config, yaml).expect("write config");
    let mut command = Command::new(tollgate_bin());
    command
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--admin", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        command.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut child = command.spawn().expect("spawn tollgate");
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = mpsc::channel::<(bool, String)>();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let ready = line.contains("tollgate ready");
            lines.push(line);
            if ready {
                let _ = tx.send((true, lines.join("\n")));
                return;
            }
        }
        let _ = tx.send((false, lines.join("\n")));
    });
    let (ready, stderr) = rx
        .recv_timeout(READY_TIMEOUT)
        .unwrap_or_else(|_| panic!("neither ready nor exited within {READY_TIMEOUT:?}"));
    if ready {
        let _ = child.kill();
    }
    let code = child.wait().expect("wait").code();
    let _ = std::fs::remove_dir_all(&dir);
    Outcome {
        ready,
        code: if ready { None } else { code },
        stderr,
    }
}

fn config(server_extra: &str) -> String {
    format!(
        r#"
server: {{ listen: 127.0.0.1:0, grpc: 127.0.0.1:0, shards: 2{server_extra} }}
policies:
  - policy_name: per_user
    rate_limiter:
      bucket_capacity: 3
      fill_amount: 1
      parameters: {{ interval: 1s, limit_by_label_key: user }}
      selectors: [{{ control_point: api }}]
"#
    )
}

/// The current hard limit of this (test) process.
fn hard_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `lim`.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim.rlim_max
}

#[test]
fn a_cap_that_cannot_fit_the_open_file_limit_refuses_the_start() {
    let out = serve_with_nofile(&config(""), 2_000, 2_000);
    assert!(
        !out.ready,
        "started under 2,000 descriptors:\n{}",
        out.stderr
    );
    assert_ne!(out.code, Some(0), "{}", out.stderr);
    let want = format!(
        "server.max_connections (10000) plus the reserve for 2 shard(s) ({}) is {}, above the \
         open-file limit (RLIMIT_NOFILE 2000)",
        reserve(2),
        10_000 + reserve(2)
    );
    assert!(
        out.stderr.contains(&want),
        "no {want:?} in:\n{}",
        out.stderr
    );

    // The gRPC port's cap is checked too, by its own field.
    let out = serve_with_nofile(&config(", max_connections: 500"), 2_000, 2_000);
    assert!(!out.ready, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("server.grpc_connections.max_connections (10000) plus the reserve"),
        "{}",
        out.stderr
    );
}

#[test]
fn caps_that_fit_only_one_at_a_time_start_with_a_warning() {
    let caps = ", max_connections: 1000, grpc_connections: { max_connections: 1000 }";
    let out = serve_with_nofile(&config(caps), 2_000, 2_000);
    assert!(out.ready, "did not start:\n{}", out.stderr);
    let want = format!(
        "server.max_connections (1000) + server.grpc_connections.max_connections (1000) plus \
         the reserve for 2 shard(s) ({}) is {}, above the open-file limit (RLIMIT_NOFILE 2000)",
        reserve(2),
        2_000 + reserve(2)
    );
    assert!(
        out.stderr.contains(&want),
        "no {want:?} in:\n{}",
        out.stderr
    );
    assert!(
        out.stderr
            .lines()
            .any(|l| l.contains("WARN") && l.contains(&want)),
        "not a warning:\n{}",
        out.stderr
    );

    // Caps that fit together: no warning.
    let caps = ", max_connections: 500, grpc_connections: { max_connections: 500 }";
    let out = serve_with_nofile(&config(caps), 2_000, 2_000);
    assert!(out.ready, "did not start:\n{}", out.stderr);
    assert!(!out.stderr.contains("RLIMIT_NOFILE"), "{}", out.stderr);
}

/// The soft limit is raised to the hard one: a soft limit of 1,024 (a common default) with
/// this process's hard limit starts the defaults whenever that hard limit holds one cap.
#[test]
fn the_defaults_start_under_a_low_soft_limit_when_the_hard_limit_allows() {
    let hard = hard_limit();
    let holds_a_default_cap = if hard >= 10_000 + reserve(2) {
        Ok(hard)
    } else {
        Err(format!(
            "the hard RLIMIT_NOFILE ({hard}) holds no default cap"
        ))
    };
    let Some(hard) = common::deps::require("a hard open-file limit", holds_a_default_cap) else {
        return;
    };
    let out = serve_with_nofile(&config(""), 1_024, hard);
    assert!(out.ready, "defaults did not start:\n{}", out.stderr);
}
