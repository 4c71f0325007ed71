//! [`HotCalls`]: the port's service, sending `Check` and `ShouldRateLimit` straight to their
//! handlers and every other call through tonic's routes.
//!
//! ```text
//!   transport::serve (hyper's HTTP/2, TLS, keepalive, grpc-timeout, drain)
//!     HotCalls ── /aperture.flowcontrol.check.v1.FlowControlService/Check ──┐ plain call, key
//!              ── /envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit ┤ accepted:
//!              │                                                            direct_unary::answer
//!              └─ anything else, or not the plain case ──> Routes (generated services, API-key
//!                                                          check, INVALID_ARGUMENT rewrite)
//! ```
//!
//! Routing by path through tonic's `Routes` (an axum router), the generated service's
//! dispatch and its codec cost 0.9–1.7 µs of CPU per call in the floors (hyper over them
//! against hyper alone, benches/grpc_compare_notes.md), a server's whole cost per call being
//! 3–12 µs. The two calls every SDK and Envoy make per flow skip them; the rest keep
//! tonic's path, and so does any hot call that is not plain ([`crate::direct_unary`]) or
//! whose `x-api-key` is missing or wrong (the routes' API-key check then answers it
//! `UNAUTHENTICATED`, as before).

use std::convert::Infallible;
use std::sync::Arc;

use tonic::body::Body;
use tonic::codegen::{http, Service};

use crate::auth::{ApiKeyCheck, API_KEY_HEADER};
use crate::direct_unary::{self, CallFuture, DirectMethod};
use crate::flowcontrol::FlowControl;
use crate::rls::Rls;

/// What [`HotCalls`] hands every other call to: tonic's routes (any service like them).
pub trait Rest:
    Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> Rest for T where
    T: Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// The port's service (module docs). `R` is the rest: tonic's routes. A clone shares one
/// allocation, so the connection and call that take one pay a single reference count.
pub struct HotCalls<R> {
    inner: Arc<Inner<R>>,
}

impl<R> Clone for HotCalls<R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<R> {
    check: FlowControl,
    rls: Rls,
    auth: ApiKeyCheck,
    rest: R,
}

impl<R: Rest> HotCalls<R> {
    /// Answers `Check` with `check` and `ShouldRateLimit` with `rls` when the call may go
    /// direct (`auth` accepts its key, if keys are set); everything else with `rest`.
    pub fn new(check: FlowControl, rls: Rls, auth: ApiKeyCheck, rest: R) -> Self {
        Self {
            inner: Arc::new(Inner {
                check,
                rls,
                auth,
                rest,
            }),
        }
    }

    /// Answers one call.
    pub fn call(&self, request: http::Request<Body>) -> CallFuture {
        let path = request.uri().path();
        let check = path == FlowControl::PATH;
        let direct = (check || path == Rls::PATH)
            && direct_unary::plain(&request)
            && self.authorized(&request);
        if !direct {
            return call_rest(&self.inner.rest, request);
        }
        let inner = self.inner.clone();
        if check {
            Box::pin(async move {
                let rest = |r| call_rest(&inner.rest, r);
                direct_unary::answer(&inner.check, request, rest).await
            })
        } else {
            Box::pin(async move {
                let rest = |r| call_rest(&inner.rest, r);
                direct_unary::answer(&inner.rls, request, rest).await
            })
        }
    }

    /// Whether `request` may skip the routes' API-key check: keys are off, or it carries one
    /// of them.
    fn authorized(&self, request: &http::Request<Body>) -> bool {
        let auth = &self.inner.auth;
        !auth.enabled()
            || request
                .headers()
                .get(API_KEY_HEADER)
                .is_some_and(|key| auth.accepts(key.as_bytes()))
    }
}

/// `request` through a clone of the routes, made ready first as tower asks.
fn call_rest<R: Rest>(rest: &R, request: http::Request<Body>) -> CallFuture {
    let mut rest = rest.clone();
    Box::pin(async move {
        std::future::poll_fn(|cx| rest.poll_ready(cx)).await?;
        rest.call(request).await
    })
}
