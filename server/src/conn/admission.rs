//! Who gets a binary connection: the node's `max_connections`, a per-peer-address
//! `max_connections_per_peer`, and what a refused peer hears.
//!
//! A refused connection gets one `ERROR` frame (request id 0, `OVERLOADED`, a message naming
//! the limit) and is closed: a client sees why instead of a bare reset. Refusals are logged
//! at most once per [`super::refusal_log::REFUSAL_LOG_PERIOD`] per node, with how many were not
//! logged since, so a flood of connection attempts cannot flood the log.

use super::refusal_log::RefusalLog;
use crate::clock;
use crate::node::Node;
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tollgate_protocol::{encode_error, ErrorCode};

/// A refused peer gets this long to take its error frame before the socket closes.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Open binary connections: the node's total and each peer address's count.
#[derive(Default)]
pub struct Connections {
    total: AtomicUsize,
    per_peer: Mutex<HashMap<IpAddr, usize>>,
    /// Refusals at accept, logged at a bounded rate.
    refusals: RefusalLog,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The node holds `max_connections`.
    NodeFull {
        /// `server.max_connections`.
        max: usize,
    },
    /// The peer address holds `max_connections_per_peer`.
    PeerFull {
        /// The peer's address.
        peer: IpAddr,
        /// `server.max_connections_per_peer`.
        max: usize,
    },
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::NodeFull { max } => write!(
                f,
                "connection refused: the server holds its limit of {max} connections \
                 (server.max_connections)"
            ),
            Refused::PeerFull { peer, max } => write!(
                f,
                "connection refused: {peer} holds its limit of {max} connections \
                 (server.max_connections_per_peer)"
            ),
        }
    }
}

impl Connections {
    /// Open connections on the node.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Claims a slot for a connection from `peer` (None: address unknown, counted only in
    /// the total).
    fn try_add(&self, node: &Node, peer: Option<IpAddr>) -> Result<(), Refused> {
        let max = node.limits.max_connections;
        if self.total.fetch_add(1, Ordering::Relaxed) >= max {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::NodeFull { max });
        }
        if let Some(peer) = peer {
            let max = node.limits.max_connections_per_peer;
            let mut per_peer = self.per_peer.lock().unwrap_or_else(|p| p.into_inner());
            let count = per_peer.entry(peer).or_insert(0);
            if *count >= max {
                drop(per_peer);
                self.total.fetch_sub(1, Ordering::Relaxed);
                return Err(Refused::PeerFull { peer, max });
            }
            *count += 1;
        }
        Ok(())
    }

    fn remove(&self, peer: Option<IpAddr>) {
        self.total.fetch_sub(1, Ordering::Relaxed);
        if let Some(peer) = peer {
            let mut per_peer = self.per_peer.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = per_peer.get_mut(&peer) {
                *count -= 1;
                if *count == 0 {
                    per_peer.remove(&peer);
                }
            }
        }
    }
}

/// A connection's slot: released when dropped.
pub struct Admitted {
    node: Arc<Node>,
    peer: Option<IpAddr>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.node.connections.remove(self.peer);
    }
}

/// Admits `stream` under the node's limits, or refuses it: the refused peer is sent an
/// `ERROR OVERLOADED` frame and closed by a task of its own (the accept loop goes on).
pub fn admit(node: &Arc<Node>, stream: TcpStream) -> Option<(TcpStream, Admitted)> {
    let peer = stream.peer_addr().ok().map(|a| a.ip());
    match node.connections.try_add(node, peer) {
        Ok(()) => Some((
            stream,
            Admitted {
                node: node.clone(),
                peer,
            },
        )),
        Err(refused) => {
            if let Some(count) = node.connections.refusals.to_log(clock::now_ns()) {
                tracing::warn!(
                    reason = %refused,
                    refused_since_last_log = count,
                    "refusing binary connections"
                );
            }
            glommio::spawn_local(tell_and_close(stream, refused)).detach();
            None
        }
    }
}

async fn tell_and_close(mut stream: TcpStream, refused: Refused) {
    let mut frame = Vec::new();
    encode_error(&mut frame, 0, ErrorCode::Overloaded, &refused.to_string());
    let _ = stream.set_write_timeout(Some(REFUSAL_WRITE_TIMEOUT));
    let _ = stream.write_all(&frame).await;
    let _ = stream.close().await;
}
