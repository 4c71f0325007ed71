//! `tollgate-loadgen`: see the library docs and docs/loadgen.md.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use tollgate_loadgen::cli::{Cli, Command};
use tollgate_loadgen::{drivers, run_blocking};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::EchoServer(args)) => echo_server(&args.listen),
        Some(Command::Flows(args)) => flows(&args),
        None => load(&cli),
    }
}

fn flows(args: &tollgate_loadgen::cli::FlowsArgs) -> ExitCode {
    use tollgate_loadgen::flows::{self, FlowScenario};
    let scenario = std::fs::read_to_string(&args.scenario)
        .map_err(|e| format!("{}: {e}", args.scenario.display()))
        .and_then(|text| {
            FlowScenario::parse(&text).map_err(|e| format!("{}: {e}", args.scenario.display()))
        });
    let scenario = match scenario {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let access = match args.access.to_access() {
        Ok(access) => access,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match flows::run(&args.server, &access, &scenario, args.seed) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = match serde_json::to_string_pretty(&report) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("error: report: {e}");
            return ExitCode::FAILURE;
        }
    };
    match args.json.as_deref() {
        Some("-") => println!("{json}"),
        Some(path) => {
            print!("{}", report.table());
            if let Err(e) = std::fs::write(path, json) {
                eprintln!("error: {path}: {e}");
                return ExitCode::FAILURE;
            }
        }
        None => print!("{}", report.table()),
    }
    ExitCode::SUCCESS
}

fn load(cli: &Cli) -> ExitCode {
    let cfg = match cli.run.to_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match run_blocking(cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.table());
    if let Some(path) = &cli.run.json {
        if let Err(e) = std::fs::write(path, report.to_json() + "\n") {
            eprintln!("error: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if let Some(path) = &cli.run.html {
        if let Err(e) = std::fs::write(path, tollgate_loadgen::html::render(&report)) {
            eprintln!("error: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn echo_server(listen: &str) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<()> = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        println!("echo-server listening on {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        drivers::echo_server(listener).await?;
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
