//! TLS for the client's connections ([`ClientTls`]): which certificate authorities to trust and
//! which name the server's certificate must carry.
//!
//! Every connection of a client (the shared port and each shard port) runs TLS when
//! [`super::ClientConfig::tls`] is set: the server's TLS covers all its binary ports
//! (docs/protocol.md, "TLS"). rustls with the ring provider, as the server.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// TLS settings for a client: the trusted roots, and optionally the name to verify the
/// server's certificate against (default: the host of the address dialled).
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

/// Why TLS settings could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// The CA file could not be read or parsed as PEM certificates.
    #[error("CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The name is neither a DNS name nor an IP address.
    #[error("{name:?} is not a valid TLS server name (a DNS name or an IP address)")]
    ServerName {
        /// The name given.
        name: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

impl ClientTls {
    /// Trusts the certificates in the PEM file at `path` (a CA, or the server's self-signed
    /// certificate).
    pub fn from_ca_file(path: impl AsRef<Path>) -> Result<ClientTls, TlsError> {
        let path = path.as_ref();
        let ca_error = |reason: String| TlsError::CaFile {
            path: path.display().to_string(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| ca_error(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ca_error(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_error("no PEM certificate in it".into()));
        }
        let mut roots = RootCertStore::empty();
        for cert in certs {
            roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
        }
        ClientTls::from_roots(roots)
    }

    /// Trusts the certificates in `roots`.
    pub fn from_roots(roots: RootCertStore) -> Result<ClientTls, TlsError> {
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClientTls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name: None,
        })
    }

    /// Verifies the server's certificate against `name` instead of the host dialled (e.g.
    /// when dialling an IP address whose certificate names a host).
    pub fn with_server_name(mut self, name: &str) -> Result<ClientTls, TlsError> {
        self.server_name = Some(parse_server_name(name)?);
        Ok(self)
    }

    /// The connector and the name to verify for a connection to `host` (brackets of an IPv6
    /// literal allowed).
    pub(crate) fn for_host(
        &self,
        host: &str,
    ) -> Result<(TlsConnector, ServerName<'static>), TlsError> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => parse_server_name(host.trim_start_matches('[').trim_end_matches(']'))?,
        };
        Ok((self.connector.clone(), name))
    }
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

fn parse_server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_owned()).map_err(|_| TlsError::ServerName {
        name: name.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_default_to_the_host_and_can_be_overridden() {
        let tls = ClientTls::from_roots(RootCertStore::empty()).expect("config");
        let (_, name) = tls.for_host("[::1]").expect("v6");
        assert_eq!(name.to_str(), "::1");
        let (_, name) = tls.for_host("localhost").expect("dns");
        assert_eq!(name.to_str(), "localhost");
        let tls = tls.with_server_name("tollgate.internal").expect("name");
        let (_, name) = tls.for_host("127.0.0.1").expect("override");
        assert_eq!(name.to_str(), "tollgate.internal");
        assert!(matches!(
            ClientTls::from_roots(RootCertStore::empty())
                .expect("config")
                .with_server_name("not a name!"),
            Err(TlsError::ServerName { .. })
        ));
    }

    #[test]
    fn a_missing_or_empty_ca_file_names_the_file() {
        let e = ClientTls::from_ca_file("/nonexistent/ca.pem").expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        let dir = std::env::temp_dir().join(format!("tollgate-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let e = ClientTls::from_ca_file(&empty).expect_err("empty");
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
