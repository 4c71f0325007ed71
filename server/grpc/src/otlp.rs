//! `opentelemetry.proto.collector.trace.v1.TraceService/Export`: accepts the "Aperture Check"
//! spans the SDKs export to the agent address, counts them, and ends the flows they report.
//!
//! Aperture's agent turns these spans into flow metrics; Tollgate counts them (debug log +
//! [`crate::GrpcHandle::spans_received`]) and reads one thing from them: a span whose check
//! response does not expect a `FlowEnd` (aperture-js 2.5.0 never sends one) ends the
//! concurrency flows it names ([`crate::span_flows`]). The export is answered after those
//! flows have ended, so an SDK that flushes its spans knows the capacity is free.
//!
//! An export may carry thousands of spans, each ending up to
//! [`MAX_FLOWS_PER_SPAN`](crate::span_flows::MAX_FLOWS_PER_SPAN) flows; the ids go to the
//! backend in batches of at most [`MAX_FLOW_END_REFS`], the most one `FlowEnd` call may end, so
//! no batch a shard works through is larger than a `FlowEnd` can make it.
//!
//! Accepting spans matters even without concurrency components: an `UNIMPLEMENTED` answer
//! makes every SDK log an export error per batch. A span whose check response cannot be read
//! is still accepted (logged at debug): telemetry must never fail a client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tollgate_policy::FlowId;
use tonic::{Request, Response, Status};

use crate::backend::{DecisionBackend, EndStatus};
use crate::flowcontrol::MAX_FLOW_END_REFS;
use crate::proto::opentelemetry::proto::collector::trace::v1::{
    trace_service_server::TraceService, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use crate::proto::opentelemetry::proto::common::v1::any_value::Value;
use crate::proto::opentelemetry::proto::trace::v1::Span;
use crate::span_flows::{flows_to_end, CHECK_RESPONSE_ATTRIBUTE};

/// The OTLP trace sink.
#[derive(Clone)]
pub struct SpanSink {
    /// Spans received since start; shared with the [`crate::GrpcHandle`].
    pub(crate) spans: Arc<AtomicU64>,
    /// Where the flows a span ends go.
    pub(crate) backend: Arc<dyn DecisionBackend>,
}

/// The `aperture.check_response` attribute of `span`, if it has one as a string.
fn check_response_json(span: &Span) -> Option<&str> {
    span.attributes
        .iter()
        .find(|kv| kv.key == CHECK_RESPONSE_ATTRIBUTE)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        })
}

impl SpanSink {
    /// Ends `flows`, at most [`MAX_FLOW_END_REFS`] per backend call (a shard ends a batch
    /// without yielding), one batch after the other; logs what was ended.
    async fn end_flows(&self, flows: &[FlowId]) {
        let (mut ended, mut unknown, mut failed) = (0usize, 0usize, 0usize);
        let mut error = None;
        for batch in flows.chunks(MAX_FLOW_END_REFS) {
            match self.backend.flow_end(batch.to_vec()).await {
                Ok(statuses) => {
                    let batch_ended = statuses.iter().filter(|s| **s == EndStatus::Ended).count();
                    ended += batch_ended;
                    unknown += batch.len().saturating_sub(batch_ended);
                }
                // The other batches are still tried: a backend may refuse one and take the next.
                Err(e) => {
                    failed += batch.len();
                    error = Some(e);
                }
            }
        }
        if failed < flows.len() {
            tracing::debug!(ended, unknown, "spans ended flows");
        }
        if let Some(e) = error {
            tracing::warn!(error = %e, flows = failed, "spans could not end flows");
        }
    }
}

#[tonic::async_trait]
impl TraceService for SpanSink {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let req = request.into_inner();
        let spans = req
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans);
        let mut n = 0u64;
        let mut ends = Vec::new();
        for span in spans {
            n += 1;
            tracing::trace!(name = %span.name, "otlp span");
            let Some(json) = check_response_json(span) else {
                continue;
            };
            match flows_to_end(json) {
                Ok(flows) => {
                    if flows.ignored > 0 {
                        tracing::debug!(
                            ignored = flows.ignored,
                            "span named request ids that are not flow ids, or too many"
                        );
                    }
                    ends.extend(flows.ends);
                }
                Err(e) => tracing::debug!(error = %e, "span's check response not read"),
            }
        }
        if !ends.is_empty() {
            self.end_flows(&ends).await;
        }
        let before = self.spans.fetch_add(n, Ordering::Relaxed);
        if before == 0 && n > 0 {
            // Once at info: tells the operator SDK telemetry reaches this port.
            tracing::info!(
                spans = n,
                "first OTLP trace export accepted (later ones are logged at debug)"
            );
        } else {
            tracing::debug!(spans = n, total = before + n, "otlp trace export accepted");
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    use std::time::Duration;

    use tollgate_policy::{Engine, OwnedFlow};

    use super::*;
    use crate::backend::{DecisionFuture, FlowEndFuture, GrpcService};
    use crate::proto::opentelemetry::proto::common::v1::{AnyValue, KeyValue};
    use crate::proto::opentelemetry::proto::trace::v1::{ResourceSpans, ScopeSpans};
    use crate::span_flows::MAX_FLOWS_PER_SPAN;

    /// A backend that ends every flow it is asked to and records the batches it was given.
    #[derive(Default)]
    struct RecordingBackend {
        batches: Mutex<Vec<Vec<FlowId>>>,
    }

    impl DecisionBackend for RecordingBackend {
        fn engine(&self) -> Arc<Engine> {
            Arc::new(Engine::new(&[]))
        }

        fn check(&self, _: GrpcService, _: OwnedFlow, _: Option<Duration>) -> DecisionFuture {
            unreachable!("an export decides no flow")
        }

        fn flow_end(&self, flows: Vec<FlowId>) -> FlowEndFuture {
            let statuses = vec![EndStatus::Ended; flows.len()];
            self.batches.lock().unwrap().push(flows);
            Box::pin(async move { Ok(statuses) })
        }
    }

    /// A span (as aperture-js exports it) whose flow holds `ids`.
    fn span_ending(ids: &[FlowId]) -> Span {
        let decisions: Vec<String> = ids
            .iter()
            .map(|id| format!(r#"{{"concurrencyLimiterInfo":{{"requestId":"{id}"}}}}"#))
            .collect();
        let json = format!(r#"{{"limiterDecisions":[{}]}}"#, decisions.join(","));
        Span {
            name: "Aperture Check".into(),
            attributes: vec![KeyValue {
                key: CHECK_RESPONSE_ATTRIBUTE.into(),
                value: Some(AnyValue {
                    value: Some(Value::StringValue(json)),
                }),
            }],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn an_export_ends_its_flows_in_batches_no_larger_than_a_flow_end() {
        let backend = Arc::new(RecordingBackend::default());
        let sink = SpanSink {
            spans: Arc::default(),
            backend: backend.clone(),
        };
        // More spans, each full, than one FlowEnd may end flows of.
        let span_count = 2 * MAX_FLOW_END_REFS / MAX_FLOWS_PER_SPAN + 1;
        let ids: Vec<FlowId> = (0..span_count * MAX_FLOWS_PER_SPAN)
            .map(|seq| FlowId::new(0, seq as u64))
            .collect();
        let spans = ids.chunks(MAX_FLOWS_PER_SPAN).map(span_ending).collect();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        sink.export(Request::new(request)).await.unwrap();

        let batches = backend.batches.lock().unwrap();
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert!(
            sizes.iter().all(|&n| n <= MAX_FLOW_END_REFS),
            "a batch larger than a FlowEnd may end: {sizes:?}"
        );
        assert_eq!(sizes.len(), 3, "{sizes:?}");
        // Every flow is ended, once.
        let ended: Vec<FlowId> = batches.iter().flatten().copied().collect();
        assert_eq!(ended.len(), ids.len());
        assert_eq!(
            ended.iter().collect::<BTreeSet<_>>(),
            ids.iter().collect::<BTreeSet<_>>()
        );
        assert_eq!(sink.spans.load(Ordering::Relaxed), span_count as u64);
    }
}
