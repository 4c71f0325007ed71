//! A small blocking client of the admin API, for the `tollgate policies | bucket | top |
//! set-limit` commands and the tests: HTTP/1.1 through hyper (the HTTP implementation the
//! server runs on), one connection per call.

use super::api::{BucketReply, ErrorReply, PoliciesReply, PolicyInfo, SetLimitRequest, TopReply};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Largest response body read. Why this value: `/metrics` of a node with thousands of
/// policies is a few MiB; anything past 64 MiB is not an admin port answering.
pub const MAX_BODY_BYTES: usize = 64 << 20;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No TCP connection, or the exchange broke.
    #[error("cannot reach the admin port at {addr}: {reason}")]
    Unreachable {
        /// The address.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// No answer within the timeout.
    #[error("the admin port at {0} did not answer within {1:?}")]
    Timeout(String, Duration),
    /// The server answered with an error status.
    #[error("{status}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The server's `error`, or its body.
        message: String,
    },
    /// The answer is not the document expected.
    #[error("unexpected answer: {0}")]
    Decode(String),
}

/// Where the admin port is, and how to authenticate.
#[derive(Clone, Debug)]
pub struct AdminClient {
    /// `host:port`.
    addr: String,
    /// Sent as `Authorization: Bearer TOKEN`.
    token: Option<String>,
    /// Bound on each call (connect + answer).
    timeout: Duration,
}

impl AdminClient {
    /// A client of the port at `addr` (`host:port`, an `http://` prefix is accepted).
    pub fn new(addr: &str, token: Option<String>, timeout: Duration) -> AdminClient {
        let addr = addr.strip_prefix("http://").unwrap_or(addr);
        AdminClient {
            addr: addr.trim_end_matches('/').to_string(),
            token,
            timeout,
        }
    }

    /// GETs `path_and_query`: the status and the body as text.
    pub fn get(&self, path_and_query: &str) -> Result<(u16, String), ClientError> {
        self.call(http::Method::GET, path_and_query, None)
    }

    /// POSTs a JSON `body` to `path`: the status and the answer as text.
    pub fn post(&self, path: &str, body: String) -> Result<(u16, String), ClientError> {
        self.call(http::Method::POST, path, Some(body))
    }

    fn call(
        &self,
        method: http::Method,
        path_and_query: &str,
        body: Option<String>,
    ) -> Result<(u16, String), ClientError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| self.unreachable(e))?;
        runtime
            .block_on(async {
                tokio::time::timeout(self.timeout, self.exchange(method, path_and_query, body))
                    .await
            })
            .unwrap_or_else(|_| Err(ClientError::Timeout(self.addr.clone(), self.timeout)))
    }

    fn unreachable(&self, reason: impl ToString) -> ClientError {
        ClientError::Unreachable {
            addr: self.addr.clone(),
            reason: reason.to_string(),
        }
    }

    async fn exchange(
        &self,
        method: http::Method,
        path_and_query: &str,
        body: Option<String>,
    ) -> Result<(u16, String), ClientError> {
        let stream = tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(|e| self.unreachable(e))?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| self.unreachable(e))?;
        let driver = tokio::spawn(connection);
        let mut request = http::Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(http::header::HOST, &self.addr);
        if body.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        if let Some(token) = &self.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| self.unreachable(e))?
            .to_bytes();
        driver.abort();
        let text = String::from_utf8(body.to_vec())
            .map_err(|_| ClientError::Decode("the body is not UTF-8".into()))?;
        Ok((status, text))
    }

    /// GETs a JSON document; an error status becomes [`ClientError::Status`].
    pub fn get_json<T: DeserializeOwned>(&self, path_and_query: &str) -> Result<T, ClientError> {
        decode(self.get(path_and_query)?)
    }

    /// `POST /api/v1/limit`: the policy's entry with its new limits.
    pub fn set_limit(&self, change: &SetLimitRequest) -> Result<PolicyInfo, ClientError> {
        let body = serde_json::to_string(change).map_err(|e| ClientError::Decode(e.to_string()))?;
        decode(self.post("/api/v1/limit", body)?)
    }

    /// `POST /api/v1/reload`: the report of what changed (as the server sent it).
    pub fn reload(&self) -> Result<serde_json::Value, ClientError> {
        decode(self.post("/api/v1/reload", String::new())?)
    }

    /// `GET /api/v1/policies`.
    pub fn policies(&self) -> Result<PoliciesReply, ClientError> {
        self.get_json("/api/v1/policies")
    }

    /// `GET /api/v1/bucket` (no key: a policy's shared bucket).
    pub fn bucket(&self, policy: &str, key: Option<&str>) -> Result<BucketReply, ClientError> {
        let mut params = vec![("policy", policy)];
        params.extend(key.map(|k| ("key", k)));
        self.get_json(&format!("/api/v1/bucket?{}", query(&params)?))
    }

    /// `GET /api/v1/top`.
    pub fn top(&self, policy: &str, n: usize) -> Result<TopReply, ClientError> {
        let n = n.to_string();
        self.get_json(&format!(
            "/api/v1/top?{}",
            query(&[("policy", policy), ("n", &n)])?
        ))
    }
}

fn query(params: &[(&str, &str)]) -> Result<String, ClientError> {
    serde_urlencoded::to_string(params).map_err(|e| ClientError::Decode(e.to_string()))
}

/// The JSON document of a 2xx answer; an error status becomes [`ClientError::Status`].
fn decode<T: DeserializeOwned>((status, body): (u16, String)) -> Result<T, ClientError> {
    if !(200..300).contains(&status) {
        let message = serde_json::from_str::<ErrorReply>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| body.trim().to_string());
        return Err(ClientError::Status { status, message });
    }
    serde_json::from_str(&body).map_err(|e| ClientError::Decode(e.to_string()))
}
