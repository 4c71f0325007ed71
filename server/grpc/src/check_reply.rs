//! [`CheckAnswer`]: the answer to one `Check`, which the direct path
//! ([`crate::direct_unary`]) encodes straight from the decision.
//!
//! Built as a `CheckResponse` ([`crate::reply::check_response`]), an answer costs about a
//! dozen allocations before prost encodes it: each limiter's policy name, hash and component
//! id copied from its spec, its bucket label and request id formatted, its details in a oneof,
//! the vector of decisions, every label key copied for `flow_label_keys`. Then prost walks the
//! message for its length, and again to write it, each nested message's length once more. In
//! a profile that was about a quarter of what a `Check` cost the port beyond a
//! `ShouldRateLimit` (benches/grpc_compare_notes.md). [`Decided`] writes the same fields once,
//! from the request, the decision and the engine's specs, into the reply buffer.
//!
//! The answer through tonic (a compressed call, say) is the built message
//! ([`CheckAnswer::into_message`]); a property test holds the two decoding to the same message.
//! Fields are written in tag order as prost writes them: a proto3 scalar only when it is not
//! its default, a present sub-message always, a map entry without a default key or value.

use std::sync::Arc;
use std::time::SystemTime;

use prost::bytes::{BufMut, BytesMut};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use prost::Message;
use tollgate_policy::{ComponentKind, Decision, Engine, FlowId, LimiterOutcome, LimiterSpec};
use tollgate_policy::{Labels, OutcomeKind};

use crate::direct_unary::DirectReply;
use crate::proto::aperture::flowcontrol::check::v1 as pb;
use crate::reply::{
    check_response, duration_ns, flow_ids, workload, BucketLabel, Rejection, FLOW_IDS_LABEL,
};

/// The answer to one `Check`.
#[derive(Debug)]
// Every decided `Check` is the large variant: boxing it would cost an allocation per call.
#[allow(clippy::large_enum_variant)]
pub enum CheckAnswer {
    /// A decision on the flow: encoded straight from it.
    Decided(Decided),
    /// An answer without a decision (a request outside the bounds, a flow that cannot be
    /// judged): rare, built as the message (boxed: the answer moves through several futures,
    /// and a message is half a kilobyte).
    Built(Box<pb::CheckResponse>),
}

/// A decision and what its answer echoes.
#[derive(Debug)]
pub struct Decided {
    /// The request's control point, echoed.
    pub control_point: String,
    /// The request's labels, sorted by key (distinct, as a map's), echoed as the answer's
    /// telemetry labels.
    pub labels: Vec<(String, String)>,
    /// The request's `expect_end`, echoed.
    pub expect_end: bool,
    /// The engine that describes the decision's limiters (loaded after the decision).
    pub engine: Arc<Engine>,
    /// The decision.
    pub decision: Decision,
    /// The cache stage's answer, when the flow was admitted and asked for keys.
    pub cache_lookup_response: Option<Box<pb::CacheLookupResponse>>,
    /// When the call arrived.
    pub start: SystemTime,
    /// When it was decided.
    pub end: SystemTime,
}

impl CheckAnswer {
    /// The answer as a message, as tonic's codec sends it.
    pub fn into_message(self) -> pb::CheckResponse {
        match self {
            CheckAnswer::Built(message) => *message,
            CheckAnswer::Decided(d) => {
                let request = pb::CheckRequest {
                    control_point: d.control_point,
                    labels: d.labels.into_iter().collect(),
                    expect_end: d.expect_end,
                    ..Default::default()
                };
                let mut message = check_response(&d.engine, request, &d.decision);
                message.cache_lookup_response = d.cache_lookup_response.map(|c| *c);
                message.start = Some(timestamp(d.start));
                message.end = Some(timestamp(d.end));
                message
            }
        }
    }
}

impl DirectReply for CheckAnswer {
    fn size_hint(&self) -> usize {
        match self {
            CheckAnswer::Built(message) => message.encoded_len(),
            CheckAnswer::Decided(d) => d.size_hint(),
        }
    }

    fn encode_to(&self, buf: &mut BytesMut) {
        match self {
            CheckAnswer::Built(message) => message.encode_raw(buf),
            CheckAnswer::Decided(d) => d.encode_to(buf),
        }
    }
}

/// A protobuf timestamp of `t` (the epoch for a time before it).
pub(crate) fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Bytes a limiter decision usually takes (names, hash, label, tokens, details): the reply
/// buffer's first guess, which it grows past if need be.
const LIMITER_DECISION_HINT: usize = 160;

impl Decided {
    fn size_hint(&self) -> usize {
        let labels: usize = (self.labels.iter())
            .map(|(k, v)| 2 * k.len() + v.len() + 8)
            .sum();
        let cache = self
            .cache_lookup_response
            .as_ref()
            .map_or(0, |c| c.encoded_len() + 4);
        64 + self.control_point.len()
            + labels
            + cache
            + self.decision.limiters.len() * (LIMITER_DECISION_HINT + FLOW_ID_DIGITS + 1)
    }

    /// Writes the `CheckResponse` [`CheckAnswer::into_message`] builds.
    fn encode_to(&self, buf: &mut BytesMut) {
        let labels = &self.labels;
        let rejection = Rejection::of(&self.engine, &self.decision);
        timestamp_field(1, &timestamp(self.start), buf);
        timestamp_field(2, &timestamp(self.end), buf);
        string_field(5, &[self.control_point.as_str()], buf);
        for (key, _) in labels {
            // A repeated string writes every element, empty ones too.
            len_delimited(6, key.len(), buf);
            buf.put_slice(key.as_bytes());
        }
        let ids = (!self.expect_end).then(|| flow_ids(&self.decision).count());
        let list_ids = ids.is_some_and(|n| n > 0);
        for (key, value) in labels {
            // The flow ids' label replaces a request label of its name, as in a built map.
            if !(list_ids && key == FLOW_IDS_LABEL) {
                map_entry(7, key, &[value.as_str()], buf);
            }
        }
        if let Some(count @ 1..) = ids {
            let value_len = count * (FLOW_ID_DIGITS + 1) - 1;
            len_delimited(
                7,
                string_len(1, FLOW_IDS_LABEL.len()) + string_len(2, value_len),
                buf,
            );
            string_field(1, &[FLOW_IDS_LABEL], buf);
            len_delimited(2, value_len, buf);
            for (i, id) in flow_ids(&self.decision).enumerate() {
                if i > 0 {
                    buf.put_u8(b',');
                }
                put_flow_id(id, buf);
            }
        }
        if let Some(rejection) = rejection {
            varint_field(8, pb::check_response::DecisionType::Rejected as u64, buf);
            varint_field(9, rejection.reason as u64, buf);
        }
        for outcome in &self.decision.limiters {
            // A limiter a reload removed while the flow waited has nothing to name it by.
            if let Some(spec) = self.engine.describe(outcome.limiter) {
                let decision = LimiterDecision::of(spec, labels, outcome);
                len_delimited(12, decision.len(), buf);
                decision.encode_to(buf);
            }
        }
        if self.decision.wait_ns > 0 {
            duration_field(13, self.decision.wait_ns, buf);
        }
        if let Some(rejection) = rejection {
            varint_field(14, int32(rejection.status), buf);
        }
        if let Some(cache) = &self.cache_lookup_response {
            len_delimited(15, cache.encoded_len(), buf);
            cache.encode_raw(buf);
        }
        varint_field(16, u64::from(self.expect_end), buf);
    }
}

/// One `LimiterDecision`, borrowed from its spec, the flow's labels and its outcome
/// ([`crate::reply`] says what each field holds).
struct LimiterDecision<'a> {
    spec: &'a LimiterSpec,
    outcome: &'a LimiterOutcome,
    label: BucketLabel<'a>,
    workload: &'a str,
    priority: f64,
    /// `consumed` of its tokens info: what it took, when it admitted the flow.
    consumed: f64,
    /// The flow's id, when this component admitted it and holds its tokens.
    request_id: Option<FlowId>,
    /// The encoded lengths of its tokens info and its details, which both the decision's
    /// length and its encoding need.
    tokens_info_len: usize,
    details_len: usize,
}

impl<'a> LimiterDecision<'a> {
    fn of<L: Labels + ?Sized>(
        spec: &'a LimiterSpec,
        labels: &'a L,
        outcome: &'a LimiterOutcome,
    ) -> Self {
        let admitted = outcome.kind == OutcomeKind::Accepted;
        let (workload, priority) = workload(spec, labels);
        let mut decision = LimiterDecision {
            spec,
            outcome,
            label: BucketLabel::of(spec, labels),
            workload,
            priority,
            consumed: if admitted { outcome.tokens } else { 0.0 },
            request_id: outcome.flow.filter(|_| admitted),
            tokens_info_len: 0,
            details_len: 0,
        };
        decision.tokens_info_len = decision.measure_tokens_info();
        decision.details_len = decision.measure_details(); // after the tokens info's
        decision
    }

    fn dropped(&self) -> bool {
        self.outcome.kind == OutcomeKind::Rejected
    }

    fn reason(&self) -> u64 {
        if self.outcome.kind == OutcomeKind::KeyNotFound {
            pb::limiter_decision::LimiterReason::KeyNotFound as u64
        } else {
            pb::limiter_decision::LimiterReason::Unspecified as u64
        }
    }

    fn status(&self) -> u64 {
        if self.dropped() {
            u64::from(self.spec.denied_status_code)
        } else {
            0
        }
    }

    fn label_len(&self) -> usize {
        self.label.parts().iter().map(|p| p.len()).sum()
    }

    fn request_id_len(&self) -> usize {
        self.request_id.map_or(0, |_| FLOW_ID_DIGITS)
    }

    fn measure_tokens_info(&self) -> usize {
        let o = self.outcome;
        double_len(1, o.remaining) + double_len(2, o.current) + double_len(3, self.consumed)
    }

    /// The tag of its `details` oneof: its kind's info.
    fn details_tag(&self) -> u32 {
        match self.spec.kind {
            ComponentKind::RateLimiter => 20,
            ComponentKind::QuotaScheduler => 23,
            ComponentKind::ConcurrencyLimiter => 24,
            ComponentKind::ConcurrencyScheduler => 25,
        }
    }

    /// The fields of its kind's info: label, workload, tokens info, priority, request id.
    /// `None` for a field the kind does not have.
    fn details_tags(&self) -> [Option<u32>; 5] {
        match self.spec.kind {
            ComponentKind::RateLimiter => [Some(1), None, Some(2), None, None],
            ComponentKind::ConcurrencyLimiter => [Some(1), None, Some(2), None, Some(3)],
            ComponentKind::QuotaScheduler => [Some(1), Some(2), Some(3), Some(4), None],
            ComponentKind::ConcurrencyScheduler => [Some(1), Some(2), Some(3), Some(4), Some(5)],
        }
    }

    fn measure_details(&self) -> usize {
        let [label, workload, tokens, priority, request_id] = self.details_tags();
        label.map_or(0, |t| string_len(t, self.label_len()))
            + workload.map_or(0, |t| string_len(t, self.workload.len()))
            + tokens.map_or(0, |t| message_len(t, self.tokens_info_len))
            + priority.map_or(0, |t| double_len(t, self.priority))
            + request_id.map_or(0, |t| string_len(t, self.request_id_len()))
    }

    fn len(&self) -> usize {
        let spec = self.spec;
        string_len(1, spec.policy_name.len())
            + string_len(2, spec.policy_hash.len())
            + string_len(3, spec.component_id.len())
            + varint_len(4, u64::from(self.dropped()))
            + varint_len(5, self.reason())
            + varint_len(10, self.status())
            + self.wait_time_len()
            + message_len(self.details_tag(), self.details_len)
    }

    fn wait_time_len(&self) -> usize {
        match self.outcome.wait_ns {
            0 => 0,
            ns => message_len(11, duration_len(ns)),
        }
    }

    fn encode_to(&self, buf: &mut BytesMut) {
        let spec = self.spec;
        let o = self.outcome;
        string_field(1, &[spec.policy_name.as_str()], buf);
        string_field(2, &[spec.policy_hash.as_str()], buf);
        string_field(3, &[spec.component_id.as_str()], buf);
        varint_field(4, u64::from(self.dropped()), buf);
        varint_field(5, self.reason(), buf);
        varint_field(10, self.status(), buf);
        if o.wait_ns > 0 {
            duration_field(11, o.wait_ns, buf);
        }
        len_delimited(self.details_tag(), self.details_len, buf);
        let [label, workload, tokens, priority, request_id] = self.details_tags();
        if let Some(tag) = label {
            string_field(tag, &self.label.parts(), buf);
        }
        if let Some(tag) = workload {
            string_field(tag, &[self.workload], buf);
        }
        if let Some(tag) = tokens {
            len_delimited(tag, self.tokens_info_len, buf);
            double_field(1, o.remaining, buf);
            double_field(2, o.current, buf);
            double_field(3, self.consumed, buf);
        }
        if let Some(tag) = priority {
            double_field(tag, self.priority, buf);
        }
        if let (Some(tag), Some(id)) = (request_id, self.request_id) {
            len_delimited(tag, FLOW_ID_DIGITS, buf);
            put_flow_id(id, buf);
        }
    }
}

/// A [`FlowId`] as text: 16 hex digits, as its `Display` writes it.
const FLOW_ID_DIGITS: usize = 16;

fn put_flow_id(id: FlowId, buf: &mut BytesMut) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let raw = id.get();
    for digit in (0..FLOW_ID_DIGITS).rev() {
        buf.put_u8(HEX[((raw >> (4 * digit)) & 0xf) as usize]);
    }
}

/// An `int32` (or enum) as protobuf writes it: a negative one sign-extended to 64 bits.
fn int32(value: i32) -> u64 {
    i64::from(value) as u64
}

fn string_len(tag: u32, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        message_len(tag, len)
    }
}

fn message_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn double_len(tag: u32, value: f64) -> usize {
    if value != 0.0 {
        key_len(tag) + 8
    } else {
        0
    }
}

fn varint_len(tag: u32, value: u64) -> usize {
    if value != 0 {
        key_len(tag) + encoded_len_varint(value)
    } else {
        0
    }
}

/// The key and length of a length-delimited field; its `len` bytes follow.
fn len_delimited(tag: u32, len: usize, buf: &mut BytesMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

/// A string field made of `parts`, joined; nothing when it is empty.
fn string_field(tag: u32, parts: &[&str], buf: &mut BytesMut) {
    let len = parts.iter().map(|p| p.len()).sum();
    if len > 0 {
        len_delimited(tag, len, buf);
        parts.iter().for_each(|p| buf.put_slice(p.as_bytes()));
    }
}

/// A `map<string, string>` entry (`value` in parts).
fn map_entry(tag: u32, key: &str, value: &[&str], buf: &mut BytesMut) {
    let value_len = value.iter().map(|p| p.len()).sum();
    len_delimited(
        tag,
        string_len(1, key.len()) + string_len(2, value_len),
        buf,
    );
    string_field(1, &[key], buf);
    string_field(2, value, buf);
}

fn double_field(tag: u32, value: f64, buf: &mut BytesMut) {
    if value != 0.0 {
        encode_key(tag, WireType::SixtyFourBit, buf);
        buf.put_f64_le(value);
    }
}

fn varint_field(tag: u32, value: u64, buf: &mut BytesMut) {
    if value != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(value, buf);
    }
}

/// The fields of a `Timestamp` or `Duration`: `seconds` (int64), `nanos` (int32).
fn seconds_nanos_len(seconds: i64, nanos: i32) -> usize {
    varint_len(1, seconds as u64) + varint_len(2, int32(nanos))
}

fn seconds_nanos_field(tag: u32, seconds: i64, nanos: i32, buf: &mut BytesMut) {
    len_delimited(tag, seconds_nanos_len(seconds, nanos), buf);
    varint_field(1, seconds as u64, buf);
    varint_field(2, int32(nanos), buf);
}

fn timestamp_field(tag: u32, t: &prost_types::Timestamp, buf: &mut BytesMut) {
    seconds_nanos_field(tag, t.seconds, t.nanos, buf);
}

fn duration_len(ns: u64) -> usize {
    let d = duration_ns(ns);
    seconds_nanos_len(d.seconds, d.nanos)
}

fn duration_field(tag: u32, ns: u64, buf: &mut BytesMut) {
    let d = duration_ns(ns);
    seconds_nanos_field(tag, d.seconds, d.nanos, buf);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;
    use tollgate_policy::{Outcomes, WAIT_FOREVER};

    fn engine() -> Arc<Engine> {
        let policies =
            tollgate_policy::parse_policies(crate::reply::tests::POLICIES, "test.yaml").unwrap();
        Arc::new(Engine::new(&policies))
    }

    fn encoded(answer: &CheckAnswer) -> Vec<u8> {
        let mut buf = BytesMut::new();
        answer.encode_to(&mut buf);
        buf.to_vec()
    }

    /// Label keys the policies read (limit-by, workload, priority), the flow-ids label, an
    /// empty key, and others.
    fn label_key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("user".to_owned()),
            Just("tenant".to_owned()),
            Just("api_key".to_owned()),
            Just("tier".to_owned()),
            Just("workload".to_owned()),
            Just("priority".to_owned()),
            Just(FLOW_IDS_LABEL.to_owned()),
            Just(String::new()),
            "[a-zé]{1,12}",
        ]
    }

    fn label_value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just("premium".to_owned()),
            Just("7".to_owned()),
            "[a-z0-9é ,:]{0,200}",
        ]
    }

    /// Token counts as buckets report them: zero (of either sign), fractions, negatives
    /// (debt), large.
    fn tokens() -> impl Strategy<Value = f64> {
        prop_oneof![Just(0.0), Just(-0.0), Just(1.0), -1e6..1e12f64]
    }

    fn wait_ns() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0),
            Just(1),
            Just(1_000_000_001),
            Just(WAIT_FOREVER),
            any::<u64>()
        ]
    }

    fn outcome(
        limiters: usize,
    ) -> impl Strategy<Value = (usize, OutcomeKind, [f64; 3], u64, Option<u64>)> {
        (
            0..limiters,
            prop_oneof![
                Just(OutcomeKind::Accepted),
                Just(OutcomeKind::Rejected),
                Just(OutcomeKind::KeyNotFound),
                Just(OutcomeKind::Returned),
            ],
            [tokens(), tokens(), tokens()],
            wait_ns(),
            proptest::option::of(any::<u64>()),
        )
    }

    fn cache_lookup_response() -> impl Strategy<Value = Option<pb::CacheLookupResponse>> {
        proptest::option::of(
            (
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
                "[a-z]{0,4}",
            )
                .prop_map(|(value, key)| pb::CacheLookupResponse {
                    result_cache_response: value.map(|value| pb::KeyLookupResponse {
                        value,
                        ..Default::default()
                    }),
                    global_cache_responses: vec![
                        pb::cache_lookup_response::GlobalCacheResponsesEntry {
                            key,
                            value: Some(pb::KeyLookupResponse {
                                lookup_status: pb::CacheLookupStatus::Miss as i32,
                                ..Default::default()
                            }),
                        },
                    ],
                }),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The direct encoding is the message tonic's path builds: the same message, of the
        /// same length; the same bytes too where no order can differ (the direct encoding
        /// writes the labels sorted by key, prost a map in its iteration order) and the
        /// flow-ids label does not join them.
        #[test]
        fn the_encoding_is_the_built_message(
            control_point in prop_oneof![Just("api"), Just("llm"), Just("db"), Just("")],
            labels in proptest::collection::hash_map(label_key(), label_value(), 0..6),
            expect_end in any::<bool>(),
            outcomes in proptest::collection::vec(outcome(4), 0..4),
            accepted in any::<bool>(),
            decision_wait in wait_ns(),
            cache_lookup_response in cache_lookup_response(),
            start_ns in prop_oneof![Just(0u64), any::<u64>()],
            took_ns in 0..10_000_000u64,
        ) {
            let engine = engine();
            let ids: Vec<_> = engine.limiters().iter().map(|s| s.id).collect();
            let limiters: Outcomes = outcomes
                .into_iter()
                .map(|(i, kind, [t, remaining, current], wait_ns, flow)| LimiterOutcome {
                    limiter: ids[i],
                    kind,
                    tokens: t,
                    remaining,
                    current,
                    wait_ns,
                    refusal: None,
                    flow: flow.map(FlowId::from_u64),
                })
                .collect();
            let start = SystemTime::UNIX_EPOCH + Duration::from_nanos(start_ns);
            let one_order = labels.len() <= 1;
            let mut labels: Vec<(String, String)> = labels.into_iter().collect();
            labels.sort_unstable(); // as the flow hands them back
            let answer = CheckAnswer::Decided(Decided {
                control_point: control_point.to_owned(),
                labels,
                expect_end,
                engine,
                decision: Decision { accepted, wait_ns: decision_wait, limiters },
                cache_lookup_response: cache_lookup_response.map(Box::new),
                start,
                end: start + Duration::from_nanos(took_ns),
            });
            let bytes = encoded(&answer);
            prop_assert!(answer.size_hint() > 0);
            let CheckAnswer::Decided(decided) = &answer else { unreachable!() };
            let ids_listed = !expect_end && decided.decision.limiters.iter().any(|o| o.flow.is_some());
            let built = answer.into_message();
            // The length too: a decoder takes a map's last entry for a key, so a request label
            // written next to the flow-ids label that replaces it would decode the same.
            prop_assert_eq!(bytes.len(), built.encoded_len());
            prop_assert_eq!(pb::CheckResponse::decode(&bytes[..]).unwrap(), built.clone());
            if !ids_listed && one_order {
                prop_assert_eq!(bytes, built.encode_to_vec());
            }
        }
    }

    #[test]
    fn a_built_answer_is_encoded_by_prost() {
        let message = pb::CheckResponse {
            control_point: "api".into(),
            denied_response_status_code: 400,
            ..Default::default()
        };
        let answer = CheckAnswer::Built(Box::new(message.clone()));
        assert_eq!(encoded(&answer), message.encode_to_vec());
        assert_eq!(answer.size_hint(), message.encoded_len());
        assert_eq!(answer.into_message(), message);
    }
}
