//! [`Readiness`]: where the node is in its life, as `/readyz` reports it.
//!
//! Set by `serve` as start-up progresses and when a stop signal arrives; read by the admin
//! port. One atomic byte: no lock between the thread that sets it and the probes.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// A phase of the node's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Binding ports and starting the shards.
    Starting = 0,
    /// Shards serve; catching up on bucket state from cluster peers.
    JoiningCluster = 1,
    /// Shards serve; starting the gRPC port.
    StartingGrpc = 2,
    /// Every shard serves, the cluster is joined (when clustered), every port is up.
    Ready = 3,
    /// A stop signal arrived: draining connections, then exiting.
    Draining = 4,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Starting,
            1 => Phase::JoiningCluster,
            2 => Phase::StartingGrpc,
            3 => Phase::Ready,
            _ => Phase::Draining,
        }
    }

    /// What `/readyz` says in this phase.
    pub fn describe(self) -> &'static str {
        match self {
            Phase::Starting => "starting: binding ports and starting shards",
            Phase::JoiningCluster => {
                "starting: joining the cluster (catching up on bucket state from peers)"
            }
            Phase::StartingGrpc => "starting: starting the gRPC port",
            Phase::Ready => "ready",
            Phase::Draining => "draining: shutting down",
        }
    }
}

/// The node's phase, shared by `serve` (writer) and the admin port (reader).
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicU8>);

impl Readiness {
    /// A node that is starting.
    pub fn new() -> Readiness {
        Readiness::default()
    }

    /// Moves to `phase`. Draining is final: a late start-up step cannot undo it.
    pub fn set(&self, phase: Phase) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                (current != Phase::Draining as u8).then_some(phase as u8)
            });
    }

    /// The phase now.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.0.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_then_ready_then_draining_for_good() {
        let r = Readiness::new();
        assert_eq!(r.phase(), Phase::Starting);
        r.set(Phase::JoiningCluster);
        r.set(Phase::Ready);
        assert_eq!(r.phase(), Phase::Ready);
        r.set(Phase::Draining);
        r.set(Phase::Ready);
        assert_eq!(r.phase(), Phase::Draining);
    }
}
