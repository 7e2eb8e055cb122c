//! One proxied connection: one task that owns both sockets and both [`Link`]s.
//!
//! The task loops on one `select!` over: the proxy stopping, the proxy's toxics changing,
//! reading either socket (while its link has room), writing either link's output, and the
//! links' next deadline. Everything about the connection (toxics being added or removed,
//! HTTP tracking, resets) happens on this task, so there are no locks and no channels
//! between toxics, and a toxic change takes effect before the next byte is read.
//!
//! Fast path: when a direction has no toxic and no HTTP tracker, bytes read are written to
//! the other socket at once with a non-blocking write (falling back to the output queue
//! only when the socket is full), which costs about what `copy_bidirectional` costs.
//!
//! Ends of a connection:
//! * a source's FIN is passed on as a FIN (half-close) after the bytes before it, and the
//!   connection ends when both directions are finished;
//! * a `Close` item (limit_data, timeout) closes both sockets with a FIN once the bytes
//!   before it are written;
//! * `reset_peer`, a `down` toxic, or a reset from one peer resets both sockets (RST);
//! * the proxy stopping (disabled, deleted, listen or upstream changed, shutdown) closes both
//!   sockets at once, whatever is queued.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Buf;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::http::{ActiveFault, RequestStage, ResponseStage, looks_like_http};
use crate::link::{Front, Head, Link, READ_SIZE};
use crate::stage::Item;
use crate::toxic::{Direction, Toxic, ToxicKind};

/// How long connecting to the upstream may take before the client is disconnected.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The toxics of a proxy as every connection sees them, in chain order.
pub(crate) type ToxicSet = Arc<Vec<Toxic>>;

/// What a connection needs from its proxy.
#[derive(Debug)]
pub(crate) struct Context {
    /// The proxy's name (logs and metric labels).
    pub proxy: Arc<str>,
    /// Where to connect (`host:port`, resolved per connection).
    pub upstream: Arc<str>,
    /// The proxy's toxics; a change is applied to this connection at once.
    pub toxics: watch::Receiver<ToxicSet>,
    /// Cancelled when the proxy stops: the connection closes.
    pub stop: CancellationToken,
    /// Seed of this connection's randomness (toxicity, jitter, slicing).
    pub seed: u64,
}

/// How a connection ended, for the debug log.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Both directions finished.
    Done,
    /// A `Close` item, the proxy stopping, or an I/O error: both sockets closed (FIN).
    Closed,
    /// Both sockets reset (RST).
    Reset,
}

/// Serves one accepted client until the connection ends.
pub(crate) async fn serve(client: TcpStream, mut ctx: Context) {
    let mut rng = StdRng::seed_from_u64(ctx.seed);
    let toxics = ctx.toxics.borrow_and_update().clone();
    let mut rolls = Rolls::default();
    if rolls.down(&toxics, &mut rng) {
        reset(&client, None);
        return;
    }
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&*ctx.upstream));
    let server = tokio::select! {
        _ = ctx.stop.cancelled() => return,
        r = connect => match r {
            Ok(Ok(server)) => server,
            Ok(Err(e)) => {
                tracing::debug!(proxy = &*ctx.proxy, upstream = &*ctx.upstream, error = %e, "upstream connect failed");
                return;
            }
            Err(_) => {
                tracing::debug!(proxy = &*ctx.proxy, upstream = &*ctx.upstream, "upstream connect timed out");
                return;
            }
        },
    };
    // Small writes (RESP replies, HTTP heads) must not wait for Nagle's algorithm: the
    // proxy must not add latency nobody asked for.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let mut conn = Conn {
        client,
        server,
        up: Link::new(),
        down: Link::new(),
        rng,
        rolls,
        tracked: None,
        server_spoke: false,
        toxics: toxics.clone(),
        metrics: ConnMetrics::new(&ctx.proxy),
    };
    let end = conn.run(ctx.toxics, &ctx.stop).await;
    tracing::debug!(proxy = &*ctx.proxy, end = ?end, "connection ended");
}

/// Resets `a` (and `b`): with a zero linger, closing sends RST instead of FIN.
fn reset(a: &TcpStream, b: Option<&TcpStream>) {
    let _ = a.set_zero_linger();
    if let Some(b) = b {
        let _ = b.set_zero_linger();
    }
}

/// The toxicity rolls of the toxics that act on whole connections or on HTTP requests,
/// made once per toxic version (data toxics roll in their [`crate::stage::Stage`]).
#[derive(Debug, Default)]
struct Rolls {
    /// `(id, version)` → active.
    made: Vec<((u64, u64), bool)>,
}

impl Rolls {
    fn roll(&mut self, toxic: &Toxic, rng: &mut StdRng) -> bool {
        let key = (toxic.id, toxic.version);
        if let Some((_, active)) = self.made.iter().find(|(k, _)| *k == key) {
            return *active;
        }
        let active = rand::Rng::random::<f32>(rng) < toxic.toxicity;
        self.made.push((key, active));
        active
    }

    /// Whether a `down` toxic takes effect on this connection.
    fn down(&mut self, toxics: &[Toxic], rng: &mut StdRng) -> bool {
        let mut down = false;
        for t in toxics.iter().filter(|t| t.kind == ToxicKind::Down) {
            down |= self.roll(t, rng);
        }
        down
    }

    /// Forgets rolls of toxic versions that no longer exist.
    fn retain(&mut self, toxics: &[Toxic]) {
        self.made
            .retain(|(k, _)| toxics.iter().any(|t| (t.id, t.version) == *k));
    }
}

/// Counters of one connection, resolved once (label lookups are not per chunk).
#[derive(Debug)]
struct ConnMetrics {
    up: prometheus::IntCounter,
    down: prometheus::IntCounter,
    open: prometheus::IntGauge,
}

impl ConnMetrics {
    fn new(proxy: &str) -> ConnMetrics {
        let m = bulwark_obs::metrics::metrics();
        let open = m.fault_proxy_connections.with_label_values(&[proxy]);
        open.inc();
        ConnMetrics {
            up: m.fault_proxy_bytes.with_label_values(&[proxy, "upstream"]),
            down: m
                .fault_proxy_bytes
                .with_label_values(&[proxy, "downstream"]),
            open,
        }
    }
}

impl Drop for ConnMetrics {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// What woke the connection up.
enum Event {
    Stop,
    /// The toxics changed; the receiver is handed back to wait for the next change.
    Toxics(watch::Receiver<ToxicSet>),
    ReadUp(io::Result<usize>),
    ReadDown(io::Result<usize>),
    WroteUp(io::Result<usize>),
    WroteDown(io::Result<usize>),
    Timer,
}

struct Conn {
    client: TcpStream,
    server: TcpStream,
    /// Client → server.
    up: Link,
    /// Server → client.
    down: Link,
    rng: StdRng,
    rolls: Rolls,
    /// Whether the connection is HTTP-tracked (`None`: the client has not spoken yet).
    tracked: Option<bool>,
    /// The server sent bytes (a server-first protocol is never HTTP).
    server_spoke: bool,
    /// The toxics last applied.
    toxics: ToxicSet,
    metrics: ConnMetrics,
}

impl Conn {
    async fn run(&mut self, toxics: watch::Receiver<ToxicSet>, stop: &CancellationToken) -> End {
        if let Some(end) = self.apply(self.toxics.clone(), Instant::now()) {
            return self.finish(end);
        }
        // Both futures live across iterations, so waiting for a stop or a toxic change
        // costs nothing per read or write (no waiter registered and removed each time).
        let stopped = stop.cancelled();
        tokio::pin!(stopped);
        let mut change = Box::pin(next_change(toxics));
        loop {
            if !(self.up.is_direct() && self.down.is_direct()) {
                let now = Instant::now();
                self.up.advance(now, &mut self.rng);
                self.down.advance(now, &mut self.rng);
                if self.up.reset_due(now) || self.down.reset_due(now) {
                    return self.finish(End::Reset);
                }
                // A connection that looked like HTTP but is not (or upgraded to another
                // protocol) goes back to the fast path once its trackers gave up.
                if self.tracked == Some(true) && self.up.head_spent() && self.down.head_spent() {
                    self.up.head = None;
                    self.down.head = None;
                    self.tracked = Some(false);
                }
            }
            if let Some(end) = self.act_on_markers().await {
                return self.finish(end);
            }
            if self.up.finished && self.down.finished {
                return self.finish(End::Done);
            }
            let deadline = match (self.up.deadline(), self.down.deadline()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let read_up = self.up.wants_read();
            let read_down = self.down.wants_read();
            let write_up = self.up.front() == Front::Data;
            let write_down = self.down.front() == Front::Data;
            if read_up && self.up.rbuf.capacity() - self.up.rbuf.len() < READ_SIZE / 4 {
                self.up.rbuf.reserve(READ_SIZE);
            }
            if read_down && self.down.rbuf.capacity() - self.down.rbuf.len() < READ_SIZE / 4 {
                self.down.rbuf.reserve(READ_SIZE);
            }
            let mut up_buf = std::mem::take(&mut self.up.rbuf);
            let mut down_buf = std::mem::take(&mut self.down.rbuf);
            let event = {
                let (mut client_r, mut client_w) = self.client.split();
                let (mut server_r, mut server_w) = self.server.split();
                let up_out = self.up.front_bytes();
                let down_out = self.down.front_bytes();
                tokio::select! {
                    biased;
                    _ = &mut stopped => Event::Stop,
                    (rx, r) = &mut change => match r {
                        Ok(()) => Event::Toxics(rx),
                        Err(_) => Event::Stop,
                    },
                    r = server_w.write(up_out), if write_up => Event::WroteUp(r),
                    r = client_w.write(down_out), if write_down => Event::WroteDown(r),
                    r = client_r.read_buf(&mut up_buf), if read_up => Event::ReadUp(r),
                    r = server_r.read_buf(&mut down_buf), if read_down => Event::ReadDown(r),
                    () = sleep_until(deadline), if deadline.is_some() => Event::Timer,
                }
            };
            self.up.rbuf = up_buf;
            self.down.rbuf = down_buf;
            let outcome = match event {
                Event::Stop => Some(End::Closed),
                Event::Toxics(mut rx) => {
                    let toxics = rx.borrow_and_update().clone();
                    change = Box::pin(next_change(rx));
                    self.apply(toxics, Instant::now())
                }
                Event::WroteUp(r) => wrote(&mut self.up, r),
                Event::WroteDown(r) => wrote(&mut self.down, r),
                Event::ReadUp(r) => self.read(Direction::Upstream, r),
                Event::ReadDown(r) => self.read(Direction::Downstream, r),
                Event::Timer => None,
            };
            if let Some(end) = outcome {
                return self.finish(end);
            }
        }
    }

    /// Applies the proxy's current toxics to this connection.
    fn apply(&mut self, toxics: ToxicSet, now: Instant) -> Option<End> {
        self.toxics = toxics.clone();
        let toxics = &toxics[..];
        self.rolls.retain(toxics);
        if self.rolls.down(toxics, &mut self.rng) {
            return Some(End::Reset);
        }
        let data = |dir: Direction| -> Vec<&Toxic> {
            toxics
                .iter()
                .filter(|t| t.stream == dir)
                .filter(|t| !matches!(t.kind, ToxicKind::Down | ToxicKind::HttpFault(_)))
                .collect()
        };
        self.up
            .reconcile(&data(Direction::Upstream), now, &mut self.rng);
        self.down
            .reconcile(&data(Direction::Downstream), now, &mut self.rng);
        if self.tracked == Some(true) {
            let faults = self.active_http_faults(toxics);
            if self.up.set_http_faults(faults, now)
                && let Some(Head::Responses(r)) = &mut self.down.head
            {
                r.release(now);
            }
        }
        None
    }

    fn active_http_faults(&mut self, toxics: &[Toxic]) -> Vec<ActiveFault> {
        let mut faults = Vec::new();
        for t in toxics {
            if let Some(f) = ActiveFault::of(t)
                && self.rolls.roll(t, &mut self.rng)
            {
                faults.push(f);
            }
        }
        faults
    }

    /// Handles a read from the client (`Upstream`) or the server (`Downstream`).
    fn read(&mut self, dir: Direction, r: io::Result<usize>) -> Option<End> {
        let n = match r {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Some(End::Reset),
            Err(_) => return Some(End::Closed),
        };
        if n > 0 {
            match dir {
                Direction::Upstream if self.tracked.is_none() => self.sniff(),
                Direction::Downstream => self.server_spoke = true,
                Direction::Upstream => {}
            }
        }
        let (link, dest, counter) = match dir {
            Direction::Upstream => (&mut self.up, &self.server, &self.metrics.up),
            Direction::Downstream => (&mut self.down, &self.client, &self.metrics.down),
        };
        if n == 0 {
            link.src_done = true;
            link.input(Item::Eof, Instant::now(), &mut self.rng);
            return None;
        }
        counter.inc_by(n as u64);
        if link.is_direct() {
            // The fast path: write now; queue only what the socket did not take.
            match dest.try_write(&link.rbuf) {
                Ok(w) if w == link.rbuf.len() => link.rbuf.clear(),
                Ok(w) => {
                    let mut rest = link.rbuf.split().freeze();
                    rest.advance(w);
                    link.push_out(rest);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let rest = link.rbuf.split().freeze();
                    link.push_out(rest);
                }
                Err(_) => return Some(End::Closed),
            }
            return None;
        }
        let chunk = link.rbuf.split().freeze();
        link.input(Item::Data(chunk), Instant::now(), &mut self.rng);
        if dir == Direction::Upstream
            && let (Some(Head::Requests(req)), Some(Head::Responses(resp))) =
                (&mut self.up.head, &mut self.down.head)
        {
            resp.expect(req.take_expects());
        }
        None
    }

    /// Decides, on the client's first bytes, whether the connection is HTTP and so
    /// tracked for its whole life.
    fn sniff(&mut self) {
        let http = !self.server_spoke && looks_like_http(&self.up.rbuf);
        self.tracked = Some(http);
        if http {
            let now = Instant::now();
            // Nothing went through the links yet: the trackers see every byte.
            let toxics = self.toxics.clone();
            let faults = self.active_http_faults(&toxics);
            self.up.head = Some(Head::Requests(RequestStage::new(faults, now)));
            self.down.head = Some(Head::Responses(ResponseStage::new(now)));
        }
    }

    /// Acts on end-of-stream and close markers at the front of the outputs.
    async fn act_on_markers(&mut self) -> Option<End> {
        for dir in [Direction::Upstream, Direction::Downstream] {
            let (link, dest) = match dir {
                Direction::Upstream => (&mut self.up, &mut self.server),
                Direction::Downstream => (&mut self.down, &mut self.client),
            };
            loop {
                match link.front() {
                    Front::Eof => {
                        link.pop_front();
                        link.finished = true;
                        // Immediate for TCP: shutdown(SHUT_WR) does not wait.
                        let _ = dest.shutdown().await;
                    }
                    Front::Close => return Some(End::Closed),
                    Front::Idle | Front::Data => break,
                }
            }
        }
        None
    }

    fn finish(&self, end: End) -> End {
        if end == End::Reset {
            reset(&self.client, Some(&self.server));
        }
        end
    }
}

/// Records a write's outcome on `link`.
fn wrote(link: &mut Link, r: io::Result<usize>) -> Option<End> {
    match r {
        Ok(0) => Some(End::Closed),
        Ok(n) => {
            link.wrote(n);
            None
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Some(End::Reset),
        Err(_) => Some(End::Closed),
    }
}

/// Waits for the next change of the toxics, owning the receiver so the wait can span many
/// loop iterations; gives the receiver back.
async fn next_change(
    mut rx: watch::Receiver<ToxicSet>,
) -> (
    watch::Receiver<ToxicSet>,
    Result<(), watch::error::RecvError>,
) {
    let r = rx.changed().await;
    (rx, r)
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(at) = deadline {
        tokio::time::sleep_until(at).await;
    }
}
