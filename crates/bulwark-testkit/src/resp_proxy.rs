//! [`RespProxy`]: a RESP-aware TCP proxy in front of one replica that misbehaves on
//! *specific* commands, for deterministic tests of the two-phase commit's hard paths
//! ("the commit reached the coordinator but its reply was lost", "the prepare never
//! arrived", …).
//!
//! Each client connection gets its own upstream connection. The proxy cuts the client's
//! byte stream into commands (RESP arrays, or inline commands) and the upstream's into
//! replies (RESP2, and RESP3 types for completeness), so it knows which reply answers
//! which command and pipelined commands keep their order. Every command is looked up in
//! the [`Rule`]s, which the test may change at any time; rules apply to commands read
//! after the change.
//!
//! Not for pub/sub or `MONITOR`: the proxy assumes one reply per command.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::task::{JoinHandle, JoinSet};

/// Client connections served at once; later ones are closed at once.
const MAX_CONNECTIONS: usize = 256;
/// Commands forwarded on one connection whose replies are still awaited; the client's
/// reads pause beyond this (TCP back-pressure), nothing is queued without bound.
const MAX_IN_FLIGHT: usize = 1024;
/// Largest command or reply the proxy will buffer; a bigger one closes the connection.
const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;
/// Nesting depth of RESP aggregates the parser follows before giving up.
const MAX_DEPTH: usize = 32;
/// Distinct command identities counted; later new ones are not counted.
const MAX_COUNTED: usize = 1024;
/// Bound on connecting to the upstream for a new client connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Read buffer growth step.
const READ_CHUNK: usize = 16 * 1024;

/// What the proxy does with a command that matches a [`Rule`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Forward it and return its reply (what happens without any rule).
    Forward,
    /// Forward it (the upstream applies it) but never return its reply: the client's
    /// call times out. From then on the connection is *stalled*: later commands on it
    /// are read and discarded, never forwarded, and nothing more is returned, so no later
    /// reply can be mistaken for the lost one. The connection closes when the client
    /// closes it.
    DropReply,
    /// Do not forward it; return the replies of the commands before it, then close the
    /// connection (the client sees the connection lost; the upstream never saw it).
    Refuse,
    /// Wait this long, then forward it. Commands behind it on the same connection wait
    /// too (order is kept), like a slow link.
    Delay(Duration),
    /// Forward it, return its reply, then close the connection.
    ForwardThenClose,
}

/// "Commands matching `command` get `action`".
///
/// `command` names a command case-insensitively: `"BW.COMMIT"`, `"GET"`. For the
/// commands that call a named function or script (`FCALL`, `FCALL_RO`) the name may be
/// followed by the function's name: `"FCALL bw_commit"` matches only calls of
/// `bw_commit`, while `"FCALL"` alone matches every call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The command (and, for `FCALL`, the function) this rule applies to.
    pub command: String,
    /// What to do with it.
    pub action: Action,
}

impl Rule {
    /// A rule for `command` (see the type's docs for the syntax).
    pub fn new(command: impl Into<String>, action: Action) -> Rule {
        Rule {
            command: command.into(),
            action,
        }
    }
}

/// A RESP proxy on a free loopback port in front of one upstream server. Stops, and
/// closes every connection, when dropped.
#[derive(Debug)]
pub struct RespProxy {
    /// Where clients connect.
    addr: SocketAddr,
    /// Rules and counters, shared with the connection tasks.
    shared: Arc<Shared>,
    /// The accept loop; owns the connection tasks (aborting it aborts them).
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    /// `host:port` of the upstream server.
    upstream: String,
    /// Current rules, first match wins. A std mutex: held to look up, never across await.
    rules: Mutex<Vec<Rule>>,
    /// Per command identity (see [`Identity`]): `(received, forwarded)`.
    counts: Mutex<HashMap<String, (u64, u64)>>,
    /// Wakes every connection task to close its connection.
    close_all: Notify,
}

impl RespProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`host:port`). Must be
    /// called inside a tokio runtime. The upstream need not be up yet: each client
    /// connection connects to it when it is accepted (and is closed if that fails).
    pub async fn start(upstream: impl Into<String>) -> RespProxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap_or_else(|e| panic!("cannot bind a loopback port: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("bound socket has no address: {e}"));
        let shared = Arc::new(Shared {
            upstream: upstream.into(),
            rules: Mutex::new(Vec::new()),
            counts: Mutex::new(HashMap::new()),
            close_all: Notify::new(),
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        RespProxy { addr, shared, task }
    }

    /// `127.0.0.1:<port>` of the proxy, for clients.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// `host:port` of the upstream server.
    pub fn upstream(&self) -> &str {
        &self.shared.upstream
    }

    /// Adds `rule`, replacing any rule for the same command (compared
    /// case-insensitively). A rule with [`Action::Forward`] just removes the old one.
    pub fn set_rule(&self, rule: Rule) {
        let key = Pattern::parse(&rule.command);
        let mut rules = self.shared.rules();
        rules.retain(|r| Pattern::parse(&r.command) != key);
        if rule.action != Action::Forward {
            rules.push(rule);
        }
    }

    /// Removes every rule: everything is forwarded again.
    pub fn clear_rules(&self) {
        self.shared.rules().clear();
    }

    /// Commands matching `command` (same syntax as [`Rule::command`]) forwarded to the
    /// upstream so far: refused ones are not counted, dropped-reply ones are, delayed
    /// ones once their delay is over and they are written.
    pub fn counts(&self, command: &str) -> u64 {
        self.shared.count(command, |(_, forwarded)| forwarded)
    }

    /// Commands matching `command` read from clients so far, forwarded or not.
    pub fn received(&self, command: &str) -> u64 {
        self.shared.count(command, |(received, _)| received)
    }

    /// Closes every open client connection now (and its upstream connection); new ones
    /// are accepted as usual.
    pub fn close_connections(&self) {
        self.shared.close_all.notify_waiters();
    }
}

impl Drop for RespProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shared {
    fn rules(&self) -> MutexGuard<'_, Vec<Rule>> {
        self.rules.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn counters(&self) -> MutexGuard<'_, HashMap<String, (u64, u64)>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn action_for(&self, id: &Identity) -> Action {
        self.rules()
            .iter()
            .find(|r| Pattern::parse(&r.command).matches(id))
            .map_or(Action::Forward, |r| r.action.clone())
    }

    fn record(&self, id: &Identity, counter: Counter) {
        let mut counts = self.counters();
        let key = id.key();
        if !counts.contains_key(&key) && counts.len() >= MAX_COUNTED {
            return;
        }
        let entry = counts.entry(key).or_default();
        match counter {
            Counter::Received => entry.0 += 1,
            Counter::Forwarded => entry.1 += 1,
        }
    }

    fn count(&self, command: &str, pick: impl Fn((u64, u64)) -> u64) -> u64 {
        let pattern = Pattern::parse(command);
        self.counters()
            .iter()
            .filter(|(key, _)| pattern.matches(&Identity::from_key(key)))
            .map(|(_, c)| pick(*c))
            .sum()
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((sock, _)) = accepted else { continue };
                if conns.len() >= MAX_CONNECTIONS {
                    drop(sock);
                    continue;
                }
                conns.spawn(serve(sock, Arc::clone(&shared)));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Which count a command adds to.
#[derive(Clone, Copy, Debug)]
enum Counter {
    /// Read from a client.
    Received,
    /// Written to the upstream.
    Forwarded,
}

/// What the reply side does with the next upstream reply (sent by the command side, in
/// command order, before the command is forwarded).
#[derive(Debug)]
enum Disposition {
    /// Return it to the client.
    Return,
    /// Read it and throw it away (then nothing more comes: the command side stalls).
    Drop,
    /// Return it, then close the connection.
    ReturnThenClose,
    /// No reply: close the connection once the earlier replies are returned.
    Close,
}

/// Serves one client connection until either side closes it or a rule ends it.
async fn serve(client: TcpStream, shared: Arc<Shared>) {
    let closed = shared.close_all.notified();
    tokio::pin!(closed);
    closed.as_mut().enable();
    let upstream =
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&shared.upstream)).await {
            Ok(Ok(s)) => s,
            _ => return, // dropping the client socket closes it: "connection refused" late
        };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_r, client_w) = client.into_split();
    let (upstream_r, upstream_w) = upstream.into_split();
    let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
    let commands = pump_commands(client_r, upstream_w, tx, &shared);
    let replies = pump_replies(upstream_r, client_w, rx);
    tokio::pin!(commands, replies);
    tokio::select! {
        _ = &mut closed => {}
        // The reply side ends the connection (a rule closed it, or the upstream did).
        _ = &mut replies => {}
        // The command side ended (client closed, or a rule stopped it): let the reply
        // side return what is owed, then close.
        _ = &mut commands => {
            tokio::select! {
                _ = &mut closed => {}
                _ = &mut replies => {}
            }
        }
    }
}

/// Reads commands from the client and forwards them as the rules say.
async fn pump_commands(
    mut client: OwnedReadHalf,
    mut upstream: OwnedWriteHalf,
    tx: mpsc::Sender<Disposition>,
    shared: &Shared,
) {
    let mut buf = Vec::with_capacity(READ_CHUNK);
    loop {
        let (len, id) = match command_at(&buf) {
            Ok(Some(found)) => found,
            Ok(None) => {
                if !read_more(&mut client, &mut buf).await {
                    return;
                }
                continue;
            }
            Err(_) => return, // not RESP: close
        };
        let action = shared.action_for(&id);
        shared.record(&id, Counter::Received);
        let disposition = match action {
            Action::Forward => Disposition::Return,
            Action::Delay(d) => {
                tokio::time::sleep(d).await;
                Disposition::Return
            }
            Action::DropReply => Disposition::Drop,
            Action::ForwardThenClose => Disposition::ReturnThenClose,
            Action::Refuse => {
                let _ = tx.send(Disposition::Close).await;
                return;
            }
        };
        if tx.send(disposition).await.is_err() || upstream.write_all(&buf[..len]).await.is_err() {
            return;
        }
        shared.record(&id, Counter::Forwarded);
        buf.drain(..len);
        match action {
            Action::DropReply => {
                // Stalled: keep the client connected but deaf until it hangs up; the
                // sender stays alive so the reply side waits too.
                let mut scratch = vec![0u8; READ_CHUNK];
                while matches!(client.read(&mut scratch).await, Ok(n) if n > 0) {}
                return;
            }
            Action::ForwardThenClose => return,
            _ => {}
        }
    }
}

/// Returns upstream replies to the client as the command side decided.
async fn pump_replies(
    mut upstream: OwnedReadHalf,
    mut client: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Disposition>,
) {
    let mut buf = Vec::with_capacity(READ_CHUNK);
    while let Some(disposition) = rx.recv().await {
        if matches!(disposition, Disposition::Close) {
            break;
        }
        let len = loop {
            match frame_len(&buf, 0) {
                Ok(Some(len)) => break len,
                Ok(None) => {
                    if !read_more(&mut upstream, &mut buf).await {
                        return;
                    }
                }
                Err(_) => return,
            }
        };
        match disposition {
            Disposition::Return | Disposition::ReturnThenClose => {
                if client.write_all(&buf[..len]).await.is_err() {
                    return;
                }
            }
            Disposition::Drop | Disposition::Close => {}
        }
        buf.drain(..len);
        if matches!(disposition, Disposition::ReturnThenClose) {
            break;
        }
    }
    let _ = client.shutdown().await;
}

/// Appends what the socket has to `buf`; `false` on EOF, error, or a frame too large.
async fn read_more(sock: &mut OwnedReadHalf, buf: &mut Vec<u8>) -> bool {
    if buf.len() >= MAX_FRAME_BYTES {
        return false;
    }
    let start = buf.len();
    buf.resize(start + READ_CHUNK, 0);
    let n = sock.read(&mut buf[start..]).await.unwrap_or(0);
    buf.truncate(start + n);
    n > 0
}

/// The name of a command, and for `FCALL`/`FCALL_RO` the function it calls.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Identity {
    /// Upper case.
    name: String,
    /// Lower case; only for the commands listed in [`takes_subject`].
    subject: Option<String>,
}

impl Identity {
    fn new(name: &[u8], first_arg: Option<&[u8]>) -> Identity {
        let name = String::from_utf8_lossy(name).to_ascii_uppercase();
        let subject = if takes_subject(&name) {
            first_arg.map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
        } else {
            None
        };
        Identity { name, subject }
    }

    /// The counter key: `NAME` or `NAME subject`.
    fn key(&self) -> String {
        match &self.subject {
            Some(s) => format!("{} {s}", self.name),
            None => self.name.clone(),
        }
    }

    fn from_key(key: &str) -> Identity {
        let mut words = key.splitn(2, ' ');
        Identity {
            name: words.next().unwrap_or_default().to_string(),
            subject: words.next().map(str::to_string),
        }
    }
}

/// Commands whose first argument names what they run, and is part of their identity.
fn takes_subject(name: &str) -> bool {
    matches!(name, "FCALL" | "FCALL_RO")
}

/// A rule's or a counter query's command: `NAME` or `NAME subject`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pattern {
    name: String,
    subject: Option<String>,
}

impl Pattern {
    fn parse(s: &str) -> Pattern {
        let mut words = s.split_whitespace();
        Pattern {
            name: words.next().unwrap_or_default().to_ascii_uppercase(),
            subject: words.next().map(str::to_ascii_lowercase),
        }
    }

    fn matches(&self, id: &Identity) -> bool {
        self.name == id.name
            && self
                .subject
                .as_ref()
                .is_none_or(|s| id.subject.as_ref() == Some(s))
    }
}

/// Why bytes could not be cut into RESP frames.
#[derive(Debug, PartialEq, Eq)]
struct NotResp;

/// The complete command at the start of `buf`: its length in bytes and identity;
/// `Ok(None)` if more bytes are needed.
fn command_at(buf: &[u8]) -> Result<Option<(usize, Identity)>, NotResp> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first != b'*' {
        // Inline command: one line, words separated by spaces.
        let Some(end) = buf.iter().position(|b| *b == b'\n') else {
            return Ok(None);
        };
        let mut words = buf[..end]
            .split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty());
        let name = words.next().unwrap_or_default();
        return Ok(Some((end + 1, Identity::new(name, words.next()))));
    }
    let Some(len) = frame_len(buf, 0)? else {
        return Ok(None);
    };
    // Complete: take the first two bulk strings of the array.
    let (count, mut pos) = header(buf, 0)?.ok_or(NotResp)?;
    let mut words: Vec<&[u8]> = Vec::new();
    for _ in 0..count.clamp(0, 2) {
        if buf.get(pos) != Some(&b'$') {
            break;
        }
        let (n, body) = header(buf, pos)?.ok_or(NotResp)?;
        let n = usize::try_from(n).map_err(|_| NotResp)?;
        words.push(buf.get(body..body + n).ok_or(NotResp)?);
        pos = body + n + 2;
    }
    let name = words.first().copied().unwrap_or_default();
    Ok(Some((len, Identity::new(name, words.get(1).copied()))))
}

/// Length of the complete RESP value at the start of `buf`, or `Ok(None)` if more
/// bytes are needed.
fn frame_len(buf: &[u8], depth: usize) -> Result<Option<usize>, NotResp> {
    if depth > MAX_DEPTH {
        return Err(NotResp);
    }
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let Some(line_end) = line_end(buf) else {
        return if buf.len() > MAX_FRAME_BYTES {
            Err(NotResp)
        } else {
            Ok(None)
        };
    };
    match kind {
        // Simple string, error, integer, RESP3 null, double, boolean, big number.
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Ok(Some(line_end)),
        // Bulk string, RESP3 verbatim string and bulk error.
        b'$' | b'=' | b'!' => {
            let (n, body) = header(buf, 0)?.ok_or(NotResp)?;
            if n < 0 {
                return Ok(Some(body));
            }
            let n = usize::try_from(n).map_err(|_| NotResp)?;
            if n > MAX_FRAME_BYTES {
                return Err(NotResp);
            }
            let end = body + n + 2;
            Ok((buf.len() >= end).then_some(end))
        }
        // Array, RESP3 set and push; map and attribute (two values per entry).
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let (n, mut pos) = header(buf, 0)?.ok_or(NotResp)?;
            if n < 0 {
                return Ok(Some(pos));
            }
            let per_entry = if matches!(kind, b'%' | b'|') { 2 } else { 1 };
            let items = usize::try_from(n).map_err(|_| NotResp)? * per_entry;
            for _ in 0..items {
                match frame_len(&buf[pos..], depth + 1)? {
                    Some(len) => pos += len,
                    None => return Ok(None),
                }
            }
            if kind == b'|' {
                // An attribute annotates the value that follows it: one reply.
                return Ok(frame_len(&buf[pos..], depth + 1)?.map(|len| pos + len));
            }
            Ok(Some(pos))
        }
        _ => Err(NotResp),
    }
}

/// Index just past the first `\r\n` of `buf`.
fn line_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n").map(|i| i + 2)
}

/// The number in the header line starting at `at` (`$12\r\n`, `*3\r\n`) and the index
/// just past the line; `Ok(None)` if the line is incomplete.
fn header(buf: &[u8], at: usize) -> Result<Option<(i64, usize)>, NotResp> {
    let rest = buf.get(at..).ok_or(NotResp)?;
    let Some(end) = line_end(rest) else {
        return Ok(None);
    };
    let digits = std::str::from_utf8(&rest[1..end - 2]).map_err(|_| NotResp)?;
    let n: i64 = digits.parse().map_err(|_| NotResp)?;
    Ok(Some((n, at + end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_cut_at_their_end() {
        let cases: &[(&[u8], Option<usize>)] = &[
            (b"+OK\r\n", Some(5)),
            (b"+OK\r", None),
            (b":12\r\n:1", Some(5)),
            (b"$3\r\nabc\r\n+x", Some(9)),
            (b"$3\r\nab", None),
            (b"$-1\r\n", Some(5)),
            (b"*2\r\n$1\r\na\r\n:1\r\n", Some(15)),
            (b"*2\r\n$1\r\na\r\n", None),
            (b"*-1\r\n", Some(5)),
            (b"*2\r\n*1\r\n+a\r\n$0\r\n\r\n", Some(18)),
            (b"%1\r\n+k\r\n+v\r\n", Some(12)),
            (b"|1\r\n+k\r\n+v\r\n:7\r\n", Some(16)),
            (b"_\r\n", Some(3)),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                frame_len(bytes, 0),
                Ok(*want),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
        assert_eq!(frame_len(b"@nope\r\n", 0), Err(NotResp));
        assert_eq!(frame_len(b"$x\r\n", 0), Err(NotResp));
    }

    #[test]
    fn commands_are_named_with_the_function_they_call() {
        let fcall = b"*5\r\n$5\r\nfcall\r\n$9\r\nBW_COMMIT\r\n$1\r\n1\r\n$1\r\nk\r\n$1\r\nv\r\n";
        let (len, id) = command_at(fcall).expect("resp").expect("complete");
        assert_eq!(len, fcall.len());
        assert_eq!(id.key(), "FCALL bw_commit");
        let (_, id) = command_at(b"*2\r\n$9\r\nbw.commit\r\n$1\r\nk\r\n")
            .expect("resp")
            .expect("complete");
        assert_eq!(id.key(), "BW.COMMIT", "the key is not part of the identity");
        let (len, id) = command_at(b"ping hello\r\n*1")
            .expect("resp")
            .expect("line");
        assert_eq!((len, id.key()), (12, "PING".to_string()));
        assert_eq!(command_at(b"*2\r\n$4\r\nPING\r\n"), Ok(None));

        let any_fcall = Pattern::parse("fcall");
        let commit = Pattern::parse("FCALL BW_COMMIT");
        let prepare = Identity::new(b"FCALL", Some(b"bw_prepare"));
        assert!(any_fcall.matches(&prepare));
        assert!(!commit.matches(&prepare));
        assert!(commit.matches(&Identity::from_key("FCALL bw_commit")));
    }
}
