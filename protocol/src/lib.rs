//! Tollgate's binary wire protocol, its shard-routing function, and the Rust client.
//!
//! Tollgate is a thread-per-core rate-limiting server: every token bucket lives on exactly one
//! shard (one core), and a request for a bucket is best sent straight to the connection served
//! by that shard. This crate owns everything a peer needs to agree on to talk to the server:
//!
//! * **The frame codec** — a pure, sans-IO encoder/decoder. It never touches a socket, a clock
//!   or a runtime: bytes in, frames out, and frames in, bytes appended to a `Vec<u8>`. The
//!   server (glommio), the client (tokio), the load generator and the fuzzer all drive the same
//!   functions. Decoding of requests is zero-copy: a [`Frame`] borrows from the input buffer,
//!   and decoding one `CHECK` performs no heap allocation.
//! * **The routing function** — [`routing::shard_for`]`(`[`routing::routing_hash`]`(value), n)`
//!   is *the* single definition of which shard owns a bucket. Server, client, load generator and
//!   tests all call it, so they cannot disagree.
//! * **The client** — `client::Client`, a pipelined, shard-aware tokio client (plus a
//!   `client::blocking` wrapper) built on the codec. It is behind the default-on `client`
//!   feature: with `default-features = false` the crate is the codec and the routing function
//!   alone, without tokio or tracing.
//!
//! The byte-level specification, precise enough to write a client in another language, lives in
//! `docs/protocol.md`; the golden frames printed there are checked by this crate's tests.
//!
//! # Untrusted input
//!
//! Every decoder here is fed bytes straight from the network. The rules, after quinn's
//! `coding.rs`: check the remaining length before every read, reject a declared length larger
//! than the buffer or a limit *before* looking at (or allocating for) what it declares, use
//! checked arithmetic, never recurse, never `unwrap`, and report failures as values carrying a
//! static reason. A frame whose declared length exceeds the decoder's `max_frame_len` is
//! rejected from its 4-byte header alone.
//!
//! The codec has exactly one `unsafe` block: building a `&str` from bytes just checked to be
//! ASCII (`coding::utf8`), which halves the cost of decoding a `CHECK` (std's UTF-8 validation
//! has a large fixed cost on short strings). Every decoder is fuzzed (`fuzz/`), and the same
//! fuzz body runs under `cargo test` with random bytes.
//!
//! # Cost
//!
//! Decoding a `CHECK` with two labels, resolving and routing it, and encoding its
//! `CHECK_REPLY` takes about 50 ns and allocates nothing (`cargo run --release -p
//! tollgate-protocol --example codec_cost`; criterion: `cargo bench -p tollgate-protocol`).
//!
//! # Layout
//!
//! * [`routing`] — FNV-1a-64 [`routing::routing_hash`], [`routing::shard_for`],
//!   [`routing::routing_value`] (and where it is, [`routing::routing_label_index`]) and
//!   [`routing::RoutingKeys`]: which shard owns a flow.
//! * [`version`] — [`ProtocolVersion`] and its per-connection negotiation by `HELLO`.
//! * [`frame`] — the frame header, opcodes, flag bits, limits and [`ErrorCode`]s.
//! * [`decode`] — bounded decoding: borrowed client→server [`Frame`]s ([`decode_frame`],
//!   [`frame_len`]) and owned server→client [`Reply`]s ([`decode_reply`]).
//! * [`verdict`] — [`decode_verdict`]: a server→client frame's decisions alone, borrowed
//!   (accepted or not, per check), for callers that only count admissions; agrees with
//!   [`decode_reply`] on any bytes.
//! * [`encode`] — encoders appending any frame, in either direction, to a `Vec<u8>`.
//! * [`types`] — owned reply types ([`CheckReply`], [`HelloReply`], [`FlowEndStatus`],
//!   [`Member`], ...).
//! * [`intern`] — the per-connection, bounded [`InternTable`] resolving [`StrRef`]s.
//! * [`error`] — [`DecodeError`] (which says whether the framing survived) and [`EncodeError`].
//! * `fuzzing` — the body of the fuzz target, also driven by `cargo test` with random bytes.
//!   Compiled only under `cfg(test)` or `cfg(fuzzing)` (which `cargo fuzz` sets): it is not
//!   part of the shipped library.
//! * `client` (feature `client`, on by default) — the tokio client: one pipelined connection
//!   per shard port, interning, timeouts, reconnects and fail-open/fail-closed;
//!   `client::blocking` wraps it.
#![warn(missing_docs)]

mod coding;

#[cfg(feature = "client")]
pub mod client;
pub mod decode;
pub mod encode;
pub mod error;
pub mod frame;
#[cfg(any(test, fuzzing))]
pub mod fuzzing;
pub mod intern;
pub mod routing;
pub mod types;
pub mod verdict;
pub mod version;

pub use decode::{
    decode_frame, decode_reply, frame_len, BatchIter, CheckBatchRef, CheckRef, Decoded,
    DecodedReply, FlowIdsRef, Frame, HelloRef, Labels, StrRef,
};
pub use encode::{
    encode_batch_reply, encode_check, encode_check_batch, encode_check_reply,
    encode_check_reply_from, encode_error, encode_flow_end, encode_flow_end_reply, encode_hello,
    encode_hello_reply, encode_hello_with_key, encode_intern, encode_members, encode_members_reply,
    encode_ping, encode_pong, BatchReplyWriter, CheckBatchWriter, CheckSpec,
};
pub use error::{DecodeError, EncodeError, InternError};
pub use frame::{
    opcode, ErrorCode, DEFAULT_MAX_FRAME_LEN, FRAME_HEADER_LEN, LEN_PREFIX_LEN, MAX_API_KEY_LEN,
    MAX_BATCH, MAX_FLOW_END, MAX_INTERNED, MAX_INTERNED_BYTES, MAX_LABELS, MAX_LIMITERS,
    MAX_STRING_LEN, MIN_FRAME_LEN, PROTOCOL_VERSION,
};
pub use intern::InternTable;
pub use smallvec;
pub use types::{
    BatchItem, CheckReply, ControlPointRouting, Decision, DecisionReason, ErrorReply,
    FlowEndStatus, HelloReply, LimiterOutcome, LimiterResult, Limiters, Member, MemberState,
    Refusal, Reply, ReplyHead,
};
pub use verdict::{
    decode_verdict, BatchVerdictIter, BatchVerdicts, DecodedVerdict, ErrorRef, Verdict,
};
pub use version::ProtocolVersion;
