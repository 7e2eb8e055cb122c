//! The connection guard: every request head is read and checked here before hyper sees
//! it, and request bodies are framed and timed.
//!
//! hyper answers a head it cannot parse (414, 431, a bad `Content-Length`) with an empty
//! body of its own, which no service can give the JSON error envelope. So [`Guarded`]
//! sits between the socket and hyper: it buffers each head until it is complete, checks
//! it (stricter than hyper, so what passes here also parses there the same way), and
//! hands it on. A head it refuses — or one that does not complete within the head
//! timeout — is replaced by a *synthetic* request (`GET /.bulwark/refused` with the
//! refusal and a per-process random token in a header, `Connection: close`): hyper
//! passes it to the service like any request, where [`crate::envelope`] answers it
//! with the JSON envelope, a request id and a log line, after the answers to the requests
//! before it. Nothing after a refused head is read.
//!
//! Bodies are framed exactly as hyper frames them (`Content-Length`, or `chunked` with
//! the same state machine as hyper's decoder), so the guard knows where the next head
//! starts; a body that does not arrive within the body timeout fails with `TimedOut`,
//! which the connection's [`ConnMeta`] records for [`crate::envelope`] (408). The
//! keep-alive idle timeout is hyper's `header_read_timeout`, which runs only while hyper
//! waits for a new request, never while one is being answered.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Most header fields in a request head (hyper's default as well).
pub const MAX_HEADERS: usize = 100;

/// Longest a closing connection reads and drops what the client still sends.
pub const LINGER_TIME: Duration = Duration::from_secs(2);
/// Most bytes a closing connection reads and drops.
pub const LINGER_BYTES: usize = 8 << 20;

/// The path of the synthetic request that carries a refusal.
pub(crate) const REFUSED_PATH: &str = "/.bulwark/refused";
/// Its header: `<token> <refusal code>`.
pub(crate) const REFUSAL_HEADER: &str = "x-bulwark-refusal";

/// This process's refusal token: clients cannot know it, so they cannot forge one.
pub(crate) static TOKEN: LazyLock<String> =
    LazyLock::new(|| format!("{:032x}", rand::random::<u128>()));

/// Bounds on request heads and bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardLimits {
    /// Longest request target (`MAX_URI_BYTES`, default 16 KiB).
    pub max_uri: usize,
    /// Largest request head (`MAX_HEAD_BYTES`, default 64 KiB).
    pub max_head: usize,
    /// Time from a head's first byte to its end (`HEAD_READ_TIMEOUT_SEC`, default 10).
    pub head_timeout: Duration,
    /// Time from a head's end to its body's end (`BODY_READ_TIMEOUT_SEC`, default 30).
    pub body_timeout: Duration,
}

impl Default for GuardLimits {
    fn default() -> Self {
        GuardLimits {
            max_uri: 16 * 1024,
            max_head: 64 * 1024,
            head_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a connection's request was refused before it reached the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The request target is longer than `max_uri` (414).
    UriTooLong,
    /// The head is larger than `max_head` or has too many fields (431).
    HeadTooLarge,
    /// The head is not HTTP/1.x (400).
    Malformed,
    /// `Content-Length` is not a number, or two of them differ (400).
    BadContentLength,
    /// A `Transfer-Encoding` other than a single `chunked`, or one beside a
    /// `Content-Length` (400: ambiguous framing is how requests are smuggled).
    BadTransferEncoding,
    /// `CONNECT`: no tunnels here (405).
    Connect,
    /// The head did not complete within the head timeout (408).
    HeadTimeout,
    /// This client address has `MAX_CONNECTIONS_PER_IP` connections open (429).
    TooManyConnectionsFromClient,
    /// The service has `MAX_CONNECTIONS` connections open (503).
    TooManyConnections,
}

impl Refusal {
    const ALL: [Refusal; 9] = [
        Refusal::UriTooLong,
        Refusal::HeadTooLarge,
        Refusal::Malformed,
        Refusal::BadContentLength,
        Refusal::BadTransferEncoding,
        Refusal::Connect,
        Refusal::HeadTimeout,
        Refusal::TooManyConnectionsFromClient,
        Refusal::TooManyConnections,
    ];

    /// The stable error code of the answer.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::UriTooLong => "URI_TOO_LONG",
            Refusal::HeadTooLarge => "HEADERS_TOO_LARGE",
            Refusal::Malformed => "MALFORMED_REQUEST",
            Refusal::BadContentLength => "BAD_CONTENT_LENGTH",
            Refusal::BadTransferEncoding => "BAD_TRANSFER_ENCODING",
            Refusal::Connect => "METHOD_NOT_ALLOWED",
            Refusal::HeadTimeout => "REQUEST_TIMEOUT",
            Refusal::TooManyConnectionsFromClient => "TOO_MANY_CONNECTIONS",
            Refusal::TooManyConnections => "OVERLOADED",
        }
    }

    /// The HTTP status of the answer.
    pub fn status(self) -> u16 {
        match self {
            Refusal::UriTooLong => 414,
            Refusal::HeadTooLarge => 431,
            Refusal::Malformed | Refusal::BadContentLength | Refusal::BadTransferEncoding => 400,
            Refusal::Connect => 405,
            Refusal::HeadTimeout => 408,
            Refusal::TooManyConnectionsFromClient => 429,
            Refusal::TooManyConnections => 503,
        }
    }

    /// The refusal a code names (from the synthetic request's header).
    pub(crate) fn from_code(code: &str) -> Option<Refusal> {
        Refusal::ALL.into_iter().find(|r| r.code() == code)
    }

    /// The synthetic request that carries this refusal to the service.
    fn request(self) -> Vec<u8> {
        format!(
            "GET {REFUSED_PATH} HTTP/1.1\r\nhost: bulwark\r\n{REFUSAL_HEADER}: {} {}\r\nconnection: close\r\n\r\n",
            *TOKEN,
            self.code()
        )
        .into_bytes()
    }
}

/// What the service learns about the connection a request came on (a request
/// extension, `Arc<ConnMeta>`).
#[derive(Debug)]
pub struct ConnMeta {
    /// The client's address.
    pub peer: std::net::SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// Set when a request body did not arrive within the body timeout.
    body_timed_out: AtomicBool,
}

impl ConnMeta {
    /// Metadata of a new connection.
    pub fn new(peer: std::net::SocketAddr, tls: bool) -> ConnMeta {
        ConnMeta {
            peer,
            tls,
            body_timed_out: AtomicBool::new(false),
        }
    }

    /// Whether a body on this connection timed out (its request failed because of it).
    pub fn body_timed_out(&self) -> bool {
        self.body_timed_out.load(Ordering::Relaxed)
    }
}

/// How a head's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// The outcome of checking the bytes of a head received so far.
#[derive(Debug, PartialEq, Eq)]
enum HeadCheck {
    Partial,
    Complete { len: usize, framing: Framing },
    Refuse(Refusal),
}

/// Checks `buf`, which starts at a request head.
fn check_head(buf: &[u8], limits: &GuardLimits) -> HeadCheck {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            if req.path.is_some_and(|p| p.len() > limits.max_uri) {
                return HeadCheck::Refuse(Refusal::UriTooLong);
            }
            if len > limits.max_head {
                return HeadCheck::Refuse(Refusal::HeadTooLarge);
            }
            if req.method == Some("CONNECT") {
                return HeadCheck::Refuse(Refusal::Connect);
            }
            // A target hyper cannot read as a URI (`'read/k1`) would get hyper's own bare
            // 400, without the envelope (found by fuzz/gateway_http).
            if req
                .path
                .is_some_and(|p| p.parse::<axum::http::Uri>().is_err())
            {
                return HeadCheck::Refuse(Refusal::Malformed);
            }
            match framing(req.version, req.headers) {
                Ok(framing) => HeadCheck::Complete { len, framing },
                Err(r) => HeadCheck::Refuse(r),
            }
        }
        Ok(httparse::Status::Partial) => {
            let start = buf
                .iter()
                .position(|b| *b != b'\r' && *b != b'\n')
                .unwrap_or(buf.len());
            let line_done = buf[start..].contains(&b'\n');
            // Method, spaces and version around the target take a few bytes more.
            if !line_done && buf.len() - start > limits.max_uri + 32 {
                HeadCheck::Refuse(Refusal::UriTooLong)
            } else if buf.len() > limits.max_head {
                HeadCheck::Refuse(if line_done {
                    Refusal::HeadTooLarge
                } else {
                    Refusal::UriTooLong
                })
            } else {
                HeadCheck::Partial
            }
        }
        Err(httparse::Error::TooManyHeaders) => HeadCheck::Refuse(Refusal::HeadTooLarge),
        Err(_) => HeadCheck::Refuse(Refusal::Malformed),
    }
}

/// The body framing of a request, refusing anything ambiguous.
fn framing(version: Option<u8>, headers: &[httparse::Header<'_>]) -> Result<Framing, Refusal> {
    let mut length: Option<u64> = None;
    let mut encodings = 0;
    let mut chunked = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = h.value.trim_ascii();
            if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                return Err(Refusal::BadContentLength);
            }
            let n: u64 = std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(Refusal::BadContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(Refusal::BadContentLength);
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            encodings += 1;
            chunked = h.value.trim_ascii().eq_ignore_ascii_case(b"chunked");
        }
    }
    if encodings > 0 {
        if version != Some(1) || encodings > 1 || !chunked || length.is_some() {
            return Err(Refusal::BadTransferEncoding);
        }
        return Ok(Framing::Chunked);
    }
    Ok(match length {
        None | Some(0) => Framing::None,
        Some(n) => Framing::Length(n),
    })
}

/// The chunked decoder's states, as in hyper's `ChunkedState`, so both agree on where a
/// body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Start,
    Size(u64),
    SizeLws(u64),
    Extension(u64),
    SizeLf(u64),
    Body(u64),
    BodyCr,
    BodyLf,
    Trailer,
    TrailerLf,
    EndCr,
    EndLf,
    End,
}

impl Chunk {
    /// Advances over `input`; returns how many bytes were consumed and the new state, or
    /// `Err(consumed)` at the first byte hyper would refuse.
    fn advance(mut self, input: &[u8]) -> Result<(usize, Chunk), usize> {
        let hex = |b: u8| match b {
            b'0'..=b'9' => Some(u64::from(b - b'0')),
            b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
            b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
            _ => None,
        };
        let mut i = 0;
        while i < input.len() && self != Chunk::End {
            if let Chunk::Body(rem) = self {
                let take = usize::try_from(rem)
                    .unwrap_or(usize::MAX)
                    .min(input.len() - i);
                i += take;
                let rem = rem - take as u64;
                self = if rem == 0 {
                    Chunk::BodyCr
                } else {
                    Chunk::Body(rem)
                };
                continue;
            }
            let b = input[i];
            i += 1;
            let grow = |size: u64, d: u64| size.checked_mul(16).and_then(|s| s.checked_add(d));
            self = match (self, b) {
                (Chunk::Start, b) => Chunk::Size(hex(b).ok_or(i)?),
                (Chunk::Size(s), b) if hex(b).is_some() => {
                    Chunk::Size(grow(s, hex(b).unwrap_or(0)).ok_or(i)?)
                }
                (Chunk::Size(s) | Chunk::SizeLws(s), b'\t' | b' ') => Chunk::SizeLws(s),
                (Chunk::Size(s) | Chunk::SizeLws(s), b';') => Chunk::Extension(s),
                (Chunk::Size(s) | Chunk::SizeLws(s) | Chunk::Extension(s), b'\r') => {
                    Chunk::SizeLf(s)
                }
                (Chunk::Extension(_), b'\n') => return Err(i),
                (Chunk::Extension(s), _) => Chunk::Extension(s),
                (Chunk::SizeLf(0), b'\n') => Chunk::EndCr,
                (Chunk::SizeLf(s), b'\n') => Chunk::Body(s),
                (Chunk::BodyCr, b'\r') => Chunk::BodyLf,
                (Chunk::BodyLf, b'\n') => Chunk::Start,
                (Chunk::Trailer, b'\r') => Chunk::TrailerLf,
                (Chunk::Trailer, _) => Chunk::Trailer,
                (Chunk::TrailerLf, b'\n') => Chunk::EndCr,
                (Chunk::EndCr, b'\r') => Chunk::EndLf,
                (Chunk::EndCr, _) => Chunk::Trailer,
                (Chunk::EndLf, b'\n') => Chunk::End,
                _ => return Err(i),
            };
        }
        Ok((i, self))
    }
}

/// Where the guard is in the request stream.
#[derive(Debug)]
enum Phase {
    /// Between requests: no byte of the next head yet.
    Idle,
    /// Some bytes of a head are buffered; `scanned` of them were already looked at.
    Head { scanned: usize },
    /// Passing a body framed by `Content-Length`: this many bytes are left.
    Length(u64),
    /// Passing a chunked body.
    Chunked(Chunk),
    /// Nothing more for hyper after what is checked: the end of the stream, or chunked
    /// framing hyper will refuse.
    Done,
    /// The synthetic refusal request is handed over; no byte follows it, and no end of
    /// stream either: hyper closes the connection on a read EOF before it has answered.
    Refused,
}

/// An I/O stream whose reads are checked request by request (see the module docs).
#[derive(Debug)]
pub struct Guarded<S> {
    io: S,
    limits: GuardLimits,
    meta: Arc<ConnMeta>,
    /// Bytes read and not yet handed to hyper; the first `checked` of them may be.
    input: BytesMut,
    checked: usize,
    phase: Phase,
    /// The head or body deadline of the current phase.
    timer: Pin<Box<Sleep>>,
    timer_armed: bool,
    /// While closing: the lingering deadline and the bytes dropped so far.
    linger: Option<(Pin<Box<Sleep>>, usize)>,
}

impl<S> Guarded<S> {
    /// Guards `io`.
    pub fn new(io: S, limits: GuardLimits, meta: Arc<ConnMeta>) -> Guarded<S> {
        Guarded {
            io,
            limits,
            meta,
            input: BytesMut::new(),
            checked: 0,
            phase: Phase::Idle,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            timer_armed: false,
            linger: None,
        }
    }

    /// A connection refused at accept: its only request is the synthetic one.
    pub fn refusing(io: S, refusal: Refusal, meta: Arc<ConnMeta>) -> Guarded<S> {
        let mut g = Guarded::new(io, GuardLimits::default(), meta);
        g.refuse(refusal);
        g
    }

    fn refuse(&mut self, refusal: Refusal) {
        self.input.clear();
        self.input.extend_from_slice(&refusal.request());
        self.checked = self.input.len();
        self.phase = Phase::Refused;
        self.timer_armed = false;
    }

    fn arm(&mut self, after: Duration) {
        self.timer.as_mut().reset(Instant::now() + after);
        self.timer_armed = true;
    }

    /// Moves what can be checked in `input` to the checked prefix. Returns whether it
    /// made progress (something new may be handed to hyper, or the phase changed).
    fn check(&mut self) -> bool {
        let unchecked = self.input.len() - self.checked;
        if unchecked == 0 {
            return false;
        }
        match self.phase {
            Phase::Idle => {
                self.phase = Phase::Head { scanned: 0 };
                self.arm(self.limits.head_timeout);
                self.check();
                true
            }
            Phase::Head { scanned } => {
                let head = &self.input[self.checked..];
                // A head can only complete, and a field count only grow, at a newline:
                // re-parse only when one arrived, so a trickled head costs one parse per
                // line, not one per byte.
                let fresh = &head[scanned.min(head.len())..];
                if !fresh.contains(&b'\n') && head.len() <= self.limits.max_head {
                    let over_uri = !head.contains(&b'\n') && head.len() > self.limits.max_uri + 32;
                    if !over_uri {
                        self.phase = Phase::Head {
                            scanned: head.len(),
                        };
                        return false;
                    }
                }
                match check_head(head, &self.limits) {
                    HeadCheck::Partial => {
                        self.phase = Phase::Head {
                            scanned: head.len(),
                        };
                        false
                    }
                    HeadCheck::Refuse(r) => {
                        self.refuse(r);
                        true
                    }
                    HeadCheck::Complete { len, framing } => {
                        self.checked += len;
                        self.phase = match framing {
                            Framing::None => Phase::Idle,
                            Framing::Length(n) => Phase::Length(n),
                            Framing::Chunked => Phase::Chunked(Chunk::Start),
                        };
                        if matches!(self.phase, Phase::Idle) {
                            self.timer_armed = false;
                        } else {
                            self.arm(self.limits.body_timeout);
                        }
                        true
                    }
                }
            }
            Phase::Length(left) => {
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(unchecked);
                self.checked += take;
                let left = left - take as u64;
                self.phase = if left == 0 {
                    self.timer_armed = false;
                    Phase::Idle
                } else {
                    Phase::Length(left)
                };
                true
            }
            Phase::Chunked(state) => {
                match state.advance(&self.input[self.checked..]) {
                    Ok((n, Chunk::End)) => {
                        self.checked += n;
                        self.phase = Phase::Idle;
                        self.timer_armed = false;
                    }
                    Ok((n, state)) => {
                        self.checked += n;
                        self.phase = Phase::Chunked(state);
                    }
                    Err(n) => {
                        // hyper refuses this byte too and closes: hand it what it needs
                        // to see that, and nothing after.
                        self.checked += n;
                        self.input.truncate(self.checked);
                        self.phase = Phase::Done;
                        self.timer_armed = false;
                    }
                }
                true
            }
            Phase::Done | Phase::Refused => false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.checked > 0 {
                let n = this.checked.min(out.remaining());
                out.put_slice(&this.input[..n]);
                this.input.advance(n);
                this.checked -= n;
                if this.input.is_empty() && this.input.capacity() > 0 {
                    this.input = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            if this.check() {
                continue;
            }
            match this.phase {
                Phase::Done => return Poll::Ready(Ok(())), // end of stream for hyper
                // Woken by nothing: hyper answers the refusal, then shuts the connection.
                Phase::Refused => return Poll::Pending,
                _ => {}
            }
            // Need more bytes. They are read through the stack, so a connection waiting
            // for its next request holds no buffer of ours.
            let mut chunk = [0u8; 8192];
            let mut buf = ReadBuf::new(&mut chunk);
            let read = match Pin::new(&mut this.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {
                    this.input.extend_from_slice(buf.filled());
                    Poll::Ready(Ok(buf.filled().len()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            };
            match read {
                Poll::Ready(Ok(0)) => {
                    // The client closed. A partial head is dropped (hyper would only
                    // close on it); a partial body reaches hyper as its end of stream.
                    if matches!(this.phase, Phase::Head { .. }) {
                        this.input.clear();
                    }
                    this.phase = Phase::Done;
                    this.timer_armed = false;
                    continue;
                }
                Poll::Ready(Ok(_)) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
            if this.timer_armed {
                ready!(this.timer.as_mut().poll(cx));
                this.timer_armed = false;
                match this.phase {
                    Phase::Head { .. } => {
                        this.refuse(Refusal::HeadTimeout);
                        continue;
                    }
                    Phase::Length(_) | Phase::Chunked(_) => {
                        this.meta.body_timed_out.store(true, Ordering::Relaxed);
                        this.phase = Phase::Done;
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "request body not received within the body timeout",
                        )));
                    }
                    Phase::Idle | Phase::Done | Phase::Refused => {}
                }
            }
            return Poll::Pending;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// A lingering close, as nginx's: after the FIN, what the client still sends (the
    /// rest of a body refused with 413, a pipelined request) is read and dropped until the
    /// client closes, [`LINGER_BYTES`] or [`LINGER_TIME`]. Closing a socket with unread
    /// bytes makes the kernel send a reset, which can destroy the answer before the
    /// client has read it.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.linger.is_none() {
            ready!(Pin::new(&mut this.io).poll_shutdown(cx))?;
            this.linger = Some((Box::pin(tokio::time::sleep(LINGER_TIME)), 0));
        }
        let Some((deadline, drained)) = this.linger.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        loop {
            if *drained >= LINGER_BYTES || deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => *drained += buf.filled().len(),
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

    fn guarded(limits: GuardLimits) -> (DuplexStream, Guarded<DuplexStream>, Arc<ConnMeta>) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let meta = Arc::new(ConnMeta::new(([127, 0, 0, 1], 1).into(), false));
        (client, Guarded::new(server, limits, meta.clone()), meta)
    }

    /// Everything the guard hands on until it ends the stream.
    async fn through(input: &[u8]) -> Vec<u8> {
        let (mut client, mut g, _) = guarded(GuardLimits::default());
        client.write_all(input).await.unwrap();
        client.shutdown().await.unwrap();
        let mut out = Vec::new();
        // A refusal never ends the stream (see `Phase::Refused`): read what comes.
        let _ = tokio::time::timeout(Duration::from_millis(300), g.read_to_end(&mut out)).await;
        out
    }

    fn refused(r: Refusal) -> Vec<u8> {
        r.request()
    }

    #[tokio::test]
    async fn good_requests_pass_unchanged_back_to_back() {
        let reqs: &[u8] = b"PUT /v1/kv/a HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhelloGET /read/a HTTP/1.1\r\nhost: x\r\n\r\nPOST /w HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\ntrailer: t\r\n\r\nGET /again HTTP/1.1\r\n\r\n";
        assert_eq!(through(reqs).await, reqs);
    }

    #[tokio::test]
    async fn bad_heads_become_the_synthetic_refusal() {
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(20_000));
        let many: String = (0..101).map(|i| format!("h{i}: v\r\n")).collect();
        let cases: Vec<(Vec<u8>, Refusal)> = vec![
            (long.into_bytes(), Refusal::UriTooLong),
            (
                format!("GET / HTTP/1.1\r\n{many}\r\n").into_bytes(),
                Refusal::HeadTooLarge,
            ),
            (
                b"GET / HTTP/1.1\r\nbig: "
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(b'x', 70_000))
                    .collect(),
                Refusal::HeadTooLarge,
            ),
            (
                b"GET / HTTP/1.1\r\ncontent-length: abc\r\n\r\n".to_vec(),
                Refusal::BadContentLength,
            ),
            (
                b"GET / HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n".to_vec(),
                Refusal::BadContentLength,
            ),
            (
                b"GET / HTTP/1.1\r\ncontent-length: 5, 5\r\n\r\n".to_vec(),
                Refusal::BadContentLength,
            ),
            (
                b"GET / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n"
                    .to_vec(),
                Refusal::BadTransferEncoding,
            ),
            (
                b"GET / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n".to_vec(),
                Refusal::BadTransferEncoding,
            ),
            (
                b"GET / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n".to_vec(),
                Refusal::BadTransferEncoding,
            ),
            (b"CONNECT x:443 HTTP/1.1\r\n\r\n".to_vec(), Refusal::Connect),
            (b"G\x01T / HTTP/1.1\r\n\r\n".to_vec(), Refusal::Malformed),
            // Found by the fuzzer: a target that is no URI.
            (
                b"GET 'read/k1 HTTP/1.1\r\n\r\n".to_vec(),
                Refusal::Malformed,
            ),
        ];
        for (input, refusal) in cases {
            assert_eq!(through(&input).await, refused(refusal), "{refusal:?}");
        }
    }

    #[tokio::test]
    async fn a_refusal_follows_the_good_requests_before_it() {
        let good: &[u8] = b"GET /a HTTP/1.1\r\n\r\n";
        let mut input = good.to_vec();
        input.extend_from_slice(
            b"GET /b HTTP/1.1\r\ncontent-length: x\r\n\r\nGET /c HTTP/1.1\r\n\r\n",
        );
        let mut expected = good.to_vec();
        expected.extend(refused(Refusal::BadContentLength));
        assert_eq!(
            through(&input).await,
            expected,
            "nothing after the refused head"
        );
    }

    #[tokio::test]
    async fn a_head_trickled_byte_by_byte_completes() {
        let (mut client, mut g, _) = guarded(GuardLimits::default());
        let req: &[u8] = b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n";
        let writer = tokio::spawn(async move {
            for b in req {
                client.write_all(&[*b]).await.unwrap();
                tokio::task::yield_now().await;
            }
            client.shutdown().await.unwrap();
        });
        let mut out = Vec::new();
        g.read_to_end(&mut out).await.unwrap();
        writer.await.unwrap();
        assert_eq!(out, req);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_head_is_refused_and_a_slow_body_fails_with_timed_out() {
        let (mut client, mut g, _) = guarded(GuardLimits::default());
        client.write_all(b"GET / HTTP/1.1\r\nhost").await.unwrap();
        let mut out = vec![0u8; 4096];
        let n = g.read(&mut out).await.unwrap();
        assert_eq!(&out[..n], refused(Refusal::HeadTimeout).as_slice());

        let (mut client, mut g, meta) = guarded(GuardLimits::default());
        client
            .write_all(b"PUT / HTTP/1.1\r\ncontent-length: 10\r\n\r\nabc")
            .await
            .unwrap();
        let mut got = Vec::new();
        let err = loop {
            let mut buf = vec![0u8; 4096];
            match g.read(&mut buf).await {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(got.ends_with(b"abc"));
        assert!(meta.body_timed_out());
    }

    #[test]
    fn the_chunk_tracker_agrees_with_hyper_on_the_end_and_on_errors() {
        let body = b"4\r\nwiki\r\n5 ;a=b\r\npedia\r\n0\r\nx: y\r\n\r\nNEXT";
        let (n, state) = Chunk::Start.advance(body).unwrap();
        assert_eq!((n, state), (body.len() - 4, Chunk::End));
        // Split anywhere, the same end.
        for cut in 1..body.len() - 4 {
            let (a, s) = Chunk::Start.advance(&body[..cut]).unwrap();
            assert_eq!(a, cut);
            let (b, s) = s.advance(&body[cut..]).unwrap();
            assert_eq!((a + b, s), (body.len() - 4, Chunk::End), "cut at {cut}");
        }
        for bad in [
            &b"g\r\n"[..],
            b"4\nwiki",
            b"4\r\nwikiX",
            b"4;a\nb",
            b"ffffffffffffffffff\r\n",
        ] {
            assert!(Chunk::Start.advance(bad).is_err(), "{bad:?}");
        }
    }
}
