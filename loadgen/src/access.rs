//! How the loadgen reaches binary ports that require an API key (`server.api_keys`) or TLS
//! (`server.binary_tls`): the `--api-key`, `--tls-ca` and `--tls-server-name` flags, applied
//! to every `tollgate://` connection (shared and per shard) of a run or a `flows` run.

use std::path::PathBuf;

use clap::Args;
use tollgate_protocol::client::{ApiKey, ClientConfig, ClientTls};

/// The key and TLS settings of the binary-protocol client.
#[derive(Clone, Debug, Default)]
pub struct BinaryAccess {
    /// Sent in every connection's `HELLO`.
    pub api_key: Option<ApiKey>,
    /// TLS on every connection.
    pub tls: Option<ClientTls>,
}

impl BinaryAccess {
    /// Sets the key and TLS of a client configuration.
    pub fn apply(&self, cfg: &mut ClientConfig) {
        cfg.api_key = self.api_key.clone();
        cfg.tls = self.tls.clone();
    }
}

/// Flags for `tollgate://` targets that require a key or TLS.
#[derive(Debug, Args, Default)]
pub struct AccessArgs {
    /// API key for tollgate:// targets, sent in HELLO on every connection (servers with
    /// server.api_keys require it).
    #[arg(long, env = "TOLLGATE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Speak TLS to tollgate:// targets, trusting the CA certificate(s) in this PEM file
    /// (servers with server.binary_tls).
    #[arg(long, value_name = "FILE.pem")]
    pub tls_ca: Option<PathBuf>,
    /// Name the server's certificate must carry (default: the target's host).
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    pub tls_server_name: Option<String>,
}

impl AccessArgs {
    /// The settings these flags describe (reads the CA file).
    pub fn to_access(&self) -> Result<BinaryAccess, String> {
        let api_key = self
            .api_key
            .as_deref()
            .map(ApiKey::new)
            .transpose()
            .map_err(|e| format!("--api-key: {e}"))?;
        let tls = match &self.tls_ca {
            Some(ca) => {
                let tls = ClientTls::from_ca_file(ca).map_err(|e| format!("--tls-ca: {e}"))?;
                match &self.tls_server_name {
                    Some(name) => Some(
                        tls.with_server_name(name)
                            .map_err(|e| format!("--tls-server-name: {e}"))?,
                    ),
                    None => Some(tls),
                }
            }
            None => None,
        };
        Ok(BinaryAccess { api_key, tls })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_flags_name_themselves() {
        let args = AccessArgs {
            api_key: Some(String::new()),
            ..AccessArgs::default()
        };
        assert!(args.to_access().unwrap_err().starts_with("--api-key:"));
        let args = AccessArgs {
            tls_ca: Some("/nonexistent/ca.pem".into()),
            ..AccessArgs::default()
        };
        assert!(args.to_access().unwrap_err().starts_with("--tls-ca:"));
        let none = AccessArgs::default().to_access().expect("no flags");
        assert!(none.api_key.is_none() && none.tls.is_none());
    }
}
