//! The `tollgate-reject-reason` response header: the one place a gRPC answer carries free text
//! about why Tollgate could not judge a flow.
//!
//! Neither Aperture's `CheckResponse` nor Envoy's `RateLimitResponse` has a free-text field, so
//! a `Check` or `ShouldRateLimit` answered REJECTED / OVER_LIMIT because a flow could not be
//! judged (a tokens label of `-1000`, `NaN`, `abc`) names the cause in this response metadata
//! header, e.g. `label "tokens" (the tokens label of policy "per_user") must not be negative,
//! got "-1000"`. Its text is the server's own error message, made header-safe here.

use tonic::metadata::AsciiMetadataValue;

/// Response metadata key holding the reason. Lower case, as HTTP/2 requires.
pub const REJECT_REASON_HEADER: &str = "tollgate-reject-reason";

/// Most bytes of reason text sent. Why this value: the text quotes a label value the client
/// chose, which may be as long as a request allows, while clients cap the whole header list
/// (8 to 16 KiB is usual); 512 bytes names the label, the policy and the start of the value.
pub const MAX_REJECT_REASON_LEN: usize = 512;

/// What ends a shortened reason.
const ELLIPSIS: &str = "...";

/// `reason` as a header value: printable ASCII kept, every other character written as a
/// `\u{..}` escape (a header value cannot carry control characters or raw UTF-8), cut to
/// [`MAX_REJECT_REASON_LEN`] bytes.
pub fn reject_reason_value(reason: &str) -> AsciiMetadataValue {
    let mut text = String::with_capacity(reason.len().min(MAX_REJECT_REASON_LEN));
    for c in reason.chars() {
        if (' '..='~').contains(&c) {
            text.push(c);
        } else {
            text.extend(c.escape_unicode());
        }
        if text.len() > MAX_REJECT_REASON_LEN {
            // Only ASCII was pushed, so every byte index is a char boundary.
            text.truncate(MAX_REJECT_REASON_LEN - ELLIPSIS.len());
            text.push_str(ELLIPSIS);
            break;
        }
    }
    AsciiMetadataValue::try_from(text)
        .unwrap_or_else(|_| AsciiMetadataValue::from_static("the reason is not printable"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_ascii_is_kept_and_the_rest_escaped() {
        let v = reject_reason_value("got \"-1000\"");
        assert_eq!(v.to_str().ok(), Some("got \"-1000\""));
        let v = reject_reason_value("got \"\u{e9}\n\"");
        assert_eq!(v.to_str().ok(), Some("got \"\\u{e9}\\u{a}\""));
    }

    #[test]
    fn long_reasons_are_cut_with_an_ellipsis() {
        let v = reject_reason_value(&"x".repeat(10_000));
        let text = v.to_str().unwrap_or_default();
        assert_eq!(text.len(), MAX_REJECT_REASON_LEN);
        assert!(text.ends_with(ELLIPSIS));
        let v = reject_reason_value(&"\u{1f600}".repeat(1_000));
        assert_eq!(v.to_str().unwrap_or_default().len(), MAX_REJECT_REASON_LEN);
    }
}
