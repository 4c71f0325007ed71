//! Fuzz the gRPC port's own request decoding: the direct path's reading of a request body into
//! one message (cut into frames anywhere, then trailers or a reset), the hot requests' bounds,
//! `grpc-timeout` and a span's check-response JSON. The body lives in
//! `tollgate_grpc::fuzzing::grpc_request` (compiled under `cfg(fuzzing)`, which cargo-fuzz
//! sets) so that `cargo test -p tollgate-grpc` drives the same code on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tollgate_grpc::fuzzing::grpc_request(data);
});
