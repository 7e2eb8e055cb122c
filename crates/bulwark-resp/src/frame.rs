//! The RESP2 value type.

use bytes::{Bytes, BytesMut};

use crate::encode;

/// One RESP2 value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// `+OK\r\n`: a short status line (never contains CR or LF).
    Simple(String),
    /// `-ERR message\r\n`: an error reply.
    Error(String),
    /// `:42\r\n`.
    Integer(i64),
    /// `$3\r\nfoo\r\n`: a binary-safe string.
    Bulk(Bytes),
    /// `$-1\r\n`: the null bulk string (a missing value).
    Null,
    /// `*2\r\n…`: an array of frames.
    Array(Vec<Frame>),
    /// `*-1\r\n`: the null array.
    NullArray,
}

impl Frame {
    /// A bulk string frame from anything byte-like.
    pub fn bulk(b: impl Into<Bytes>) -> Frame {
        Frame::Bulk(b.into())
    }

    /// Appends this frame's wire form to `buf`.
    ///
    /// CR and LF inside `Simple` and `Error` would break the framing, so they are replaced
    /// by spaces rather than sent.
    pub fn encode(&self, buf: &mut BytesMut) {
        match self {
            Frame::Simple(s) => encode::simple(buf, s),
            Frame::Error(s) => encode::error(buf, s),
            Frame::Integer(n) => encode::integer(buf, *n),
            Frame::Bulk(b) => encode::bulk(buf, b),
            Frame::Null => encode::null(buf),
            Frame::Array(items) => {
                encode::array_len(buf, items.len());
                for item in items {
                    item.encode(buf);
                }
            }
            Frame::NullArray => buf.extend_from_slice(b"*-1\r\n"),
        }
    }

    /// This frame's wire form as a new buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::new();
        self.encode(&mut buf);
        buf.freeze()
    }
}
