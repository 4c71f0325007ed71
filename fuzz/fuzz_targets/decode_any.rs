//! Fuzz every decoder: client frames, server frames, label and batch iteration, interning, and
//! the decode → encode round trip. The body lives in `tollgate_protocol::fuzzing::decode_any`
//! so that `cargo test -p tollgate-protocol` drives the same code with random bytes on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tollgate_protocol::fuzzing::decode_any(data);
});
