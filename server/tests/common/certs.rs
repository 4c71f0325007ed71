//! Throw-away TLS certificates made at test time (rcgen: no openssl needed).

use std::path::{Path, PathBuf};

/// Paths of a self-signed certificate for `localhost` and 127.0.0.1 and its key.
pub struct SelfSigned {
    /// The certificate (PEM): also the CA a client trusts.
    pub cert: PathBuf,
    /// The private key (PEM).
    pub key: PathBuf,
}

/// Writes a fresh self-signed certificate and key into `dir`.
pub fn self_signed(dir: &Path) -> SelfSigned {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("rcgen certificate");
    let (cert, key) = (dir.join("binary-cert.pem"), dir.join("binary-key.pem"));
    std::fs::write(&cert, made.cert.pem()).expect("write certificate");
    std::fs::write(&key, made.key_pair.serialize_pem()).expect("write key");
    SelfSigned { cert, key }
}
