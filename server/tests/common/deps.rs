//! What some tests need beyond cargo — the Aperture SDKs (`scripts/setup-sdk.sh` installs them
//! into `.sdk/`) and openssl (for a throw-away TLS certificate) — and the one rule for when one
//! is missing: under CI the test fails with the reason; elsewhere it prints why it skips and
//! passes, so `cargo test` works on a bare checkout.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Whether this run is CI: `CI` is set to anything but "", "0" or "false" (CI services set
/// `CI=true`; `.ci/run` does too). A test that cannot run under CI must fail, not pass.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

/// The dependency `what` when `probe` found it. When it did not: under CI, fails the calling
/// test with the reason; elsewhere prints `skipped: <test>: <what>: <reason>` and returns
/// `None`, and the test returns early.
#[track_caller]
pub fn require<T>(what: &str, probe: Result<T, String>) -> Option<T> {
    match probe {
        Ok(dep) => Some(dep),
        Err(reason) if under_ci() => panic!("{what}: missing, and required under CI: {reason}"),
        Err(reason) => {
            let test = std::thread::current().name().unwrap_or("test").to_string();
            println!("skipped: {test}: {what}: {reason}");
            None
        }
    }
}

/// The repository root: the nearest directory above the crate holding `Cargo.lock` (this
/// file serves the server's tests and, through `#[path]`, tollgate-grpc's).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .expect("a workspace root above the crate")
        .canonicalize()
        .expect("workspace root")
}

/// The Aperture SDKs' install directory (`.sdk/`), if `scripts/setup-sdk.sh` completed there.
pub fn aperture_sdks() -> Result<PathBuf, String> {
    let sdk = repo_root().join(".sdk");
    if sdk.join(".installed").exists() {
        Ok(sdk)
    } else {
        Err(format!(
            "not installed in {}: run scripts/setup-sdk.sh",
            sdk.display()
        ))
    }
}

/// A self-signed certificate for `localhost` and 127.0.0.1, written into `dir` by the system
/// openssl: (certificate, key) paths.
pub fn self_signed_cert(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec"])
        .args([
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run openssl: {e}"))?;
    if status.success() {
        Ok((cert, key))
    } else {
        Err(format!("openssl could not make a certificate ({status})"))
    }
}
