//! One unary method answered without tonic's routes, generated service or codec
//! ([`answer`]); [`crate::hot_calls`] picks the calls it takes.
//!
//! For every call tonic's generated server builds a decoding stream over the request body
//! (a state machine and a growable buffer), then an encoding stream for the reply (an 8 KiB
//! buffer per call) and the `grpc-status` trailer through its own body type. For a request
//! of a hundred bytes that machinery is a large share of the call: a plain hyper service
//! answering the floor's constant reply serves 1.1–1.3x the requests per second of the same
//! reply through tonic's routes and generated services, on the same hyper server
//! (benches/grpc_compare_notes.md, the round of 2026-12-01 15:15–16:45 UTC).
//!
//! The hot calls (`Check`, `ShouldRateLimit`) take this path instead: the body is read into
//! one buffer, the message decoded in place, the handler called with the same
//! `tonic::Request` it gets from tonic (metadata and extensions included), and the reply
//! framed into one buffer with an `OK` trailer. The handler is the one tonic's generated
//! service calls too (for `Check`, the decision both share, whose answer is written without
//! building the message: [`crate::check_reply`]), so the answer is the one tonic would give.
//!
//! Anything but the plain case goes on to tonic's routes with the bytes read so far in front
//! of the rest of the body (`Replayed`), so tonic answers it exactly as it did: a
//! compressed message or a `grpc-encoding` header, a message over tonic's size limit, a body
//! that is shorter than its length prefix or holds more than one message, request trailers,
//! and a message that does not decode (which [`crate::undecodable`] there rewrites to
//! `INVALID_ARGUMENT`). Reading stops at the first byte past one message, so a client cannot
//! make this path buffer more than one message's worth.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::Body as _;
use prost::bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::{Request, Response, Status};

/// The largest request message taken directly: tonic's default decoding limit, which the
/// port does not change. A larger one goes to tonic, which refuses it.
pub const MAX_DIRECT_MESSAGE: usize = 4 * 1024 * 1024;

/// The gRPC message prefix: a compression flag byte and a big-endian 4-byte length.
pub(crate) const PREFIX: usize = 5;

/// A boxed handler future borrowing its service, as the generated traits' methods return.
pub type HandlerFuture<'a, M> =
    Pin<Box<dyn Future<Output = Result<Response<M>, Status>> + Send + 'a>>;

/// One unary method [`answer`] answers itself.
pub trait DirectMethod: Send + Sync {
    /// The method's path, `/package.Service/Method`.
    const PATH: &'static str;
    /// The request message.
    type Request: Message + Default + Send + 'static;
    /// The reply message.
    type Reply: DirectReply;
    /// The service's own handler of the method (or the part of it that tonic's path shares).
    fn call(&self, request: Request<Self::Request>) -> HandlerFuture<'_, Self::Reply>;
}

/// A reply [`answer`] frames: any prost message, or a type that writes its message's
/// encoding itself ([`crate::check_reply::CheckAnswer`]).
pub trait DirectReply: Send + 'static {
    /// About how many bytes [`DirectReply::encode_to`] appends: the reply buffer's first
    /// capacity.
    fn size_hint(&self) -> usize;
    /// Appends the message's protobuf encoding, without a length prefix.
    fn encode_to(&self, buf: &mut BytesMut);
}

impl<M: Message + 'static> DirectReply for M {
    fn size_hint(&self) -> usize {
        self.encoded_len()
    }

    fn encode_to(&self, buf: &mut BytesMut) {
        // `size_hint` reserved the message's own length: `encode_raw` skips `encode`'s second
        // length computation, which for a nested message walks it again.
        self.encode_raw(buf);
    }
}

/// The answer to one call.
pub type CallFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

/// The header naming a request's compression; with it the call goes to tonic.
const GRPC_ENCODING: &str = "grpc-encoding";

/// Whether `request` may be answered directly as far as its headers tell: it names no
/// compression. (Its body is checked as it is read.)
pub fn plain<B>(request: &http::Request<B>) -> bool {
    !request.headers().contains_key(GRPC_ENCODING)
}

/// Reads the call's message and answers it with `method`, or hands the call to `rest` (the
/// port's generated services) when it is not the plain case (module docs).
pub async fn answer<M: DirectMethod>(
    method: &M,
    request: http::Request<Body>,
    rest: impl FnOnce(http::Request<Body>) -> CallFuture,
) -> Result<http::Response<Body>, Infallible> {
    let (parts, body) = request.into_parts();
    let (read, body) = read_one_message(body).await;
    let replay = |parts, body: Replayed| rest(http::Request::from_parts(parts, Body::new(body)));
    let message = match read {
        Read::One(bytes) => match M::Request::decode(&bytes[PREFIX..]) {
            Ok(message) => message,
            Err(_) => return replay(parts, Replayed::new(bytes, None, body)).await,
        },
        Read::Other { bytes, trailers } => {
            return replay(parts, Replayed::new(bytes, trailers, body)).await;
        }
        Read::Failed(status) => return Ok(status.into_http()),
    };
    let reply = method
        .call(Request::from_http(http::Request::from_parts(
            parts, message,
        )))
        .await;
    Ok(match reply {
        Ok(reply) => reply_response(reply),
        Err(status) => status.into_http(),
    })
}

/// What reading a call's body found.
pub(crate) enum Read {
    /// The body was exactly one uncompressed message within [`MAX_DIRECT_MESSAGE`]: its
    /// prefix and bytes.
    One(Bytes),
    /// Anything else: the bytes read so far (the rest is still in the body) and the request
    /// trailers if the body ended with them.
    Other {
        bytes: Bytes,
        trailers: Option<http::HeaderMap>,
    },
    /// The body failed (the client reset the stream): tonic's answer to that.
    Failed(Status),
}

/// Reads `body` while it can still be one plain message (module docs), returning what it
/// found and the body, positioned after the bytes returned.
pub(crate) async fn read_one_message(mut body: Body) -> (Read, Body) {
    // Most requests arrive in one DATA frame: keep that frame's bytes, copy only if more come.
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    loop {
        let have: &[u8] = match (&joined, &first) {
            (Some(j), _) => j,
            (None, Some(f)) => f,
            (None, None) => &[],
        };
        let mut whole = None;
        if have.len() >= PREFIX {
            let length = u32::from_be_bytes([have[1], have[2], have[3], have[4]]) as usize;
            if have[0] != 0 || length > MAX_DIRECT_MESSAGE || have.len() > PREFIX + length {
                return (
                    Read::Other {
                        bytes: taken(first, joined),
                        trailers: None,
                    },
                    body,
                );
            }
            whole = Some(PREFIX + length);
        }
        match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            None => {
                let bytes = taken(first, joined);
                return if whole == Some(bytes.len()) {
                    (Read::One(bytes), body)
                } else {
                    (
                        Read::Other {
                            bytes,
                            trailers: None,
                        },
                        body,
                    )
                };
            }
            Some(Err(status)) => return (Read::Failed(status), body),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => match (&mut joined, &first) {
                    (Some(j), _) => j.extend_from_slice(&data),
                    (None, None) => first = Some(data),
                    (None, Some(f)) => {
                        let mut j = BytesMut::with_capacity(f.len() + data.len());
                        j.extend_from_slice(f);
                        j.extend_from_slice(&data);
                        first = None;
                        joined = Some(j);
                    }
                },
                Err(frame) => {
                    let trailers = frame.into_trailers().ok();
                    return (
                        Read::Other {
                            bytes: taken(first, joined),
                            trailers,
                        },
                        body,
                    );
                }
            },
        }
    }
}

fn taken(first: Option<Bytes>, joined: Option<BytesMut>) -> Bytes {
    joined.map_or_else(|| first.unwrap_or_default(), BytesMut::freeze)
}

/// A direct reply as tonic sends a unary one: its metadata as headers, `content-type:
/// application/grpc`, the message in one frame, then the `grpc-status: 0` trailer.
fn reply_response<M: DirectReply>(reply: Response<M>) -> http::Response<Body> {
    let (metadata, message, extensions) = reply.into_parts();
    let mut framed = BytesMut::with_capacity(PREFIX + message.size_hint());
    framed.put_bytes(0, PREFIX); // uncompressed; the length is written below
    message.encode_to(&mut framed);
    let length = framed.len() - PREFIX;
    // The port's replies are a few hundred bytes; one that a gRPC prefix cannot carry is
    // refused rather than framed wrong.
    let Ok(prefix_length) = u32::try_from(length) else {
        return Status::resource_exhausted(format!(
            "the reply is {length} bytes; a gRPC message holds at most 4 GiB"
        ))
        .into_http();
    };
    framed[1..PREFIX].copy_from_slice(&prefix_length.to_be_bytes());
    let mut response = http::Response::new(Body::new(OneMessage {
        message: Some(framed.freeze()),
        trailers_sent: false,
    }));
    *response.version_mut() = http::Version::HTTP_2;
    *response.headers_mut() = metadata.into_headers();
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    *response.extensions_mut() = extensions;
    response
}

/// A reply body: one message, then the `grpc-status: 0` trailer.
struct OneMessage {
    message: Option<Bytes>,
    trailers_sent: bool,
}

impl http_body::Body for OneMessage {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if let Some(message) = self.message.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(message))));
        }
        if self.trailers_sent {
            return Poll::Ready(None);
        }
        self.trailers_sent = true;
        let mut trailers = http::HeaderMap::with_capacity(1);
        trailers.insert(Status::GRPC_STATUS, http::HeaderValue::from_static("0"));
        Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.message.is_none() && self.trailers_sent
    }
}

/// A request body given back to tonic: the bytes already read, then the rest of the body,
/// or the trailers it ended with.
pub(crate) struct Replayed {
    read: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
    rest: Option<Body>,
}

impl Replayed {
    pub(crate) fn new(read: Bytes, trailers: Option<http::HeaderMap>, rest: Body) -> Self {
        Self {
            read: (!read.is_empty()).then_some(read),
            // A body that ended with trailers has nothing more to give.
            rest: trailers.is_none().then_some(rest),
            trailers,
        }
    }
}

impl http_body::Body for Replayed {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        if let Some(read) = self.read.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(read))));
        }
        if let Some(trailers) = self.trailers.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use prost_types::Duration as Msg;

    use super::*;
    use crate::fuzzing::Frames;
    use tonic::codegen::Service;

    /// Answers a `Duration` with one second more; `seconds: -1` is refused.
    struct PlusOne;

    impl DirectMethod for PlusOne {
        const PATH: &'static str = "/test.T/PlusOne";
        type Request = Msg;
        type Reply = Msg;

        fn call(&self, request: Request<Msg>) -> HandlerFuture<'_, Msg> {
            Box::pin(async move {
                let m = request.into_inner();
                if m.seconds == -1 {
                    return Err(Status::out_of_range("minus one"));
                }
                let mut reply = Response::new(Msg {
                    seconds: m.seconds + 1,
                    nanos: m.nanos,
                });
                reply
                    .metadata_mut()
                    .insert("x-seen", tonic::metadata::MetadataValue::from_static("yes"));
                Ok(reply)
            })
        }
    }

    /// A request body as the rest received it: every data byte, then the trailers.
    type Seen = (Vec<u8>, Option<http::HeaderMap>);

    /// What the rest (tonic's routes) received.
    #[derive(Clone, Default)]
    struct Rest {
        seen: Arc<Mutex<Option<Seen>>>,
    }

    impl Service<http::Request<Body>> for Rest {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = CallFuture;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<Body>) -> CallFuture {
            let seen = self.seen.clone();
            Box::pin(async move {
                let mut body = request.into_body();
                let (mut bytes, mut trailers) = (Vec::new(), None);
                while let Some(frame) =
                    std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
                {
                    match frame.map(http_body::Frame::into_data) {
                        Ok(Ok(data)) => bytes.extend_from_slice(&data),
                        Ok(Err(frame)) => trailers = frame.into_trailers().ok(),
                        Err(_) => break,
                    }
                }
                *seen.lock().unwrap() = Some((bytes, trailers));
                Ok(Status::internal("the rest answered").into_http())
            })
        }
    }

    fn framed(m: &Msg) -> Vec<u8> {
        let body = m.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Calls [`answer`] with a body of `chunks` (then `trailers`); the response's status
    /// header or trailer, its message, and what the rest saw (None: it was not called).
    async fn call(
        chunks: &[&[u8]],
        trailers: Option<http::HeaderMap>,
    ) -> (
        String,
        Option<Msg>,
        Option<(Vec<u8>, Option<http::HeaderMap>)>,
    ) {
        call_then(chunks, trailers, None).await
    }

    /// [`call`], the body failing with `error` at its end.
    async fn call_then(
        chunks: &[&[u8]],
        trailers: Option<http::HeaderMap>,
        error: Option<Status>,
    ) -> (
        String,
        Option<Msg>,
        Option<(Vec<u8>, Option<http::HeaderMap>)>,
    ) {
        let mut frames: VecDeque<_> = chunks
            .iter()
            .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        if let Some(t) = trailers {
            frames.push_back(Ok(http_body::Frame::trailers(t)));
        }
        if let Some(e) = error {
            frames.push_back(Err(e));
        }
        let request = http::Request::builder()
            .uri(PlusOne::PATH)
            .body(Body::new(Frames(frames)))
            .unwrap();
        let rest = Rest::default();
        let mut to_rest = rest.clone();
        let response = answer(&PlusOne, request, move |r| to_rest.call(r))
            .await
            .unwrap();
        let (parts, mut body) = response.into_parts();
        let (mut data, mut status) = (Vec::new(), parts.headers.get("grpc-status").cloned());
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            match frame.unwrap().into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => status = f.into_trailers().unwrap().get("grpc-status").cloned(),
            }
        }
        let message = (!data.is_empty()).then(|| {
            assert_eq!(parts.headers["content-type"], "application/grpc");
            assert_eq!(
                parts.headers["x-seen"], "yes",
                "the handler's metadata is sent"
            );
            let length = u32::from_be_bytes(data[1..5].try_into().unwrap()) as usize;
            assert_eq!((data[0], data.len()), (0, PREFIX + length));
            Msg::decode(&data[PREFIX..]).unwrap()
        });
        let status = status
            .map(|s| s.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let seen = rest.seen.lock().unwrap().take();
        (status, message, seen)
    }

    const OK: &str = "0";
    /// tonic's code for INTERNAL, which the test's rest answers.
    const REST: &str = "13";

    #[tokio::test]
    async fn a_plain_message_is_answered_directly_in_one_frame_or_many() {
        let whole = framed(&Msg {
            seconds: 41,
            nanos: 7,
        });
        let want = Some(Msg {
            seconds: 42,
            nanos: 7,
        });
        assert_eq!(call(&[&whole], None).await, (OK.into(), want, None));
        // The prefix itself split, then the message in pieces.
        let (a, b) = whole.split_at(3);
        let (b, c) = b.split_at(4);
        assert_eq!(call(&[a, b, c], None).await, (OK.into(), want, None));
        // An empty message is a message: all defaults.
        let empty = framed(&Msg::default());
        let one = Some(Msg {
            seconds: 1,
            nanos: 0,
        });
        assert_eq!(call(&[&empty], None).await, (OK.into(), one, None));
    }

    #[tokio::test]
    async fn a_handler_error_is_its_status() {
        let refused = framed(&Msg {
            seconds: -1,
            nanos: 0,
        });
        assert_eq!(call(&[&refused], None).await, ("11".into(), None, None));
    }

    #[tokio::test]
    async fn anything_else_goes_to_the_rest_with_every_byte_in_order() {
        let whole = framed(&Msg {
            seconds: 5,
            nanos: 0,
        });
        let mut compressed = whole.clone();
        compressed[0] = 1;
        let mut two = whole.clone();
        two.extend_from_slice(&whole);
        let short = &whole[..whole.len() - 1];
        let mut oversized = vec![0];
        oversized.extend_from_slice(&(MAX_DIRECT_MESSAGE as u32 + 1).to_be_bytes());
        let mut undecodable = vec![0, 0, 0, 0, 3];
        undecodable.extend_from_slice(&[0xff, 0xff, 0xff]);
        let cases: [(&str, Vec<&[u8]>); 7] = [
            ("no message at all", vec![]),
            ("a compressed flag", vec![&compressed]),
            ("two messages in one frame", vec![&two]),
            (
                "a second message in a later frame",
                vec![&whole, &whole[..2]],
            ),
            ("a body shorter than its prefix says", vec![short]),
            (
                "a length over the limit, then more",
                vec![&oversized, b"abc"],
            ),
            ("a message that does not decode", vec![&undecodable]),
        ];
        for (why, chunks) in cases {
            let all: Vec<u8> = chunks.concat();
            assert_eq!(
                call(&chunks, None).await,
                (REST.into(), None, Some((all, None))),
                "{why}"
            );
        }
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-after", http::HeaderValue::from_static("1"));
        assert_eq!(
            call(&[&whole], Some(trailers.clone())).await,
            (REST.into(), None, Some((whole.clone(), Some(trailers)))),
            "request trailers"
        );
    }

    #[tokio::test]
    async fn a_body_past_its_message_is_handed_over_at_once_not_read_to_its_end() {
        // The body fails after its second message: read to its end, the call would fail
        // (what a reset stream gives); handed over at the first byte past the message, the
        // rest gets it, so a client cannot make the direct path buffer an endless body.
        let whole = framed(&Msg {
            seconds: 5,
            nanos: 0,
        });
        let mut two = whole.clone();
        two.extend_from_slice(&whole[..3]);
        let reset = Some(Status::cancelled("reset"));
        assert_eq!(
            call_then(&[&two], None, reset.clone()).await,
            (REST.into(), None, Some((two.clone(), None)))
        );
        // Without a byte past the message, the failure is the answer.
        assert_eq!(
            call_then(&[&whole], None, reset).await,
            ("1".into(), None, None)
        );
    }

    #[test]
    fn a_compression_header_is_not_plain() {
        let request = |encoding: Option<&str>| {
            let mut r = http::Request::builder().uri(PlusOne::PATH);
            if let Some(e) = encoding {
                r = r.header(GRPC_ENCODING, e);
            }
            r.body(()).unwrap()
        };
        assert!(plain(&request(None)));
        assert!(!plain(&request(Some("gzip"))));
        assert!(!plain(&request(Some("identity"))));
    }
}
