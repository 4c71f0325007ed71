//! The body of the fuzz target (`fuzz/fuzz_targets/decode_any.rs`), kept here as a plain
//! function so `cargo test` drives it with random bytes on the stable toolchain too.
//!
//! Properties checked, for any input:
//! 1. no decoder panics (the target panicking *is* the failure);
//! 2. decoding walks the input frame by frame, skipping bodies that fail with
//!    [`DecodeError::Body`], and stops at `Ok(None)` or a [`DecodeError::Framing`];
//! 3. every frame that decodes re-encodes to exactly its original bytes (the encoding is
//!    canonical), in both directions;
//! 4. interned ids bound by `INTERN` frames resolve through a bounded [`InternTable`].

use crate::decode::{decode_frame, decode_reply, frame_len, Frame, StrRef};
use crate::encode::{self, CheckSpec};
use crate::error::DecodeError;
use crate::frame::DEFAULT_MAX_FRAME_LEN;
use crate::intern::InternTable;
use crate::types::Reply;

/// Decodes `data` as a stream of client frames and, separately, as a stream of server frames,
/// asserting the properties above. Panics only if a property is violated.
pub fn decode_any(data: &[u8]) {
    // A small limit exercises the early FRAME_TOO_LARGE path.
    let _ = frame_len(data, 64);
    requests(data);
    replies(data);
}

fn requests(mut data: &[u8]) {
    let mut interns = InternTable::new();
    let mut out = Vec::new();
    loop {
        let consumed = match decode_frame(data, DEFAULT_MAX_FRAME_LEN) {
            Ok(None) | Err(DecodeError::Framing { .. }) => return,
            Err(DecodeError::Body { frame_len, .. }) => frame_len,
            Ok(Some(d)) => {
                out.clear();
                reencode_request(&mut out, d.request_id, &d.frame, &mut interns);
                let original = data.get(..d.len);
                assert_eq!(
                    Some(out.as_slice()),
                    original,
                    "request re-encoding differs"
                );
                d.len
            }
        };
        data = data.get(consumed..).unwrap_or(&[]);
    }
}

fn reencode_request(out: &mut Vec<u8>, id: u32, frame: &Frame<'_>, interns: &mut InternTable) {
    let res = match *frame {
        Frame::Hello(h) => encode::encode_hello(out, id, h.version, h.client_name),
        Frame::Check(c) => {
            let labels: Vec<(StrRef<'_>, &str)> = c.labels().collect();
            assert_eq!(labels.len(), c.label_count());
            for (k, _) in &labels {
                let _ = interns.resolve(*k);
            }
            encode::encode_check(
                out,
                id,
                &CheckSpec {
                    control_point: c.control_point(),
                    tokens: c.tokens(),
                    labels: &labels,
                },
            )
        }
        Frame::CheckBatch(b) => {
            let items: Vec<Vec<(StrRef<'_>, &str)>> =
                b.iter().map(|c| c.labels().collect()).collect();
            assert_eq!(items.len(), b.len());
            let specs: Vec<CheckSpec<'_>> = b
                .iter()
                .zip(&items)
                .map(|(c, labels)| CheckSpec {
                    control_point: c.control_point(),
                    tokens: c.tokens(),
                    labels,
                })
                .collect();
            encode::encode_check_batch(out, id, &specs)
        }
        Frame::Intern { id: iid, value } => {
            if interns.bind(iid, value).is_ok() {
                assert_eq!(interns.get(iid), Some(value));
            }
            encode::encode_intern(out, id, iid, value)
        }
        Frame::Members => encode::encode_members(out, id),
        Frame::Ping(p) => encode::encode_ping(out, id, p),
    };
    assert!(
        res.is_ok(),
        "a decoded request failed to re-encode: {res:?}"
    );
}

fn replies(mut data: &[u8]) {
    let mut out = Vec::new();
    loop {
        let consumed = match decode_reply(data, DEFAULT_MAX_FRAME_LEN) {
            Ok(None) | Err(DecodeError::Framing { .. }) => return,
            Err(DecodeError::Body { frame_len, .. }) => frame_len,
            Ok(Some(d)) => {
                out.clear();
                let id = d.request_id;
                let res = match &d.reply {
                    Reply::Hello(h) => encode::encode_hello_reply(&mut out, id, h),
                    Reply::Check(c) => encode::encode_check_reply(&mut out, id, c),
                    Reply::Batch(items) => encode::encode_batch_reply(&mut out, id, items),
                    Reply::Members(m) => encode::encode_members_reply(&mut out, id, m),
                    Reply::Pong(p) => encode::encode_pong(&mut out, id, p),
                    Reply::Error(e) => {
                        encode::encode_error(&mut out, id, e.code, &e.message);
                        Ok(())
                    }
                };
                assert!(res.is_ok(), "a decoded reply failed to re-encode: {res:?}");
                assert_eq!(
                    Some(out.as_slice()),
                    data.get(..d.len),
                    "reply re-encoding differs"
                );
                d.len
            }
        };
        data = data.get(consumed..).unwrap_or(&[]);
    }
}
