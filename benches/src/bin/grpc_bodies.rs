//! Writes the request bodies `benches/grpc_compare.sh` hands to h2load (`-d FILE`): one gRPC
//! message each, as it travels in an HTTP/2 DATA frame (a 1-byte compressed flag of 0, a 4-byte
//! big-endian length, then the protobuf message).
//!
//! ```text
//! grpc_bodies DIR [USER]    # writes DIR/rls.bin and DIR/check.bin for label user=USER
//! ```
//!
//! - `rls.bin`: `envoy.service.ratelimit.v3.RateLimitRequest { domain: "bench", descriptors:
//!   [{ entries: [{ key: "user", value: USER }] }] }`, `hits_addend` unset (1).
//! - `check.bin`: `aperture.flowcontrol.check.v1.CheckRequest { control_point: "bench",
//!   labels: { user: USER } }`.
//!
//! h2load sends the same body on every request, so each file names one user.

use std::path::PathBuf;

use anyhow::Context as _;
use prost::Message;
use tollgate_grpc::proto::aperture::flowcontrol::check::v1::CheckRequest;
use tollgate_grpc::proto::envoy::extensions::common::ratelimit::v3::{
    rate_limit_descriptor::Entry, RateLimitDescriptor,
};
use tollgate_grpc::proto::envoy::service::ratelimit::v3::RateLimitRequest;

/// The control point (and RLS domain) the bench policy selects.
const CONTROL_POINT: &str = "bench";

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().context("usage: grpc_bodies DIR [USER]")?);
    let user = args.next().unwrap_or_else(|| "h2load".to_owned());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let rls = RateLimitRequest {
        domain: CONTROL_POINT.to_owned(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: "user".to_owned(),
                value: user.clone(),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let check = CheckRequest {
        control_point: CONTROL_POINT.to_owned(),
        labels: [("user".to_owned(), user)].into_iter().collect(),
        ..Default::default()
    };
    write(&dir.join("rls.bin"), &grpc_frame(&rls)?)?;
    write(&dir.join("check.bin"), &grpc_frame(&check)?)?;
    Ok(())
}

/// A message with gRPC's 5-byte length prefix (uncompressed).
fn grpc_frame(message: &impl Message) -> anyhow::Result<Vec<u8>> {
    let body = message.encode_to_vec();
    let len = u32::try_from(body.len()).context("a message over 4 GiB")?;
    let mut frame = Vec::with_capacity(5 + body.len());
    frame.push(0);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

fn write(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}
