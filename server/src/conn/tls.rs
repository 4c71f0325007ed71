//! TLS on the binary ports (`server.binary_tls`): the certificate and key loaded once at
//! start, and the server side of a connection's handshake, bounded in time.
//!
//! rustls with the ring provider (the one the gRPC port's TLS uses), driven over glommio's
//! futures-io `TcpStream` by futures-rustls. The handshake must finish within
//! [`handshake_timeout`] of the accept, so a peer that connects and stays silent (or trickles
//! bytes) cannot hold a socket.

use futures_rustls::server::TlsStream;
use futures_rustls::TlsAcceptor;
use glommio::net::TcpStream;
use std::time::Duration;
use tollgate_grpc::TlsConfig;

/// Longest a TLS handshake may take, whatever `server.idle_timeout` says. Why this value: as
/// the gRPC port's default `handshake_timeout`, clients finish a handshake in milliseconds;
/// 10 s leaves room for a slow network while a silent peer cannot hold its slot for long.
pub const MAX_TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// How long a connection has to finish its TLS handshake: `server.idle_timeout` (a
/// connection that sends nothing useful for that long is closed anyway), at most
/// [`MAX_TLS_HANDSHAKE`].
pub fn handshake_timeout(idle_timeout: Option<Duration>) -> Duration {
    idle_timeout.map_or(MAX_TLS_HANDSHAKE, |idle| idle.min(MAX_TLS_HANDSHAKE))
}

pub use tollgate_grpc::tls::TlsSetupError;

/// The binary ports' TLS server configuration.
#[derive(Clone)]
pub struct BinaryTls {
    acceptor: TlsAcceptor,
}

impl BinaryTls {
    /// Reads the PEM certificate chain and private key that `config` names; `at` is the
    /// config path for errors (`server.binary_tls`).
    pub fn load(config: &TlsConfig, at: &str) -> Result<BinaryTls, TlsSetupError> {
        // The binary protocol is not negotiated by ALPN.
        let server = tollgate_grpc::tls::server_config(config, at, &[])?;
        Ok(BinaryTls {
            acceptor: TlsAcceptor::from(server),
        })
    }

    /// The server side of the handshake on a freshly accepted `stream`, within `timeout`.
    pub async fn accept(
        &self,
        stream: TcpStream,
        timeout: Duration,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let handshake = self.acceptor.accept(stream);
        let expired = glommio::timer::sleep(timeout);
        futures::pin_mut!(handshake, expired);
        match futures::future::select(handshake, expired).await {
            futures::future::Either::Left((result, _)) => result,
            // Dropping the handshake closes the socket.
            futures::future::Either::Right(((), _)) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("TLS handshake not done within {timeout:?}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn the_handshake_gets_the_idle_timeout_at_most_ten_seconds() {
        assert_eq!(handshake_timeout(None), MAX_TLS_HANDSHAKE);
        assert_eq!(
            handshake_timeout(Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            handshake_timeout(Some(Duration::from_secs(300))),
            MAX_TLS_HANDSHAKE
        );
    }

    #[test]
    fn errors_name_the_field_and_the_file() {
        let dir = std::env::temp_dir().join(format!("tollgate-binary-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let missing = TlsConfig {
            cert: PathBuf::from("/nonexistent/cert.pem"),
            key: PathBuf::from("/nonexistent/key.pem"),
        };
        let e = BinaryTls::load(&missing, "server.binary_tls")
            .err()
            .expect("missing");
        assert_eq!(e.field, "server.binary_tls.cert");
        assert!(e.reason.contains("/nonexistent/cert.pem"), "{e}");

        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let (cert_path, key_path, other_key) =
            (dir.join("c.pem"), dir.join("k.pem"), dir.join("o.pem"));
        std::fs::write(&cert_path, cert.cert.pem()).expect("write");
        std::fs::write(&key_path, cert.key_pair.serialize_pem()).expect("write");
        std::fs::write(&other_key, other.key_pair.serialize_pem()).expect("write");
        let good = TlsConfig {
            cert: cert_path.clone(),
            key: key_path.clone(),
        };
        assert!(BinaryTls::load(&good, "server.binary_tls").is_ok());
        let no_key = TlsConfig {
            cert: cert_path.clone(),
            key: cert_path.clone(),
        };
        let e = BinaryTls::load(&no_key, "server.binary_tls")
            .err()
            .expect("no key");
        assert_eq!(e.field, "server.binary_tls.key");
        let mismatched = TlsConfig {
            cert: cert_path,
            key: other_key,
        };
        let e = BinaryTls::load(&mismatched, "server.binary_tls")
            .err()
            .expect("mismatch");
        assert_eq!(e.field, "server.binary_tls.key", "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
