//! Hot reload through the real binary: SIGHUP and `--watch` reload the policies; buckets of
//! unchanged and changed limiters carry over (no reset), removed ones stop deciding, new ones
//! start; an invalid file changes nothing; `server:` changes are reported as needing a
//! restart; checks running across reloads see no errors. Every limit here has
//! `fill_amount: 0` (a budget that never refills), so outcomes do not depend on timing.

mod common;

use common::{start_server_with_args, RunningServer};
use std::time::{Duration, Instant};
use tollgate_protocol::client::{blocking::Client, CheckRequest, ClientConfig, FailMode};

/// How long a test waits for a reload's log line (it comes within milliseconds; this bounds
/// a hang on a loaded machine).
const LOG_TIMEOUT: Duration = Duration::from_secs(30);

const SERVER: &str = "server: { listen: 127.0.0.1:0, grpc: off, shards: 2 }\n";

fn budget(name: &str, control_point: &str, capacity: u32) -> String {
    format!(
        "  - policy_name: {name}\n    rate_limiter: {{ bucket_capacity: {capacity}, fill_amount: 0, parameters: {{ interval: 1s, limit_by_label_key: user }}, selectors: [ {{ control_point: {control_point} }} ] }}\n"
    )
}

/// Three budgets: keep (3), change (2) and gone (1).
fn policies_before() -> String {
    format!(
        "{SERVER}policies:\n{}{}{}",
        budget("keep", "k", 3),
        budget("change", "c", 2),
        budget("gone", "g", 1)
    )
}

/// [`policies_before`] reloaded: new first, change raised to 5, keep as it was and moved
/// last, gone removed.
fn policies_after() -> String {
    format!(
        "{SERVER}policies:\n{}{}{}",
        budget("new", "n", 1),
        budget("change", "c", 5),
        budget("keep", "k", 3)
    )
}

fn client(server: &RunningServer) -> Client {
    Client::connect(ClientConfig::new(server.addr(), FailMode::Closed)).expect("connect")
}

fn accepted(c: &Client, control_point: &str, user: &str) -> bool {
    c.check(&CheckRequest::new(control_point).label("user", user))
        .expect("check answered")
        .accepted()
}

/// Waits for a log line containing every one of `needles`; panics with what was seen.
fn wait_for_log(server: &RunningServer, needles: &[&str]) -> String {
    let deadline = Instant::now() + LOG_TIMEOUT;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match server.logs.recv_timeout(left) {
            Ok(line) if needles.iter().all(|n| line.contains(n)) => return line,
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    panic!("no log line with {needles:?}; saw:\n{}", seen.join("\n"));
}

fn sighup(server: &RunningServer) {
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGHUP) };
}

fn write_config(server: &RunningServer, text: &str) {
    // Write then rename, as editors and config managers do: a reader never sees half a file.
    let tmp = server.dir.join("config.yaml.tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, server.dir.join("config.yaml")).expect("replace config");
}

#[test]
fn sighup_keeps_unchanged_and_changed_buckets_drops_removed_and_adds_new_limiters() {
    let before = policies_before();
    let server = start_server_with_args(&before, &[]);
    let c = client(&server);
    for (cp, capacity) in [("k", 3), ("c", 2), ("g", 1)] {
        for _ in 0..capacity {
            assert!(accepted(&c, cp, "alice"));
        }
        assert!(
            !accepted(&c, cp, "alice"),
            "{cp}: exhausted before the reload"
        );
    }

    let after = policies_after();
    write_config(&server, &after);
    sighup(&server);
    let line = wait_for_log(&server, &["policies reloaded", "SIGHUP"]);
    for part in [
        "changed=[\"change\"]",
        "added=[\"new\"]",
        "removed=[\"gone\"]",
    ] {
        assert!(line.contains(part), "{part} in {line}");
    }

    // The same connection, no reconnect: unchanged and changed buckets were not reset.
    assert!(!accepted(&c, "k", "alice"), "keep: still exhausted");
    assert!(
        !accepted(&c, "c", "alice"),
        "change: a larger capacity is not a refill"
    );
    // A new key of the changed limiter gets its new capacity.
    for _ in 0..5 {
        assert!(accepted(&c, "c", "bob"));
    }
    assert!(!accepted(&c, "c", "bob"));
    // The removed limiter decides nothing any more; the new one does.
    assert!(accepted(&c, "g", "alice"));
    assert!(accepted(&c, "n", "alice"));
    assert!(!accepted(&c, "n", "alice"));
}

#[test]
fn a_connection_s_limiter_indexes_keep_naming_its_hello_list_across_a_reload() {
    let before = policies_before();
    let server = start_server_with_args(&before, &[]);
    let mut cfg = ClientConfig::new(server.addr(), FailMode::Closed);
    cfg.shard_aware = false; // one connection, one HELLO
    let c = Client::connect(cfg).expect("connect");
    let names = c.hello().policy_names.clone();
    assert_eq!(names, ["keep", "change", "gone"]);
    // Reordered, one removed, one added first: every place in the list moves.
    let after = policies_after();
    write_config(&server, &after);
    sighup(&server);
    wait_for_log(&server, &["policies reloaded", "SIGHUP"]);
    let index_of = |control_point: &str| {
        let reply = c
            .check(&CheckRequest::new(control_point).label("user", "alice"))
            .expect("check answered");
        reply.limiters[0].limiter_index
    };
    assert_eq!(names[usize::from(index_of("k"))], "keep");
    assert_eq!(names[usize::from(index_of("c"))], "change");
    assert_eq!(index_of("n"), u16::MAX, "not in this connection's list");
}

#[test]
fn a_clustered_node_holds_reloaded_policies_to_its_cluster_rules_even_without_the_section() {
    let cluster = "cluster: { gossip: 127.0.0.1:0 }\n";
    let config = format!("{SERVER}{cluster}policies:\n{}", budget("keep", "k", 2));
    let server = start_server_with_args(&config, &[]);
    // The section dropped (that waits for a restart) and a name peers could not replicate.
    let long = "n".repeat(201);
    write_config(
        &server,
        &format!("{SERVER}policies:\n{}", budget(&long, "k", 2)),
    );
    sighup(&server);
    let line = wait_for_log(&server, &["reload refused, nothing changed"]);
    assert!(
        line.contains("policies[0].policy_name") && line.contains("200"),
        "{line}"
    );
    assert!(
        accepted(&client(&server), "k", "alice"),
        "the running policy holds"
    );
}

#[test]
fn an_invalid_file_changes_nothing_and_server_changes_need_a_restart() {
    let config = format!("{SERVER}policies:\n{}", budget("keep", "k", 2));
    let server = start_server_with_args(&config, &[]);
    let c = client(&server);
    assert!(accepted(&c, "k", "alice"));

    write_config(
        &server,
        &format!(
            "{SERVER}policies:\n{}",
            budget("keep", "k", 2).replace("bucket_capacity: 2", "bucket_capacity: -2")
        ),
    );
    sighup(&server);
    let line = wait_for_log(&server, &["reload refused, nothing changed"]);
    assert!(line.contains("bucket_capacity"), "{line}");
    // The running policy still holds, state included: one token left of two.
    assert!(accepted(&c, "k", "alice"));
    assert!(!accepted(&c, "k", "alice"));

    // A server setting changed: policies apply, the setting waits for a restart.
    write_config(
        &server,
        &format!(
            "{}policies:\n{}",
            SERVER.replace("shards: 2", "shards: 2, max_connections: 77"),
            budget("keep", "k", 2)
        ),
    );
    sighup(&server);
    wait_for_log(&server, &["policies reloaded"]);
    let line = wait_for_log(&server, &["only after a restart"]);
    assert!(line.contains("server.max_connections"), "{line}");
    assert!(!accepted(&c, "k", "alice"), "still the same bucket");
}

#[test]
fn watch_reloads_when_the_file_changes() {
    let config = format!("{SERVER}policies:\n{}", budget("p", "x", 1));
    let server = start_server_with_args(&config, &["--watch"]);
    let c = client(&server);
    assert!(accepted(&c, "x", "alice"));
    assert!(!accepted(&c, "x", "alice"));
    write_config(
        &server,
        &format!("{SERVER}policies:\n{}", budget("q", "y", 1)),
    );
    wait_for_log(&server, &["policies reloaded", "file change"]);
    assert!(accepted(&c, "x", "alice"), "p is gone");
    assert!(accepted(&c, "y", "alice"));
    assert!(!accepted(&c, "y", "alice"));
}

#[test]
fn checks_across_reloads_see_no_errors() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let config = format!("{SERVER}policies:\n{}", budget("p", "x", 1_000_000));
    let server = start_server_with_args(&config, &[]);
    let (stop, answered) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let (addr, stop, answered) = (server.addr(), stop.clone(), answered.clone());
            std::thread::spawn(move || {
                let c =
                    Client::connect(ClientConfig::new(addr, FailMode::Closed)).expect("connect");
                let mut errors = Vec::new();
                for n in 0u64.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let user = format!("u{w}-{}", n % 100);
                    match c.check(&CheckRequest::new("x").label("user", &user)) {
                        Ok(_) => answered.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            errors.push(e.to_string());
                            0
                        }
                    };
                }
                errors
            })
        })
        .collect();
    // Checks are answered before, between and after the reloads.
    let progress = |since: u64| {
        let deadline = Instant::now() + LOG_TIMEOUT;
        while answered.load(Ordering::Relaxed) < since + 50 {
            assert!(Instant::now() < deadline, "checks stopped being answered");
            std::thread::yield_now();
        }
    };
    for round in 0..5 {
        progress(answered.load(Ordering::Relaxed));
        let capacity = 1_000_000 + round;
        write_config(
            &server,
            &format!("{SERVER}policies:\n{}", budget("p", "x", capacity)),
        );
        sighup(&server);
        wait_for_log(&server, &["policies reloaded"]);
    }
    progress(answered.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let errors = w.join().expect("worker");
        assert!(errors.is_empty(), "errors across reloads: {errors:?}");
    }
}
