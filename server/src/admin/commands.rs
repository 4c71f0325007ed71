//! The CLI's admin commands — `tollgate policies`, `tollgate bucket`, `tollgate top`,
//! `tollgate set-limit`, `tollgate reload` — in
//! the style of `tollgate members`: a table by default, `--json` for the document as the
//! API returned it; exit 0 on success, 2 on any error (printed to stderr).

use super::api::{BucketReply, PoliciesReply, PolicyInfo, SetLimitRequest, TopReply};
use super::client::{AdminClient, ClientError};
use super::routes::DEFAULT_TOP_N;
use clap::Args;
use std::time::Duration;

/// Where the admin port is, shared by the admin commands.
#[derive(Args, Debug, Clone)]
pub struct AdminTarget {
    /// The server's admin address (server.admin).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin: String,
    /// Bearer token, when the server sets server.admin_token.
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Give up after this long (e.g. 500ms, 5s).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    tollgate_policy::duration::parse_duration(s).map_err(|e| e.to_string())
}

impl AdminTarget {
    fn client(&self) -> AdminClient {
        AdminClient::new(&self.admin, self.token.clone(), self.timeout)
    }
}

/// `tollgate bucket`.
#[derive(Args, Debug)]
pub struct BucketArgs {
    /// The policy (policy_name).
    #[arg(long)]
    pub policy: String,
    /// The bucket key: the value of the policy's limit_by_label_key (leave out for a policy
    /// with one shared bucket).
    #[arg(long)]
    pub key: Option<String>,
    /// The admin port.
    #[command(flatten)]
    pub target: AdminTarget,
}

/// `tollgate top`.
#[derive(Args, Debug)]
pub struct TopArgs {
    /// The policy (policy_name).
    #[arg(long)]
    pub policy: String,
    /// How many keys (1 to 128).
    #[arg(long, short, default_value_t = DEFAULT_TOP_N)]
    pub n: usize,
    /// The admin port.
    #[command(flatten)]
    pub target: AdminTarget,
}

/// `tollgate set-limit`.
#[derive(Args, Debug)]
pub struct SetLimitArgs {
    /// The policy (policy_name).
    #[arg(long)]
    pub policy: String,
    /// The new bucket_capacity (a finite number > 0).
    #[arg(long, value_parser = parse_capacity)]
    pub capacity: Option<f64>,
    /// The new fill_amount (a finite number >= 0).
    #[arg(long, value_parser = parse_fill_amount)]
    pub fill: Option<f64>,
    /// The admin port.
    #[command(flatten)]
    pub target: AdminTarget,
}

/// `--capacity`: refused here as the server would refuse it (`inf` and `nan` parse as
/// numbers, and would reach the server as JSON `null`).
fn parse_capacity(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|e| format!("{text:?}: {e}"))?;
    super::api::check_capacity(value)
}

/// `--fill`: see [`parse_capacity`].
fn parse_fill_amount(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|e| format!("{text:?}: {e}"))?;
    super::api::check_fill_amount(value)
}

/// Prints the document (`--json`) or its table; the exit code.
fn finish<T: serde::Serialize>(
    result: Result<T, ClientError>,
    json: bool,
    table: impl FnOnce(&T),
) -> i32 {
    match result {
        Ok(doc) => {
            if json {
                match serde_json::to_string(&doc) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return 2;
                    }
                }
            } else {
                table(&doc);
            }
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

/// `tollgate policies`.
pub fn policies(target: &AdminTarget) -> i32 {
    finish(target.client().policies(), target.json, print_policies)
}

/// `tollgate bucket`.
pub fn bucket(args: &BucketArgs) -> i32 {
    let result = args
        .target
        .client()
        .bucket(&args.policy, args.key.as_deref());
    finish(result, args.target.json, print_bucket)
}

/// `tollgate top`.
pub fn top(args: &TopArgs) -> i32 {
    let result = args.target.client().top(&args.policy, args.n);
    finish(result, args.target.json, print_top)
}

/// `tollgate reload`: the report, one line per kind of change.
pub fn reload(target: &AdminTarget) -> i32 {
    finish(target.client().reload(), target.json, |report| {
        for field in [
            "digest",
            "unchanged",
            "changed",
            "added",
            "removed",
            "needs_restart",
        ] {
            match report.get(field) {
                Some(serde_json::Value::Array(names)) => {
                    let names: Vec<&str> = names.iter().filter_map(|n| n.as_str()).collect();
                    println!("{field}: {}", names.join(", "));
                }
                Some(serde_json::Value::String(s)) => println!("{field}: {s}"),
                _ => {}
            }
        }
    })
}

/// `tollgate set-limit`.
pub fn set_limit(args: &SetLimitArgs) -> i32 {
    let change = SetLimitRequest {
        policy: args.policy.clone(),
        bucket_capacity: args.capacity,
        fill_amount: args.fill,
    };
    let result = args.target.client().set_limit(&change);
    finish(result, args.target.json, |p: &PolicyInfo| {
        print_policy_header();
        print_policy(p);
    })
}

fn print_policy_header() {
    println!(
        "{:<24} {:<22} {:>10} {:>10} {:>9} {:<16} DIGEST",
        "POLICY", "KIND", "CAPACITY", "FILL", "INTERVAL", "LIMIT BY"
    );
}

fn print_policies(reply: &PoliciesReply) {
    print_policy_header();
    for p in &reply.policies {
        print_policy(p);
    }
    println!("policy set digest: {}", reply.digest);
}

fn print_policy(p: &PolicyInfo) {
    println!(
        "{:<24} {:<22} {:>10} {:>10} {:>9} {:<16} {}",
        p.name,
        p.kind,
        p.bucket.capacity,
        p.bucket.fill_amount,
        format!("{}s", p.bucket.interval_seconds),
        p.limit_by_label_key.as_deref().unwrap_or("-"),
        p.digest
    );
}

fn secs(s: Option<f64>) -> String {
    s.map_or("never".to_string(), |s| format!("{s:.3}s"))
}

fn print_bucket(b: &BucketReply) {
    println!(
        "policy {}, key {:?}: owned by shard {}",
        b.policy, b.key, b.owner_shard
    );
    let fill = if b.bucket.continuous_fill {
        "continuously"
    } else {
        "in whole intervals"
    };
    println!(
        "  bucket: capacity {}, fill {} per {}s {fill}",
        b.bucket.capacity, b.bucket.fill_amount, b.bucket.interval_seconds
    );
    if !b.exists {
        println!(
            "  no live bucket: the next check finds it full ({:.3} tokens)",
            b.tokens
        );
        return;
    }
    println!("  tokens: {:.3} of {}", b.tokens, b.bucket.capacity);
    let next = match b.next_fill_in_seconds {
        None if b.full_in_seconds == Some(0.0) => "none (full)".to_string(),
        other => secs(other),
    };
    println!(
        "  next fill in: {next}; full in: {}",
        secs(b.full_in_seconds)
    );
    if let Some(ago) = b.last_used_seconds_ago {
        println!("  last used: {ago}s ago");
    }
}

fn print_top(t: &TopReply) {
    println!(
        "top keys of {} over the last {:.0}s ({} shards answered)",
        t.policy, t.window_seconds, t.shards_answered
    );
    println!("{:<32} {:>14} {:>12}", "KEY", "TOKENS", "ERROR");
    for k in &t.keys {
        println!("{:<32} {:>14.3} {:>12.3}", k.key, k.tokens, k.error);
    }
}
