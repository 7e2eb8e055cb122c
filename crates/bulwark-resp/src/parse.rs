//! Incremental RESP2 parsing with limits.
//!
//! Parsing runs in two passes, as in mini-redis: [`Parser::scan`] walks the buffered bytes
//! without allocating to find where the next frame ends (or that it has not all arrived,
//! or that it is malformed or over a limit); only then is the frame split off the buffer
//! and decoded. Bulk payloads become [`Bytes`] slices of the read buffer, so no payload is
//! copied.

use bytes::{Bytes, BytesMut};

use crate::Frame;

/// Bounds on what a peer may make the parser accept. Every limit is checked against the
/// *declared* length, before the payload arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest bulk string payload, in bytes.
    pub max_bulk_len: usize,
    /// Most elements in one array.
    pub max_array_len: usize,
    /// Deepest nesting of arrays (requests are never nested; replies rarely more than 3).
    pub max_depth: usize,
    /// Longest inline command or simple/error line, in bytes (redis uses 64 KiB).
    pub max_inline_len: usize,
    /// Largest whole frame, in bytes, headers included.
    pub max_frame_len: usize,
}

impl Default for Limits {
    /// Limits for a server: 8 MiB frames and bulk strings, 1 Mi arguments, depth 8.
    fn default() -> Self {
        Limits {
            max_bulk_len: 8 << 20,
            max_array_len: 1 << 20,
            max_depth: 8,
            max_inline_len: 64 << 10,
            max_frame_len: 8 << 20,
        }
    }
}

/// Why the input is not valid RESP2 (or breaks a limit). After an error the stream is out
/// of sync; a server replies with the error and closes the connection, as redis does.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A length or integer line is not a decimal integer.
    #[error("Protocol error: invalid {what}")]
    InvalidInteger {
        /// What was being read (`bulk length`, `multibulk length`, `integer`).
        what: &'static str,
    },
    /// A bulk string declared a length above the limit.
    #[error("Protocol error: bulk length {len} exceeds the limit of {limit} bytes")]
    BulkTooLarge {
        /// Declared length.
        len: i64,
        /// Configured limit.
        limit: usize,
    },
    /// An array declared more elements than the limit.
    #[error("Protocol error: multibulk length {len} exceeds the limit of {limit}")]
    ArrayTooLarge {
        /// Declared length.
        len: i64,
        /// Configured limit.
        limit: usize,
    },
    /// Arrays nested deeper than the limit.
    #[error("Protocol error: arrays nested deeper than {limit}")]
    TooDeep {
        /// Configured limit.
        limit: usize,
    },
    /// The frame is (or declares itself) larger than the limit.
    #[error("Protocol error: request larger than {limit} bytes")]
    FrameTooLarge {
        /// Configured limit.
        limit: usize,
    },
    /// An inline command or status line is longer than the limit.
    #[error("Protocol error: too big inline request (limit {limit} bytes)")]
    InlineTooLong {
        /// Configured limit.
        limit: usize,
    },
    /// A bulk payload is not followed by CRLF, or a line ends in a bare LF.
    #[error("Protocol error: expected CRLF")]
    ExpectedCrlf,
    /// A simple string or error is not UTF-8.
    #[error("Protocol error: status line is not UTF-8")]
    InvalidUtf8,
    /// A request array holds something other than bulk strings.
    #[error("Protocol error: expected '$', got '{}'", char::from(*.0))]
    ExpectedBulk(u8),
    /// An inline command has an unterminated quote.
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
}

/// Longest length/integer header line we accept (`-9223372036854775808` is 20 bytes).
const MAX_NUMBER_LINE: usize = 24;

/// An incremental RESP2 parser. Cheap to copy; holds only its limits.
#[derive(Clone, Copy, Debug, Default)]
pub struct Parser {
    /// The bounds enforced on every frame.
    limits: Limits,
}

impl Parser {
    /// A parser enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Parser { limits }
    }

    /// The limits this parser enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Parses one frame from the front of `buf`, consuming it. `Ok(None)` means more bytes
    /// are needed (nothing was consumed). An inline command parses as an array of bulk
    /// strings; blank inline lines are skipped.
    pub fn parse(&self, buf: &mut BytesMut) -> Result<Option<Frame>, ParseError> {
        loop {
            let Some(end) = self.scan(buf)? else {
                return Ok(None);
            };
            let frame = buf.split_to(end).freeze();
            if is_inline(frame[0]) {
                let mut args = Vec::new();
                inline_args(&frame, &mut args)?;
                if args.is_empty() {
                    continue;
                }
                return Ok(Some(Frame::Array(
                    args.into_iter().map(Frame::Bulk).collect(),
                )));
            }
            let mut pos = 0;
            return decode(&frame, &mut pos).map(Some);
        }
    }

    /// Parses one request (an array of bulk strings, or an inline command) into `args`,
    /// which is cleared first and reused so a connection allocates no vector per command.
    /// Returns `Ok(false)` if more bytes are needed. A request may legitimately be empty
    /// (`*0\r\n`); callers skip it.
    pub fn parse_command(
        &self,
        buf: &mut BytesMut,
        args: &mut Vec<Bytes>,
    ) -> Result<bool, ParseError> {
        args.clear();
        let Some(end) = self.scan(buf)? else {
            return Ok(false);
        };
        let frame = buf.split_to(end).freeze();
        let tag = frame[0];
        if is_inline(tag) {
            return inline_args(&frame, args).map(|()| true);
        }
        if tag != b'*' {
            return Err(ParseError::ExpectedBulk(tag));
        }
        let mut pos = 1;
        let n = read_number(&frame, &mut pos, "multibulk length")?;
        for _ in 0..n.max(0) {
            let tag = frame.get(pos).copied().ok_or(ParseError::ExpectedCrlf)?;
            if tag != b'$' {
                return Err(ParseError::ExpectedBulk(tag));
            }
            pos += 1;
            match decode_bulk(&frame, &mut pos)? {
                Frame::Bulk(b) => args.push(b),
                _ => return Err(ParseError::ExpectedBulk(b'$')),
            }
        }
        Ok(true)
    }

    /// Finds the end of the first complete frame in `buf` without consuming or allocating.
    /// Blank inline lines at the front count as a (skippable) frame of their own.
    fn scan(&self, buf: &[u8]) -> Result<Option<usize>, ParseError> {
        if buf.is_empty() {
            return Ok(None);
        }
        let result = if is_inline(buf[0]) {
            self.scan_inline(buf)
        } else {
            self.scan_at(buf, 0, 0)
        };
        match result {
            Ok(None) if buf.len() > self.limits.max_frame_len => Err(ParseError::FrameTooLarge {
                limit: self.limits.max_frame_len,
            }),
            other => other,
        }
    }

    fn scan_inline(&self, buf: &[u8]) -> Result<Option<usize>, ParseError> {
        let limit = self.limits.max_inline_len;
        match find_lf(buf, 0, limit.saturating_add(1)) {
            Some(lf) => Ok(Some(lf + 1)),
            None if buf.len() > limit => Err(ParseError::InlineTooLong { limit }),
            None => Ok(None),
        }
    }

    /// Scans the frame starting at `pos` (nested `depth` arrays deep); returns its end.
    fn scan_at(&self, buf: &[u8], pos: usize, depth: usize) -> Result<Option<usize>, ParseError> {
        let Some(&tag) = buf.get(pos) else {
            return Ok(None);
        };
        let l = &self.limits;
        let body = pos + 1;
        match tag {
            b'+' | b'-' => match find_lf(buf, body, l.max_inline_len + 1) {
                Some(lf) if buf[lf - 1] == b'\r' && lf > body => Ok(Some(lf + 1)),
                Some(_) => Err(ParseError::ExpectedCrlf),
                None if buf.len() - body > l.max_inline_len => Err(ParseError::InlineTooLong {
                    limit: l.max_inline_len,
                }),
                None => Ok(None),
            },
            b':' => Ok(number_line(buf, body, "integer")?.map(|(_, end)| end)),
            b'$' => {
                let Some((len, start)) = number_line(buf, body, "bulk length")? else {
                    return Ok(None);
                };
                if len == -1 {
                    return Ok(Some(start));
                }
                if len < -1 {
                    return Err(ParseError::InvalidInteger {
                        what: "bulk length",
                    });
                }
                if len as u64 > l.max_bulk_len as u64 {
                    return Err(ParseError::BulkTooLarge {
                        len,
                        limit: l.max_bulk_len,
                    });
                }
                let end = start + len as usize + 2;
                if end > l.max_frame_len {
                    return Err(ParseError::FrameTooLarge {
                        limit: l.max_frame_len,
                    });
                }
                if buf.len() < end {
                    return Ok(None);
                }
                if &buf[end - 2..end] != b"\r\n" {
                    return Err(ParseError::ExpectedCrlf);
                }
                Ok(Some(end))
            }
            b'*' => {
                let Some((len, mut next)) = number_line(buf, body, "multibulk length")? else {
                    return Ok(None);
                };
                if len < -1 {
                    return Err(ParseError::InvalidInteger {
                        what: "multibulk length",
                    });
                }
                if len as u64 > l.max_array_len as u64 && len > 0 {
                    return Err(ParseError::ArrayTooLarge {
                        len,
                        limit: l.max_array_len,
                    });
                }
                if len > 0 && depth >= l.max_depth {
                    return Err(ParseError::TooDeep { limit: l.max_depth });
                }
                for _ in 0..len.max(0) {
                    match self.scan_at(buf, next, depth + 1)? {
                        Some(end) => next = end,
                        None => return Ok(None),
                    }
                }
                Ok(Some(next))
            }
            other => Err(ParseError::ExpectedBulk(other)),
        }
    }
}

/// Inline commands start with anything that is not a RESP type byte.
fn is_inline(tag: u8) -> bool {
    !matches!(tag, b'*' | b'$' | b'+' | b'-' | b':')
}

/// Position of the first `\n` in `buf[from..from + max]`.
fn find_lf(buf: &[u8], from: usize, max: usize) -> Option<usize> {
    let end = buf.len().min(from.saturating_add(max));
    buf.get(from..end)?
        .iter()
        .position(|&c| c == b'\n')
        .map(|i| from + i)
}

/// Reads a CRLF-terminated decimal at `from`: `(value, position after CRLF)`, or `None`
/// if the line has not all arrived.
fn number_line(
    buf: &[u8],
    from: usize,
    what: &'static str,
) -> Result<Option<(i64, usize)>, ParseError> {
    match find_lf(buf, from, MAX_NUMBER_LINE) {
        Some(lf) => {
            if lf == from || buf[lf - 1] != b'\r' {
                return Err(ParseError::InvalidInteger { what });
            }
            let n = parse_i64(&buf[from..lf - 1]).ok_or(ParseError::InvalidInteger { what })?;
            Ok(Some((n, lf + 1)))
        }
        None if buf.len().saturating_sub(from) >= MAX_NUMBER_LINE => {
            Err(ParseError::InvalidInteger { what })
        }
        None => Ok(None),
    }
}

/// Strict decimal: optional `-`, at least one digit, no overflow, nothing else.
fn parse_i64(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: i64 = 0;
    for &c in digits {
        if !c.is_ascii_digit() {
            return None;
        }
        let d = i64::from(c - b'0');
        v = v.checked_mul(10)?;
        v = if neg {
            v.checked_sub(d)?
        } else {
            v.checked_add(d)?
        };
    }
    Some(v)
}

/// Reads a number line during decoding (the scan already validated it).
fn read_number(frame: &Bytes, pos: &mut usize, what: &'static str) -> Result<i64, ParseError> {
    let (n, next) = number_line(frame, *pos, what)?.ok_or(ParseError::InvalidInteger { what })?;
    *pos = next;
    Ok(n)
}

fn decode_bulk(frame: &Bytes, pos: &mut usize) -> Result<Frame, ParseError> {
    let len = read_number(frame, pos, "bulk length")?;
    if len == -1 {
        return Ok(Frame::Null);
    }
    let start = *pos;
    let end = start
        .checked_add(
            usize::try_from(len).map_err(|_| ParseError::InvalidInteger {
                what: "bulk length",
            })?,
        )
        .ok_or(ParseError::ExpectedCrlf)?;
    if frame.len() < end + 2 {
        return Err(ParseError::ExpectedCrlf);
    }
    *pos = end + 2;
    Ok(Frame::Bulk(frame.slice(start..end)))
}

fn decode_line(frame: &Bytes, pos: &mut usize) -> Result<String, ParseError> {
    let lf = find_lf(frame, *pos, usize::MAX).ok_or(ParseError::ExpectedCrlf)?;
    let line = &frame[*pos..lf - 1];
    // A CR inside the line is a broken terminator (no encoder writes one: ours replaces
    // it, Redis's does too); taken as text it would not survive being sent on.
    if line.contains(&b'\r') {
        return Err(ParseError::ExpectedCrlf);
    }
    let s = std::str::from_utf8(line).map_err(|_| ParseError::InvalidUtf8)?;
    *pos = lf + 1;
    Ok(s.to_owned())
}

/// Decodes the (already scanned, hence complete) frame at `pos`.
fn decode(frame: &Bytes, pos: &mut usize) -> Result<Frame, ParseError> {
    let tag = frame.get(*pos).copied().ok_or(ParseError::ExpectedCrlf)?;
    *pos += 1;
    match tag {
        b'+' => decode_line(frame, pos).map(Frame::Simple),
        b'-' => decode_line(frame, pos).map(Frame::Error),
        b':' => read_number(frame, pos, "integer").map(Frame::Integer),
        b'$' => decode_bulk(frame, pos),
        b'*' => {
            let len = read_number(frame, pos, "multibulk length")?;
            if len < 0 {
                return Ok(Frame::NullArray);
            }
            // The scan saw every element, so `len` is bounded by the bytes received.
            let mut items = Vec::with_capacity(len as usize);
            for _ in 0..len {
                items.push(decode(frame, pos)?);
            }
            Ok(Frame::Array(items))
        }
        other => Err(ParseError::ExpectedBulk(other)),
    }
}

/// Splits an inline command line into arguments, redis style: whitespace separates, and
/// `"…"` (with `\"`, `\\`, `\n`, `\r`, `\t`) or `'…'` (with `\'`) quote.
fn inline_args(line: &Bytes, args: &mut Vec<Bytes>) -> Result<(), ParseError> {
    let mut s = &line[..];
    while let Some((b'\n' | b'\r', rest)) = s.split_last() {
        s = rest;
    }
    let mut i = 0;
    while i < s.len() {
        while i < s.len() && s[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == s.len() {
            break;
        }
        let mut arg = Vec::new();
        match s[i] {
            q @ (b'"' | b'\'') => {
                i += 1;
                loop {
                    let Some(&c) = s.get(i) else {
                        return Err(ParseError::UnbalancedQuotes);
                    };
                    i += 1;
                    if c == q {
                        break;
                    }
                    if c == b'\\' && i < s.len() {
                        let e = s[i];
                        i += 1;
                        let unescaped = match (q, e) {
                            (b'"', b'n') => b'\n',
                            (b'"', b'r') => b'\r',
                            (b'"', b't') => b'\t',
                            (b'"', other) => other,
                            (_, b'\'') => b'\'',
                            (_, other) => {
                                arg.push(b'\\');
                                other
                            }
                        };
                        arg.push(unescaped);
                    } else {
                        arg.push(c);
                    }
                }
                // Redis requires a separator after the closing quote.
                if s.get(i).is_some_and(|c| !c.is_ascii_whitespace()) {
                    return Err(ParseError::UnbalancedQuotes);
                }
            }
            _ => {
                while i < s.len() && !s[i].is_ascii_whitespace() {
                    arg.push(s[i]);
                    i += 1;
                }
            }
        }
        args.push(Bytes::from(arg));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Frame>, ParseError> {
        let p = Parser::default();
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(f) = p.parse(&mut buf)? {
            out.push(f);
        }
        Ok(out)
    }

    fn cmd(args: &[&str]) -> Frame {
        Frame::Array(
            args.iter()
                .map(|a| Frame::bulk(a.as_bytes().to_vec()))
                .collect(),
        )
    }

    #[test]
    fn parses_every_frame_type_and_round_trips() {
        let frames = vec![
            Frame::Simple("OK".into()),
            Frame::Error("ERR no".into()),
            Frame::Integer(-42),
            Frame::bulk(&b"bin\r\nary\0"[..]),
            Frame::bulk(&b""[..]),
            Frame::Null,
            Frame::NullArray,
            Frame::Array(vec![]),
            Frame::Array(vec![
                Frame::Integer(1),
                Frame::Array(vec![Frame::Null, Frame::bulk(&b"x"[..])]),
            ]),
        ];
        let mut wire = BytesMut::new();
        for f in &frames {
            f.encode(&mut wire);
        }
        assert_eq!(parse_all(&wire).unwrap(), frames);
    }

    #[test]
    fn incomplete_input_consumes_nothing_at_any_split() {
        let mut wire = BytesMut::new();
        cmd(&["SET", "key", "value with spaces"]).encode(&mut wire);
        Frame::Integer(7).encode(&mut wire);
        let p = Parser::default();
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            while let Some(f) = p.parse(&mut buf).unwrap() {
                got.push(f);
            }
            // Feed the rest and everything must come out exactly once.
            buf.extend_from_slice(&wire[cut..]);
            while let Some(f) = p.parse(&mut buf).unwrap() {
                got.push(f);
            }
            assert_eq!(
                got,
                vec![cmd(&["SET", "key", "value with spaces"]), Frame::Integer(7)]
            );
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn parse_command_reuses_the_argument_vector() {
        let p = Parser::default();
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n"[..]);
        let mut args = Vec::new();
        assert!(p.parse_command(&mut buf, &mut args).unwrap());
        assert_eq!(args, vec![Bytes::from("GET"), Bytes::from("k")]);
        assert!(p.parse_command(&mut buf, &mut args).unwrap());
        assert_eq!(args, vec![Bytes::from("PING")]);
        assert!(!p.parse_command(&mut buf, &mut args).unwrap());
        assert!(args.is_empty());
    }

    #[test]
    fn parse_command_refuses_non_bulk_elements() {
        let p = Parser::default();
        let mut args = Vec::new();
        let mut buf = BytesMut::from(&b"*1\r\n:1\r\n"[..]);
        assert_eq!(
            p.parse_command(&mut buf, &mut args),
            Err(ParseError::ExpectedBulk(b':'))
        );
        let mut buf = BytesMut::from(&b"+OK\r\n"[..]);
        assert_eq!(
            p.parse_command(&mut buf, &mut args),
            Err(ParseError::ExpectedBulk(b'+'))
        );
    }

    #[test]
    fn inline_commands_split_like_redis() {
        assert_eq!(parse_all(b"PING\r\n").unwrap(), vec![cmd(&["PING"])]);
        assert_eq!(
            parse_all(b"\r\n  set  k \"a b\\n\" 'it\\'s'\n").unwrap(),
            vec![cmd(&["set", "k", "a b\n", "it's"])]
        );
        assert_eq!(
            parse_all(b"ECHO \"open\r\n"),
            Err(ParseError::UnbalancedQuotes)
        );
        assert_eq!(parse_all(b"PING").unwrap(), vec![]);
    }

    #[test]
    fn malformed_input_is_a_typed_error() {
        let cases: &[(&[u8], ParseError)] = &[
            // Found by the fuzzer (fuzz/): a CR inside a status line.
            (b"+OK\rJ\r\n", ParseError::ExpectedCrlf),
            (b"-ERR a\rb\r\n", ParseError::ExpectedCrlf),
            (
                b"$abc\r\n",
                ParseError::InvalidInteger {
                    what: "bulk length",
                },
            ),
            (
                b"$-2\r\n",
                ParseError::InvalidInteger {
                    what: "bulk length",
                },
            ),
            (b"$3\r\nfooXX", ParseError::ExpectedCrlf),
            (
                b"*x\r\n",
                ParseError::InvalidInteger {
                    what: "multibulk length",
                },
            ),
            (b":12a\r\n", ParseError::InvalidInteger { what: "integer" }),
            (
                b":99999999999999999999\r\n",
                ParseError::InvalidInteger { what: "integer" },
            ),
            (b":1\n", ParseError::InvalidInteger { what: "integer" }),
            (b"+OK\n", ParseError::ExpectedCrlf),
            (b"*1\r\n!\r\n", ParseError::ExpectedBulk(b'!')),
            (
                b"$1234567890123456789012345",
                ParseError::InvalidInteger {
                    what: "bulk length",
                },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_all(input).as_ref(),
                Err(want),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn limits_apply_to_declared_lengths_before_data_arrives() {
        let p = Parser::new(Limits {
            max_bulk_len: 10,
            max_array_len: 3,
            max_depth: 2,
            max_inline_len: 16,
            max_frame_len: 50,
        });
        let err = |input: &[u8]| p.parse(&mut BytesMut::from(input)).unwrap_err();
        assert_eq!(
            err(b"$11\r\n"),
            ParseError::BulkTooLarge { len: 11, limit: 10 }
        );
        assert_eq!(
            err(b"$9223372036854775807\r\n"),
            ParseError::BulkTooLarge {
                len: i64::MAX,
                limit: 10
            }
        );
        assert_eq!(
            err(b"*4\r\n"),
            ParseError::ArrayTooLarge { len: 4, limit: 3 }
        );
        assert_eq!(err(b"*1\r\n*1\r\n*1\r\n"), ParseError::TooDeep { limit: 2 });
        assert_eq!(err(&[b'A'; 17]), ParseError::InlineTooLong { limit: 16 });
        // Three bulk strings of 10 fit each limit but not the frame limit together.
        assert_eq!(
            err(b"*3\r\n$10\r\n0123456789\r\n$10\r\n0123456789\r\n$10\r\n"),
            ParseError::FrameTooLarge { limit: 50 }
        );
        // Within limits still parses.
        assert!(
            p.parse(&mut BytesMut::from(&b"*1\r\n$10\r\n0123456789\r\n"[..]))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        // A seeded xorshift: deterministic, no dependency. Inputs are biased towards RESP
        // punctuation so that deep parser states are reached, not just "invalid tag".
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        const ALPHABET: &[u8] = b"*$+-:\r\n0123456789-abc \"'\\";
        let p = Parser::new(Limits {
            max_bulk_len: 64,
            max_array_len: 8,
            max_depth: 3,
            max_inline_len: 32,
            max_frame_len: 256,
        });
        for _ in 0..20_000 {
            let len = (next() % 48) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next();
                    if r % 4 == 0 {
                        (r >> 8) as u8
                    } else {
                        ALPHABET[(r >> 8) as usize % ALPHABET.len()]
                    }
                })
                .collect();
            let mut buf = BytesMut::from(&input[..]);
            let mut args = Vec::new();
            let _ = p.parse_command(&mut buf.clone(), &mut args);
            while let Ok(Some(_)) = p.parse(&mut buf) {}
        }
    }
}
