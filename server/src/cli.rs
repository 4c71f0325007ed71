//! `tollgate` command line: `serve`, `check`, `flow-end`, `validate`, `members`, and the admin
//! API's `policies`, `bucket`, `top`, `set-limit`, `reload` (in [`crate::admin::commands`]).
//!
//! Exit codes are part of the interface (scripts use them): `check` exits 0 accepted,
//! 1 rejected, 2 error; `flow-end` exits 0 when the server answered (each id's status printed),
//! 2 error; `validate` exits 0 valid, 2 invalid; `serve` exits 0 after a
//! graceful shutdown, 2 for a bad config, 1 for any other failure.
//!
//! Signals to `serve`: SIGINT and SIGTERM drain and exit 0; SIGHUP reloads the policies
//! from the config file ([`crate::reload`]); SIGUSR1 is logged and ignored, so a stray
//! signal never kills a serving process.

use crate::config::{self, check_shards, Config, ConfigError};
use crate::reload::Reloader;
use crate::{grpc_backend::ShardBackend, runtime, DEFAULT_POLICY};
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tollgate_policy::WAIT_FOREVER as WAIT_FOREVER_NS;
use tollgate_protocol::client::{
    blocking, ApiKey, CheckRequest, ClientConfig, ClientTls, FailMode,
};
use tollgate_protocol::{
    CheckReply, FlowEndStatus, LimiterOutcome, Member, MemberState, ProtocolVersion,
};

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
in-flight requests (server.drain_timeout), exit 0. SIGHUP: reload the policies from the \
config file (validated first: an invalid file changes nothing; unchanged policies keep their \
buckets; changed server:/cluster: settings are logged as needing a restart). --watch: the \
same on every change of the file. SIGUSR1 is logged and ignored. Exit 2: invalid config.

The admin HTTP port (server.admin, default 127.0.0.1:9090, or --admin; `off` disables it) \
serves GET /healthz (200 while the process is alive: a liveness probe), GET /readyz (200 \
once every shard serves, the cluster is joined and every port is up; 503 while starting or \
draining: a readiness probe), GET /metrics (Prometheus text format) and the JSON API under \
/api/v1/ (docs/admin.md). With server.admin_token set, every path but /healthz requires \
`Authorization: Bearer TOKEN`."
    )]
    Serve(ServeArgs),
    /// Ask a server whether a flow may run. Exits 0 accepted, 1 rejected, 2 error.
    Check(CheckArgs),
    /// End flows a check started (the flow ids `check` printed): gives their concurrency
    /// back. Prints `ID ended` or `ID unknown` (already ended, expired, or never started:
    /// harmless) per id. Exits 0 when the server answered, 2 error.
    FlowEnd(FlowEndArgs),
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
        /// API key and TLS.
        #[command(flatten)]
        access: ClientAccessArgs,
    },
    /// List the policies a server runs, with their identity and effective parameters
    /// (admin API).
    Policies(crate::admin::commands::AdminTarget),
    /// Show one bucket: tokens, capacity, next fill, owner shard, last use (admin API).
    Bucket(crate::admin::commands::BucketArgs),
    /// Show the keys that consumed most of a policy over the last minute (admin API).
    Top(crate::admin::commands::TopArgs),
    /// Change a policy's bucket_capacity / fill_amount now, keeping its buckets (admin
    /// API; refused by a clustered node; lasts until the next reload).
    SetLimit(crate::admin::commands::SetLimitArgs),
    /// Reload the policies from the server's config file, as SIGHUP does (admin API):
    /// invalid files change nothing and the errors are printed; exit 2 then.
    Reload(crate::admin::commands::AdminTarget),
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
    /// Admin HTTP address: /healthz, /readyz, /metrics, /api/v1 (overrides server.admin),
    /// or `off`.
    #[arg(long)]
    pub admin: Option<String>,
    /// Reload the policies when the config file changes (as SIGHUP does).
    #[arg(long, requires = "config")]
    pub watch: bool,
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
    /// Wait budget (e.g. 500ms, 2s): a quota or concurrency scheduler may keep the flow
    /// queued this long before deciding. Without it the check is decided at once.
    #[arg(long, value_parser = parse_duration)]
    pub wait: Option<Duration>,
    /// Give up after this long (e.g. 500ms, 2s), on top of any wait budget.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// API key and TLS.
    #[command(flatten)]
    pub access: ClientAccessArgs,
}

/// How the binary-protocol commands reach a server with `server.api_keys` or
/// `server.binary_tls`.
#[derive(Args, Debug, Default)]
pub struct ClientAccessArgs {
    /// API key sent in HELLO (servers with server.api_keys require it).
    #[arg(long, env = "TOLLGATE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Speak TLS, trusting the CA certificate(s) in this PEM file (servers with
    /// server.binary_tls).
    #[arg(long, value_name = "FILE.pem")]
    pub tls_ca: Option<PathBuf>,
    /// Name the server's certificate must carry (default: the host of --server).
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    pub tls_server_name: Option<String>,
}

impl ClientAccessArgs {
    /// Sets the key and TLS of `cfg`; errors name the flag.
    pub fn apply(&self, cfg: &mut ClientConfig) -> Result<(), String> {
        if let Some(key) = &self.api_key {
            cfg.api_key = Some(ApiKey::new(key.as_str()).map_err(|e| format!("--api-key: {e}"))?);
        }
        if let Some(ca) = &self.tls_ca {
            let tls = ClientTls::from_ca_file(ca).map_err(|e| format!("--tls-ca: {e}"))?;
            cfg.tls = Some(match &self.tls_server_name {
                Some(name) => tls
                    .with_server_name(name)
                    .map_err(|e| format!("--tls-server-name: {e}"))?,
                None => tls,
            });
        }
        Ok(())
    }
}

/// `tollgate flow-end`.
#[derive(Args, Debug)]
pub struct FlowEndArgs {
    /// The server's binary-protocol address (any of its ports).
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub server: String,
    /// Flow ids as `check` prints them (16 hex digits); at most 256.
    #[arg(required = true, value_parser = parse_flow_id)]
    pub ids: Vec<u64>,
    /// Print the statuses as JSON.
    #[arg(long)]
    pub json: bool,
    /// Give up after this long (e.g. 500ms, 2s).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// API key and TLS.
    #[command(flatten)]
    pub access: ClientAccessArgs,
}

fn parse_flow_id(s: &str) -> Result<u64, String> {
    tollgate_policy::FlowId::parse(s)
        .map(tollgate_policy::FlowId::get)
        .ok_or_else(|| format!("flow id {s:?} must be 16 hex digits, as `check` prints it"))
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
        Command::FlowEnd(args) => flow_end(args),
        Command::Validate { file } => validate(&file),
        Command::Members {
            server,
            json,
            access,
        } => members(&server, json, &access),
        Command::Policies(target) => crate::admin::commands::policies(&target),
        Command::Bucket(args) => crate::admin::commands::bucket(&args),
        Command::Top(args) => crate::admin::commands::top(&args),
        Command::SetLimit(args) => crate::admin::commands::set_limit(&args),
        Command::Reload(target) => crate::admin::commands::reload(&target),
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
    with_overrides(file_config(args)?, args)
}

/// The config file (or the embedded default) as written, before command-line overrides.
fn file_config(args: &ServeArgs) -> Result<Config, ConfigError> {
    match &args.config {
        Some(path) => config::load_file(path),
        None => config::parse_str(DEFAULT_POLICY, "<embedded default policy>"),
    }
}

/// `config` with the command line's `--shards`, `--listen` and `--grpc` applied.
fn with_overrides(mut config: Config, args: &ServeArgs) -> Result<Config, ConfigError> {
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
    if let Some(admin) = &args.admin {
        config.server.admin = match admin.as_str() {
            "off" => None,
            addr => Some(addr.parse().map_err(|_| {
                cli_error("--admin", format!("{addr:?} is not an address (or `off`)"))
            })?),
        };
    }
    Ok(config)
}

fn serve(args: ServeArgs) -> i32 {
    init_logging();
    let (started, config) = match file_config(&args)
        .and_then(|file| Ok((file.clone(), with_overrides(file, &args)?)))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let reload = ReloadSource {
        path: args.config.clone(),
        started,
        watch: args.watch,
    };
    match serve_config_until_signal(config, reload) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e:#}");
            1
        }
    }
}

/// Where `serve` reloads its policies from.
struct ReloadSource {
    /// The config file (None: the embedded default policy, which cannot be reloaded).
    path: Option<PathBuf>,
    /// The file as the node started from it, before command-line overrides.
    started: Config,
    /// `--watch`.
    watch: bool,
}

/// Waits for SIGINT or SIGTERM, reloading on SIGHUP. SIGUSR1 would kill the process with
/// its default action, dropping every in-flight request: it is caught, logged and ignored.
fn wait_for_stop_signal(
    signals: &mut signal_hook::iterator::Signals,
    reloader: &Reloader,
) -> Option<i32> {
    use signal_hook::consts::{SIGHUP, SIGUSR1};
    for signal in signals.forever() {
        match signal {
            SIGHUP => {
                // Logged by the reloader; the node serves on either way.
                let _ = reloader.reload_and_log("SIGHUP");
            }
            SIGUSR1 => tracing::warn!("SIGUSR1 received: tollgate does not use it; ignored"),
            stop => return Some(stop),
        }
    }
    None
}

fn serve_config_until_signal(config: Config, reload: ReloadSource) -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
    // Register before starting so a signal during start-up is not lost.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR1])
        .context("installing signal handlers")?;
    let grpc_listeners =
        match config.server.grpc {
            // One thread binds without SO_REUSEPORT, so no other process can share its port.
            Some(addr) if config.server.grpc_threads <= 1 => Some(vec![
                crate::listeners::bind_tcp(addr, false).context("gRPC port")?,
            ]),
            Some(addr) => Some(
                crate::listeners::bind_per_shard(addr, config.server.grpc_threads)
                    .context("gRPC port")?
                    .1,
            ),
            None => None,
        };
    // The admin port first: probes get an answer ("starting") while the rest comes up.
    let readiness = crate::admin::Readiness::new();
    let admin_state = Arc::new(crate::admin::AdminState::new(
        readiness.clone(),
        config.server.admin_token.clone(),
    ));
    let admin = match config.server.admin {
        Some(addr) => {
            let listener = crate::listeners::bind_tcp(addr, false).context("admin port")?;
            let port = crate::admin::start(listener, admin_state.clone())?;
            tracing::info!(admin = %port.local_addr(), "admin port listening");
            Some(port)
        }
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
    admin_state.set_shards(crate::admin::state::Shards {
        node: server.node.clone(),
        handle: server.handle.clone(),
    });
    let cluster = match cluster {
        Some(c) => {
            readiness.set(crate::admin::Phase::JoiningCluster);
            let running = c.start(server.handle.clone())?;
            admin_state.set_cluster(running.observer());
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
    let grpc = match grpc_listeners {
        Some(listeners) => {
            readiness.set(crate::admin::Phase::StartingGrpc);
            let backend = Arc::new(ShardBackend::new(
                server.handle.clone(),
                server.node.metrics.clone(),
            ));
            let grpc = tollgate_grpc::start(listeners, &config.server.grpc_settings(), backend)?;
            admin_state.set_grpc(grpc.observer());
            Some(grpc)
        }
        None => None,
    };
    // Before "ready": from then on SIGHUP and file changes reload.
    let reloader = Arc::new(Reloader::new(
        reload.path.as_deref(),
        reload.started,
        server.handle.clone(),
    ));
    admin_state.set_reloader(reloader.clone());
    let _watch = if reload.watch {
        Some(crate::watch::watch(reloader.clone())?)
    } else {
        None
    };
    let admin_addr = admin
        .as_ref()
        .map_or("off".to_string(), |a| a.local_addr().to_string());
    // Ready before the ready line, so whoever waits for the line finds /readyz agreeing.
    readiness.set(crate::admin::Phase::Ready);
    let shard_ports: Vec<String> = server.shard_ports.iter().map(u16::to_string).collect();
    let grpc_addr = grpc
        .as_ref()
        .map_or("off".to_string(), |g| g.local_addr().to_string());
    match &cluster {
        Some(c) => tracing::info!(
            listen = %server.listen,
            grpc = %grpc_addr,
            admin = %admin_addr,
            shard_ports = %shard_ports.join(","),
            gossip = %c.gossip,
            shards = server.node.nr_shards,
            policies = server.node.policies.load().limiters().len(),
            "tollgate ready"
        ),
        None => tracing::info!(
            listen = %server.listen,
            grpc = %grpc_addr,
            admin = %admin_addr,
            shard_ports = %shard_ports.join(","),
            shards = server.node.nr_shards,
            policies = server.node.policies.load().limiters().len(),
            "tollgate ready"
        ),
    }
    let signal = wait_for_stop_signal(&mut signals, &reloader);
    // Probes see "draining" from here until the process exits.
    readiness.set(crate::admin::Phase::Draining);
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
    if let Some(admin) = admin {
        admin.shutdown();
    }
    tracing::info!("stopped");
    Ok(())
}

fn check(args: CheckArgs) -> i32 {
    let mut cfg = ClientConfig::new(args.server.clone(), FailMode::Closed);
    cfg.request_timeout = args.timeout;
    cfg.connect_timeout = args.timeout;
    cfg.client_name = "tollgate-cli".into();
    if let Err(e) = args.access.apply(&mut cfg) {
        eprintln!("error: {e}");
        return 2;
    }
    let result = blocking::Client::connect(cfg).and_then(|client| {
        let req = CheckRequest {
            control_point: args.control_point.clone(),
            labels: args.labels.clone(),
            tokens: args.tokens,
            wait: args.wait,
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

fn flow_end(args: FlowEndArgs) -> i32 {
    let mut cfg = ClientConfig::new(args.server.clone(), FailMode::Closed);
    cfg.request_timeout = args.timeout;
    cfg.connect_timeout = args.timeout;
    cfg.client_name = "tollgate-cli".into();
    if let Err(e) = args.access.apply(&mut cfg) {
        eprintln!("error: {e}");
        return 2;
    }
    match blocking::Client::connect(cfg).and_then(|client| client.flow_end(&args.ids)) {
        Ok(statuses) => {
            let name = |s: &FlowEndStatus| match s {
                FlowEndStatus::Ended => "ended",
                FlowEndStatus::Unknown => "unknown",
            };
            if args.json {
                let list: Vec<_> = args
                    .ids
                    .iter()
                    .zip(&statuses)
                    .map(|(id, s)| serde_json::json!({ "flow_id": flow_id_text(*id), "status": name(s) }))
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                for (id, s) in args.ids.iter().zip(&statuses) {
                    println!("{} {}", flow_id_text(*id), name(s));
                }
            }
            0
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

/// A flow id as the CLI, the gRPC `request_id` and `flow-end` spell it.
fn flow_id_text(id: u64) -> String {
    tollgate_policy::FlowId::from_u64(id).to_string()
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
    if reply.accepted() {
        println!("ACCEPTED");
    } else {
        println!("REJECTED ({})", reply.reason.as_str().replace('_', " "));
    }
    if !reply.accepted() {
        println!("  wait: {}", wait_text(reply.wait_ns));
    }
    for l in &reply.limiters {
        let name = names
            .get(usize::from(l.limiter_index))
            .map_or("?", String::as_str);
        println!(
            "  {name}: {} remaining={:.3} current={:.3} tokens={} status={}{}{}",
            outcome_name(l.outcome),
            l.remaining,
            l.current,
            l.tokens,
            l.status_code,
            if l.outcome == LimiterOutcome::Rejected {
                format!(" wait={}", wait_text(l.wait_ns))
            } else {
                String::new()
            },
            l.refusal
                .map_or(String::new(), |r| format!(" refusal={}", r.as_str())),
        );
        if let Some(id) = l.flow_id() {
            println!("    flow_id={}", flow_id_text(id));
        }
    }
}

fn reply_json(names: &[String], reply: &CheckReply) -> serde_json::Value {
    let mut json = serde_json::json!({
        "accepted": reply.accepted(),
        "reason": reply.reason.as_str(),
        "wait_ns": reply.wait_ns,
        "limiters": reply.limiters.iter().map(|l| serde_json::json!({
            "policy": names.get(usize::from(l.limiter_index)),
            "outcome": outcome_name(l.outcome),
            "status_code": l.status_code,
            "tokens": l.tokens,
            "remaining": l.remaining,
            "current": l.current,
            "wait_ns": l.wait_ns,
            "flow_id": l.flow_id().map(flow_id_text),
            "refusal": l.refusal.map(|r| r.as_str()),
        })).collect::<Vec<_>>(),
    });
    // Only a check that holds flows lists them (what to pass to `tollgate flow-end`).
    let flow_ids: Vec<String> = reply.flow_ids().map(flow_id_text).collect();
    if !flow_ids.is_empty() {
        json["flow_ids"] = serde_json::json!(flow_ids);
    }
    json
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

fn members(server: &str, json: bool, access: &ClientAccessArgs) -> i32 {
    let mut cfg = ClientConfig {
        shard_aware: false,
        ..ClientConfig::new(server.to_string(), FailMode::Closed)
    };
    if let Err(e) = access.apply(&mut cfg) {
        eprintln!("error: {e}");
        return 2;
    }
    match blocking::Client::connect(cfg).and_then(|c| Ok((c.members()?, c.version()))) {
        Ok((members, version)) => {
            // The answering node lists itself first; its digest is what the others are
            // compared with.
            let ours = members.first().and_then(|m| m.policy_digest);
            let same = |m: &Member| Some(m.policy_digest? == ours?);
            if json {
                let list: Vec<_> = members
                    .iter()
                    .map(|m| {
                        serde_json::json!({
                            "node_id": m.node_id,
                            "address": m.address,
                            "state": member_state_name(m.state),
                            "last_contact_ms": m.last_contact_ms,
                            "policy_digest": m.policy_digest.map(|d| format!("{d:016x}")),
                            "same_policies": same(m),
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                println!(
                    "{:<24} {:<8} {:<24} {:<14} POLICY DIGEST",
                    "NODE", "STATE", "ADDRESS", "LAST CONTACT"
                );
                for m in &members {
                    let digest = match (m.policy_digest, same(m)) {
                        (None, _) => "unknown".to_string(),
                        (Some(d), Some(false)) => format!("{d:016x} (differs)"),
                        (Some(d), _) => format!("{d:016x}"),
                    };
                    println!(
                        "{:<24} {:<8} {:<24} {:<14} {digest}",
                        m.node_id,
                        member_state_name(m.state),
                        m.address,
                        format!("{}ms ago", m.last_contact_ms),
                    );
                }
                let differ = members
                    .iter()
                    .filter(|m| matches!(m.state, MemberState::Alive | MemberState::Suspect))
                    .filter(|m| same(m) == Some(false))
                    .count();
                if differ > 0 {
                    println!(
                        "{differ} live member(s) run other policies than {}: they share only \
                         the limiters both define (docs/cluster.md)",
                        members.first().map_or("", |m| m.node_id.as_str())
                    );
                }
                if version < ProtocolVersion::V3 {
                    println!("(the server speaks protocol version {version}: no policy digests)");
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

fn member_state_name(state: MemberState) -> &'static str {
    match state {
        MemberState::Alive => "alive",
        MemberState::Suspect => "suspect",
        MemberState::Down => "down",
        MemberState::Left => "left",
    }
}
