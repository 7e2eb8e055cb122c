//! `bulwark bench shop`: a flash sale against the commerce service.
//!
//! Per strategy: start a shop (`--spawn`) or use `--target`, seed the hot product
//! (`reset`, so each strategy gets a fresh sale), warm up, measure the `--read-ratio` mix
//! of views (`GET /v1/products/{id}`) and purchases (`POST /v1/orders`, a unique
//! Idempotency-Key each) over `--connections` workers, read the cache counters from
//! `/metrics` around the measured phase, wait until every order is terminal, and check
//! the invariants on the audit. The measuring engine, histograms and progress bars are
//! `bench kv`'s ([`crate::measure`], [`crate::progress`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Uri};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::args::{ShopBenchArgs, Target, Toggle};
use crate::conn::WorkerConns;
use crate::cpu::CpuSnapshot;
use crate::measure::{self, Driver, HttpClient, Live, Load, Outcome, Recorder, Stats};
use crate::progress::Progress;
use crate::report::REPORT_FORMAT_VERSION;
use crate::shop_report::{
    Audit, CacheFigures, OpResult, ShopReport, ShopRunConfig, StrategyRun, check_invariants,
};
use crate::spawn::SpawnedShop;
use crate::workload::Rng;

/// Timeout of the orchestration calls (seed, audit, metrics, readiness).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes kept of an answer the bench reads.
const BODY_LIMIT: usize = 4 * 1024 * 1024;

/// Runs `bulwark bench shop` and returns the report (progress goes to stderr).
pub async fn run_shop(args: &ShopBenchArgs) -> anyhow::Result<ShopReport> {
    let progress = Progress::new();
    let spawn = args.target.is_none();
    let logs = tempfile::Builder::new()
        .prefix("bulwark-bench-shop-")
        .tempdir()
        .context("temporary directory for the shops' logs and databases")?;
    let database = args.database_url.clone();
    let dialect = match (&args.target, &database) {
        (Some(_), _) => None,
        (None, None) => Some("sqlite"),
        (None, Some(url)) => Some(dialect_of(url)?),
    };
    let pgbench = match (args.pgbench, &database) {
        (Toggle::Off, _) => None,
        (_, Some(url)) if dialect == Some("postgres") || args.pgbench == Toggle::On => {
            if dialect_of(url)? != "postgres" {
                bail!("--pgbench on needs a postgres:// --database-url");
            }
            progress.note(&format!(
                "pgbench baseline: {} clients, {} s …",
                args.pgbench_clients,
                args.duration.as_secs_f64().ceil()
            ));
            Some(crate::pgbench::baseline(url, args.pgbench_clients, args.duration).await?)
        }
        (Toggle::On, _) => bail!("--pgbench on needs a postgres:// --database-url"),
        _ => None,
    };
    let strategies: Vec<String> = if spawn {
        args.strategies.0.clone()
    } else {
        vec!["target".to_owned()]
    };
    let exe = std::env::current_exe().context("locating this executable")?;
    let mut runs = Vec::new();
    for (i, strategy) in strategies.iter().enumerate() {
        let shop = if spawn {
            let url = match &database {
                Some(url) => url.clone(),
                None => {
                    let dir = logs.path().join(strategy);
                    std::fs::create_dir_all(&dir)?;
                    format!("sqlite://{}", dir.join("shop.db").display())
                }
            };
            Some(
                SpawnedShop::start(
                    &exe,
                    &url,
                    strategy,
                    &args.redis_url,
                    &args.shop_env,
                    logs.path(),
                )
                .await?,
            )
        } else {
            None
        };
        let base = match (&shop, &args.target) {
            (Some(s), _) => s.base.clone(),
            (None, Some(t)) => t.url.clone(),
            (None, None) => unreachable!("no target means spawn"),
        };
        let result = sale(args, &progress, strategy, &base, i as u64, shop.as_ref()).await;
        if let Some(shop) = shop {
            let stopped = shop.stop().await;
            if let Err(e) = &stopped {
                progress.note(&format!("warning: {strategy}: {e:#}"));
            }
        }
        let mut run = result?;
        if let Some(p) = &pgbench
            && p.tps > 0.0
        {
            run.pgbench_ratio = Some(run.purchases_ok_per_s / p.tps);
        }
        runs.push(run);
    }
    Ok(ShopReport {
        tool: "bulwark bench shop".to_owned(),
        format_version: REPORT_FORMAT_VERSION,
        config: ShopRunConfig {
            connections: args.connections,
            read_ratio: args.read_ratio,
            rate: args.rate,
            duration_s: args.duration.as_secs_f64(),
            warmup_s: args.warmup.as_secs_f64(),
            stock: args.stock,
            product: args.product.clone(),
            database: dialect.map(str::to_owned),
        },
        pgbench,
        runs,
    })
}

fn dialect_of(url: &str) -> anyhow::Result<&'static str> {
    if url.starts_with("sqlite:") {
        Ok("sqlite")
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok("postgres")
    } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
        Ok("mysql")
    } else {
        bail!("--database-url {url:?}: expected sqlite://PATH, postgres://… or mysql://…")
    }
}

/// One strategy's sale, from seeding to the audit.
async fn sale(
    args: &ShopBenchArgs,
    progress: &Progress,
    strategy: &str,
    base: &str,
    index: u64,
    shop: Option<&SpawnedShop>,
) -> anyhow::Result<StrategyRun> {
    let control = measure::http_client(CONTROL_TIMEOUT, 4, None);
    wait_ready(&control, base).await?;
    seed(&control, base, &args.product, args.stock).await?;

    let driver = Arc::new(ShopDriver::new(base, args, index)?);
    let load = Load {
        workers: args.connections,
        rate: args.rate,
        timeout: args.timeout,
    };
    let bar = progress.scenario(&format!("{strategy} {}×", args.connections));
    let live = progress.visible();
    let seed_base = 0x5_0000 + index * 16;
    let mut acknowledged = 0;
    if !args.warmup.is_zero() {
        bar.phase("warm-up", args.warmup);
        // Closed loop whatever --rate says: every worker opens its connection now, and the
        // client's pool keeps them open through the measured phase.
        let warm_load = Load { rate: None, ..load };
        let warm = measure::run_phase(&driver, warm_load, args.warmup, seed_base, live, |l| {
            bar.tick("warm-up", &l)
        })
        .await;
        acknowledged += warm.stats.confirmed;
    }
    let before = cache_counters(&control, base).await.ok();
    let shop_pid = shop.map(SpawnedShop::pid);
    let cpu_before = CpuSnapshot::take(shop_pid);
    bar.phase("measuring", args.duration);
    let phase = measure::run_phase(&driver, load, args.duration, seed_base + 1, live, |l| {
        bar.tick("measuring", &l)
    })
    .await;
    let cpu = CpuSnapshot::take(shop_pid).since(&cpu_before);
    let connections_established = shop
        .and_then(|_| base.rsplit(':').next()?.parse::<u16>().ok())
        .and_then(crate::spawn::established_on);
    let after = cache_counters(&control, base).await.ok();
    let stats = phase.stats;
    acknowledged += stats.confirmed;
    let elapsed = phase.elapsed.as_secs_f64();

    bar.phase("settling", args.settle_timeout);
    let settle_start = Instant::now();
    let audit_value = settle(&control, base, &args.product, args.settle_timeout).await?;
    let settle_s = settle_start.elapsed().as_secs_f64();
    let rss_peak_bytes = shop.and_then(SpawnedShop::rss_peak);
    let audit: Audit = serde_json::from_value(audit_value.clone())
        .with_context(|| format!("unexpected audit answer: {audit_value}"))?;
    let invariants = check_invariants(&audit, acknowledged);
    let invariants_ok = invariants.iter().all(|c| c.ok);

    let ops = stats.results(elapsed);
    let purchases_ok_per_s = measure::per_second(stats.confirmed, elapsed);
    let sold_out = ops
        .iter()
        .any(|o| o.errors.keys().any(|k| k.ends_with("SOLD_OUT")));
    let run = StrategyRun {
        strategy: strategy.to_owned(),
        url: base.to_owned(),
        elapsed_s: elapsed,
        ops,
        purchases_ok_per_s,
        pgbench_ratio: None,
        sold_out,
        cache: before
            .zip(after)
            .map(|(b, a)| a.since(&b))
            .filter(|c| c.lookups > 0),
        connections_established,
        rss_peak_bytes,
        cpu,
        settle_s,
        acknowledged_confirmed: acknowledged,
        audit: audit_value,
        invariants,
        invariants_ok,
    };
    bar.done(&format!(
        "{:.1} purchases/s, {} views/s, invariants {}",
        run.purchases_ok_per_s,
        run.ops
            .iter()
            .find(|o| o.op == "view")
            .map_or("0".to_owned(), |o| format!("{:.1}", o.throughput_rps)),
        if invariants_ok { "OK" } else { "VIOLATED" }
    ));
    Ok(run)
}

/// Polls `/health/ready` until 200.
async fn wait_ready(client: &HttpClient, base: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + CONTROL_TIMEOUT;
    let mut last = String::new();
    while Instant::now() < deadline {
        match call(client, Method::GET, &format!("{base}/health/ready"), None).await {
            Ok((200, _)) => return Ok(()),
            Ok((s, body)) => last = format!("{s} {body}"),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{base} not ready after {CONTROL_TIMEOUT:?}: {last}")
}

/// Seeds the hot product with `reset` (a fresh sale), retrying while the previous
/// sale's sagas finish.
async fn seed(client: &HttpClient, base: &str, product: &str, stock: i64) -> anyhow::Result<()> {
    let body = json!({
        "products": [{"id": product, "name": "Flash sale item", "description": "bulwark bench shop",
                      "price_cents": 1999, "stock": stock}],
        "reset": true
    });
    let url = format!("{base}/v1/admin/seed");
    for _ in 0..30 {
        match call(client, Method::POST, &url, Some(body.to_string())).await {
            Ok((200, _)) => return Ok(()),
            Ok((409, _)) => tokio::time::sleep(Duration::from_secs(1)).await,
            Ok((s, body)) => bail!("seeding {url}: {s} {body}"),
            Err(e) => bail!("seeding {url}: {e}"),
        }
    }
    bail!("seeding {url}: sagas of the previous sale still running after 30 s")
}

/// Waits until the audit shows no pending order (or `timeout`), and returns that audit.
async fn settle(
    client: &HttpClient,
    base: &str,
    product: &str,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let url = format!("{base}/v1/admin/products/{product}/audit");
    let deadline = Instant::now() + timeout;
    loop {
        let (status, body) = call(client, Method::GET, &url, None)
            .await
            .map_err(|e| anyhow::anyhow!("audit {url}: {e}"))?;
        if status != 200 {
            bail!("audit {url}: {status} {body}");
        }
        let audit: Value = serde_json::from_str(&body).context("audit answer is not JSON")?;
        let pending = audit
            .pointer("/orders/PENDING")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if pending == 0 || Instant::now() >= deadline {
            return Ok(audit);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One orchestration request; `Ok((status, body))` or the transport failure.
async fn call(
    client: &HttpClient,
    method: Method,
    url: &str,
    body: Option<String>,
) -> Result<(u16, String), String> {
    let uri: Uri = url.parse().map_err(|_| format!("bad URL {url:?}"))?;
    let mut req = Request::new(Full::new(Bytes::from(body.unwrap_or_default())));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    req.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    measure::send_read(client, req, CONTROL_TIMEOUT, BODY_LIMIT)
        .await
        .map_err(|o| format!("{o:?}"))
}

/// `shop_cache_requests_total` by (cache, result).
#[derive(Debug, Clone, Default, PartialEq)]
struct CacheCounters(BTreeMap<(String, String), f64>);

impl CacheCounters {
    /// The hit rates of what happened between `before` and `self`.
    fn since(&self, before: &CacheCounters) -> CacheFigures {
        let delta = |cache: &str, result: &str| {
            let k = (cache.to_owned(), result.to_owned());
            (self.0.get(&k).copied().unwrap_or(0.0) - before.0.get(&k).copied().unwrap_or(0.0))
                .max(0.0)
        };
        let rate = |hits: f64, lookups: f64| if lookups > 0.0 { hits / lookups } else { 0.0 };
        let (dh, dm) = (delta("details", "hit"), delta("details", "miss"));
        let (sh, sm) = (delta("stock", "hit"), delta("stock", "miss"));
        CacheFigures {
            details_hit_rate: rate(dh, dh + dm),
            stock_hit_rate: rate(sh, sh + sm),
            hit_rate: rate(dh + sh, dh + dm + sh + sm),
            lookups: (dh + dm + sh + sm) as u64,
        }
    }
}

async fn cache_counters(client: &HttpClient, base: &str) -> anyhow::Result<CacheCounters> {
    let (status, text) = call(client, Method::GET, &format!("{base}/metrics"), None)
        .await
        .map_err(|e| anyhow::anyhow!("metrics: {e}"))?;
    if status != 200 {
        bail!("metrics: {status}");
    }
    Ok(parse_cache_counters(&text))
}

/// Reads `shop_cache_requests_total{cache="…",result="…"} N` lines of a Prometheus
/// exposition.
fn parse_cache_counters(text: &str) -> CacheCounters {
    let mut out = CacheCounters::default();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("shop_cache_requests_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let label = |name: &str| {
            labels.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k.trim() == name).then(|| v.trim().trim_matches('"').to_owned())
            })
        };
        if let (Some(cache), Some(result), Ok(n)) =
            (label("cache"), label("result"), value.trim().parse::<f64>())
        {
            out.0.insert((cache, result), n);
        }
    }
    out
}

/// What a request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ShopOp {
    View,
    Purchase,
}

/// How one shop request ended.
#[derive(Debug)]
pub(crate) struct ShopOutcome {
    op: ShopOp,
    /// The transport outcome (status or failure).
    outcome: Outcome,
    /// `X-Cache: hit` (views).
    cache_hit: bool,
    /// `error.code` of an error body.
    code: Option<String>,
}

/// Sends views and purchases of the hot product, each worker on a connection of its own.
#[derive(Debug)]
struct ShopDriver {
    conns: WorkerConns,
    view: Uri,
    order: Uri,
    body: Bytes,
    /// A request is a view when a 53-bit random number is below this.
    read_threshold: u64,
    /// Unique per run and strategy, so keys never collide across sales.
    key_prefix: String,
    next_key: AtomicU64,
    timeout: Duration,
}

impl ShopDriver {
    fn new(base: &str, args: &ShopBenchArgs, index: u64) -> anyhow::Result<Self> {
        let target: Target = base.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
        let url: Uri = target
            .url
            .parse()
            .with_context(|| format!("bad URL {:?}", target.url))?;
        // The shop driver speaks HTTP/1.1 over its own sockets; it has no TLS.
        anyhow::ensure!(
            url.scheme_str() == Some("http"),
            "bench shop needs an http:// URL, not {:?}",
            target.url
        );
        let host = url
            .host()
            .with_context(|| format!("no host in {:?}", target.url))?;
        let authority = format!("{host}:{}", url.port_u16().unwrap_or(80));
        // A base URL with a path (a shop behind a prefix) keeps it.
        let prefix = url.path().trim_end_matches('/').to_owned();
        let uri = |path: String| -> anyhow::Result<Uri> {
            let full = format!("{prefix}{path}");
            full.parse().with_context(|| format!("bad path {full:?}"))
        };
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        Ok(ShopDriver {
            conns: WorkerConns::new(&authority, args.connections as usize, args.timeout)?,
            view: uri(format!("/v1/products/{}", args.product))?,
            order: uri("/v1/orders".to_owned())?,
            body: Bytes::from(
                json!({"product_id": args.product, "quantity": 1, "customer_id": "bench"})
                    .to_string(),
            ),
            read_threshold: (args.read_ratio.clamp(0.0, 1.0) * (1u64 << 53) as f64) as u64,
            key_prefix: format!("bench-{started:x}-{index}"),
            next_key: AtomicU64::new(0),
            timeout: args.timeout,
        })
    }

    fn request(&self, op: ShopOp) -> Request<Full<Bytes>> {
        match op {
            ShopOp::View => {
                let mut req = Request::new(Full::new(Bytes::new()));
                *req.uri_mut() = self.view.clone();
                req
            }
            ShopOp::Purchase => {
                let mut req = Request::new(Full::new(self.body.clone()));
                *req.method_mut() = Method::POST;
                *req.uri_mut() = self.order.clone();
                let n = self.next_key.fetch_add(1, Ordering::Relaxed);
                let h = req.headers_mut();
                h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                if let Ok(key) = HeaderValue::from_str(&format!("{}-{n}", self.key_prefix)) {
                    h.insert("idempotency-key", key);
                }
                req
            }
        }
    }
}

impl Driver for ShopDriver {
    type Rec = ShopStats;

    async fn fire(&self, worker: usize, rng: &mut Rng) -> ShopOutcome {
        let op = if (rng.next_u64() >> 11) < self.read_threshold {
            ShopOp::View
        } else {
            ShopOp::Purchase
        };
        let req = self.request(op);
        let exchange = async {
            let resp = match self.conns.send(worker, req).await {
                Ok(resp) => resp,
                Err(outcome) => return (outcome, false, None),
            };
            let status = resp.status().as_u16();
            let cache_hit = resp
                .headers()
                .get("x-cache")
                .is_some_and(|v| v.as_bytes() == b"hit");
            let keep = status >= 300;
            let mut body = resp.into_body();
            let mut text = Vec::new();
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    return (Outcome::Other, false, None);
                };
                if keep && let Some(data) = frame.data_ref() {
                    let room = 4096usize.saturating_sub(text.len());
                    text.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            let code = keep.then(|| error_code(&text)).flatten();
            (Outcome::Status(status), cache_hit, code)
        };
        let (outcome, cache_hit, code) = tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or((Outcome::Timeout, false, None));
        ShopOutcome {
            op,
            outcome,
            cache_hit,
            code,
        }
    }
}

/// `error.code` of a structured error body.
fn error_code(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.pointer("/error/code")?.as_str().map(str::to_owned)
}

/// One operation's figures.
#[derive(Debug, Clone)]
struct OpStats {
    stats: Stats,
    errors: BTreeMap<String, u64>,
}

impl OpStats {
    fn new() -> Self {
        OpStats {
            stats: Stats::new(),
            errors: BTreeMap::new(),
        }
    }

    fn record(&mut self, o: &ShopOutcome, latency: Duration) {
        self.stats.record(o.outcome, latency);
        let kind = match o.outcome {
            Outcome::Status(s) if (200..300).contains(&s) => None,
            Outcome::Status(s) => Some(match &o.code {
                Some(code) => format!("{s} {code}"),
                None => s.to_string(),
            }),
            Outcome::Timeout => Some("timeout".to_owned()),
            Outcome::Connect => Some("connect".to_owned()),
            Outcome::Other => Some("transport".to_owned()),
        };
        if let Some(kind) = kind {
            *self.errors.entry(kind).or_default() += 1;
        }
    }

    fn merge(&mut self, other: &OpStats) {
        self.stats.merge(&other.stats);
        for (k, n) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += n;
        }
    }

    fn result(&self, op: &str, elapsed: f64, missed: u64) -> OpResult {
        let s = &self.stats;
        OpResult {
            op: op.to_owned(),
            requests: s.requests(),
            ok: s.ok(),
            throughput_rps: measure::per_second(s.requests(), elapsed),
            latency_us: s.latency(),
            status_codes: s.status_codes().collect(),
            errors: self.errors.clone(),
            missed,
        }
    }
}

/// What the shop bench records: views (all, and split by `X-Cache`) and purchases.
#[derive(Debug, Clone)]
pub(crate) struct ShopStats {
    view: OpStats,
    view_hit: OpStats,
    view_miss: OpStats,
    purchase: OpStats,
    /// Purchases answered 201 CONFIRMED.
    confirmed: u64,
    /// Open loop: scheduled requests never sent.
    missed: u64,
}

impl ShopStats {
    /// One result per operation that was sent (the open loop's missed requests are
    /// reported on the first).
    fn results(&self, elapsed: f64) -> Vec<OpResult> {
        let mut ops: Vec<OpResult> = [
            ("view", &self.view),
            ("view (cache hit)", &self.view_hit),
            ("view (cache miss)", &self.view_miss),
            ("purchase", &self.purchase),
        ]
        .into_iter()
        .filter(|(_, s)| s.stats.requests() > 0)
        .map(|(name, s)| s.result(name, elapsed, 0))
        .collect();
        if let Some(first) = ops.first_mut() {
            first.missed = self.missed;
        }
        ops
    }
}

impl Recorder for ShopStats {
    type Outcome = ShopOutcome;

    fn empty() -> Self {
        ShopStats {
            view: OpStats::new(),
            view_hit: OpStats::new(),
            view_miss: OpStats::new(),
            purchase: OpStats::new(),
            confirmed: 0,
            missed: 0,
        }
    }

    fn record(&mut self, o: ShopOutcome, latency: Duration) {
        match o.op {
            ShopOp::View => {
                self.view.record(&o, latency);
                if let Outcome::Status(200) = o.outcome {
                    if o.cache_hit {
                        self.view_hit.record(&o, latency);
                    } else {
                        self.view_miss.record(&o, latency);
                    }
                }
            }
            ShopOp::Purchase => {
                self.purchase.record(&o, latency);
                if o.outcome == Outcome::Status(201) {
                    self.confirmed += 1;
                }
            }
        }
    }

    fn merge(&mut self, other: &Self) {
        self.view.merge(&other.view);
        self.view_hit.merge(&other.view_hit);
        self.view_miss.merge(&other.view_miss);
        self.purchase.merge(&other.purchase);
        self.confirmed += other.confirmed;
        self.missed += other.missed;
    }

    fn add_missed(&mut self, n: u64) {
        self.missed += n;
    }

    /// Requests and errors of both operations; the purchases' p99.
    fn live(&self, elapsed: Duration) -> Live {
        Live {
            elapsed,
            requests: self.view.stats.requests() + self.purchase.stats.requests(),
            errors: self.view.stats.errors().total() + self.purchase.stats.errors().total(),
            p99_us: self.purchase.stats.latency().p99,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_args() -> ShopBenchArgs {
        #[derive(clap::Parser, Debug)]
        struct Cli {
            #[command(flatten)]
            args: ShopBenchArgs,
        }
        <Cli as clap::Parser>::try_parse_from(["bench-shop", "--connections", "3"])
            .expect("defaults parse")
            .args
    }

    #[test]
    fn the_driver_dials_host_and_port_and_keeps_a_base_path() {
        let args = default_args();
        let d = ShopDriver::new("http://127.0.0.1:8080", &args, 0).expect("plain");
        assert_eq!(d.order, "/v1/orders");
        assert_eq!(d.view.to_string(), format!("/v1/products/{}", args.product));
        let d = ShopDriver::new("http://shop.internal/api/", &args, 0).expect("prefix");
        assert_eq!(d.order, "/api/v1/orders");
        assert!(format!("{:?}", d.conns).contains("\"shop.internal:80\""));
        let err = ShopDriver::new("https://127.0.0.1:8443", &args, 0).expect_err("https");
        assert!(err.to_string().contains("http://"), "{err}");
    }

    #[test]
    fn cache_counters_come_from_the_exposition() {
        let before = parse_cache_counters(
            "# HELP x\nshop_cache_requests_total{cache=\"details\",result=\"hit\"} 10\n\
             shop_cache_requests_total{cache=\"details\",result=\"miss\"} 2\n",
        );
        let after = parse_cache_counters(
            "shop_cache_requests_total{cache=\"details\",result=\"hit\"} 100\n\
             shop_cache_requests_total{result=\"miss\",cache=\"details\"} 2\n\
             shop_cache_requests_total{cache=\"stock\",result=\"hit\"} 45\n\
             shop_cache_requests_total{cache=\"stock\",result=\"miss\"} 45\n\
             shop_purchases_total{strategy=\"batched\",outcome=\"reserved\"} 7\n",
        );
        let f = after.since(&before);
        assert_eq!(f.details_hit_rate, 1.0);
        assert_eq!(f.stock_hit_rate, 0.5);
        assert_eq!(f.lookups, 180);
        assert_eq!(f.hit_rate, 135.0 / 180.0);
    }

    #[test]
    fn errors_are_counted_by_status_and_code() {
        let mut s = ShopStats::empty();
        let ms = Duration::from_millis(1);
        let o = |op, outcome, cache_hit, code: Option<&str>| ShopOutcome {
            op,
            outcome,
            cache_hit,
            code: code.map(str::to_owned),
        };
        s.record(o(ShopOp::Purchase, Outcome::Status(201), false, None), ms);
        s.record(
            o(
                ShopOp::Purchase,
                Outcome::Status(409),
                false,
                Some("SOLD_OUT"),
            ),
            ms,
        );
        s.record(o(ShopOp::Purchase, Outcome::Timeout, false, None), ms);
        s.record(o(ShopOp::View, Outcome::Status(200), true, None), ms);
        s.record(o(ShopOp::View, Outcome::Status(200), false, None), ms);
        s.record(o(ShopOp::View, Outcome::Status(503), false, None), ms);
        assert!(ShopStats::empty().results(1.0).is_empty());
        let ops = s.results(1.0);
        let names: Vec<&str> = ops.iter().map(|o| o.op.as_str()).collect();
        assert_eq!(
            names,
            ["view", "view (cache hit)", "view (cache miss)", "purchase"]
        );
        assert_eq!(s.confirmed, 1);
        let purchase = &ops[3];
        assert_eq!(purchase.requests, 3);
        assert_eq!(
            purchase.errors,
            BTreeMap::from([("409 SOLD_OUT".into(), 1), ("timeout".into(), 1)])
        );
        assert_eq!(ops[0].errors, BTreeMap::from([("503".into(), 1)]));
        assert_eq!((ops[1].requests, ops[2].requests), (1, 1));
        assert_eq!(
            error_code(br#"{"error":{"code":"OVERLOADED","message":"m","request_id":"r"}}"#),
            Some("OVERLOADED".into())
        );
        assert_eq!(error_code(b"not json"), None);
    }
}
