//! `opentelemetry.proto.collector.trace.v1.TraceService/Export`: accepts the "Aperture Check"
//! spans the SDKs export to the agent address, counts them, and ends the flows they report.
//!
//! Aperture's agent turns these spans into flow metrics; Tollgate counts them (debug log +
//! [`crate::GrpcHandle::spans_received`]) and reads one thing from them: a span whose check
//! response does not expect a `FlowEnd` (aperture-js 2.5.0 never sends one) ends the
//! concurrency flows it names ([`crate::span_flows`]). The export is answered after those
//! flows have ended, so an SDK that flushes its spans knows the capacity is free.
//!
//! Accepting spans matters even without concurrency components: an `UNIMPLEMENTED` answer
//! makes every SDK log an export error per batch. A span whose check response cannot be read
//! is still accepted (logged at debug): telemetry must never fail a client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::backend::{DecisionBackend, EndStatus};
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
            let asked = ends.len();
            match self.backend.flow_end(ends).await {
                Ok(statuses) => {
                    let ended = statuses.iter().filter(|s| **s == EndStatus::Ended).count();
                    tracing::debug!(
                        ended,
                        unknown = asked.saturating_sub(ended),
                        "spans ended flows"
                    );
                }
                Err(e) => tracing::warn!(error = %e, flows = asked, "spans could not end flows"),
            }
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
