//! [`HotCalls`]: the port's service, sending `Check` and `ShouldRateLimit` straight to their
//! handlers and every other call through tonic's routes.
//!
//! ```text
//!   tonic Server (HTTP/2, TLS, keepalive, grpc-timeout, drain)
//!     HotCalls ── /aperture.flowcontrol.check.v1.FlowControlService/Check ──┐ plain call, key
//!              ── /envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit ┤ accepted:
//!              │                                                            direct_unary::answer
//!              └─ anything else, or not the plain case ──> Routes (generated services, API-key
//!                                                          check, INVALID_ARGUMENT rewrite)
//! ```
//!
//! Routing by path through tonic's `Routes` (an axum router) and the generated service's
//! dispatch cost about as much per call as the decision itself at 50 connections × 1 stream
//! (docs/performance.md, section:grpc). The two calls every SDK and Envoy make per flow skip
//! them; the rest keep tonic's path, and so does any hot call that is not plain
//! ([`crate::direct_unary`]) or whose `x-api-key` is missing or wrong (the routes' API-key
//! check then answers it `UNAUTHENTICATED`, as before).

use std::convert::Infallible;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::{http, Service};

use crate::auth::{ApiKeyCheck, API_KEY_HEADER};
use crate::direct_unary::{self, CallFuture, DirectMethod};
use crate::flowcontrol::FlowControl;
use crate::rls::Rls;

/// The port's service (module docs). `R` is the rest: tonic's routes.
#[derive(Clone)]
pub struct HotCalls<R> {
    check: FlowControl,
    rls: Rls,
    auth: ApiKeyCheck,
    rest: R,
}

impl<R> HotCalls<R> {
    /// Answers `Check` with `check` and `ShouldRateLimit` with `rls` when the call may go
    /// direct (`auth` accepts its key, if keys are set); everything else with `rest`.
    pub fn new(check: FlowControl, rls: Rls, auth: ApiKeyCheck, rest: R) -> Self {
        Self {
            check,
            rls,
            auth,
            rest,
        }
    }

    /// Whether `request` may skip the routes' API-key check: keys are off, or it carries one
    /// of them.
    fn authorized(&self, request: &http::Request<Body>) -> bool {
        !self.auth.enabled()
            || request
                .headers()
                .get(API_KEY_HEADER)
                .is_some_and(|key| self.auth.accepts(key.as_bytes()))
    }
}

impl<R> Service<http::Request<Body>> for HotCalls<R>
where
    R: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    R::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = CallFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.rest.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> CallFuture {
        let path = request.uri().path();
        let direct = (path == FlowControl::PATH || path == Rls::PATH)
            && direct_unary::plain(&request)
            && self.authorized(&request);
        // The routes were made ready for this call: it takes them, a clone stays.
        let rest = self.rest.clone();
        let mut rest = std::mem::replace(&mut self.rest, rest);
        if !direct {
            return Box::pin(rest.call(request));
        }
        if request.uri().path() == FlowControl::PATH {
            Box::pin(direct_unary::answer(rest, self.check.clone(), request))
        } else {
            Box::pin(direct_unary::answer(rest, self.rls.clone(), request))
        }
    }
}
