//! How the tokio floors (`grpc_floor`, `grpc_lean_floor`) take their arguments, bind and run:
//! as the compat port does with `server.grpc_threads`, one listener and one thread each, the
//! listeners sharing the port with SO_REUSEPORT when there are several.

use std::net::{SocketAddr, TcpListener};

use anyhow::Context as _;
use tollgate_server::listeners::bind_per_shard;

/// The listen address argument (default `127.0.0.1:0`).
pub fn addr_arg(arg: Option<String>) -> anyhow::Result<SocketAddr> {
    arg.unwrap_or_else(|| "127.0.0.1:0".to_owned())
        .parse()
        .context("the first argument is the address to listen on, e.g. 127.0.0.1:0")
}

/// The optional THREADS argument, the `which`-th: at least 1, default 1.
pub fn threads_arg(arg: Option<String>, which: &str) -> anyhow::Result<usize> {
    match arg {
        Some(n) => {
            n.parse().ok().filter(|&n| n >= 1).with_context(|| {
                format!("the {which} argument is the number of threads, at least 1")
            })
        }
        None => Ok(1),
    }
}

/// Binds `addr` with `threads` listeners (one binds as the port does with one thread, without
/// SO_REUSEPORT), prints "`name` listening ADDR", runs `serve` on a thread per listener and
/// returns when they all end (the floors serve until killed).
pub fn serve_on_threads<F>(
    name: &str,
    addr: SocketAddr,
    threads: usize,
    serve: F,
) -> anyhow::Result<()>
where
    F: Fn(TcpListener) -> anyhow::Result<()> + Clone + Send + 'static,
{
    let listeners = if threads == 1 {
        vec![TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?]
    } else {
        bind_per_shard(addr, threads)
            .with_context(|| format!("binding {addr}"))?
            .1
    };
    let bound = listeners.first().context("no listener")?.local_addr()?;
    println!("{name} listening {bound}");
    let serving: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            let serve = serve.clone();
            std::thread::spawn(move || serve(listener))
        })
        .collect();
    for thread in serving {
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("a serving thread panicked"))??;
    }
    Ok(())
}
