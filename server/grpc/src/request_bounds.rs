//! The bounds a `Check` request must keep: the binary protocol's (docs/protocol.md), so a
//! flow is judged the same on either port and one request cannot make the server do
//! unbounded work.
//!
//! A request outside them is **not** an RPC error: every Aperture SDK fails open on one
//! ("Unreachable": the flow runs), so an oversized request would bypass every limit. It is
//! answered REJECTED with status 400 and the reason in the `tollgate-reject-reason` header
//! ([`crate::reply::invalid_request_response`]), and nothing is taken from any bucket.
//!
//! One bound is the cache calls', not the binary protocol's: a `cache_lookup_request` lists at
//! most [`MAX_GLOBAL_KEYS_PER_CALL`] global keys, as a `CacheLookup` may. Checked with the
//! others, before the decision: found after it, tokens would be taken (and concurrency flows
//! started) for a request then answered with an error.
//!
//! A message larger than tonic's decoding limit (4 MiB) never decodes and is answered
//! `RESOURCE_EXHAUSTED` by tonic; every request between [`MAX_CHECK_REQUEST_BYTES`] and that is
//! answered here.
//!
//! Envoy's `ShouldRateLimit` gets the same label bounds per descriptor ([`check_flow`]): a
//! descriptor outside them is OVER_LIMIT with its reason in the header ([`crate::rls`]).

use crate::flowcontrol::MAX_GLOBAL_KEYS_PER_CALL;
use crate::proto::aperture::flowcontrol::check::v1 as pb;
use prost::Message as _;

/// Most labels in one check: the binary protocol's `MAX_LABELS`.
pub const MAX_LABELS: usize = 64;

/// Longest label key, label value or control point, in bytes of UTF-8: the binary protocol's
/// `MAX_STRING_LEN`.
pub const MAX_STRING_BYTES: usize = 4096;

/// Largest encoded `CheckRequest`, in bytes: the binary protocol's default `max_frame_len`
/// (1 MiB). Every request within the label bounds fits (64 labels of 4 KiB keys and values
/// are 512 KiB); the rest of the room is for cache keys.
pub const MAX_CHECK_REQUEST_BYTES: usize = 1 << 20;

/// How much of an offending key is quoted in a reason.
const QUOTED_BYTES: usize = 64;

/// Why a `Check` request is outside the bounds. The texts name the field and the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoundsError {
    /// The encoded request is larger than [`MAX_CHECK_REQUEST_BYTES`].
    #[error("the request is {len} bytes; at most {MAX_CHECK_REQUEST_BYTES} are accepted")]
    RequestTooLarge {
        /// Its encoded size.
        len: usize,
    },
    /// More than [`MAX_LABELS`] labels.
    #[error("the flow has {count} labels; at most {MAX_LABELS} are accepted")]
    TooManyLabels {
        /// How many it has.
        count: usize,
    },
    /// A label key longer than [`MAX_STRING_BYTES`].
    #[error("label key \"{start}...\" is {len} bytes; at most {MAX_STRING_BYTES} are accepted")]
    LabelKeyTooLong {
        /// The key's first bytes.
        start: String,
        /// Its length.
        len: usize,
    },
    /// A label value longer than [`MAX_STRING_BYTES`].
    #[error(
        "the value of label \"{key}\" is {len} bytes; at most {MAX_STRING_BYTES} are accepted"
    )]
    LabelValueTooLong {
        /// The label's key.
        key: String,
        /// The value's length.
        len: usize,
    },
    /// A `cache_lookup_request` listing more global cache keys than one cache call may
    /// ([`MAX_GLOBAL_KEYS_PER_CALL`]). Checked here, before the decision, so that the answer
    /// is a decision with nothing taken, not an RPC error after tokens were taken.
    #[error("cache_lookup_request.global_cache_keys lists {count} keys; at most {MAX_GLOBAL_KEYS_PER_CALL} are accepted")]
    TooManyCacheKeys {
        /// How many it lists.
        count: usize,
    },
    /// A control point (an RLS domain) longer than [`MAX_STRING_BYTES`].
    #[error("the control point is {len} bytes; at most {MAX_STRING_BYTES} are accepted")]
    ControlPointTooLong {
        /// Its length.
        len: usize,
    },
}

/// The first [`QUOTED_BYTES`] of `s`, cut at a character boundary.
fn quoted(s: &str) -> String {
    let mut end = s.len().min(QUOTED_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Checks `req` against the bounds; the first bound broken is the error.
pub fn check_request(req: &pb::CheckRequest) -> Result<(), BoundsError> {
    let len = req.encoded_len();
    if len > MAX_CHECK_REQUEST_BYTES {
        return Err(BoundsError::RequestTooLarge { len });
    }
    if let Some(lookup) = &req.cache_lookup_request {
        let count = lookup.global_cache_keys.len();
        if count > MAX_GLOBAL_KEYS_PER_CALL {
            return Err(BoundsError::TooManyCacheKeys { count });
        }
    }
    let pairs = req.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    if check_flow(&req.control_point, pairs).is_ok() {
        return Ok(()); // the common case, without sorting
    }
    // A HashMap's order is arbitrary: report the smallest offending key, so the answer to one
    // request is always the same.
    let mut labels: Vec<(&str, &str)> = req
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    labels.sort_unstable();
    check_flow(&req.control_point, labels.into_iter())
}

/// Checks a flow's control point and labels (keys distinct) against the bounds; the first
/// bound broken, in label order, is the error. Envoy RLS descriptors are checked with it.
pub fn check_flow<'a>(
    control_point: &str,
    labels: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
) -> Result<(), BoundsError> {
    if control_point.len() > MAX_STRING_BYTES {
        return Err(BoundsError::ControlPointTooLong {
            len: control_point.len(),
        });
    }
    if labels.len() > MAX_LABELS {
        return Err(BoundsError::TooManyLabels {
            count: labels.len(),
        });
    }
    for (key, value) in labels {
        if key.len() > MAX_STRING_BYTES {
            return Err(BoundsError::LabelKeyTooLong {
                start: quoted(key),
                len: key.len(),
            });
        }
        if value.len() > MAX_STRING_BYTES {
            return Err(BoundsError::LabelValueTooLong {
                key: key.to_owned(),
                len: value.len(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(labels: Vec<(String, String)>) -> pb::CheckRequest {
        pb::CheckRequest {
            control_point: "api".into(),
            labels: labels.into_iter().collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_limits_themselves_are_accepted() {
        let labels = (0..MAX_LABELS)
            .map(|i| (format!("{i:0>4096}"), "v".repeat(MAX_STRING_BYTES)))
            .collect();
        let mut at_bounds = req(labels);
        at_bounds.cache_lookup_request = Some(pb::CacheLookupRequest {
            global_cache_keys: vec!["k".into(); MAX_GLOBAL_KEYS_PER_CALL],
            ..Default::default()
        });
        assert_eq!(check_request(&at_bounds), Ok(()));
    }

    #[test]
    fn each_bound_names_its_field() {
        let many = (0..=MAX_LABELS)
            .map(|i| (i.to_string(), "v".into()))
            .collect();
        assert_eq!(
            check_request(&req(many)),
            Err(BoundsError::TooManyLabels {
                count: MAX_LABELS + 1
            })
        );
        let long_key = req(vec![("é".repeat(2049), "v".into())]);
        let err = check_request(&long_key).unwrap_err();
        assert_eq!(
            err,
            BoundsError::LabelKeyTooLong {
                start: "é".repeat(32),
                len: 4098
            }
        );
        let long_value = req(vec![("user".into(), "x".repeat(MAX_STRING_BYTES + 1))]);
        assert_eq!(
            check_request(&long_value).unwrap_err().to_string(),
            "the value of label \"user\" is 4097 bytes; at most 4096 are accepted"
        );
        let mut long_cp = req(vec![]);
        long_cp.control_point = "c".repeat(MAX_STRING_BYTES + 1);
        assert!(matches!(
            check_request(&long_cp),
            Err(BoundsError::ControlPointTooLong { len: 4097 })
        ));
        let mut big = req(vec![]);
        big.cache_lookup_request = Some(pb::CacheLookupRequest {
            global_cache_keys: vec!["k".repeat(4000); 300],
            ..Default::default()
        });
        assert!(matches!(
            check_request(&big),
            Err(BoundsError::RequestTooLarge { .. })
        ));
        let mut many_keys = req(vec![]);
        many_keys.cache_lookup_request = Some(pb::CacheLookupRequest {
            global_cache_keys: vec!["k".into(); MAX_GLOBAL_KEYS_PER_CALL + 1],
            ..Default::default()
        });
        assert_eq!(
            check_request(&many_keys).unwrap_err().to_string(),
            "cache_lookup_request.global_cache_keys lists 1025 keys; at most 1024 are accepted"
        );
    }
}
