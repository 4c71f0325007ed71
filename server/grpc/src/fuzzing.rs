//! The body of the fuzz target `fuzz/fuzz_targets/grpc_request.rs`, kept here as a plain
//! function so `cargo test` drives it with random and well-formed inputs on the stable
//! toolchain too. Compiled only for tests and under `cfg(fuzzing)` (which `cargo fuzz`
//! sets), never into the shipped library.
//!
//! It fuzzes the port's own code between a client's bytes and a decision. hyper parses the
//! HTTP/2 and prost the messages; both are fuzzed upstream. The port's own parts are:
//! - the direct path's reading of a request body into one message ([`crate::direct_unary`]):
//!   the body's bytes cut into DATA frames anywhere, then possibly trailers or a reset;
//! - the hot calls' messages decoded from a body read whole (`Check`'s `CheckRequest`,
//!   Envoy's `RateLimitRequest`), held to the request bounds ([`crate::request_bounds`]) as
//!   their handlers hold them;
//! - the body's bytes as a `grpc-timeout` value ([`crate::deadline`]) and as a span's
//!   `aperture.check_response` JSON ([`crate::span_flows`]).
//!
//! Properties checked, for any input:
//! 1. nothing panics (the target panicking *is* the failure);
//! 2. a body that is exactly one uncompressed message of at most [`MAX_DIRECT_MESSAGE`]
//!    bytes, ending cleanly, is read whole as that message. Any other body reaches tonic's
//!    routes whole: the bytes read, then the rest of the body, then its trailers or its
//!    reset, every byte in order. A reset while the body could still be one message fails
//!    the call;
//! 3. reading stops at the first frame that shows the body is not one plain message: what it
//!    held before its last frame could still have been one message, so a client cannot make
//!    the direct path hold more than one message's worth and one frame;
//! 4. a request the bounds accept keeps them: at most [`MAX_LABELS`] labels, and the control
//!    point, each key and each value at most [`MAX_STRING_BYTES`] bytes. An RLS descriptor's
//!    labels are its entries' keys, sorted and distinct, each with its last value;
//! 5. a `grpc-timeout` that parses is 1–8 ASCII digits and a unit, and its duration is the
//!    number times the unit;
//! 6. a span ends at most [`MAX_FLOWS_PER_SPAN`] flows.
//!
//! How the input is used:
//!
//! ```text
//!  data[0]    bit 0: trailers after the body; else bit 1: a reset after it
//!             bit 2: a valid prefix written over the body's first 5 bytes (flag 0, the
//!                    length of the rest), so that random input reaches the decoders
//!  data[1]    how many cuts, mod 8
//!  then       a byte a cut: where the body is cut into frames (byte × length / 255)
//!  the rest   the body
//! ```

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use http_body::{Body as _, Frame};
use prost::bytes::Bytes;
use prost::Message;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::Status;

use crate::deadline::parse_grpc_timeout;
use crate::direct_unary::{read_one_message, Read, Replayed, MAX_DIRECT_MESSAGE, PREFIX};
use crate::proto::aperture::flowcontrol::check::v1::CheckRequest;
use crate::proto::envoy::service::ratelimit::v3::RateLimitRequest;
use crate::request_bounds::{self, MAX_LABELS, MAX_STRING_BYTES};
use crate::rls::descriptor_labels;
use crate::span_flows::{flows_to_end, MAX_FLOWS_PER_SPAN};

/// `data[1]` is taken mod this: 0 to 7 cuts, so up to 8 frames.
const CUT_COUNTS: u8 = 8;

/// What follows a request body's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Nothing: the body ends.
    Clean,
    /// Request trailers.
    Trailers,
    /// The client resets the stream.
    Reset,
}

/// Feeds `data` to the port's request decoders (module docs: layout and properties).
pub fn grpc_request(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some((&cut_count, rest)) = rest.split_first() else {
        return;
    };
    let (cuts, body) = rest.split_at(usize::from(cut_count % CUT_COUNTS).min(rest.len()));
    let mut body = body.to_vec();
    if flags & 4 != 0 && body.len() >= PREFIX {
        let length = u32::try_from(body.len() - PREFIX).unwrap_or(u32::MAX);
        body[0] = 0;
        body[1..PREFIX].copy_from_slice(&length.to_be_bytes());
    }
    let end = if flags & 1 != 0 {
        End::Trailers
    } else if flags & 2 != 0 {
        End::Reset
    } else {
        End::Clean
    };
    if let Some(message) = read_body(&body, &cut(&body, cuts), end) {
        check_request(&message[PREFIX..]);
        rate_limit_request(&message[PREFIX..]);
    }
    let text = String::from_utf8_lossy(&body);
    grpc_timeout(&text);
    if let Ok(flows) = flows_to_end(&text) {
        assert!(flows.ends.len() <= MAX_FLOWS_PER_SPAN, "{flows:?}");
    }
}

/// `body` cut into frames where `cuts` say (each a fraction of its length, in 255ths).
fn cut<'b>(body: &'b [u8], cuts: &[u8]) -> Vec<&'b [u8]> {
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|&c| usize::from(c) * body.len() / 255)
        .collect();
    at.sort_unstable();
    let mut frames = Vec::with_capacity(at.len() + 1);
    let mut from = 0;
    for to in at.into_iter().chain([body.len()]) {
        frames.push(&body[from..to]);
        from = to;
    }
    frames
}

/// Whether `held`, the start of a body, could still be one plain message.
fn could_be_one(held: &[u8]) -> bool {
    match declared_length(held) {
        None => true,
        Some(length) => {
            held[0] == 0 && length <= MAX_DIRECT_MESSAGE && held.len() <= PREFIX + length
        }
    }
}

/// Whether `body` is exactly one plain message.
fn is_one(body: &[u8]) -> bool {
    could_be_one(body) && declared_length(body).is_some_and(|length| body.len() == PREFIX + length)
}

/// The message length a body's prefix declares, once its prefix is whole.
fn declared_length(held: &[u8]) -> Option<usize> {
    let prefix: [u8; 4] = held.get(1..PREFIX)?.try_into().ok()?;
    Some(u32::from_be_bytes(prefix) as usize)
}

/// Reads a body of `frames` (the data of `body`), then `end`, as the direct path does,
/// checking properties 2 and 3; the message when it was read whole.
fn read_body(body: &[u8], frames: &[&[u8]], end: End) -> Option<Bytes> {
    let mut queued: VecDeque<_> = frames
        .iter()
        .map(|f| Ok(Frame::data(Bytes::copy_from_slice(f))))
        .collect();
    match end {
        End::Clean => {}
        End::Trailers => queued.push_back(Ok(Frame::trailers(request_trailers()))),
        End::Reset => queued.push_back(Err(Status::cancelled("reset"))),
    }
    let (read, rest) = ready(read_one_message(Body::new(Frames(queued))));
    match read {
        Read::One(message) => {
            assert!(end == End::Clean && is_one(body), "read as one message");
            assert_eq!(&message[..], body);
            Some(message)
        }
        Read::Failed(_) => {
            assert_eq!(end, End::Reset, "only a reset fails the call");
            assert!(
                could_be_one(body),
                "a reset after the body stopped being one message"
            );
            None
        }
        Read::Other { bytes, trailers } => {
            assert!(end != End::Clean || !is_one(body), "one message handed on");
            // The frames read: the fewest whose bytes are what was read.
            let mut taken = 0;
            let mut frames_read = 0;
            while taken < bytes.len() {
                taken += frames[frames_read].len();
                frames_read += 1;
            }
            assert_eq!(
                &bytes[..],
                &body[..taken],
                "the bytes read are the body's first"
            );
            if let Some(last) = frames_read.checked_sub(1) {
                let before_last = taken - frames[last].len();
                assert!(could_be_one(&body[..before_last]), "read past one message");
            }
            let (replayed, replayed_trailers, reset) = drain(Replayed::new(bytes, trailers, rest));
            assert_eq!(replayed, body, "the body handed on in order");
            assert_eq!(
                replayed_trailers,
                (end == End::Trailers).then(request_trailers)
            );
            assert_eq!(reset, end == End::Reset);
            None
        }
    }
}

/// The request trailers a body may end with.
fn request_trailers() -> http::HeaderMap {
    let mut t = http::HeaderMap::new();
    t.insert("x-after", http::HeaderValue::from_static("1"));
    t
}

/// Property 4 for `Check`.
fn check_request(message: &[u8]) {
    let Ok(request) = CheckRequest::decode(message) else {
        return;
    };
    if request_bounds::check_request(&request).is_ok() {
        assert!(request.labels.len() <= MAX_LABELS);
        assert!(request.control_point.len() <= MAX_STRING_BYTES);
        for (key, value) in &request.labels {
            assert!(key.len() <= MAX_STRING_BYTES && value.len() <= MAX_STRING_BYTES);
        }
    }
}

/// Property 4 for `ShouldRateLimit`: each descriptor as its handler makes it a flow.
fn rate_limit_request(message: &[u8]) {
    let Ok(request) = RateLimitRequest::decode(message) else {
        return;
    };
    for descriptor in request.descriptors {
        let entries = descriptor.entries.clone();
        let labels = descriptor_labels(descriptor.entries);
        assert!(
            labels.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted, distinct keys"
        );
        for entry in &entries {
            let last = entries.iter().rev().find(|e| e.key == entry.key);
            let value = labels.iter().find(|(k, _)| *k == entry.key).map(|(_, v)| v);
            assert_eq!(value, last.map(|e| &e.value), "a key's last value");
        }
        let pairs = labels.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        if request_bounds::check_flow(&request.domain, pairs).is_ok() {
            assert!(labels.len() <= MAX_LABELS);
            assert!(request.domain.len() <= MAX_STRING_BYTES);
            for (key, value) in &labels {
                assert!(key.len() <= MAX_STRING_BYTES && value.len() <= MAX_STRING_BYTES);
            }
        }
    }
}

/// Property 5.
fn grpc_timeout(value: &str) {
    let Some(timeout) = parse_grpc_timeout(value) else {
        return;
    };
    const UNIT_NANOS: [(char, u128); 6] = [
        ('n', 1),
        ('u', 1_000),
        ('m', 1_000_000),
        ('S', 1_000_000_000),
        ('M', 60_000_000_000),
        ('H', 3_600_000_000_000),
    ];
    let unit = value
        .chars()
        .last()
        .and_then(|u| UNIT_NANOS.iter().find(|(c, _)| *c == u));
    let digits = &value[..value.len() - 1];
    assert!((1..=8).contains(&digits.len()), "{value:?}");
    let number: u128 = digits.parse().expect("digits");
    assert_eq!(
        Some(timeout.as_nanos()),
        unit.map(|(_, nanos)| number * nanos)
    );
}

/// A request body of the given frames, each ready at once.
pub(crate) struct Frames(pub(crate) VecDeque<Result<Frame<Bytes>, Status>>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Poll::Ready(self.0.pop_front())
    }
}

/// `future`'s output: it reads only [`Frames`], which never wait.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a body of ready frames was waited on"),
    }
}

/// Every data byte of `body`, its trailers, and whether it ended in an error.
fn drain(mut body: Replayed) -> (Vec<u8>, Option<http::HeaderMap>, bool) {
    let (mut data, mut trailers) = (Vec::new(), None);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(None) => return (data, trailers, false),
            Poll::Ready(Some(Err(_))) => return (data, trailers, true),
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(bytes) => data.extend_from_slice(&bytes),
                Err(frame) => trailers = frame.into_trailers().ok(),
            },
            Poll::Pending => panic!("a replayed body of ready frames waited"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
    use crate::proto::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use proptest::collection::{hash_map, vec};
    use proptest::prelude::*;

    /// A string within the bounds, or just past them.
    fn string() -> impl Strategy<Value = String> {
        prop_oneof![8 => "[a-c]{0,3}", 1 => "x{4095,4097}"]
    }

    /// A hot call's request message, encoded.
    fn hot_message() -> impl Strategy<Value = Vec<u8>> {
        let check = (string(), hash_map(string(), string(), 0..4)).prop_map(|(cp, labels)| {
            CheckRequest {
                control_point: cp,
                labels,
                ..Default::default()
            }
            .encode_to_vec()
        });
        let entry = (string(), string()).prop_map(|(key, value)| Entry { key, value });
        let descriptor = vec(entry, 0..5).prop_map(|entries| RateLimitDescriptor {
            entries,
            ..Default::default()
        });
        let rls = (string(), vec(descriptor, 0..3)).prop_map(|(domain, descriptors)| {
            RateLimitRequest {
                domain,
                descriptors,
                ..Default::default()
            }
            .encode_to_vec()
        });
        prop_oneof![check, rls]
    }

    /// The fuzz input of a framed `message` (a wrong prefix byte or extra bytes at times).
    fn input(flags: u8, cuts: &[u8], message: &[u8], flag: u8, tail: &[u8]) -> Vec<u8> {
        let mut data = vec![flags & !4, cuts.len() as u8];
        data.extend_from_slice(cuts);
        data.push(flag);
        data.extend_from_slice(&(message.len() as u32).to_be_bytes());
        data.extend_from_slice(message);
        data.extend_from_slice(tail);
        data
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn random_bytes(data in vec(any::<u8>(), 0..600)) {
            grpc_request(&data);
        }

        #[test]
        fn hot_messages_cut_anywhere(
            flags in any::<u8>(),
            cuts in vec(any::<u8>(), 0..7),
            message in hot_message(),
            flag in prop_oneof![9 => Just(0u8), 1 => any::<u8>()],
            tail in prop_oneof![4 => Just(vec![]), 1 => vec(any::<u8>(), 1..8)],
        ) {
            grpc_request(&input(flags, &cuts, &message, flag, &tail));
        }

        #[test]
        fn timeouts(value in "[0-9]{0,10}[HMSmunxé]?") {
            grpc_timeout(&value);
        }
    }

    #[test]
    fn each_way_a_body_can_go_is_reached() {
        let message = CheckRequest {
            control_point: "cp".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let framed = |flag: u8| {
            let mut b = vec![flag];
            b.extend_from_slice(&(message.len() as u32).to_be_bytes());
            b.extend_from_slice(&message);
            b
        };
        let one = framed(0);
        let (a, b) = one.split_at(3);
        assert!(
            read_body(&one, &[a, b], End::Clean).is_some(),
            "read directly"
        );
        assert!(
            read_body(&one, &[a, b], End::Trailers).is_none(),
            "trailers"
        );
        assert!(read_body(&one, &[a, b], End::Reset).is_none(), "failed");
        assert!(
            read_body(&framed(1), &[&framed(1)], End::Clean).is_none(),
            "compressed"
        );
        let mut two = one.clone();
        two.extend_from_slice(&one);
        assert!(
            read_body(&two, &[&one, &one], End::Clean).is_none(),
            "two messages"
        );
        // The size limit, exactly and one past it (then handed on from its prefix alone).
        for (length, direct) in [(MAX_DIRECT_MESSAGE, true), (MAX_DIRECT_MESSAGE + 1, false)] {
            let mut body = vec![0; PREFIX + length];
            body[1..PREFIX].copy_from_slice(&(length as u32).to_be_bytes());
            let (prefix, message) = body.split_at(PREFIX);
            let read = read_body(&body, &[prefix, message], End::Clean);
            assert_eq!(read.is_some(), direct, "a message of {length} bytes");
        }
    }

    #[test]
    fn regressions() {
        // A `grpc-timeout` ending in a character of several bytes.
        grpc_request(&[0, 0, b'1', 0xc3, 0xa9]);
        grpc_timeout("1é");
    }
}
