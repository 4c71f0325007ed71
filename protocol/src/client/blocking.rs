//! A synchronous wrapper around [`super::Client`] for callers without an async runtime.
//!
//! It owns a current-thread tokio runtime; each call blocks the calling thread on it. The
//! connection tasks make progress only while some call is blocked on the runtime, which is
//! enough: a reply that arrives between calls waits in the socket buffer. Clones share the
//! runtime and the connections, and may be used from several threads. Do not use (or drop the
//! last clone of) it from inside an async task: blocking there panics, as tokio forbids it.

use std::sync::Arc;

use tokio::runtime::Runtime;

use super::{CheckRequest, ClientConfig, ClientError, Verdict};
use crate::types::{CheckReply, FlowEndStatus, HelloReply, Member};
use crate::version::ProtocolVersion;

/// Blocking Tollgate client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Client {
    // Field order is drop order: the connections go before the runtime they run on.
    inner: super::Client,
    rt: Arc<Runtime>,
}

impl Client {
    /// Builds the runtime, then [`super::Client::connect`].
    pub fn connect(cfg: ClientConfig) -> Result<Client, ClientError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Connect {
                addr: cfg.addr.clone(),
                reason: format!("cannot build the client runtime: {e}"),
            })?;
        let inner = rt.block_on(super::Client::connect(cfg))?;
        Ok(Client {
            inner,
            rt: Arc::new(rt),
        })
    }

    /// The server's handshake answer.
    pub fn hello(&self) -> &HelloReply {
        self.inner.hello()
    }

    /// See [`super::Client::version`].
    pub fn version(&self) -> ProtocolVersion {
        self.inner.version()
    }

    /// See [`super::Client::check`].
    pub fn check(&self, req: &CheckRequest) -> Result<CheckReply, ClientError> {
        self.rt.block_on(self.inner.check(req))
    }

    /// See [`super::Client::check_with_fail_mode`].
    pub fn check_with_fail_mode(&self, req: &CheckRequest) -> Verdict {
        self.rt.block_on(self.inner.check_with_fail_mode(req))
    }

    /// See [`super::Client::check_batch`].
    pub fn check_batch(
        &self,
        reqs: &[CheckRequest],
    ) -> Result<Vec<Result<CheckReply, ClientError>>, ClientError> {
        self.rt.block_on(self.inner.check_batch(reqs))
    }

    /// See [`super::Client::flow_end`].
    pub fn flow_end(&self, ids: &[u64]) -> Result<Vec<FlowEndStatus>, ClientError> {
        self.rt.block_on(self.inner.flow_end(ids))
    }

    /// See [`super::Client::members`].
    pub fn members(&self) -> Result<Vec<Member>, ClientError> {
        self.rt.block_on(self.inner.members())
    }

    /// See [`super::Client::ping`].
    pub fn ping(&self, payload: &[u8]) -> Result<(), ClientError> {
        self.rt.block_on(self.inner.ping(payload))
    }
}
