//! Running an SDK driver script (tests/sdk/*.py, *.mjs) that prints one JSON object per
//! line: within a time bound, both pipes read on threads so a chatty script cannot block on
//! a full pipe.

use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `cmd` to completion within `timeout`; returns (the JSON lines of stdout, stderr).
/// Panics (the test's failure report) when it fails, runs past `timeout` or prints a line
/// starting with `{` that is not JSON.
pub fn run_json_lines(mut cmd: Command, timeout: Duration) -> (Vec<Value>, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn SDK script");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            panic!("{cmd:?} ran past {timeout:?}");
        }
        // Polling the child's exit, not ordering events.
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out_t.join().expect("stdout reader");
    let stderr = err_t.join().expect("stderr reader");
    assert!(
        status.success(),
        "{cmd:?} failed ({status}):\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let lines = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect();
    (lines, stderr)
}
