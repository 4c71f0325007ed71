//! TLS server configuration from the PEM files a [`TlsConfig`] names: the gRPC port's
//! (`server.tls`, offering HTTP/2 by ALPN) and the binary ports' (`server.binary_tls`, which
//! the server crate drives over glommio).
//!
//! rustls with the ring provider, so both ports build on one crypto library. Errors name the
//! config field and say what is wrong with its file.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

/// Why TLS could not be set up from the configuration. The message names the field.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct TlsSetupError {
    /// The config field, e.g. `server.binary_tls.cert`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The ALPN protocol id of HTTP/2, which gRPC clients ask for.
pub const ALPN_H2: &[u8] = b"h2";

/// Reads the PEM certificate chain and private key that `config` names into a server
/// configuration offering `alpn` (none: no ALPN); `at` is the config path for errors
/// (`server.tls`).
pub fn server_config(
    config: &TlsConfig,
    at: &str,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let error = |field: &str, reason: String| TlsSetupError {
        field: format!("{at}.{field}"),
        reason,
    };
    let cert_path = config.cert.display();
    let certs = CertificateDer::pem_file_iter(&config.cert)
        .map_err(|e| error("cert", format!("cannot read {cert_path}: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error("cert", format!("{cert_path}: {e}")))?;
    if certs.is_empty() {
        return Err(error(
            "cert",
            format!("{cert_path} holds no PEM certificate"),
        ));
    }
    let key_path = config.key.display();
    let key = PrivateKeyDer::from_pem_file(&config.key).map_err(|e| {
        error(
            "key",
            format!("cannot read a PEM private key from {key_path}: {e}"),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| error("cert", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            error(
                "key",
                format!("does not go with the certificate in {cert_path}: {e}"),
            )
        })?;
    server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(server))
}
