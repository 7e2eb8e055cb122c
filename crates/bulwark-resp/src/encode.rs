//! Reply writers that append straight into an output buffer.
//!
//! The server answers most commands with one of these instead of building a [`Frame`]
//! (an allocation per reply), which matters under pipelined load.
//!
//! [`Frame`]: crate::Frame

use bytes::{BufMut, BytesMut};

/// Appends `+s\r\n`; CR/LF in `s` become spaces so the framing cannot break.
pub fn simple(buf: &mut BytesMut, s: &str) {
    line(buf, b'+', s.as_bytes());
}

/// Appends `-s\r\n`; CR/LF in `s` become spaces so the framing cannot break.
pub fn error(buf: &mut BytesMut, s: &str) {
    line(buf, b'-', s.as_bytes());
}

/// Appends `:n\r\n`.
pub fn integer(buf: &mut BytesMut, n: i64) {
    buf.put_u8(b':');
    decimal(buf, n);
    buf.extend_from_slice(b"\r\n");
}

/// Appends `$len\r\nbytes\r\n`.
pub fn bulk(buf: &mut BytesMut, b: &[u8]) {
    buf.reserve(b.len() + 16);
    buf.put_u8(b'$');
    decimal(buf, b.len() as i64);
    buf.extend_from_slice(b"\r\n");
    buf.extend_from_slice(b);
    buf.extend_from_slice(b"\r\n");
}

/// Appends the null bulk string `$-1\r\n`.
pub fn null(buf: &mut BytesMut) {
    buf.extend_from_slice(b"$-1\r\n");
}

/// Appends an array header `*len\r\n`; the caller appends `len` frames after it.
pub fn array_len(buf: &mut BytesMut, len: usize) {
    buf.put_u8(b'*');
    decimal(buf, i64::try_from(len).unwrap_or(i64::MAX));
    buf.extend_from_slice(b"\r\n");
}

fn line(buf: &mut BytesMut, tag: u8, s: &[u8]) {
    buf.reserve(s.len() + 3);
    buf.put_u8(tag);
    if s.iter().any(|&c| c == b'\r' || c == b'\n') {
        buf.extend(
            s.iter()
                .map(|&c| if c == b'\r' || c == b'\n' { b' ' } else { c }),
        );
    } else {
        buf.extend_from_slice(s);
    }
    buf.extend_from_slice(b"\r\n");
}

/// Writes `n` in decimal without going through `fmt` (no allocation, no formatter).
fn decimal(buf: &mut BytesMut, n: i64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        buf.put_u8(b'-');
    }
    buf.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_integers_including_extremes() {
        for n in [0, 7, -1, 1234567890, i64::MIN, i64::MAX] {
            let mut buf = BytesMut::new();
            integer(&mut buf, n);
            assert_eq!(&buf[..], format!(":{n}\r\n").as_bytes());
        }
    }

    #[test]
    fn newlines_cannot_break_a_status_line() {
        let mut buf = BytesMut::new();
        error(&mut buf, "ERR bad\r\nthing");
        assert_eq!(&buf[..], b"-ERR bad  thing\r\n");
    }
}
