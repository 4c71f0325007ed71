//! Compiles the project's .proto files (`proto/`) with protox (pure Rust, no system protoc) and
//! generates prost messages + tonic servers/clients with tonic-prost-build. Also writes the
//! encoded descriptor set to `$OUT_DIR/tollgate_descriptor_set.bin` for server reflection.
//!
//! The descriptor set is written as the .proto files declare it. The code is generated from a
//! copy in which the maps of [`MAPS_WITH_EVERY_VALUE_ON_THE_WIRE`] become their wire-identical
//! `repeated <Name>Entry` form (see there for why).

use prost::Message as _;
use tonic_prost_build::FileDescriptorSet;

const PROTOS: &[&str] = &[
    "aperture/flowcontrol/check/v1/check.proto",
    "opentelemetry/proto/collector/trace/v1/trace_service.proto",
    "envoy/service/ratelimit/v3/rls.proto",
];

/// Map fields (message, field) generated as `repeated` entry messages instead of Rust maps.
///
/// Why: a protobuf map is on the wire a repeated entry message `{ key = 1; value = 2; }`. prost
/// leaves `value` out of an entry when it equals the default — for a message value, an empty
/// message, such as a successful `KeyUpsertResponse { SUCCESS, "" }`. aperture-js decodes with
/// protobufjs, which then stores `null` for the entry and fails the whole call ("Response
/// message parsing error: Cannot read properties of null (reading 'operationStatus')").
/// Aperture's agent (protobuf-go) always writes the value. As an entry message whose `value` is
/// an `Option`, prost writes `Some(empty)` too, so every entry carries its value; the bytes are
/// otherwise the same as a map's. These are the message-valued maps the server sends.
const MAPS_WITH_EVERY_VALUE_ON_THE_WIRE: &[(&str, &str)] = &[
    (
        "aperture.flowcontrol.check.v1.CacheLookupResponse",
        "global_cache_responses",
    ),
    (
        "aperture.flowcontrol.check.v1.CacheUpsertResponse",
        "global_cache_responses",
    ),
    (
        "aperture.flowcontrol.check.v1.CacheDeleteResponse",
        "global_cache_responses",
    ),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("tollgate_descriptor_set.bin"),
        fds.encode_to_vec(),
    )?;
    let mut codegen = fds;
    let mut entries = Vec::new();
    for (message, field) in MAPS_WITH_EVERY_VALUE_ON_THE_WIRE {
        entries.push(map_as_repeated_entries(&mut codegen, message, field)?);
    }
    let mut config = tonic_prost_build::Config::new();
    // Synthesized map entries have no source location to take comments from.
    config.disable_comments(entries);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .emit_rerun_if_changed(false)
        .compile_fds_with_config(codegen, config)?;
    Ok(())
}

/// Turns the map field `field` of `message` (full name, no leading dot) into a repeated field of
/// its entry message, by clearing the entry's `map_entry` option; returns the entry message's
/// path (`.package.Message.Entry`). Fails if the field is not a map.
fn map_as_repeated_entries(
    fds: &mut FileDescriptorSet,
    message: &str,
    field: &str,
) -> Result<String, String> {
    for file in &mut fds.file {
        let package = file.package();
        let Some(name) = message
            .strip_prefix(package)
            .and_then(|m| m.strip_prefix('.'))
        else {
            continue;
        };
        let Some(msg) = file.message_type.iter_mut().find(|m| m.name() == name) else {
            continue;
        };
        let entry_type = msg
            .field
            .iter()
            .find(|f| f.name() == field)
            .map(|f| f.type_name().to_owned())
            .ok_or_else(|| format!("{message} has no field {field}"))?;
        let entry_name = entry_type.rsplit('.').next().unwrap_or_default();
        let entry = msg
            .nested_type
            .iter_mut()
            .find(|n| n.name() == entry_name && n.options.as_ref().is_some_and(|o| o.map_entry()))
            .ok_or_else(|| format!("{message}.{field} is not a map"))?;
        if let Some(options) = entry.options.as_mut() {
            options.map_entry = None;
        }
        return Ok(entry_type);
    }
    Err(format!("message {message} not found"))
}
