//! The `tollgate` binary: see [`tollgate_server::cli`].

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = tollgate_server::cli::Cli::parse();
    std::process::exit(tollgate_server::cli::run(cli));
}
