//! Per-service observation of decisions: the server counts checks by protocol and times
//! them, without this crate knowing how it counts.
//!
//! [`Observed`] wraps the backend once per service (Aperture's `Check`, Envoy's
//! `ShouldRateLimit`): it times each [`DecisionBackend::check`] and reports the result to
//! [`DecisionBackend::observe`], which the server implements (a no-op by default).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::{DecisionBackend, DecisionFuture, FlowEndFuture};
use tollgate_policy::{Engine, FlowId, OwnedFlow};

/// Which service asked for a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GrpcService {
    /// `aperture.flowcontrol.check.v1.FlowControlService/Check`.
    ApertureCheck,
    /// `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` (one decision per
    /// descriptor).
    EnvoyRateLimit,
}

/// A backend that reports each decision of one service to the backend it wraps.
pub struct Observed {
    inner: Arc<dyn DecisionBackend>,
    service: GrpcService,
}

impl Observed {
    /// `inner`, observed as `service`.
    pub fn wrap(inner: Arc<dyn DecisionBackend>, service: GrpcService) -> Arc<dyn DecisionBackend> {
        Arc::new(Observed { inner, service })
    }
}

impl DecisionBackend for Observed {
    fn engine(&self) -> std::sync::Arc<Engine> {
        self.inner.engine()
    }

    fn check(&self, flow: OwnedFlow, deadline: Option<Duration>) -> DecisionFuture {
        let started = Instant::now();
        let (inner, service) = (self.inner.clone(), self.service);
        let decided = inner.check(flow, deadline);
        Box::pin(async move {
            let result = decided.await;
            inner.observe(service, &result, started.elapsed());
            result
        })
    }

    fn flow_end(&self, flows: Vec<FlowId>) -> FlowEndFuture {
        self.inner.flow_end(flows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendError;
    use crate::backend::EndStatus;
    use std::sync::Mutex;
    use tollgate_policy::Decision;

    #[derive(Default)]
    struct Recording {
        engine: std::sync::Arc<Engine>,
        seen: Mutex<Vec<(GrpcService, bool)>>,
    }

    impl DecisionBackend for Recording {
        fn engine(&self) -> std::sync::Arc<Engine> {
            self.engine.clone()
        }

        fn check(&self, _flow: OwnedFlow, _deadline: Option<Duration>) -> DecisionFuture {
            Box::pin(async { Ok(Decision::from_outcomes(Default::default())) })
        }

        fn flow_end(&self, flows: Vec<FlowId>) -> FlowEndFuture {
            let n = flows.len();
            Box::pin(async move { Ok(vec![EndStatus::Unknown; n]) })
        }

        fn observe(
            &self,
            service: GrpcService,
            result: &Result<Decision, BackendError>,
            _elapsed: Duration,
        ) {
            let accepted = result.as_ref().is_ok_and(|d| d.accepted);
            self.seen.lock().expect("lock").push((service, accepted));
        }
    }

    #[test]
    fn each_decision_is_reported_as_the_wrapping_service() {
        let backend = Arc::new(Recording::default());
        let rls = Observed::wrap(backend.clone(), GrpcService::EnvoyRateLimit);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let decision = rt
            .block_on(rls.check(OwnedFlow::default(), None))
            .expect("decided");
        assert!(decision.accepted);
        assert_eq!(
            *backend.seen.lock().expect("lock"),
            [(GrpcService::EnvoyRateLimit, true)]
        );
    }
}
