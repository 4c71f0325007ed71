//! Just enough of RESP2 (the Redis protocol) for the baseline: encode a command, decode a
//! reply. Sans-IO: bytes in, values out.
//!
//! ```text
//! command:  *<n>\r\n  then n times  $<len>\r\n<bytes>\r\n
//! replies:  +simple\r\n   -error\r\n   :<int>\r\n   $<len>\r\n<bytes>\r\n ($-1: nil)
//!           *<n>\r\n followed by n replies (*-1: nil)
//! ```
//!
//! Decoding checks every length against what is buffered and against the bounds below before
//! using it; `Ok(None)` means "need more bytes".

/// Largest bulk string accepted in a reply. The baseline's replies are a few bytes; this only
/// bounds what a confused server can make the loadgen buffer.
pub const MAX_BULK_LEN: usize = 1024 * 1024;
/// Most elements in one reply array.
pub const MAX_ARRAY_LEN: usize = 1024;
/// Deepest nesting of arrays accepted (the script returns a flat array).
pub const MAX_DEPTH: usize = 4;

/// A decoded reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// `+OK`.
    Simple(String),
    /// `-ERR ...`.
    Error(String),
    /// `:42`.
    Int(i64),
    /// `$3\r\nfoo` or nil.
    Bulk(Option<Vec<u8>>),
    /// `*2 ...` or nil.
    Array(Option<Vec<Value>>),
}

/// Why a reply cannot be decoded (the connection is then useless).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    /// An unknown type byte.
    #[error("unknown RESP type byte {0:#04x}")]
    UnknownType(u8),
    /// A length or integer that is not a number, or out of bounds.
    #[error("bad RESP length or integer: {0}")]
    BadNumber(&'static str),
    /// Nesting deeper than [`MAX_DEPTH`].
    #[error("RESP reply nested too deep")]
    TooDeep,
    /// A bulk string not followed by CRLF.
    #[error("RESP bulk string not terminated by CRLF")]
    MissingCrlf,
}

/// Appends a command (an array of bulk strings) to `out`.
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.push(b'*');
    push_decimal(out, args.len());
    out.extend_from_slice(b"\r\n");
    for a in args {
        out.push(b'$');
        push_decimal(out, a.len());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

fn push_decimal(out: &mut Vec<u8>, n: usize) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Decodes one reply from the front of `buf`: `Ok(Some((value, bytes used)))`, `Ok(None)` if
/// `buf` holds only part of it.
pub fn decode(buf: &[u8]) -> Result<Option<(Value, usize)>, RespError> {
    decode_at(buf, 0, 0)
}

fn decode_at(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Value, usize)>, RespError> {
    if depth > MAX_DEPTH {
        return Err(RespError::TooDeep);
    }
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let Some((line, next)) = line_at(buf, at + 1) else {
        return Ok(None);
    };
    match kind {
        b'+' => Ok(Some((Value::Simple(lossy(line)), next))),
        b'-' => Ok(Some((Value::Error(lossy(line)), next))),
        b':' => Ok(Some((Value::Int(parse_int(line)?), next))),
        b'$' => {
            let len = parse_int(line)?;
            if len == -1 {
                return Ok(Some((Value::Bulk(None), next)));
            }
            let len = usize::try_from(len).map_err(|_| RespError::BadNumber("negative bulk"))?;
            if len > MAX_BULK_LEN {
                return Err(RespError::BadNumber("bulk string too long"));
            }
            let end = next + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if buf.get(end..end + 2) != Some(b"\r\n") {
                return Err(RespError::MissingCrlf);
            }
            Ok(Some((Value::Bulk(Some(buf[next..end].to_vec())), end + 2)))
        }
        b'*' => {
            let n = parse_int(line)?;
            if n == -1 {
                return Ok(Some((Value::Array(None), next)));
            }
            let n = usize::try_from(n).map_err(|_| RespError::BadNumber("negative array"))?;
            if n > MAX_ARRAY_LEN {
                return Err(RespError::BadNumber("array too long"));
            }
            let mut items = Vec::with_capacity(n);
            let mut pos = next;
            for _ in 0..n {
                match decode_at(buf, pos, depth + 1)? {
                    Some((v, after)) => {
                        items.push(v);
                        pos = after;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Value::Array(Some(items)), pos)))
        }
        other => Err(RespError::UnknownType(other)),
    }
}

/// The line starting at `at` (without CRLF) and the index after its CRLF.
fn line_at(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(at..)?;
    let cr = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..cr], at + cr + 2))
}

fn parse_int(line: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(RespError::BadNumber("not an integer"))
}

fn lossy(line: &[u8]) -> String {
    String::from_utf8_lossy(line).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"EVALSHA", b"abc", b"1", b""]);
        assert_eq!(
            out,
            b"*4\r\n$7\r\nEVALSHA\r\n$3\r\nabc\r\n$1\r\n1\r\n$0\r\n\r\n"
        );
    }

    #[test]
    fn decodes_each_type_and_waits_for_more() {
        let cases: &[(&[u8], Value)] = &[
            (b"+OK\r\n", Value::Simple("OK".into())),
            (b"-ERR x\r\n", Value::Error("ERR x".into())),
            (b":-12\r\n", Value::Int(-12)),
            (b"$3\r\nfoo\r\n", Value::Bulk(Some(b"foo".to_vec()))),
            (b"$-1\r\n", Value::Bulk(None)),
            (b"*-1\r\n", Value::Array(None)),
            (
                b"*3\r\n:1\r\n$3\r\n2.5\r\n:0\r\n",
                Value::Array(Some(vec![
                    Value::Int(1),
                    Value::Bulk(Some(b"2.5".to_vec())),
                    Value::Int(0),
                ])),
            ),
        ];
        for (bytes, want) in cases {
            let mut with_tail = bytes.to_vec();
            with_tail.extend_from_slice(b"+NEXT\r\n");
            assert_eq!(decode(&with_tail), Ok(Some((want.clone(), bytes.len()))));
            for cut in 0..bytes.len() {
                assert_eq!(decode(&bytes[..cut]), Ok(None), "{bytes:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn rejects_garbage_and_bounds() {
        assert!(decode(b"?x\r\n").is_err());
        assert!(decode(b":abc\r\n").is_err());
        assert!(decode(b"$3\r\nfooXY").is_err());
        assert!(decode(b"$99999999999\r\n").is_err());
        assert!(decode(b"*99999\r\n").is_err());
        assert!(decode(b"$-5\r\n").is_err());
        assert!(decode(b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n").is_err());
    }
}
