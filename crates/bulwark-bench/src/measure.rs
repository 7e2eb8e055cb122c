//! The measuring engine: the HTTP client, worker loops, HDR histograms.
//!
//! A *phase* (warm-up, measurement, preload) runs `concurrency` worker tasks against one
//! pre-built [`Workload`]. Closed loop: each worker sends, waits for the whole response,
//! records, repeats until the phase ends. Open loop: each worker owns every `W`-th slot of
//! a fixed-rate [`Schedule`] and records latency from the slot's intended time.
//!
//! Workers record into a few *stripes* (each a `Mutex<Stats>` shared by `W / stripes`
//! workers): locking is uncontended in practice, memory stays bounded for large `W`, and
//! the progress display can read live percentiles without stopping anyone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::report::{ErrorCounts, LatencySummary};
use crate::schedule::{Schedule, remaining};
use crate::workload::{BenchRequest, Rng, Workload};

/// Most stripes a phase records into; bounds histogram memory whatever `--concurrency` is.
const MAX_STRIPES: usize = 32;

/// How often the progress display is refreshed.
const TICK: Duration = Duration::from_millis(200);

/// The one HTTP/1.1 client (and connection pool) of a run, for `http://` and `https://`.
pub(crate) type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Builds the client: keep-alive, `TCP_NODELAY`, connect timeout, and an idle pool sized
/// to the worker count. The pool may hold more connections than workers for a while (a
/// request with no idle connection at hand dials one and also takes the first one freed);
/// `bench shop`, which must hold exactly `--connections`, uses [`crate::conn`] instead.
/// `https://` URLs are verified against `tls` (`--cacert`); without it they fail.
pub(crate) fn http_client(
    timeout: Duration,
    max_idle_per_host: usize,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(timeout));
    connector.enforce_http(false);
    let tls = tls.map_or_else(
        || {
            bulwark_tls::install_default_provider();
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        },
        |c| (*c).clone(),
    );
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(max_idle_per_host)
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A complete response with this status.
    Status(u16),
    /// No complete response within the timeout.
    Timeout,
    /// The connection could not be established.
    Connect,
    /// Any other transport failure.
    Other,
}

/// Sends `req` and reads the whole response body (so the connection returns to the pool),
/// all within `timeout`. The body is read frame by frame and dropped, never concatenated.
pub(crate) async fn send(client: &HttpClient, req: BenchRequest, timeout: Duration) -> Outcome {
    let exchange = async {
        let resp = match client.request(req).await {
            Ok(resp) => resp,
            Err(e) if e.is_connect() => return Outcome::Connect,
            Err(_) => return Outcome::Other,
        };
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                return Outcome::Other;
            }
        }
        Outcome::Status(status)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Outcome::Timeout)
}

/// Like [`send`], but also returns the body text (bounded to `limit` bytes), for the
/// orchestration calls that need to read a JSON answer.
pub(crate) async fn send_read(
    client: &HttpClient,
    req: BenchRequest,
    timeout: Duration,
    limit: usize,
) -> Result<(u16, String), Outcome> {
    let exchange = async {
        let resp = match client.request(req).await {
            Ok(resp) => resp,
            Err(e) if e.is_connect() => return Err(Outcome::Connect),
            Err(_) => return Err(Outcome::Other),
        };
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut text = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| Outcome::Other)?;
            if let Some(data) = frame.data_ref() {
                let room = limit.saturating_sub(text.len());
                text.extend_from_slice(&data[..data.len().min(room)]);
            }
        }
        Ok((status, String::from_utf8_lossy(&text).into_owned()))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(Outcome::Timeout))
}

/// Counters and latency histogram of (part of) a phase.
#[derive(Debug, Clone)]
pub(crate) struct Stats {
    /// Latency in microseconds of every request that got an HTTP response.
    hist: Histogram<u64>,
    /// 2xx responses.
    ok: u64,
    /// Failures by kind.
    errors: ErrorCounts,
    /// Count per HTTP status (index = status code, 100..=999).
    codes: Vec<u64>,
    /// Open loop: scheduled requests never sent.
    missed: u64,
}

/// `n` events over `elapsed` seconds, per second (0 for no elapsed time).
pub(crate) fn per_second(n: u64, elapsed: f64) -> f64 {
    if elapsed > 0.0 {
        n as f64 / elapsed
    } else {
        0.0
    }
}

impl Stats {
    pub(crate) fn new() -> Self {
        Stats {
            // Auto-resizing, 3 significant digits: memory grows with the largest latency
            // actually seen instead of being reserved for an hour up front.
            // `new` only fails for more than 5 significant digits: a constant, not input.
            hist: Histogram::new(3).expect("3 significant digits is within 0..=5"),
            ok: 0,
            errors: ErrorCounts::default(),
            codes: vec![0; 1000],
            missed: 0,
        }
    }

    /// Records one finished request.
    pub(crate) fn record(&mut self, outcome: Outcome, latency: Duration) {
        match outcome {
            Outcome::Status(code) => {
                let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                // `record` grows the auto-resizing histogram; it fails only beyond what
                // u64 buckets can track, and then clamping is the best we can do.
                // (`saturating_record` alone would clamp to the *current* size.)
                if self.hist.record(us).is_err() {
                    self.hist.saturating_record(us);
                }
                if let Some(c) = self.codes.get_mut(usize::from(code)) {
                    *c += 1;
                }
                match code {
                    200..=299 => self.ok += 1,
                    400..=499 => self.errors.http_4xx += 1,
                    500..=599 => self.errors.http_5xx += 1,
                    _ => self.errors.http_other += 1,
                }
            }
            Outcome::Timeout => self.errors.timeout += 1,
            Outcome::Connect => self.errors.connect += 1,
            Outcome::Other => self.errors.other += 1,
        }
    }

    /// Adds `other` into `self`.
    pub(crate) fn merge(&mut self, other: &Stats) {
        // Auto-resizing histograms accept any other histogram's values.
        let _ = self.hist.add(&other.hist);
        self.ok += other.ok;
        let (a, b) = (&mut self.errors, &other.errors);
        a.http_4xx += b.http_4xx;
        a.http_5xx += b.http_5xx;
        a.http_other += b.http_other;
        a.timeout += b.timeout;
        a.connect += b.connect;
        a.other += b.other;
        for (x, y) in self.codes.iter_mut().zip(&other.codes) {
            *x += y;
        }
        self.missed += other.missed;
    }

    /// Completed requests, whatever their outcome.
    pub(crate) fn requests(&self) -> u64 {
        self.ok + self.errors.total()
    }

    pub(crate) fn ok(&self) -> u64 {
        self.ok
    }

    pub(crate) fn errors(&self) -> ErrorCounts {
        self.errors
    }

    pub(crate) fn missed(&self) -> u64 {
        self.missed
    }

    /// Non-zero status counts.
    pub(crate) fn status_codes(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.codes
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .filter_map(|(code, c)| u16::try_from(code).ok().map(|code| (code, *c)))
    }

    /// Percentiles of the recorded latencies.
    pub(crate) fn latency(&self) -> LatencySummary {
        let h = &self.hist;
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p95: h.value_at_quantile(0.95),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// What a phase reports to the progress display on every tick.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Live {
    /// Time since the phase started.
    pub(crate) elapsed: Duration,
    /// Completed requests so far.
    pub(crate) requests: u64,
    /// Failed requests so far.
    pub(crate) errors: u64,
    /// 99th-percentile latency so far, in microseconds.
    pub(crate) p99_us: u64,
}

/// What a phase's workers record into: one per stripe, merged for live figures and at
/// the end. [`Stats`] for `bench kv`; the shop bench keeps one per operation.
pub(crate) trait Recorder: Send + 'static {
    /// How one request ended, as the driver reports it.
    type Outcome: Send;
    /// An empty recorder.
    fn empty() -> Self;
    /// Records one finished request and its latency.
    fn record(&mut self, outcome: Self::Outcome, latency: Duration);
    /// Adds `other` into `self`.
    fn merge(&mut self, other: &Self);
    /// Counts scheduled requests that were never sent (open loop).
    fn add_missed(&mut self, n: u64);
    /// The figures the progress display shows.
    fn live(&self, elapsed: Duration) -> Live;
}

/// What a phase sends: one request per call, with its outcome.
pub(crate) trait Driver: Send + Sync + 'static {
    /// What the workers record into.
    type Rec: Recorder;
    /// Sends one request (chosen with `rng`) for worker `worker` (stable across the
    /// phases of a run) and waits for its outcome.
    fn fire(
        &self,
        worker: usize,
        rng: &mut Rng,
    ) -> impl std::future::Future<Output = <Self::Rec as Recorder>::Outcome> + Send;
}

impl Recorder for Stats {
    type Outcome = Outcome;

    fn empty() -> Self {
        Stats::new()
    }

    fn record(&mut self, outcome: Outcome, latency: Duration) {
        Stats::record(self, outcome, latency);
    }

    fn merge(&mut self, other: &Self) {
        Stats::merge(self, other);
    }

    fn add_missed(&mut self, n: u64) {
        self.missed += n;
    }

    fn live(&self, elapsed: Duration) -> Live {
        Live {
            elapsed,
            requests: self.requests(),
            errors: self.errors.total(),
            p99_us: self.latency().p99,
        }
    }
}

/// Everything a worker needs; shared by all workers of a phase.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) client: HttpClient,
    pub(crate) workload: Arc<Workload>,
    /// Workers, and so the bound on connections and on requests in flight.
    pub(crate) concurrency: u32,
    /// `Some(rate)` for open loop.
    pub(crate) rate: Option<f64>,
    /// Per-request timeout.
    pub(crate) timeout: Duration,
}

impl Driver for Ctx {
    type Rec = Stats;

    async fn fire(&self, _worker: usize, rng: &mut Rng) -> Outcome {
        let req = self.workload.next_request(rng);
        send(&self.client, req, self.timeout).await
    }
}

/// How a phase applies load: closed loop (`rate: None`) with `workers` workers, or open
/// loop at `rate` requests/s with at most `workers` in flight.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    pub(crate) workers: u32,
    pub(crate) rate: Option<f64>,
    /// Per-request timeout (an open loop gives up on slots one timeout after the end).
    pub(crate) timeout: Duration,
}

impl Ctx {
    pub(crate) fn load(&self) -> Load {
        Load {
            workers: self.concurrency,
            rate: self.rate,
            timeout: self.timeout,
        }
    }
}

/// The result of one phase.
#[derive(Debug)]
pub(crate) struct PhaseResult<R = Stats> {
    pub(crate) stats: R,
    /// From the phase start to the last response.
    pub(crate) elapsed: Duration,
}

/// How the workers of a phase pick their requests.
#[derive(Debug, Clone, Copy)]
enum Plan {
    /// Closed loop until the deadline.
    Closed { end: Instant },
    /// Open loop on a schedule; give up on slots once `hard_stop` has passed.
    Open {
        start: Instant,
        schedule: Schedule,
        hard_stop: Instant,
    },
}

/// Runs one phase of `duration`, calling `on_tick` with live figures every [`TICK`] when
/// `live` is set (computing live percentiles costs a histogram merge per tick).
pub(crate) async fn run_phase<D: Driver>(
    driver: &Arc<D>,
    load: Load,
    duration: Duration,
    seed: u64,
    live: bool,
    mut on_tick: impl FnMut(Live),
) -> PhaseResult<D::Rec> {
    let workers = u64::from(load.workers.max(1));
    let stripes: Vec<Arc<Mutex<D::Rec>>> = (0..(workers as usize).min(MAX_STRIPES))
        .map(|_| Arc::new(Mutex::new(D::Rec::empty())))
        .collect();
    let start = Instant::now();
    let plan = match load.rate {
        None => Plan::Closed {
            end: start + duration,
        },
        Some(rate) => Plan::Open {
            start,
            schedule: Schedule::new(rate, duration),
            hard_stop: start + duration + load.timeout,
        },
    };
    let mut set = JoinSet::new();
    for w in 0..workers {
        let stripe = Arc::clone(&stripes[w as usize % stripes.len()]);
        let driver = Arc::clone(driver);
        let rng = Rng::new(seed ^ w.wrapping_mul(0x2545_F491_4F6C_DD1D));
        set.spawn(async move {
            match plan {
                Plan::Closed { end } => {
                    closed_worker(&*driver, w as usize, &stripe, rng, end).await;
                }
                Plan::Open {
                    start,
                    schedule,
                    hard_stop,
                } => {
                    let slots = Slots {
                        start,
                        schedule,
                        first: w,
                        step: workers,
                        hard_stop,
                    };
                    open_worker(&*driver, w as usize, &stripe, rng, slots).await;
                }
            }
        });
    }
    let mut ticker = tokio::time::interval_at(start + TICK, TICK);
    loop {
        tokio::select! {
            joined = set.join_next() => {
                if joined.is_none() {
                    break;
                }
            }
            _ = ticker.tick(), if live => {
                on_tick(merge(&stripes).live(start.elapsed()));
            }
        }
    }
    PhaseResult {
        stats: merge(&stripes),
        elapsed: start.elapsed(),
    }
}

fn merge<R: Recorder>(stripes: &[Arc<Mutex<R>>]) -> R {
    let mut total = R::empty();
    for s in stripes {
        total.merge(&s.lock().unwrap_or_else(PoisonError::into_inner));
    }
    total
}

async fn closed_worker<D: Driver>(
    driver: &D,
    worker: usize,
    stripe: &Mutex<D::Rec>,
    mut rng: Rng,
    end: Instant,
) {
    while Instant::now() < end {
        let sent = Instant::now();
        let outcome = driver.fire(worker, &mut rng).await;
        let latency = sent.elapsed();
        stripe
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(outcome, latency);
    }
}

/// The schedule slots one open-loop worker owns: `first, first + step, …`.
#[derive(Debug, Clone, Copy)]
struct Slots {
    start: Instant,
    schedule: Schedule,
    first: u64,
    step: u64,
    hard_stop: Instant,
}

async fn open_worker<D: Driver>(
    driver: &D,
    worker: usize,
    stripe: &Mutex<D::Rec>,
    mut rng: Rng,
    slots: Slots,
) {
    let total = slots.schedule.total();
    let mut i = slots.first;
    while i < total {
        if Instant::now() >= slots.hard_stop {
            let missed = remaining(i, slots.step, total);
            stripe
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .add_missed(missed);
            return;
        }
        let intended = slots.start + slots.schedule.offset(i);
        // Late (the previous request outlived this slot): send at once and charge the
        // time the request waited — that wait is the server's doing (coordinated
        // omission). Early: sleep until the slot and measure from the actual send, since
        // tokio's timer wakes up to a millisecond late and that delay is the generator's.
        let from = if Instant::now() < intended {
            tokio::time::sleep_until(intended).await;
            Instant::now()
        } else {
            intended
        };
        let outcome = driver.fire(worker, &mut rng).await;
        let latency = from.elapsed();
        stripe
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(outcome, latency);
        i += slots.step;
    }
}

/// Writes every key of `workload` once, so reads find data. Uses the phase's worker count
/// and returns what happened (the caller warns if many failed).
pub(crate) async fn preload(ctx: &Arc<Ctx>) -> Stats {
    let next = Arc::new(AtomicU64::new(0));
    let keys = ctx.workload.keys();
    let mut set = JoinSet::new();
    for _ in 0..ctx.concurrency.max(1) {
        let ctx = Arc::clone(ctx);
        let next = Arc::clone(&next);
        set.spawn(async move {
            let mut stats = Stats::new();
            loop {
                let key = next.fetch_add(1, Ordering::Relaxed);
                if key >= keys {
                    return stats;
                }
                let sent = Instant::now();
                let req = ctx.workload.write_request(key as usize);
                let outcome = send(&ctx.client, req, ctx.timeout).await;
                stats.record(outcome, sent.elapsed());
            }
        });
    }
    let mut total = Stats::new();
    while let Some(joined) = set.join_next().await {
        if let Ok(stats) = joined {
            total.merge(&stats);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_classified() {
        let mut s = Stats::new();
        let ms = Duration::from_millis(1);
        s.record(Outcome::Status(200), ms);
        s.record(Outcome::Status(204), ms);
        s.record(Outcome::Status(404), ms);
        s.record(Outcome::Status(503), ms);
        s.record(Outcome::Status(504), ms);
        s.record(Outcome::Status(302), ms);
        s.record(Outcome::Timeout, ms);
        s.record(Outcome::Connect, ms);
        s.record(Outcome::Other, ms);
        assert_eq!(s.ok(), 2);
        let e = s.errors();
        assert_eq!(
            (
                e.http_4xx,
                e.http_5xx,
                e.http_other,
                e.timeout,
                e.connect,
                e.other
            ),
            (1, 2, 1, 1, 1, 1)
        );
        assert_eq!(s.requests(), 9);
        // Only responses are in the histogram.
        assert_eq!(s.latency().count, 6);
        let codes: Vec<_> = s.status_codes().collect();
        assert_eq!(
            codes,
            vec![(200, 1), (204, 1), (302, 1), (404, 1), (503, 1), (504, 1)]
        );
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut s = Stats::new();
        for us in 1..=1000u64 {
            s.record(Outcome::Status(200), Duration::from_micros(us));
        }
        // A value far above anything seen so far must grow the histogram, not be clamped.
        let mut big = Stats::new();
        big.record(Outcome::Status(200), Duration::from_secs(90));
        assert!(big.latency().max >= 89_900_000, "{:?}", big.latency());
        let l = s.latency();
        assert_eq!(l.count, 1000);
        assert_eq!(l.p50, 500);
        assert_eq!(l.p90, 900);
        assert_eq!(l.p95, 950);
        assert_eq!(l.p99, 990);
        assert_eq!(l.p999, 999);
        assert_eq!(l.max, 1000);
        let mut merged = Stats::new();
        merged.merge(&s);
        merged.merge(&s);
        assert_eq!(merged.latency().count, 2000);
        assert_eq!(merged.latency().p50, 500);
        assert_eq!(merged.ok(), 2000);
    }

    #[test]
    fn empty_stats_have_zero_latency() {
        assert_eq!(Stats::new().latency(), LatencySummary::default());
    }
}
