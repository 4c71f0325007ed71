//! The gRPC deadline (`grpc-timeout` request header) and the clock handlers use.
//!
//! The SDKs turn their check timeout (aperture-py `check_timeout`, default 200 ms; aperture-js
//! `grpcCallOptions.deadline`) into `grpc-timeout`. Handlers pass it to the backend, which
//! answers by then on its own: a scheduler rejects a flow it cannot admit at the deadline
//! minus its `decision_deadline_margin` (default 10 ms), which leaves the answer time to
//! travel. Handlers therefore never cut a call short before the deadline: a
//! `DEADLINE_EXCEEDED` from the server would make the SDKs run the flow (they fail open on
//! RPC errors), so an early cut would turn a scheduler's rejection into an admission.
//!
//! [`within`] is only the safety net: if the backend has not answered when the deadline
//! itself passes (nobody is waiting for the answer any more), the call ends with
//! `DEADLINE_EXCEEDED` and the backend's future is dropped, which gives back whatever the flow
//! was admitted with. (tonic's server also cancels a call at its `grpc-timeout`; the net keeps
//! the rule where the handler runs outside tonic's transport, and says why.)

use std::future::Future;
use std::time::{Duration, Instant};

use tonic::metadata::MetadataMap;
use tonic::Status;

/// Longest `grpc-timeout` value the spec allows: 8 digits.
const MAX_TIMEOUT_DIGITS: usize = 8;

/// Parses a `grpc-timeout` value (`1*8DIGIT unit`, unit one of `H M S m u n`).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    // Split off the unit as a byte: a value ending in a multi-byte character is not a
    // timeout (split as a `str`, it would not fall on a character boundary).
    let (&unit, digits) = value.as_bytes().split_last()?;
    if digits.is_empty()
        || digits.len() > MAX_TIMEOUT_DIGITS
        || !digits.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    // At most 8 digits: no overflow, even as hours in seconds.
    let n = digits
        .iter()
        .fold(0u64, |n, &digit| n * 10 + u64::from(digit - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// How long the client of `metadata`'s call waits for the answer (its `grpc-timeout`), if it
/// set a deadline. A malformed header counts as none, as tonic treats it.
pub fn client_timeout(metadata: &MetadataMap) -> Option<Duration> {
    parse_grpc_timeout(metadata.get("grpc-timeout")?.to_str().ok()?)
}

/// Runs `fut`, answering `DEADLINE_EXCEEDED` if the client's deadline (`timeout` from now)
/// passes first. See the module docs: the backend is expected to answer before.
pub async fn within<T>(
    timeout: Option<Duration>,
    fut: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    match timeout {
        None => fut.await,
        Some(t) => tokio::time::timeout(t, fut).await.unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(format!(
                "no decision within the call's deadline ({} ms)",
                t.as_millis()
            )))
        }),
    }
}

/// A monotonic nanosecond clock starting at 0 when created (for the cache's `now_ns`).
#[derive(Debug, Clone, Copy)]
pub struct MonoClock {
    start: Instant,
}

impl MonoClock {
    /// A clock reading 0 now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    /// Nanoseconds since [`MonoClock::new`].
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl Default for MonoClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeout() {
        assert_eq!(parse_grpc_timeout("200m"), Some(Duration::from_millis(200)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("999999999n"), None, "9 digits");
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("12x"), None);
        assert_eq!(parse_grpc_timeout("-1S"), None);
        // A last character of several bytes (split as a `str`, this panicked).
        assert_eq!(parse_grpc_timeout("1é"), None);
        assert_eq!(parse_grpc_timeout("é"), None);
    }

    #[test]
    fn client_timeout_is_the_header() {
        let mut md = MetadataMap::new();
        assert_eq!(client_timeout(&md), None);
        md.insert("grpc-timeout", "200m".parse().unwrap());
        assert_eq!(client_timeout(&md), Some(Duration::from_millis(200)));
        md.insert("grpc-timeout", "199874u".parse().unwrap());
        assert_eq!(client_timeout(&md), Some(Duration::from_micros(199_874)));
        md.insert("grpc-timeout", "soon".parse().unwrap());
        assert_eq!(client_timeout(&md), None);
    }

    #[tokio::test(start_paused = true)]
    async fn within_waits_for_the_answer_until_the_deadline() {
        let t = Duration::from_millis(200);
        // An answer 1 ms before the deadline is the answer, not an error.
        let late = async {
            tokio::time::sleep(t - Duration::from_millis(1)).await;
            Ok::<_, Status>(7)
        };
        assert_eq!(within(Some(t), late).await.unwrap(), 7);
        // No answer by the deadline: DEADLINE_EXCEEDED, exactly at the deadline.
        let start = tokio::time::Instant::now();
        let never = std::future::pending::<Result<u8, Status>>();
        let err = within(Some(t), never).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(start.elapsed(), t);
    }
}
