//! Who may talk to the binary ports: the API keys a connection must present in `HELLO`
//! (`server.api_keys`, shared with the gRPC port) and TLS (`server.binary_tls`), set up once at
//! start for the whole node.
//!
//! With keys configured a connection starts unauthenticated: its first frame must be a `HELLO`
//! carrying one of the keys. Anything else — another request, a `HELLO` without a key or with
//! a wrong one, a malformed `HELLO` — is answered `ERROR UNAUTHENTICATED` and the connection is
//! closed before any request is applied ([`gate`]). Once through, the connection carries a
//! single `authenticated` bool: no per-request work. Refusals are counted
//! (`tollgate_binary_unauthenticated`) and logged at a bounded rate.

use super::refusal_log::RefusalLog;
use super::tls::{self, BinaryTls};
use crate::config::ServerConfig;
use tollgate_grpc::auth::ApiKeyCheck;
use tollgate_protocol::{decode_frame, opcode, DecodeError, Frame, FRAME_HEADER_LEN};
use tollgate_protocol::{MAX_API_KEY_LEN, MAX_STRING_LEN, MIN_FRAME_LEN};

/// The largest `HELLO` a connection can send before it is authenticated: header, version,
/// the longest client name and the longest key. An unauthenticated peer cannot make the server
/// buffer more than this.
pub const MAX_HELLO_FRAME_LEN: u32 =
    MIN_FRAME_LEN + 2 + (2 + MAX_STRING_LEN as u32) + (2 + MAX_API_KEY_LEN as u32);

/// The node's access rules for binary connections.
pub struct Access {
    /// The accepted keys (constant-time comparison); empty = no authentication.
    keys: ApiKeyCheck,
    /// TLS on every binary port; None = plaintext.
    tls: Option<BinaryTls>,
    /// Refused connections (no or wrong key), logged at a bounded rate.
    pub refusals: RefusalLog,
}

impl Default for Access {
    /// No keys, no TLS: every connection is served as it comes.
    fn default() -> Self {
        Access {
            keys: ApiKeyCheck::new(&[]),
            tls: None,
            refusals: RefusalLog::default(),
        }
    }
}

impl Access {
    /// From the `server:` section: the keys, and the TLS certificate and key read from their
    /// files. Errors name the field (`server.binary_tls.cert: ...`).
    pub fn from_config(server: &ServerConfig) -> Result<Access, tls::TlsSetupError> {
        let tls = match &server.binary_tls {
            Some(config) => Some(BinaryTls::load(config, "server.binary_tls")?),
            None => None,
        };
        Ok(Access {
            keys: ApiKeyCheck::new(&server.api_keys),
            tls,
            refusals: RefusalLog::default(),
        })
    }

    /// Whether a connection must present a key before anything else.
    pub fn requires_key(&self) -> bool {
        self.keys.enabled()
    }

    /// TLS for the binary ports, if configured.
    pub fn tls(&self) -> Option<&BinaryTls> {
        self.tls.as_ref()
    }

    /// What an unauthenticated connection's next frame, at the front of `buf`, gets.
    pub fn gate(&self, buf: &[u8], max_frame_len: u32) -> Gate {
        gate(&self.keys, buf, max_frame_len)
    }
}

/// The verdict on the first frame of a connection that must authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Not enough bytes to tell yet.
    Wait,
    /// A `HELLO` with a valid key: the connection is authenticated, and the `HELLO` is then
    /// handled as usual.
    Pass,
    /// Refused: answer `ERROR UNAUTHENTICATED` for `request_id` with `reason` and close.
    Refuse {
        /// The request id of the refused frame (0 when its framing is lost).
        request_id: u32,
        /// Why, for the peer and the log.
        reason: &'static str,
    },
}

/// The gate itself. A frame that is not a `HELLO` is refused from its 10-byte header, before
/// its body is read; a `HELLO` is read whole only up to [`MAX_HELLO_FRAME_LEN`].
pub fn gate(keys: &ApiKeyCheck, buf: &[u8], max_frame_len: u32) -> Gate {
    let Some(header) = buf.get(..FRAME_HEADER_LEN) else {
        return Gate::Wait;
    };
    let request_id = header
        .get(6..10)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes);
    if header.get(4) != Some(&opcode::HELLO) {
        return Gate::Refuse {
            request_id,
            reason: "this server requires an API key: send HELLO with it first",
        };
    }
    match decode_frame(buf, max_frame_len.min(MAX_HELLO_FRAME_LEN)) {
        Ok(None) => Gate::Wait,
        Ok(Some(decoded)) => match decoded.frame {
            Frame::Hello(hello) => match hello.api_key {
                Some(key) if keys.accepts(key.as_bytes()) => Gate::Pass,
                Some(_) => Gate::Refuse {
                    request_id,
                    reason: "invalid API key",
                },
                None => Gate::Refuse {
                    request_id,
                    reason: "this server requires an API key: HELLO carries none",
                },
            },
            // The opcode was HELLO: unreachable, and refused all the same.
            _ => Gate::Refuse {
                request_id,
                reason: "this server requires an API key: send HELLO with it first",
            },
        },
        Err(DecodeError::Body { .. }) => Gate::Refuse {
            request_id,
            reason: "malformed HELLO",
        },
        Err(DecodeError::Framing { .. }) => Gate::Refuse {
            request_id: 0,
            reason: "HELLO frame longer than a HELLO can be",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_protocol::{encode_check, encode_hello, encode_hello_with_key, CheckSpec, StrRef};

    fn keys() -> ApiKeyCheck {
        ApiKeyCheck::new(&["sesame".into(), "other-key".into()])
    }

    fn hello(key: Option<&str>) -> Vec<u8> {
        let mut out = Vec::new();
        encode_hello_with_key(&mut out, 3, 2, "t", key).expect("hello");
        out
    }

    #[test]
    fn only_a_hello_with_a_valid_key_passes() {
        let keys = keys();
        let max = 1 << 20;
        assert_eq!(gate(&keys, &hello(Some("sesame")), max), Gate::Pass);
        assert_eq!(gate(&keys, &hello(Some("other-key")), max), Gate::Pass);
        assert_eq!(
            gate(&keys, &hello(Some("sesam")), max),
            Gate::Refuse {
                request_id: 3,
                reason: "invalid API key"
            }
        );
        assert!(matches!(
            gate(&keys, &hello(None), max),
            Gate::Refuse { request_id: 3, .. }
        ));
        let mut plain = Vec::new();
        encode_hello(&mut plain, 4, 1, "v1").expect("hello");
        assert!(matches!(
            gate(&keys, &plain, max),
            Gate::Refuse { request_id: 4, .. }
        ));
    }

    #[test]
    fn other_requests_are_refused_from_their_header() {
        let keys = keys();
        let mut check = Vec::new();
        encode_check(
            &mut check,
            9,
            &CheckSpec {
                control_point: StrRef::Inline("api"),
                tokens: None,
                wait_budget_ms: None,
                labels: &[],
            },
        )
        .expect("check");
        assert_eq!(gate(&keys, &check[..4], 1 << 20), Gate::Wait);
        assert!(matches!(
            gate(&keys, &check[..FRAME_HEADER_LEN], 1 << 20),
            Gate::Refuse { request_id: 9, .. }
        ));
        // A partial HELLO waits for its bytes.
        let h = hello(Some("sesame"));
        assert_eq!(gate(&keys, &h[..h.len() - 1], 1 << 20), Gate::Wait);
    }

    #[test]
    fn an_unauthenticated_peer_cannot_announce_a_large_frame() {
        let mut big = (MAX_HELLO_FRAME_LEN + 1).to_le_bytes().to_vec();
        big.extend_from_slice(&[opcode::HELLO, 0, 1, 0, 0, 0]);
        assert!(matches!(
            gate(&keys(), &big, 1 << 20),
            Gate::Refuse { request_id: 0, .. }
        ));
    }
}
