//! The gRPC wire definitions of Tollgate's compat port, generated from the .proto files in
//! `proto/` by `build.rs` (protox + tonic-prost-build; no system protoc).
//!
//! This crate owns the generated code only: prost messages, tonic servers and tonic clients
//! for the three services the compat port speaks, and the encoded descriptor set for server
//! reflection. It holds no logic, so both sides can use it without pulling in the other:
//! `tollgate-grpc` (the server) implements the servers, `tollgate-loadgen` drives the clients,
//! and the SDK compat tests compare the descriptors with the SDKs' own.
//!
//! # Layout
//! The module tree mirrors the proto packages, so generated cross-package paths resolve:
//! - [`aperture::flowcontrol::check::v1`] — `FlowControlService` (Check, cache RPCs, FlowEnd):
//!   what the Aperture SDKs call.
//! - [`opentelemetry::proto::collector::trace::v1`] — OTLP `TraceService/Export` (the SDKs'
//!   flow spans), with the span data in [`opentelemetry::proto::trace::v1`].
//! - [`envoy::service::ratelimit::v3`] — Envoy's `RateLimitService/ShouldRateLimit`, with its
//!   descriptors in [`envoy::extensions::common::ratelimit::v3`].
//! - [`FILE_DESCRIPTOR_SET`] — every file above and its imports, encoded.
//! - [`tonic`] — the tonic the generated code is built with, so users of the clients need not
//!   name a matching version themselves.
#![allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]

pub use tonic;

/// Encoded `FileDescriptorSet` of every project proto and its imports, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tollgate_descriptor_set.bin"));

/// `aperture.*`
pub mod aperture {
    /// `aperture.flowcontrol.*`
    pub mod flowcontrol {
        /// `aperture.flowcontrol.check.*`
        pub mod check {
            /// `aperture.flowcontrol.check.v1`: the flow-control service the SDKs call.
            pub mod v1 {
                include!(concat!(
                    env!("OUT_DIR"),
                    "/aperture.flowcontrol.check.v1.rs"
                ));
            }
        }
    }
}

/// `opentelemetry.proto.*`
pub mod opentelemetry {
    /// `opentelemetry.proto.*`
    pub mod proto {
        /// `opentelemetry.proto.collector.*`
        pub mod collector {
            /// `opentelemetry.proto.collector.trace.*`
            pub mod trace {
                /// `opentelemetry.proto.collector.trace.v1`: OTLP trace export.
                pub mod v1 {
                    include!(concat!(
                        env!("OUT_DIR"),
                        "/opentelemetry.proto.collector.trace.v1.rs"
                    ));
                }
            }
        }
        /// `opentelemetry.proto.trace.*`
        pub mod trace {
            /// `opentelemetry.proto.trace.v1`: span data (subset).
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/opentelemetry.proto.trace.v1.rs"));
            }
        }
    }
}

/// `envoy.*`
pub mod envoy {
    /// `envoy.extensions.*`
    pub mod extensions {
        /// `envoy.extensions.common.*`
        pub mod common {
            /// `envoy.extensions.common.ratelimit.*`
            pub mod ratelimit {
                /// `envoy.extensions.common.ratelimit.v3`: rate limit descriptors.
                pub mod v3 {
                    include!(concat!(
                        env!("OUT_DIR"),
                        "/envoy.extensions.common.ratelimit.v3.rs"
                    ));
                }
            }
        }
    }
    /// `envoy.service.*`
    pub mod service {
        /// `envoy.service.ratelimit.*`
        pub mod ratelimit {
            /// `envoy.service.ratelimit.v3`: the external rate limit service (RLS).
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.service.ratelimit.v3.rs"));
            }
        }
    }
}
