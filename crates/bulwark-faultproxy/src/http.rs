//! HTTP-aware faults (the `http_fault` toxic, a Bulwark extension to Toxiproxy).
//!
//! A connection whose first client bytes look like an HTTP/1.x request line is *tracked*
//! for its whole life: a [`RequestStage`] at the head of its upstream link finds request
//! boundaries (head, then a `Content-Length` or chunked body; keep-alive and pipelining),
//! and a [`ResponseStage`] at the head of its downstream link finds response boundaries
//! (`Content-Length`, chunked, no body for `HEAD`/1xx/204/304, until close otherwise).
//! Because tracking starts with the connection, an `http_fault` added later takes effect at
//! the next request boundary of connections that already exist (a pooled keep-alive client
//! sees it too), which a byte-stream proxy could not do.
//!
//! Each request head is matched against the connection's active `http_fault` toxics in
//! chain order; the first whose `method` and `path_prefix` match and that still has one of
//! its `first_n` slots decides:
//!
//! * `delay_ms` only: the request (head and body) is forwarded `delay_ms` after its head
//!   arrived; later requests on the connection wait behind it (order is kept).
//! * `status`: the request is not forwarded. Its answer, `HTTP/1.1 <status>` with the
//!   toxic's body (a Bulwark JSON error by default) and an `X-Bulwark-Fault` header, is
//!   queued on the response side *after* the responses to the requests before it, so
//!   pipelined clients get their answers in order. With `delay_ms` too, the answer waits.
//!   When the request asked to close (`Connection: close`, HTTP/1.0, an upgrade, or
//!   `Expect: 100-continue` whose body may never come), the connection closes after it.
//!
//! Anything the trackers cannot parse (not HTTP after all, an oversized head, a protocol
//! upgrade, a response delimited by close) turns that side *opaque*: bytes pass through
//! untouched and no further request is faulted on that connection.

use std::collections::VecDeque;
use std::sync::Arc;

use axum::http::StatusCode;
use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use crate::stage::{Item, Timed};
use crate::toxic::{HttpFault, SharedState, Toxic, ToxicKind};

/// Largest request or response head tracked; a larger one makes the side opaque.
const MAX_HEAD: usize = 64 * 1024;
/// Most headers parsed in a head.
const MAX_HEADERS: usize = 128;
/// Longest chunk-size or trailer line.
const MAX_LINE: usize = 4096;

/// Whether the first bytes a client sent look like an HTTP/1.x request: a method of
/// 3-10 upper-case letters followed by a space (or only upper-case letters so far).
pub(crate) fn looks_like_http(first: &[u8]) -> bool {
    let token_len = first
        .iter()
        .take(11)
        .take_while(|b| b.is_ascii_uppercase())
        .count();
    match first.get(token_len) {
        Some(b' ') => (3..=10).contains(&token_len),
        Some(_) => false,
        None => token_len > 0,
    }
}

/// An `http_fault` toxic as a connection uses it.
#[derive(Clone, Debug)]
pub(crate) struct ActiveFault {
    /// The toxic's id.
    pub id: u64,
    /// The toxic's version.
    pub version: u64,
    /// Named in the injected answer's `X-Bulwark-Fault` header.
    name: String,
    fault: HttpFault,
    /// The toxic's `first_n` counter.
    shared: Arc<SharedState>,
}

impl ActiveFault {
    /// The fault of `toxic`, if it is an `http_fault`.
    pub(crate) fn of(toxic: &Toxic) -> Option<ActiveFault> {
        match &toxic.kind {
            ToxicKind::HttpFault(fault) => Some(ActiveFault {
                id: toxic.id,
                version: toxic.version,
                name: toxic.name.clone(),
                fault: fault.clone(),
                shared: toxic.shared.clone(),
            }),
            _ => None,
        }
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        (self.fault.method.is_empty() || self.fault.method.eq_ignore_ascii_case(method))
            && path.starts_with(&self.fault.path_prefix)
    }
}

/// What the response side must do for one request, in request order.
#[derive(Debug)]
pub(crate) enum Expect {
    /// The request went to the server: let its response through.
    Forwarded {
        /// A `HEAD` request: its response has no body whatever its headers say.
        no_body: bool,
        /// A `CONNECT` request: a 2xx response turns the connection into a tunnel.
        tunnel: bool,
    },
    /// The request was answered by the proxy: send `response` at `at`, after the
    /// responses to earlier requests; then close the connection if `close`.
    Synthetic {
        response: Bytes,
        at: Instant,
        close: bool,
    },
}

/// Framing of a chunked body: consumes bytes until the last chunk and its trailers.
#[derive(Debug, Default)]
struct Chunked {
    state: ChunkState,
    line: Vec<u8>,
}

#[derive(Debug, Default)]
enum ChunkState {
    /// Reading a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data.
    Data(u64),
    /// Reading the line end after a chunk's data.
    DataEnd,
    /// Reading trailer lines until an empty one.
    Trailer,
}

impl Chunked {
    /// Consumes a prefix of `input`; returns how many bytes, and whether the body ended.
    fn feed(&mut self, input: &[u8]) -> Result<(usize, bool), ()> {
        let mut used = 0;
        while used < input.len() {
            match &mut self.state {
                ChunkState::Data(left) => {
                    let take = (*left).min((input.len() - used) as u64);
                    used += take as usize;
                    *left -= take;
                    if *left == 0 {
                        self.state = ChunkState::DataEnd;
                    }
                }
                ChunkState::Size | ChunkState::DataEnd | ChunkState::Trailer => {
                    let b = input[used];
                    used += 1;
                    if b != b'\n' {
                        if self.line.len() >= MAX_LINE {
                            return Err(());
                        }
                        self.line.push(b);
                        continue;
                    }
                    let line = std::mem::take(&mut self.line);
                    let line = line.strip_suffix(b"\r").unwrap_or(&line);
                    match self.state {
                        ChunkState::Size => {
                            let size = line.split(|b| *b == b';').next().unwrap_or_default();
                            let size = std::str::from_utf8(size).map_err(|_| ())?.trim();
                            let size = u64::from_str_radix(size, 16).map_err(|_| ())?;
                            self.state = if size == 0 {
                                ChunkState::Trailer
                            } else {
                                ChunkState::Data(size)
                            };
                        }
                        ChunkState::DataEnd => self.state = ChunkState::Size,
                        _ if line.is_empty() => {
                            self.state = ChunkState::Size;
                            return Ok((used, true));
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok((used, false))
    }
}

/// Where a tracker is in its byte stream.
#[derive(Debug)]
enum Framing {
    /// Between messages: the next bytes start a head.
    Head,
    /// Inside a body of known length: bytes left.
    Length(u64),
    /// Inside a chunked body.
    Chunked(Chunked),
    /// Not tracked any more: everything passes as it is.
    Opaque,
}

/// The body framing a head announces (`None`: no body).
fn body_framing(headers: &[httparse::Header<'_>]) -> Result<Option<Framing>, ()> {
    let mut length = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let value = std::str::from_utf8(h.value).map_err(|_| ())?;
            if value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
            {
                return Ok(Some(Framing::Chunked(Chunked::default())));
            }
            // Any other transfer coding: the message is delimited by close.
            return Err(());
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let n: u64 = std::str::from_utf8(h.value)
                .map_err(|_| ())?
                .trim()
                .parse()
                .map_err(|_| ())?;
            if length.is_some_and(|l| l != n) {
                return Err(());
            }
            length = Some(n);
        }
    }
    Ok(length.filter(|n| *n > 0).map(Framing::Length))
}

fn header<'h>(headers: &'h [httparse::Header<'_>], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
}

fn has_token(value: Option<&str>, token: &str) -> bool {
    value.is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// A queue of items leaving a tracker, `at` never decreasing.
#[derive(Debug)]
struct Out {
    queue: VecDeque<Timed>,
    bytes: usize,
    last_at: Instant,
}

impl Out {
    fn new(now: Instant) -> Out {
        Out {
            queue: VecDeque::new(),
            bytes: 0,
            last_at: now,
        }
    }

    fn push(&mut self, item: Item, at: Instant, arrived: Instant) {
        if item.len() == 0 && matches!(item, Item::Data(_)) {
            return;
        }
        let at = at.max(self.last_at);
        self.last_at = at;
        self.bytes += item.len();
        self.queue.push_back(Timed { item, at, arrived });
    }

    fn pop(&mut self, now: Instant) -> Option<Timed> {
        if self.queue.front().is_some_and(|t| t.at <= now) {
            let t = self.queue.pop_front()?;
            self.bytes -= t.item.len();
            Some(t)
        } else {
            None
        }
    }

    /// Lets every held item leave now (a fault was removed or changed).
    fn release(&mut self, now: Instant) {
        for t in &mut self.queue {
            t.at = t.at.min(now);
        }
        self.last_at = self.last_at.min(now);
    }
}

/// What happens to the bytes of the request being read.
#[derive(Debug, Clone, Copy)]
enum Disposition {
    /// Forwarded, not before this time.
    Forward(Instant),
    /// Dropped: the proxy answers the request itself.
    Swallow,
}

/// The request side of a tracked connection (head of its upstream link).
#[derive(Debug)]
pub(crate) struct RequestStage {
    faults: Vec<ActiveFault>,
    framing: Framing,
    /// A head being accumulated.
    head: BytesMut,
    /// What happens to the current request's bytes.
    disposition: Disposition,
    /// The current request switches protocols: after its body, the stream is opaque.
    upgrade: bool,
    out: Out,
    /// Expectations for the response side, taken by the connection after each push.
    expects: Vec<Expect>,
}

impl RequestStage {
    pub(crate) fn new(faults: Vec<ActiveFault>, now: Instant) -> RequestStage {
        RequestStage {
            faults,
            framing: Framing::Head,
            head: BytesMut::new(),
            disposition: Disposition::Forward(now),
            upgrade: false,
            out: Out::new(now),
            expects: Vec::new(),
        }
    }

    /// Replaces the active faults. When one was removed or changed, requests it is
    /// holding are released now (answers it queued are released by the response side).
    pub(crate) fn set_faults(&mut self, faults: Vec<ActiveFault>, now: Instant) -> bool {
        let key = |f: &ActiveFault| (f.id, f.version);
        let removed = self
            .faults
            .iter()
            .any(|old| !faults.iter().any(|f| key(f) == key(old)));
        self.faults = faults;
        if removed {
            self.out.release(now);
            if let Disposition::Forward(at) = &mut self.disposition {
                *at = (*at).min(now);
            }
        }
        removed
    }

    /// Data bytes held.
    pub(crate) fn buffered(&self) -> usize {
        self.out.bytes + self.head.len()
    }

    /// Tracking stopped and nothing is held: the tracker can go.
    pub(crate) fn is_spent(&self) -> bool {
        matches!(self.framing, Framing::Opaque) && self.out.queue.is_empty()
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.out.queue.front().map(|t| t.at)
    }

    pub(crate) fn pop(&mut self, now: Instant) -> Option<Timed> {
        self.out.pop(now)
    }

    /// Expectations produced since the last call, in request order.
    pub(crate) fn take_expects(&mut self) -> std::vec::Drain<'_, Expect> {
        self.expects.drain(..)
    }

    pub(crate) fn push(&mut self, t: Timed) {
        match t.item {
            Item::Data(bytes) => self.feed(bytes, t.at),
            other => {
                // The client stopped sending: whatever head was partial goes as it is.
                let partial = self.head.split().freeze();
                self.emit(partial, t.at);
                self.out.push(other, t.at, t.at);
            }
        }
    }

    fn emit(&mut self, bytes: Bytes, arrived: Instant) {
        match self.disposition {
            Disposition::Forward(at) => self.out.push(Item::Data(bytes), at.max(arrived), arrived),
            Disposition::Swallow => {}
        }
    }

    fn go_opaque(&mut self, rest: Bytes, arrived: Instant) {
        self.framing = Framing::Opaque;
        self.disposition = Disposition::Forward(arrived);
        let held = self.head.split().freeze();
        self.out.push(Item::Data(held), arrived, arrived);
        self.out.push(Item::Data(rest), arrived, arrived);
    }

    fn end_of_message(&mut self) {
        self.framing = if self.upgrade {
            Framing::Opaque
        } else {
            Framing::Head
        };
    }

    fn feed(&mut self, mut bytes: Bytes, arrived: Instant) {
        while !bytes.is_empty() {
            match &mut self.framing {
                Framing::Opaque => {
                    self.out.push(Item::Data(bytes), arrived, arrived);
                    return;
                }
                Framing::Length(left) => {
                    let take = (*left).min(bytes.len() as u64);
                    *left -= take;
                    let done = *left == 0;
                    let part = bytes.split_to(take as usize);
                    self.emit(part, arrived);
                    if done {
                        self.end_of_message();
                    }
                }
                Framing::Chunked(chunked) => match chunked.feed(&bytes) {
                    Ok((used, done)) => {
                        let part = bytes.split_to(used);
                        self.emit(part, arrived);
                        if done {
                            self.end_of_message();
                        }
                    }
                    Err(()) => return self.go_opaque(bytes, arrived),
                },
                Framing::Head => {
                    self.head.extend_from_slice(&bytes);
                    let buf = self.head.split().freeze();
                    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let mut req = httparse::Request::new(&mut headers);
                    match req.parse(&buf) {
                        Ok(httparse::Status::Complete(n)) => {
                            let decided = self.decide(&req, arrived);
                            bytes = buf.slice(n..);
                            match decided {
                                Some(framing) => {
                                    self.emit(buf.slice(..n), arrived);
                                    self.framing = framing;
                                    if matches!(self.framing, Framing::Head) && self.upgrade {
                                        self.framing = Framing::Opaque;
                                    }
                                }
                                None => {
                                    self.head = BytesMut::from(buf.slice(..n));
                                    return self.go_opaque(bytes, arrived);
                                }
                            }
                        }
                        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => {
                            self.head = BytesMut::from(buf);
                            return;
                        }
                        Ok(httparse::Status::Partial) | Err(_) => {
                            self.head = BytesMut::from(buf);
                            return self.go_opaque(Bytes::new(), arrived);
                        }
                    }
                }
            }
        }
    }

    /// Decides what happens to the request whose head was just parsed, records what the
    /// response side must expect, and returns its body framing (`None`: the head does not
    /// delimit its body, so tracking stops).
    fn decide(&mut self, req: &httparse::Request<'_, '_>, arrived: Instant) -> Option<Framing> {
        let method = req.method.unwrap_or_default();
        let path = req.path.unwrap_or_default();
        let framing = body_framing(req.headers).ok()?.unwrap_or(Framing::Head);
        let connection = header(req.headers, "connection");
        let http10 = req.version == Some(0);
        self.upgrade =
            method.eq_ignore_ascii_case("CONNECT") || header(req.headers, "upgrade").is_some();
        let close = has_token(connection, "close")
            || (http10 && !has_token(connection, "keep-alive"))
            || has_token(header(req.headers, "expect"), "100-continue")
            || self.upgrade;
        let fault = self
            .faults
            .iter()
            .find(|f| f.matches(method, path) && f.shared.claim(f.fault.first_n));
        let no_body = method.eq_ignore_ascii_case("HEAD");
        let tunnel = method.eq_ignore_ascii_case("CONNECT");
        match fault {
            Some(f) if f.fault.status != 0 => {
                let at = arrived + std::time::Duration::from_millis(f.fault.delay_ms);
                let request_id = header(req.headers, "x-request-id").unwrap_or_default();
                let response = synthetic_response(f, request_id, no_body, close);
                self.disposition = Disposition::Swallow;
                self.expects.push(Expect::Synthetic {
                    response,
                    at,
                    close,
                });
            }
            Some(f) => {
                let at = arrived + std::time::Duration::from_millis(f.fault.delay_ms);
                self.disposition = Disposition::Forward(at);
                self.expects.push(Expect::Forwarded { no_body, tunnel });
            }
            None => {
                self.disposition = Disposition::Forward(arrived);
                self.expects.push(Expect::Forwarded { no_body, tunnel });
            }
        }
        Some(framing)
    }
}

/// The answer the proxy sends for a request an `http_fault` aborted.
fn synthetic_response(f: &ActiveFault, request_id: &str, no_body: bool, close: bool) -> Bytes {
    let status = StatusCode::from_u16(f.fault.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let (body, content_type) = if f.fault.body.is_empty() {
        let body = serde_json::json!({"error": {
            "code": "FAULT_INJECTED",
            "message": format!("injected by the Bulwark fault proxy (toxic {})", f.name),
            "request_id": request_id,
        }});
        (body.to_string(), "application/json")
    } else if f.fault.body.trim_start().starts_with(['{', '[']) {
        (f.fault.body.clone(), "application/json")
    } else {
        (f.fault.body.clone(), "text/plain; charset=utf-8")
    };
    let mut head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nx-bulwark-fault: {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Fault"),
        body.len(),
        f.name.replace(['\r', '\n'], " "),
    );
    if close {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    if !no_body {
        head.push_str(&body);
    }
    Bytes::from(head)
}

/// The response side of a tracked connection (head of its downstream link).
#[derive(Debug)]
pub(crate) struct ResponseStage {
    expects: VecDeque<Expect>,
    /// Server items not yet sequenced (waiting behind an answer that is not due yet).
    input: VecDeque<Timed>,
    input_bytes: usize,
    framing: Framing,
    head: BytesMut,
    out: Out,
}

impl ResponseStage {
    pub(crate) fn new(now: Instant) -> ResponseStage {
        ResponseStage {
            expects: VecDeque::new(),
            input: VecDeque::new(),
            input_bytes: 0,
            framing: Framing::Head,
            head: BytesMut::new(),
            out: Out::new(now),
        }
    }

    /// Adds expectations from the request side, in request order.
    pub(crate) fn expect(&mut self, expects: impl Iterator<Item = Expect>) {
        self.expects.extend(expects);
    }

    /// Lets answers that wait for a delay go now (their fault was removed or changed).
    pub(crate) fn release(&mut self, now: Instant) {
        for e in &mut self.expects {
            if let Expect::Synthetic { at, .. } = e {
                *at = (*at).min(now);
            }
        }
        self.out.release(now);
    }

    pub(crate) fn buffered(&self) -> usize {
        self.out.bytes + self.input_bytes + self.head.len()
    }

    /// Tracking stopped and nothing is held or owed (no answer still to send).
    pub(crate) fn is_spent(&self) -> bool {
        matches!(self.framing, Framing::Opaque)
            && self.out.queue.is_empty()
            && self.input.is_empty()
            && !self
                .expects
                .iter()
                .any(|e| matches!(e, Expect::Synthetic { .. }))
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        let answer = match (&self.framing, self.expects.front()) {
            (Framing::Head, Some(Expect::Synthetic { at, .. })) if self.head.is_empty() => {
                Some(*at)
            }
            _ => None,
        };
        match (self.out.queue.front().map(|t| t.at), answer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(crate) fn push(&mut self, t: Timed) {
        self.input_bytes += t.item.len();
        self.input.push_back(t);
    }

    pub(crate) fn pop(&mut self, now: Instant) -> Option<Timed> {
        self.sequence(now);
        self.out.pop(now)
    }

    /// Moves server bytes and due answers to the output, in request order.
    fn sequence(&mut self, now: Instant) {
        loop {
            let between = matches!(self.framing, Framing::Head) && self.head.is_empty();
            if between && let Some(Expect::Synthetic { at, .. }) = self.expects.front() {
                if *at > now {
                    return;
                }
                if let Some(Expect::Synthetic {
                    response,
                    at,
                    close,
                }) = self.expects.pop_front()
                {
                    self.out.push(Item::Data(response), at, at);
                    if close {
                        self.out.push(Item::Close, at, at);
                    }
                }
                continue;
            }
            let Some(t) = self.input.pop_front() else {
                return;
            };
            self.input_bytes -= t.item.len();
            match t.item {
                Item::Data(bytes) => {
                    if let Some(rest) = self.process(bytes, t.at) {
                        self.input_bytes += rest.len();
                        self.input.push_front(Timed {
                            item: Item::Data(rest),
                            at: t.at,
                            arrived: t.arrived,
                        });
                    }
                }
                other => self.out.push(other, t.at, t.arrived),
            }
        }
    }

    fn response_done(&mut self) {
        if matches!(self.expects.front(), Some(Expect::Forwarded { .. })) {
            self.expects.pop_front();
        }
        self.framing = Framing::Head;
    }

    fn go_opaque(&mut self, rest: Bytes, at: Instant) {
        self.framing = Framing::Opaque;
        let held = self.head.split().freeze();
        self.out.push(Item::Data(held), at, at);
        self.out.push(Item::Data(rest), at, at);
    }

    /// Passes server bytes on; returns the bytes after a completed response, which the
    /// caller re-queues so that a due answer can go between two responses.
    fn process(&mut self, mut bytes: Bytes, at: Instant) -> Option<Bytes> {
        while !bytes.is_empty() {
            match &mut self.framing {
                Framing::Opaque => {
                    self.out.push(Item::Data(bytes), at, at);
                    return None;
                }
                Framing::Length(left) => {
                    let take = (*left).min(bytes.len() as u64);
                    *left -= take;
                    let done = *left == 0;
                    self.out
                        .push(Item::Data(bytes.split_to(take as usize)), at, at);
                    if done {
                        self.response_done();
                        return (!bytes.is_empty()).then_some(bytes);
                    }
                }
                Framing::Chunked(chunked) => match chunked.feed(&bytes) {
                    Ok((used, done)) => {
                        self.out.push(Item::Data(bytes.split_to(used)), at, at);
                        if done {
                            self.response_done();
                            return (!bytes.is_empty()).then_some(bytes);
                        }
                    }
                    Err(()) => {
                        self.go_opaque(bytes, at);
                        return None;
                    }
                },
                Framing::Head => {
                    self.head.extend_from_slice(&bytes);
                    let buf = self.head.split().freeze();
                    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let mut resp = httparse::Response::new(&mut headers);
                    match resp.parse(&buf) {
                        Ok(httparse::Status::Complete(n)) => {
                            let code = resp.code.unwrap_or(0);
                            let framing = body_framing(resp.headers);
                            let rest = buf.slice(n..);
                            self.out.push(Item::Data(buf.slice(..n)), at, at);
                            let (no_body, tunnel) = match self.expects.front() {
                                Some(Expect::Forwarded { no_body, tunnel }) => (*no_body, *tunnel),
                                _ => (false, false),
                            };
                            if code == 101 || (tunnel && (200..300).contains(&code)) {
                                self.response_done();
                                self.go_opaque(rest, at);
                                return None;
                            }
                            if (100..200).contains(&code) {
                                // An interim answer; the final one follows.
                                bytes = rest;
                                continue;
                            }
                            if no_body || code == 204 || code == 304 {
                                self.response_done();
                                return (!rest.is_empty()).then_some(rest);
                            }
                            match framing {
                                Ok(Some(framing)) => {
                                    self.framing = framing;
                                    bytes = rest;
                                }
                                Ok(None) if has_length(resp.headers) => {
                                    self.response_done();
                                    return (!rest.is_empty()).then_some(rest);
                                }
                                // Delimited by close: nothing after it can be sequenced.
                                Ok(None) | Err(()) => {
                                    self.go_opaque(rest, at);
                                    return None;
                                }
                            }
                        }
                        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => {
                            self.head = BytesMut::from(buf);
                            return None;
                        }
                        Ok(httparse::Status::Partial) | Err(_) => {
                            self.head = BytesMut::from(buf);
                            self.go_opaque(Bytes::new(), at);
                            return None;
                        }
                    }
                }
            }
        }
        None
    }
}

fn has_length(headers: &[httparse::Header<'_>]) -> bool {
    header(headers, "content-length").is_some()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::toxic::Direction;

    fn fault(status: u16, delay_ms: u64, first_n: u64, path_prefix: &str) -> ActiveFault {
        let toxic = Toxic {
            id: 1,
            version: 0,
            name: "f".into(),
            kind: ToxicKind::HttpFault(HttpFault {
                status,
                delay_ms,
                first_n,
                path_prefix: path_prefix.into(),
                method: String::new(),
                body: String::new(),
            }),
            stream: Direction::Upstream,
            toxicity: 1.0,
            shared: Arc::new(SharedState::default()),
        };
        ActiveFault::of(&toxic).expect("an http_fault")
    }

    fn drain_bytes(next: impl FnMut() -> Option<Timed>) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let mut closed = false;
        for t in std::iter::from_fn(next) {
            match t.item {
                Item::Data(b) => out.extend_from_slice(&b),
                Item::Close => closed = true,
                Item::Eof => {}
            }
        }
        (out, closed)
    }

    #[test]
    fn sniffs_request_lines_only() {
        assert!(looks_like_http(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_http(b"OPTIONS * HTTP/1.1\r\n"));
        assert!(looks_like_http(b"PO"));
        assert!(!looks_like_http(b"*1\r\n$4\r\nPING\r\n"));
        assert!(!looks_like_http(b"get / HTTP/1.1"));
        assert!(!looks_like_http(b"GE\x00"));
    }

    #[test]
    fn chunked_framing_finds_the_end_across_splits() {
        let body = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        for split in 1..body.len() {
            let mut c = Chunked::default();
            let (a, done_a) = c.feed(&body[..split]).expect("valid");
            let total = if done_a {
                a
            } else {
                let (b, done_b) = c.feed(&body[split..]).expect("valid");
                assert!(done_b, "split {split}");
                split + b
            };
            assert_eq!(&body[total..], b"NEXT", "split {split}");
        }
        assert!(Chunked::default().feed(b"zz\r\n").is_err());
    }

    #[test]
    fn pipelined_requests_are_forwarded_or_answered_in_order() {
        let t0 = Instant::now();
        let mut req = RequestStage::new(vec![fault(503, 0, 0, "/fail")], t0);
        let input = b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n\
                      POST /fail HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
                      POST /ok2 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        // Fed in awkward pieces to exercise partial heads and bodies.
        for piece in input.chunks(7) {
            req.push(Timed::new(Item::Data(Bytes::copy_from_slice(piece)), t0));
        }
        let (forwarded, _) = drain_bytes(|| req.pop(t0));
        let expected = b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n\
                         POST /ok2 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        assert_eq!(
            String::from_utf8_lossy(&forwarded),
            String::from_utf8_lossy(expected)
        );

        let mut resp = ResponseStage::new(t0);
        resp.expect(req.take_expects());
        let server = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok2";
        resp.push(Timed::new(Item::Data(Bytes::copy_from_slice(server)), t0));
        let (answers, closed) = drain_bytes(|| resp.pop(t0));
        let text = String::from_utf8_lossy(&answers);
        let first = text.find("\r\n\r\nok").expect("first response");
        let injected = text
            .find("HTTP/1.1 503 Service Unavailable")
            .expect("injected");
        let third = text.find("ok2").expect("third response");
        assert!(first < injected && injected < third, "{text}");
        assert!(text.contains("x-bulwark-fault: f"));
        assert!(text.contains("FAULT_INJECTED"));
        assert!(!closed);
    }

    #[test]
    fn first_n_and_delay_apply_then_stop() {
        let t0 = Instant::now();
        let mut req = RequestStage::new(vec![fault(0, 100, 1, "")], t0);
        req.push(Timed::new(
            Item::Data(Bytes::from_static(
                b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
            )),
            t0,
        ));
        assert!(req.pop(t0).is_none(), "the first request is delayed");
        assert_eq!(req.deadline(), Some(t0 + Duration::from_millis(100)));
        let (bytes, _) = drain_bytes(|| req.pop(t0 + Duration::from_millis(100)));
        assert_eq!(
            &bytes[..],
            b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"
        );
    }

    #[test]
    fn a_delayed_answer_waits_and_is_released_when_the_fault_goes() {
        let t0 = Instant::now();
        let mut req = RequestStage::new(vec![fault(500, 1000, 0, "")], t0);
        req.push(Timed::new(
            Item::Data(Bytes::from_static(b"GET / HTTP/1.0\r\n\r\n")),
            t0,
        ));
        let mut resp = ResponseStage::new(t0);
        resp.expect(req.take_expects());
        assert!(resp.pop(t0).is_none());
        assert_eq!(resp.deadline(), Some(t0 + Duration::from_secs(1)));
        resp.release(t0);
        let (bytes, closed) = drain_bytes(|| resp.pop(t0));
        assert!(String::from_utf8_lossy(&bytes).starts_with("HTTP/1.1 500"));
        assert!(
            closed,
            "HTTP/1.0 without keep-alive closes after the answer"
        );
    }

    #[test]
    fn head_responses_and_interim_answers_are_framed() {
        let t0 = Instant::now();
        let mut req = RequestStage::new(vec![fault(418, 0, 0, "/late")], t0);
        req.push(Timed::new(
            Item::Data(Bytes::from_static(
                b"HEAD / HTTP/1.1\r\n\r\nPUT /x HTTP/1.1\r\nContent-Length: 1\r\n\r\nzGET /late HTTP/1.1\r\n\r\n",
            )),
            t0,
        ));
        let mut resp = ResponseStage::new(t0);
        resp.expect(req.take_expects());
        resp.push(Timed::new(
            Item::Data(Bytes::from_static(
                b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
            )),
            t0,
        ));
        let (bytes, _) = drain_bytes(|| resp.pop(t0));
        let text = String::from_utf8_lossy(&bytes);
        let body = r#"{"error":{"code":"FAULT_INJECTED","message":"injected by the Bulwark fault proxy (toxic f)","request_id":""}}"#;
        let expected = format!(
            "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n\
             HTTP/1.1 418 I'm a teapot\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nx-bulwark-fault: f\r\n\r\n{body}",
            body.len()
        );
        assert!(text.ends_with(&expected), "{text}");
        assert!(text.starts_with("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\nHTTP/1.1 100"));
    }

    #[test]
    fn unparsable_requests_pass_untouched() {
        let t0 = Instant::now();
        let mut req = RequestStage::new(vec![fault(503, 0, 0, "")], t0);
        req.push(Timed::new(
            Item::Data(Bytes::from_static(
                b"GET / HTTP/1.1\r\nBad Header\r\n\r\nrest",
            )),
            t0,
        ));
        let (bytes, _) = drain_bytes(|| req.pop(t0));
        assert_eq!(&bytes[..], b"GET / HTTP/1.1\r\nBad Header\r\n\r\nrest");
    }
}
