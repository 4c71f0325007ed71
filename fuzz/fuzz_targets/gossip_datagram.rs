//! Fuzz the cluster's gossip datagrams: the envelope (HMAC), the BATCH, ACKS, LEAVE and
//! POLICIES archives, foca's membership codec, and a whole node that a peer has joined, fed the input
//! raw, sealed from its peer and sealed from a stranger. The body lives in
//! `tollgate_cluster::fuzzing::gossip_datagram` (compiled under `cfg(fuzzing)`, which cargo-fuzz
//! sets) so that `cargo test -p tollgate-cluster` drives the same code on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tollgate_cluster::fuzzing::gossip_datagram(data);
});
