//! Compiles the project's .proto files (`proto/`) with protox (pure Rust, no system protoc) and
//! generates prost messages + tonic servers/clients with tonic-prost-build. Also writes the
//! encoded descriptor set to `$OUT_DIR/tollgate_descriptor_set.bin` for server reflection.

use prost::Message as _;

const PROTOS: &[&str] = &[
    "aperture/flowcontrol/check/v1/check.proto",
    "opentelemetry/proto/collector/trace/v1/trace_service.proto",
    "envoy/service/ratelimit/v3/rls.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("tollgate_descriptor_set.bin"),
        fds.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .emit_rerun_if_changed(false)
        .compile_fds(fds)?;
    Ok(())
}
