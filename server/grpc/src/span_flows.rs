//! Which flows an SDK's "Aperture Check" span ends.
//!
//! Each span carries the flow's `CheckResponse` as JSON in its `aperture.check_response`
//! attribute (aperture-js: `JSON.stringify` of the decoded message; aperture-py: protobuf's
//! `MessageToJson`; both with lowerCamelCase names). aperture-js 2.5.0 never calls `FlowEnd`
//! and its requests carry no `expect_end`: for it, the span (exported when the flow ends) is
//! what ends the flow. As Aperture's agent does, a span whose check response does not have
//! `expect_end` true ends the flows named by the `request_id` of its concurrency limiter and
//! concurrency scheduler decisions. With `expect_end` true (aperture-py 2.26, Go, Java) the SDK
//! sends `FlowEnd` itself and the span ends nothing.
//!
//! aperture-js 2.5.0's check.proto predates the concurrency components, so its JSON has no
//! `request_id`s; the server lists the ids in the telemetry flow label
//! [`FLOW_IDS_LABEL`](crate::reply::FLOW_IDS_LABEL) for it ([`crate::reply`]), read here too.
//!
//! The JSON comes from the network, so parsing is bounded: a value longer than
//! [`MAX_CHECK_RESPONSE_JSON_BYTES`] is not parsed, at most [`MAX_FLOWS_PER_SPAN`] ids are
//! taken from one span, and fields other than the few read here are skipped without being
//! stored. `serde_json` bounds the nesting depth (128).

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;
use tollgate_policy::FlowId;

/// The span attribute holding the flow's check response as JSON.
pub const CHECK_RESPONSE_ATTRIBUTE: &str = "aperture.check_response";

/// Longest `aperture.check_response` value parsed. Why this value: a check response is a few
/// hundred bytes plus the flow's labels; 256 KiB leaves room for hundreds of long labels while
/// bounding the work one span can cause.
pub const MAX_CHECK_RESPONSE_JSON_BYTES: usize = 256 * 1024;

/// Most flows one span ends. Why this value: a flow holds one id per concurrency component
/// it matched, and a control point with more than a handful is already unusual; the rest of
/// an oversized list is left to expire after `max_inflight_duration`.
pub const MAX_FLOWS_PER_SPAN: usize = 64;

/// What a span's check response says about ending flows.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SpanFlows {
    /// The flows to end: empty when the check response has `expect_end` true.
    pub ends: Vec<FlowId>,
    /// Request ids in the decisions that are not flow ids (not issued by Tollgate), or past
    /// [`MAX_FLOWS_PER_SPAN`]: ignored.
    pub ignored: usize,
}

/// Why a span's check response could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SpanError {
    /// Longer than [`MAX_CHECK_RESPONSE_JSON_BYTES`].
    #[error(
        "aperture.check_response is {0} bytes; at most {MAX_CHECK_RESPONSE_JSON_BYTES} are read"
    )]
    TooLong(usize),
    /// Not the JSON of a check response.
    #[error("aperture.check_response is not a check response: {0}")]
    Json(#[from] serde_json::Error),
}

/// The flows the span whose `aperture.check_response` attribute is `json` ends.
pub fn flows_to_end(json: &str) -> Result<SpanFlows, SpanError> {
    if json.len() > MAX_CHECK_RESPONSE_JSON_BYTES {
        return Err(SpanError::TooLong(json.len()));
    }
    let response: CheckResponseJson = serde_json::from_str(json)?;
    if response.expect_end == Some(true) {
        return Ok(SpanFlows::default());
    }
    let mut flows = response.limiter_decisions.0;
    let listed = response
        .telemetry_flow_labels
        .and_then(|labels| labels.flow_ids)
        .unwrap_or_default();
    for id in listed.split(',').filter(|id| !id.is_empty()) {
        match FlowId::parse(id) {
            Some(flow) if flows.ends.contains(&flow) => {}
            Some(flow) if flows.ends.len() < MAX_FLOWS_PER_SPAN => flows.ends.push(flow),
            _ => flows.ignored += 1,
        }
    }
    Ok(flows)
}

/// The fields of a JSON `CheckResponse` read here; everything else is skipped.
#[derive(Deserialize)]
struct CheckResponseJson {
    #[serde(default, rename = "expectEnd", alias = "expect_end")]
    expect_end: Option<bool>,
    #[serde(default, rename = "limiterDecisions", alias = "limiter_decisions")]
    limiter_decisions: BoundedIds,
    #[serde(
        default,
        rename = "telemetryFlowLabels",
        alias = "telemetry_flow_labels"
    )]
    telemetry_flow_labels: Option<TelemetryLabelsJson>,
}

/// The one telemetry flow label read here; the others are skipped.
#[derive(Deserialize)]
struct TelemetryLabelsJson {
    #[serde(default, rename = "tollgate.flow_ids")]
    flow_ids: Option<String>,
}

#[derive(Deserialize)]
struct LimiterDecisionJson {
    #[serde(
        default,
        rename = "concurrencyLimiterInfo",
        alias = "concurrency_limiter_info"
    )]
    concurrency_limiter_info: Option<InfoJson>,
    #[serde(
        default,
        rename = "concurrencySchedulerInfo",
        alias = "concurrency_scheduler_info"
    )]
    concurrency_scheduler_info: Option<InfoJson>,
}

#[derive(Deserialize)]
struct InfoJson {
    #[serde(default, rename = "requestId", alias = "request_id")]
    request_id: Option<String>,
}

/// The request ids of a `limiterDecisions` list, at most [`MAX_FLOWS_PER_SPAN`] kept.
#[derive(Default)]
struct BoundedIds(SpanFlows);

impl<'de> Deserialize<'de> for BoundedIds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(BoundedIdsVisitor)
    }
}

struct BoundedIdsVisitor;

impl<'de> Visitor<'de> for BoundedIdsVisitor {
    type Value = BoundedIds;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of limiter decisions")
    }

    /// `null` (a field present but unset) is an empty list.
    fn visit_unit<E: de::Error>(self) -> Result<BoundedIds, E> {
        Ok(BoundedIds::default())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<BoundedIds, A::Error> {
        let mut out = SpanFlows::default();
        while let Some(decision) = seq.next_element::<Option<LimiterDecisionJson>>()? {
            let Some(decision) = decision else { continue };
            let infos = [
                decision.concurrency_limiter_info,
                decision.concurrency_scheduler_info,
            ];
            for id in infos.into_iter().flatten().filter_map(|i| i.request_id) {
                if id.is_empty() {
                    continue;
                }
                match FlowId::parse(&id) {
                    Some(flow) if out.ends.len() < MAX_FLOWS_PER_SPAN => out.ends.push(flow),
                    _ => out.ignored += 1,
                }
            }
        }
        Ok(BoundedIds(out))
    }

    // Anything else where a list belongs is an error, as protobuf's JSON mapping makes it.
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<BoundedIds, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Err(de::Error::invalid_type(de::Unexpected::Map, &self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::FLOW_IDS_LABEL;

    const ID_A: &str = "0010000000000abc";
    const ID_B: &str = "0020000000000def";

    #[test]
    fn js_style_check_response_ends_its_concurrency_flows() {
        // The shape aperture-js 2.5.0 exports (no expectEnd; unset oneof members null).
        let json = format!(
            r#"{{"start":"2026-01-01T00:00:00.000Z","controlPoint":"db","decisionType":0,
            "limiterDecisions":[
              {{"policyName":"rl","rateLimiterInfo":{{"label":"user:a","tokensInfo":{{"consumed":1}}}},"concurrencyLimiterInfo":null}},
              {{"policyName":"pool","concurrencyLimiterInfo":{{"label":"default","requestId":"{ID_A}"}},"waitTime":"0.0s"}},
              {{"policyName":"sched","concurrencySchedulerInfo":{{"label":"tenant:t","requestId":"{ID_B}","priority":3}}}},
              {{"policyName":"rejected","concurrencyLimiterInfo":{{"label":"default","requestId":""}}}}
            ],
            "telemetryFlowLabels":{{"user":"a"}}}}"#
        );
        let flows = flows_to_end(&json).unwrap();
        assert_eq!(
            flows.ends,
            vec![FlowId::parse(ID_A).unwrap(), FlowId::parse(ID_B).unwrap()]
        );
        assert_eq!(flows.ignored, 0);
    }

    #[test]
    fn flow_ids_label_ends_flows_once() {
        // aperture-js 2.5.0 drops the concurrency infos: only the telemetry label names them.
        let json = format!(
            r#"{{"controlPoint":"db","limiterDecisions":[{{"policyName":"pool","componentId":"1"}}],
            "telemetryFlowLabels":{{"user":"a","{FLOW_IDS_LABEL}":"{ID_A},{ID_B},zz"}}}}"#
        );
        let flows = flows_to_end(&json).unwrap();
        assert_eq!(
            flows.ends,
            vec![FlowId::parse(ID_A).unwrap(), FlowId::parse(ID_B).unwrap()]
        );
        assert_eq!(flows.ignored, 1, "zz is not a flow id");
        // Named both ways: ended once.
        let json = format!(
            r#"{{"limiterDecisions":[{{"concurrencyLimiterInfo":{{"requestId":"{ID_A}"}}}}],
            "telemetryFlowLabels":{{"{FLOW_IDS_LABEL}":"{ID_A}"}}}}"#
        );
        assert_eq!(flows_to_end(&json).unwrap().ends.len(), 1);
    }

    #[test]
    fn expect_end_true_ends_nothing() {
        // aperture-py sends FlowEnd itself; its MessageToJson writes expectEnd.
        let json = format!(
            r#"{{"expectEnd":true,"limiterDecisions":[{{"concurrencyLimiterInfo":{{"requestId":"{ID_A}"}}}}]}}"#
        );
        assert_eq!(flows_to_end(&json).unwrap(), SpanFlows::default());
        let json = format!(
            r#"{{"expect_end":false,"limiter_decisions":[{{"concurrency_limiter_info":{{"request_id":"{ID_A}"}}}}]}}"#
        );
        assert_eq!(
            flows_to_end(&json).unwrap().ends.len(),
            1,
            "snake_case names"
        );
    }

    #[test]
    fn bounded() {
        let one = format!(r#"{{"concurrencyLimiterInfo":{{"requestId":"{ID_A}"}}}}"#);
        let many = vec![one; MAX_FLOWS_PER_SPAN + 5].join(",");
        let flows = flows_to_end(&format!(r#"{{"limiterDecisions":[{many}]}}"#)).unwrap();
        assert_eq!(flows.ends.len(), MAX_FLOWS_PER_SPAN);
        assert_eq!(flows.ignored, 5);

        let long = format!(
            r#"{{"controlPoint":"{}"}}"#,
            "x".repeat(MAX_CHECK_RESPONSE_JSON_BYTES)
        );
        assert!(matches!(flows_to_end(&long), Err(SpanError::TooLong(_))));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(
            flows_to_end(&format!(r#"{{"limiterDecisions":{deep}}}"#)),
            Err(SpanError::Json(_))
        ));
    }

    #[test]
    fn foreign_or_malformed_ids_are_ignored_and_bad_json_refused() {
        let json =
            r#"{"limiterDecisions":[{"concurrencyLimiterInfo":{"requestId":"not-ours"}},null]}"#;
        let flows = flows_to_end(json).unwrap();
        assert_eq!((flows.ends.len(), flows.ignored), (0, 1));
        assert!(flows_to_end(r#"{"limiterDecisions":{"a":1}}"#).is_err());
        assert!(flows_to_end("not json").is_err());
        assert_eq!(flows_to_end("{}").unwrap(), SpanFlows::default());
        assert_eq!(
            flows_to_end(r#"{"limiterDecisions":null}"#).unwrap(),
            SpanFlows::default()
        );
    }
}
