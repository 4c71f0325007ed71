//! Binding every listening socket before any shard starts, so the ready line can report
//! real addresses and a port conflict fails the start instead of a shard.
//!
//! The shared port is bound once per shard with SO_REUSEPORT (the kernel spreads
//! connections across shards). Shard-aware ports are `listen port + 1 + shard index`, or
//! all OS-chosen when the listen port is 0 (tests, several nodes on one host).

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{SocketAddr, TcpListener};

/// Pending connections the kernel queues per listener. 1024 absorbs a reconnect storm
/// from a fleet of clients without SYN drops; the kernel caps it at somaxconn anyway.
const LISTEN_BACKLOG: i32 = 1024;

/// Every binary-protocol listener of a node.
pub struct BinaryListeners {
    /// The shared port's address (the OS-chosen port filled in).
    pub listen: SocketAddr,
    /// One SO_REUSEPORT socket on the shared port per shard.
    pub shared: Vec<TcpListener>,
    /// One shard-aware socket per shard, index = shard.
    pub shard_aware: Vec<TcpListener>,
}

impl BinaryListeners {
    /// The shard-aware ports, index = shard.
    pub fn shard_ports(&self) -> Vec<u16> {
        self.shard_aware
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()).unwrap_or(0))
            .collect()
    }
}

/// A listening TCP socket with SO_REUSEADDR and, when `reuse_port`, SO_REUSEPORT.
pub fn bind_tcp(addr: SocketAddr, reuse_port: bool) -> Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nodelay(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("cannot bind {addr}"))?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Binds `addr` once per shard with SO_REUSEPORT (at least once), so the kernel spreads its
/// connections over the shards. Port 0 is resolved by the first bind and reused by the others.
/// Returns the address bound and the sockets, index = shard.
pub fn bind_per_shard(addr: SocketAddr, shards: usize) -> Result<(SocketAddr, Vec<TcpListener>)> {
    let first = bind_tcp(addr, true)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..shards {
        listeners.push(bind_tcp(addr, true)?);
    }
    Ok((addr, listeners))
}

/// Binds the shared port `shards` times and one shard-aware port per shard.
pub fn bind_binary(listen: SocketAddr, shards: usize) -> Result<BinaryListeners> {
    // Port 0 asks the OS: then the shard-aware ports are OS-chosen too, since the
    // neighbours of a random port may be taken.
    let ephemeral = listen.port() == 0;
    let (listen, shared) = bind_per_shard(listen, shards)?;
    let mut shard_aware = Vec::with_capacity(shards);
    for i in 0..shards {
        let port = if ephemeral {
            0
        } else {
            let p = u32::from(listen.port()) + 1 + i as u32;
            u16::try_from(p).context("shard-aware port above 65535: choose a lower listen port")?
        };
        let addr = SocketAddr::new(listen.ip(), port);
        shard_aware.push(
            bind_tcp(addr, false).with_context(|| format!("shard-aware port for shard {i}"))?,
        );
    }
    Ok(BinaryListeners {
        listen,
        shared,
        shard_aware,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_bound_per_shard_resolves_port_0_once_and_shares_it() {
        let (addr, listeners) =
            bind_per_shard("127.0.0.1:0".parse().expect("addr"), 3).expect("loopback binds");
        assert_ne!(addr.port(), 0);
        assert_eq!(listeners.len(), 3);
        for l in &listeners {
            assert_eq!(l.local_addr().expect("bound"), addr);
        }
        // Another socket without SO_REUSEPORT cannot take the port from under the shards.
        assert!(bind_tcp(addr, false).is_err());
    }
}
