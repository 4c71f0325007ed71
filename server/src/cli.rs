//! `tollgate` command line: `serve`, `check`, `validate`, `members`.
//!
//! Exit codes are part of the interface (scripts use them): `check` exits 0 accepted,
//! 1 rejected, 2 error; `validate` exits 0 valid, 2 invalid; `serve` exits 0 after a
//! graceful shutdown, 2 for a bad config, 1 for any other failure.
//!
//! Signals to `serve`: SIGINT and SIGTERM drain and exit 0; SIGHUP and SIGUSR1 are logged
//! (warn) and ignored, so a reload attempt never kills a serving process.

use crate::config::{self, check_shards, Config, ConfigError};
use crate::{grpc_backend::ShardBackend, runtime, DEFAULT_POLICY};
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tollgate_policy::WAIT_FOREVER as WAIT_FOREVER_NS;
use tollgate_protocol::client::{blocking, CheckRequest, ClientConfig, FailMode};
use tollgate_protocol::{CheckReply, LimiterOutcome};

/// Tollgate: a distributed, thread-per-core rate-limiting server.
#[derive(Parser, Debug)]
#[command(name = "tollgate", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server (binary protocol, gRPC compat port, cluster gossip).
    #[command(
        after_help = "Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug or \
RUST_LOG=tollgate_server=debug) for more. Once every port is bound the server logs one \
'tollgate ready' line with the real addresses. SIGINT/SIGTERM: stop accepting, drain \
in-flight requests (server.drain_timeout), exit 0. SIGHUP and SIGUSR1 are logged and \
ignored: there is no config reload yet, restart to apply a new config. Exit 2: invalid config."
    )]
    Serve(ServeArgs),
    /// Ask a server whether a flow may run. Exits 0 accepted, 1 rejected, 2 error.
    Check(CheckArgs),
    /// Check a config file. Exits 0 when valid, 2 with every problem (file: field: reason).
    Validate {
        /// The YAML file (native policies or an Aperture rate-limiting/base blueprint values file).
        file: PathBuf,
    },
    /// List the cluster members a server knows, with state, address and last contact.
    Members {
        /// The server's binary-protocol address.
        #[arg(long, default_value = "127.0.0.1:7070")]
        server: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `tollgate serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Config file. Without it, the embedded default policy runs (see README).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Shards (pinned executors). Default: server.shards, else every available core.
    #[arg(long)]
    pub shards: Option<usize>,
    /// Shared binary-protocol address (overrides server.listen). Port 0 = OS-chosen.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// gRPC compat address (overrides server.grpc), or `off`.
    #[arg(long)]
    pub grpc: Option<String>,
}

/// `tollgate check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The server's binary-protocol address (shared port).
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub server: String,
    /// The control point the flow belongs to.
    #[arg(long)]
    pub control_point: String,
    /// A flow label, `key=value`; repeat for more.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Tokens the flow costs, a number of at least 0 (default: each policy's tokens
    /// label, else 1).
    #[arg(long, value_parser = parse_tokens)]
    pub tokens: Option<f64>,
    /// Print the decision as JSON.
    #[arg(long)]
    pub json: bool,
    /// Give up after this long (e.g. 500ms, 2s).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub timeout: Duration,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("label {s:?} must look like key=value")),
    }
}

fn parse_tokens(s: &str) -> Result<f64, String> {
    tollgate_policy::Tokens::parse(s)
        .map(tollgate_policy::Tokens::get)
        .map_err(|e| format!("{s:?} {e}"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    tollgate_policy::duration::parse_duration(s).map_err(|e| e.to_string())
}

/// Runs the parsed command; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Check(args) => check(args),
        Command::Validate { file } => validate(&file),
        Command::Members { server, json } => members(&server, json),
    }
}

fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// The config `serve` runs: the file, or the embedded default, with CLI overrides applied.
pub fn serve_config(args: &ServeArgs) -> Result<Config, ConfigError> {
    let mut config = match &args.config {
        Some(path) => config::load_file(path)?,
        None => config::parse_str(DEFAULT_POLICY, "<embedded default policy>")?,
    };
    let origin = args
        .config
        .as_ref()
        .map_or("<command line>".to_string(), |p| p.display().to_string());
    let cli_error = |path: &str, reason: String| ConfigError::one(&origin, path, reason);
    if let Some(shards) = args.shards {
        check_shards(shards).map_err(|reason| cli_error("--shards", reason))?;
        config.server.shards = Some(shards);
    }
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(grpc) = &args.grpc {
        config.server.grpc = match grpc.as_str() {
            "off" => None,
            addr => Some(addr.parse().map_err(|_| {
                cli_error("--grpc", format!("{addr:?} is not an address (or `off`)"))
            })?),
        };
    }
    Ok(config)
}

fn serve(args: ServeArgs) -> i32 {
    init_logging();
    let config = match serve_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    match serve_config_until_signal(config) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e:#}");
            1
        }
    }
}

/// Waits for SIGINT or SIGTERM. SIGHUP (what operators send to reload) and SIGUSR1 would
/// kill the process with their default action, dropping every in-flight request: they are
/// caught, logged and ignored until they have a job.
fn wait_for_stop_signal(signals: &mut signal_hook::iterator::Signals) -> Option<i32> {
    use signal_hook::consts::{SIGHUP, SIGUSR1};
    for signal in signals.forever() {
        match signal {
            SIGHUP => tracing::warn!(
                "SIGHUP received: config reload is not supported yet; restart to apply a new \
                 config. Still serving the running config."
            ),
            SIGUSR1 => tracing::warn!("SIGUSR1 received: tollgate does not use it; ignored"),
            stop => return Some(stop),
        }
    }
    None
}

fn serve_config_until_signal(config: Config) -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
    // Register before starting so a signal during start-up is not lost.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR1])
        .context("installing signal handlers")?;
    let grpc_listener = match config.server.grpc {
        Some(addr) => Some(crate::listeners::bind_tcp(addr, false).context("gRPC port")?),
        None => None,
    };
    let cluster = match &config.cluster {
        Some(c) => {
            let settings =
                crate::cluster::ClusterSettings::from_config(c, config.server.node_id.as_deref())?;
            Some(crate::cluster::Cluster::bind(settings)?)
        }
        None => None,
    };
    let options = match &cluster {
        Some(c) => runtime::StartOptions {
            members: Some(c.members_view()),
            track_consumption: true,
        },
        None => runtime::StartOptions::default(),
    };
    let server = runtime::start(&config, options)?;
    let cluster = match cluster {
        Some(c) => {
            let running = c.start(server.handle.clone())?;
            if !running.wait_caught_up() {
                tracing::warn!(
                    timeout = ?running.join_timeout,
                    "no peer sent bucket state in time; serving from local state"
                );
            }
            Some(running)
        }
        None => None,
    };
    let grpc = match grpc_listener {
        Some(listener) => {
            let backend = Arc::new(ShardBackend::new(server.handle.clone()));
            Some(tollgate_grpc::start(
                listener,
                &config.server.grpc_settings(),
                backend,
            )?)
        }
        None => None,
    };
    let shard_ports: Vec<String> = server.shard_ports.iter().map(u16::to_string).collect();
    let grpc_addr = grpc
        .as_ref()
        .map_or("off".to_string(), |g| g.local_addr().to_string());
    match &cluster {
        Some(c) => tracing::info!(
            listen = %server.listen,
            grpc = %grpc_addr,
            shard_ports = %shard_ports.join(","),
            gossip = %c.gossip,
            shards = server.node.nr_shards,
            policies = server.node.engine.limiters().len(),
            "tollgate ready"
        ),
        None => tracing::info!(
            listen = %server.listen,
            grpc = %grpc_addr,
            shard_ports = %shard_ports.join(","),
            shards = server.node.nr_shards,
            policies = server.node.engine.limiters().len(),
            "tollgate ready"
        ),
    }
    let signal = wait_for_stop_signal(&mut signals);
    tracing::info!(
        ?signal,
        "shutting down: no new connections, draining in-flight requests"
    );
    // Waiting flows are answered (shutting_down) first, so in-flight gRPC calls finish
    // promptly; then the port closes; once connections are drained the shards end their
    // flows in flight, and the cluster's last replication drain tells peers those tokens
    // came back before this node leaves.
    server.begin_stop();
    if let Some(grpc) = grpc {
        grpc.shutdown();
    }
    server.wait_drained();
    if let Some(cluster) = cluster {
        cluster.leave();
    }
    server.exit()?;
    tracing::info!("stopped");
    Ok(())
}

fn check(args: CheckArgs) -> i32 {
    let mut cfg = ClientConfig::new(args.server.clone(), FailMode::Closed);
    cfg.request_timeout = args.timeout;
    cfg.connect_timeout = args.timeout;
    cfg.client_name = "tollgate-cli".into();
    let result = blocking::Client::connect(cfg).and_then(|client| {
        let req = CheckRequest {
            control_point: args.control_point.clone(),
            labels: args.labels.clone(),
            tokens: args.tokens,
        };
        client
            .check(&req)
            .map(|reply| (client.hello().policy_names.clone(), reply))
    });
    match result {
        Ok((names, reply)) => {
            if args.json {
                println!("{}", reply_json(&names, &reply));
            } else {
                print_reply(&names, &reply);
            }
            if reply.accepted() {
                0
            } else {
                1
            }
        }
        Err(e) => {
            if args.json {
                println!("{}", serde_json::json!({ "error": e.to_string() }));
            } else {
                eprintln!("error: {e}");
            }
            2
        }
    }
}

fn outcome_name(o: LimiterOutcome) -> &'static str {
    match o {
        LimiterOutcome::Accepted => "accepted",
        LimiterOutcome::Rejected => "rejected",
        LimiterOutcome::KeyNotFound => "key_not_found",
        LimiterOutcome::Returned => "returned",
    }
}

fn wait_text(wait_ns: u64) -> String {
    if wait_ns == WAIT_FOREVER_NS {
        "never".to_string()
    } else {
        format!("{:?}", Duration::from_nanos(wait_ns))
    }
}

fn print_reply(names: &[String], reply: &CheckReply) {
    let verdict = if reply.accepted() {
        "ACCEPTED"
    } else {
        "REJECTED (rate limited)"
    };
    println!("{verdict}");
    if !reply.accepted() {
        println!("  wait: {}", wait_text(reply.wait_ns));
    }
    for l in &reply.limiters {
        let name = names
            .get(usize::from(l.limiter_index))
            .map_or("?", String::as_str);
        println!(
            "  {name}: {} remaining={:.3} current={:.3} tokens={} status={}{}",
            outcome_name(l.outcome),
            l.remaining,
            l.current,
            l.tokens,
            l.status_code,
            if l.outcome == LimiterOutcome::Rejected {
                format!(" wait={}", wait_text(l.wait_ns))
            } else {
                String::new()
            }
        );
    }
}

fn reply_json(names: &[String], reply: &CheckReply) -> serde_json::Value {
    serde_json::json!({
        "accepted": reply.accepted(),
        "reason": if reply.accepted() { "none" } else { "rate_limited" },
        "wait_ns": reply.wait_ns,
        "limiters": reply.limiters.iter().map(|l| serde_json::json!({
            "policy": names.get(usize::from(l.limiter_index)),
            "outcome": outcome_name(l.outcome),
            "status_code": l.status_code,
            "tokens": l.tokens,
            "remaining": l.remaining,
            "current": l.current,
            "wait_ns": l.wait_ns,
        })).collect::<Vec<_>>(),
    })
}

fn validate(file: &std::path::Path) -> i32 {
    match config::load_file(file) {
        Ok(c) => {
            println!("{}: valid ({} policies)", file.display(), c.policies.len());
            0
        }
        Err(e) => {
            eprintln!("{e}");
            2
        }
    }
}

fn members(server: &str, json: bool) -> i32 {
    let cfg = ClientConfig {
        shard_aware: false,
        ..ClientConfig::new(server.to_string(), FailMode::Closed)
    };
    match blocking::Client::connect(cfg).and_then(|c| c.members()) {
        Ok(members) => {
            if json {
                let list: Vec<_> = members
                    .iter()
                    .map(|m| serde_json::json!({"node_id": m.node_id, "address": m.address, "state": format!("{:?}", m.state).to_lowercase(), "last_contact_ms": m.last_contact_ms}))
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                println!(
                    "{:<24} {:<8} {:<24} LAST CONTACT",
                    "NODE", "STATE", "ADDRESS"
                );
                for m in members {
                    println!(
                        "{:<24} {:<8} {:<24} {}ms ago",
                        m.node_id,
                        format!("{:?}", m.state).to_lowercase(),
                        m.address,
                        m.last_contact_ms
                    );
                }
            }
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}
