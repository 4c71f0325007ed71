//! Generated prost messages and tonic services for the project's .proto files
//! (`server/grpc/proto`), compiled by `build.rs` with protox + tonic-prost-build.
//!
//! The module tree mirrors the proto packages so generated cross-package paths resolve.
#![allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]

/// Encoded `FileDescriptorSet` of every project proto and its imports, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tollgate_grpc_descriptor.bin"));

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
