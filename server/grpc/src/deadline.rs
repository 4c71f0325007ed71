//! The gRPC deadline (`grpc-timeout` request header) and the clock handlers use.
//!
//! The SDKs turn their check timeout (py default 200 ms) into `grpc-timeout`. Handlers that await
//! the backend stop at the deadline minus [`DEADLINE_MARGIN`] and answer `DEADLINE_EXCEEDED`, so
//! the client gets an answer before its own timer fires instead of a hung call. (tonic's own
//! `grpc-timeout` enforcement answers `CANCELLED` at the exact deadline; ours fires first.)

use std::future::Future;
use std::time::{Duration, Instant};

use tonic::metadata::MetadataMap;
use tonic::Status;

/// Time kept back from the client's deadline for the answer to travel back, like Aperture's
/// agent (which keeps ~10 ms). Never more than half the deadline.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(10);

/// Longest `grpc-timeout` value the spec allows: 8 digits.
const MAX_TIMEOUT_DIGITS: usize = 8;

/// Parses a `grpc-timeout` value (`1*8DIGIT unit`, unit one of `H M S m u n`).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty()
        || digits.len() > MAX_TIMEOUT_DIGITS
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The time budget a handler has for `metadata`'s call, if the client set a deadline.
pub fn budget(metadata: &MetadataMap) -> Option<Duration> {
    let timeout = parse_grpc_timeout(metadata.get("grpc-timeout")?.to_str().ok()?)?;
    Some(timeout.saturating_sub(DEADLINE_MARGIN.min(timeout / 2)))
}

/// Runs `fut` within `budget`, answering `DEADLINE_EXCEEDED` when it runs out.
pub async fn within<T>(
    budget: Option<Duration>,
    fut: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    match budget {
        None => fut.await,
        Some(b) => tokio::time::timeout(b, fut).await.unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(format!(
                "no decision within the call's deadline ({} ms budget)",
                b.as_millis()
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
    }

    #[test]
    fn budget_keeps_a_margin() {
        let mut md = MetadataMap::new();
        assert_eq!(budget(&md), None);
        md.insert("grpc-timeout", "200m".parse().unwrap());
        assert_eq!(budget(&md), Some(Duration::from_millis(190)));
        md.insert("grpc-timeout", "4m".parse().unwrap());
        assert_eq!(budget(&md), Some(Duration::from_millis(2)));
    }
}
