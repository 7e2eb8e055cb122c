//! RESP2, the Redis serialization protocol, as frames: parse and encode, no I/O.
//!
//! * [`Frame`]: one RESP2 value.
//! * [`Parser`]: incremental parsing from a [`BytesMut`] read buffer. It answers
//!   `Ok(None)` while a frame is incomplete and consumes bytes only once a whole frame is
//!   there, so a caller can simply read more and call again. It enforces [`Limits`] on
//!   declared lengths *before* the payload arrives, so a hostile client cannot make the
//!   server reserve memory it never intends to send.
//! * Inline commands (`PING\r\n`, as typed into telnet) are accepted like redis does.
//! * [`encode`]: writers that append one reply to a [`BytesMut`] without building a
//!   [`Frame`], for the server's hot path; [`Frame::encode`] for everything else.
//!
//! The crate knows nothing about commands or sockets (see `docs/ARCHITECTURE.md`).

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod frame;
mod parse;

pub mod encode;

pub use frame::Frame;
pub use parse::{Limits, ParseError, Parser};
