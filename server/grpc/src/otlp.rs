//! `opentelemetry.proto.collector.trace.v1.TraceService/Export`: accepts the "Aperture Check"
//! spans the SDKs export to the agent address and counts them.
//!
//! Aperture's agent turns these spans into flow metrics; Tollgate only counts them (debug log +
//! [`crate::GrpcHandle::spans_received`]). Accepting them matters: an `UNIMPLEMENTED` answer makes
//! every SDK log an export error per batch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::proto::opentelemetry::proto::collector::trace::v1::{
    trace_service_server::TraceService, ExportTraceServiceRequest, ExportTraceServiceResponse,
};

/// The OTLP trace sink.
#[derive(Debug, Clone, Default)]
pub struct SpanSink {
    /// Spans received since start; shared with the [`crate::GrpcHandle`].
    pub(crate) spans: Arc<AtomicU64>,
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
        for span in spans {
            n += 1;
            tracing::trace!(name = %span.name, "otlp span");
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
