#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report
//! `server.max_buckets` against the real binary: a flood of distinct keys through the
//! binary protocol keeps being answered, and each shard holds exactly its share of the cap
//! (read from the `buckets` line every shard logs).

mod common;

use common::start_server;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tollgate_protocol::client::{blocking::Client, CheckRequest, ClientConfig, FailMode};

/// Generous per-request timeout: debug builds on a loaded 2-core CI box.
const TIMEOUT: Duration = Duration::from_secs(10);

/// How long the test waits for the shards' counters to show the flood: they log at most
/// every 10 s, so this only bounds a hang.
const LOG_DEADLINE: Duration = Duration::from_secs(60);

const MAX_BUCKETS: usize = 200;
const SHARDS: usize = 2;
const FLOOD: usize = 5_000;

fn config() -> String {
    format!(
        r#"
server: {{ listen: 127.0.0.1:0, grpc: off, shards: {SHARDS}, max_buckets: {MAX_BUCKETS} }}
policies:
  - policy_name: five_per_user
    rate_limiter:
      bucket_capacity: 5
      fill_amount: 1
      parameters: {{ interval: 3600s, limit_by_label_key: user }}
      selectors: [ {{ control_point: api }} ]
"#
    )
}

fn check(user: &str) -> CheckRequest {
    CheckRequest::new("api").label("user", user)
}

/// One shard's `buckets` log line: `... buckets shard=0 live=100 max=100 evicted_full=0 ...`.
fn bucket_line(line: &str) -> Option<(usize, BTreeMap<String, u64>)> {
    let (_, fields) = line.split_once(": buckets shard=")?;
    let fields = format!("shard={fields}");
    let fields: BTreeMap<String, u64> = fields
        .split_whitespace()
        .filter_map(|w| {
            let (k, v) = w.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect();
    Some((usize::try_from(*fields.get("shard")?).ok()?, fields))
}

#[test]
fn a_flood_of_distinct_keys_stays_at_the_cap_and_is_answered() {
    let server = start_server(&config());
    let mut cfg = ClientConfig::new(server.addr(), FailMode::Closed);
    cfg.request_timeout = TIMEOUT;
    cfg.connect_timeout = TIMEOUT;
    let client = Client::connect(cfg).expect("connect");

    let flood: Vec<CheckRequest> = (0..FLOOD).map(|i| check(&format!("flood-{i}"))).collect();
    for batch in flood.chunks(500) {
        for reply in client.check_batch(batch).expect("batch answered") {
            let reply = reply.expect("every check of the flood is answered");
            assert!(reply.accepted(), "a new key starts full: {reply:?}");
        }
    }
    // At the cap, limits still hold for a key in use.
    for n in 0..5 {
        assert!(
            client.check(&check("steady")).unwrap().accepted(),
            "take {n}"
        );
    }
    assert!(
        !client.check(&check("steady")).unwrap().accepted(),
        "a sixth take in the hour is refused, flood or not"
    );

    // Every new key beyond the cap evicted one bucket; all of them had a token taken and
    // do not refill within the test, so none was full.
    let want_evicted = (FLOOD + 1 - MAX_BUCKETS) as u64;
    let deadline = Instant::now() + LOG_DEADLINE;
    let mut latest: BTreeMap<usize, BTreeMap<String, u64>> = BTreeMap::new();
    loop {
        let evicted: u64 = latest
            .values()
            .map(|f| f["evicted_not_full"] + f["evicted_full"])
            .sum();
        if latest.len() == SHARDS && evicted == want_evicted {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match server.logs.recv_timeout(left) {
            Ok(line) => {
                if let Some((shard, fields)) = bucket_line(&line) {
                    latest.insert(shard, fields);
                }
            }
            Err(_) => {
                panic!("no buckets lines showing {want_evicted} evictions; last: {latest:#?}")
            }
        }
    }
    for (shard, fields) in &latest {
        assert_eq!(
            fields["max"],
            (MAX_BUCKETS / SHARDS) as u64,
            "shard {shard}"
        );
        assert_eq!(
            fields["live"],
            (MAX_BUCKETS / SHARDS) as u64,
            "shard {shard} holds exactly its share of the cap"
        );
        assert_eq!(fields["evicted_full"], 0, "shard {shard}");
        assert_eq!(fields["refused"], 0, "shard {shard}");
    }
    // And it still answers.
    assert!(client.check(&check("after-the-flood")).unwrap().accepted());
}
