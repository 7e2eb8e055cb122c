//! End-to-end runs of `bulwark bench kv` against small axum stubs on port 0.
//!
//! Assertions are on counts, classification and ordering only, never on how fast anything
//! was: the machine running the tests may be slow and busy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use bulwark_bench::args::{Api, Op, Scenario, Target};
use bulwark_bench::report::LoadModel;
use bulwark_bench::{BenchArgs, BenchCommand, KvArgs, ScenarioResult};
use clap::Parser;

/// What the stub gateway does and has seen.
#[derive(Default)]
struct Gateway {
    /// Every `fail_every`-th write answers 503 (0: never).
    fail_every: u64,
    writes: AtomicU64,
    reads: AtomicU64,
    puts: AtomicU64,
    /// Whether the (stub) replica db_g2 is stopped.
    replica_stopped: AtomicBool,
    /// Writes seen while db_g2 was stopped; the breaker opens after three.
    failures_while_down: AtomicU64,
    starts: AtomicU64,
    stops: AtomicU64,
}

async fn spawn(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// A gateway stub that takes about 1 ms per request.
async fn gateway(state: Arc<Gateway>) -> String {
    async fn write(
        State(g): State<Arc<Gateway>>,
        Path((_key, value)): Path<(String, String)>,
    ) -> StatusCode {
        assert!(value.bytes().all(|b| b.is_ascii_hexdigit()));
        tokio::time::sleep(Duration::from_millis(1)).await;
        let n = g.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if g.replica_stopped.load(Ordering::SeqCst) {
            g.failures_while_down.fetch_add(1, Ordering::SeqCst);
        }
        if g.fail_every > 0 && n % g.fail_every == 0 {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        }
    }
    async fn read(State(g): State<Arc<Gateway>>, Path(key): Path<String>) -> String {
        tokio::time::sleep(Duration::from_millis(1)).await;
        g.reads.fetch_add(1, Ordering::SeqCst);
        format!(r#"{{"key":"{key}","value":"00"}}"#)
    }
    async fn put(State(g): State<Arc<Gateway>>, body: axum::body::Bytes) -> StatusCode {
        assert!(!body.is_empty());
        g.puts.fetch_add(1, Ordering::SeqCst);
        StatusCode::OK
    }
    async fn breakers(State(g): State<Arc<Gateway>>) -> String {
        let open = g.failures_while_down.load(Ordering::SeqCst) >= 3;
        let state = if open { "OPEN" } else { "CLOSED" };
        format!(r#"{{"db_g1":{{"state":"CLOSED","failures":0}},"db_g2":{{"state":"{state}"}}}}"#)
    }
    let app = Router::new()
        .route("/write/{key}/{value}", post(write))
        .route("/read/{key}", get(read))
        .route("/v1/kv/{key}", get(read).put(put))
        .route("/circuit-breaker", get(breakers))
        .with_state(state);
    spawn(app).await
}

/// A supervisor stub: stop/start flip the gateway's replica flag.
async fn supervisor(state: Arc<Gateway>) -> String {
    async fn stop(State(g): State<Arc<Gateway>>, Path(name): Path<String>) -> StatusCode {
        assert_eq!(name, "db_g2");
        g.stops.fetch_add(1, Ordering::SeqCst);
        g.replica_stopped.store(true, Ordering::SeqCst);
        StatusCode::OK
    }
    async fn start(State(g): State<Arc<Gateway>>, Path(name): Path<String>) -> StatusCode {
        assert_eq!(name, "db_g2");
        g.starts.fetch_add(1, Ordering::SeqCst);
        g.replica_stopped.store(false, Ordering::SeqCst);
        StatusCode::OK
    }
    let app = Router::new()
        .route("/api/v1/services/{name}/stop", post(stop))
        .route("/api/v1/services/{name}/start", post(start))
        .with_state(state);
    spawn(app).await
}

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

/// Parses a `bench kv` command line, exactly as the binary would.
fn kv_args(argv: &[&str]) -> KvArgs {
    let mut full = vec!["bench", "kv"];
    full.extend_from_slice(argv);
    match Cli::try_parse_from(full).expect("valid flags").command {
        BenchCommand::Kv(a) => a,
        BenchCommand::Shop(_) => unreachable!("parsed `bench kv`"),
    }
}

fn check_invariants(r: &ScenarioResult) {
    assert_eq!(r.requests, r.ok + r.errors.total(), "{r:?}");
    let codes: u64 = r.status_codes.values().sum();
    assert_eq!(
        codes,
        r.ok + r.errors.http_4xx + r.errors.http_5xx + r.errors.http_other
    );
    assert_eq!(r.latency_us.count, codes);
    let l = &r.latency_us;
    assert!(
        l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max,
        "{l:?}"
    );
    assert!(r.throughput_rps > 0.0);
    assert!(r.elapsed_s > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_counts_writes_and_reads() {
    let g = Arc::new(Gateway::default());
    let url = gateway(Arc::clone(&g)).await;
    let args = kv_args(&[
        "--target",
        &format!("STUB={url}"),
        "--duration",
        "0.3",
        "--warmup",
        "0.1",
        "--concurrency",
        "4",
        "--keys",
        "20",
    ]);
    let report = bulwark_bench::run_kv(&args).await.expect("runs");
    assert_eq!(report.tool, "bulwark bench kv");
    assert_eq!(report.results.len(), 2);
    let (w, r) = (&report.results[0], &report.results[1]);
    assert_eq!(w.scenario, "STUB write");
    assert_eq!(r.scenario, "STUB read");
    assert_eq!((w.op, r.op), (Op::Write, Op::Read));
    for res in &report.results {
        check_invariants(res);
        assert!(res.requests > 0);
        assert_eq!(res.ok, res.requests, "no failures expected: {res:?}");
        assert_eq!(res.load, LoadModel::Closed { concurrency: 4 });
    }
    // The stub saw at least the measured requests (plus warm-up and the 20 preload writes).
    assert!(g.writes.load(Ordering::SeqCst) >= w.requests + 20);
    assert!(g.reads.load(Ordering::SeqCst) >= r.requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_503_is_counted_as_5xx() {
    let g = Arc::new(Gateway {
        fail_every: 4,
        ..Gateway::default()
    });
    let url = gateway(Arc::clone(&g)).await;
    let args = kv_args(&[
        "--target",
        &url,
        "--op",
        "write",
        "--duration",
        "0.3",
        "--warmup",
        "0",
        "--concurrency",
        "2",
    ]);
    let report = bulwark_bench::run_kv(&args).await.expect("runs");
    let r = &report.results[0];
    check_invariants(r);
    assert!(r.requests >= 8, "{r:?}");
    // Exactly one request in four fails, give or take one per worker around the edges.
    let expected = r.requests / 4;
    assert!(r.errors.http_5xx.abs_diff(expected) <= 2, "{r:?}");
    assert_eq!(r.status_codes.get(&503).copied(), Some(r.errors.http_5xx));
    assert_eq!(r.errors.http_4xx + r.errors.timeout + r.errors.connect, 0);
    assert_eq!(r.target, url.trim_start_matches("http://"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_target_counts_connect_errors() {
    // Bind and drop a listener to get a port that (almost certainly) refuses connections.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let args = kv_args(&[
        "--target",
        &format!("DEAD=http://127.0.0.1:{port}"),
        "--op",
        "write",
        "--duration",
        "0.2",
        "--warmup",
        "0",
        "--concurrency",
        "2",
        "--timeout",
        "1",
    ]);
    let report = bulwark_bench::run_kv(&args).await.expect("runs");
    let r = &report.results[0];
    check_invariants(r);
    assert_eq!(r.ok, 0);
    assert!(r.errors.connect > 0, "{r:?}");
    assert_eq!(r.latency_us.count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_server_counts_timeouts() {
    let app = Router::new().route(
        "/write/{key}/{value}",
        post(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "late"
        }),
    );
    let url = spawn(app).await;
    let args = kv_args(&[
        "--target",
        &url,
        "--op",
        "write",
        "--duration",
        "0.1",
        "--warmup",
        "0",
        "--concurrency",
        "3",
        "--timeout",
        "0.2",
    ]);
    let report = bulwark_bench::run_kv(&args).await.expect("runs");
    let r = &report.results[0];
    check_invariants(r);
    // Each worker sent one request, which timed out; nothing else happened.
    assert_eq!(r.errors.timeout, 3, "{r:?}");
    assert_eq!(r.requests, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_sends_rate_times_duration() {
    let g = Arc::new(Gateway::default());
    let url = gateway(Arc::clone(&g)).await;
    let args = kv_args(&[
        "--target",
        &url,
        "--op",
        "write",
        "--rate",
        "200",
        "--duration",
        "0.5",
        "--warmup",
        "0",
        "--concurrency",
        "8",
    ]);
    let report = bulwark_bench::run_kv(&args).await.expect("runs");
    let r = &report.results[0];
    check_invariants(r);
    // The schedule has exactly ceil(200 × 0.5) = 100 slots; each is either sent or, if the
    // machine is hopelessly slow, counted as missed. Never more.
    assert_eq!(r.requests + r.missed, 100, "{r:?}");
    assert!(r.requests >= 50, "{r:?}");
    assert_eq!(
        r.load,
        LoadModel::Open {
            rate: 200.0,
            concurrency: 8
        }
    );
    assert_eq!(g.writes.load(Ordering::SeqCst), r.requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_charges_queueing_delay() {
    // One worker, a server taking ≥ 50 ms, and a schedule of one request per 10 ms: the
    // worker falls behind, and late requests are charged from their intended send time.
    let app = Router::new().route(
        "/write/{key}/{value}",
        post(|| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            "ok"
        }),
    );
    let url = spawn(app).await;
    let args = kv_args(&[
        "--target",
        &url,
        "--op",
        "write",
        "--rate",
        "100",
        "--duration",
        "0.3",
        "--warmup",
        "0",
        "--concurrency",
        "1",
        "--timeout",
        "1",
    ]);
    let report = bulwark_bench::run_kv(&args).await.expect("runs");
    let r = &report.results[0];
    check_invariants(r);
    assert_eq!(r.requests + r.missed, 30);
    assert!(r.requests >= 2);
    // Request k is sent no earlier than k × 50 ms but intended at k × 10 ms, so the largest
    // latency must exceed the server's own 50 ms by the accumulated backlog: this is a
    // property of the measurement, not a timing threshold on the machine.
    let served = r.requests - 1;
    assert!(
        r.latency_us.max >= 50_000 + served * 40_000,
        "queueing delay not charged: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_api_mixed_and_json_output() {
    let g = Arc::new(Gateway::default());
    let url = gateway(Arc::clone(&g)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("results.json");
    let out_s = out.to_str().expect("utf-8 path").to_owned();
    let args = BenchArgs {
        command: BenchCommand::Kv(kv_args(&[
            "--target",
            &format!("V1={url}"),
            "--api",
            "v1",
            "--op",
            "mixed",
            "--read-ratio",
            "0.5",
            "--duration",
            "0.3",
            "--warmup",
            "0",
            "--concurrency",
            "2",
            "--keys",
            "10",
            "--json",
            "--output",
            &out_s,
        ])),
    };
    bulwark_bench::run(args).await.expect("runs");
    assert!(
        g.puts.load(Ordering::SeqCst) >= 10,
        "preload and mixed writes use PUT"
    );
    assert!(g.reads.load(Ordering::SeqCst) > 0);
    let text = std::fs::read_to_string(&out).expect("output written");
    let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(v["tool"], "bulwark bench kv");
    assert_eq!(v["format_version"], 1);
    let r = &v["results"][0];
    assert_eq!(r["scenario"], "V1 mixed");
    assert_eq!(r["op"], "mixed");
    assert_eq!(r["api"], "v1");
    assert_eq!(r["condition"], "normal");
    assert_eq!(r["load"]["model"], "closed");
    for field in ["requests", "ok", "missed"] {
        assert!(r[field].is_u64(), "{field}");
    }
    for field in [
        "http_4xx",
        "http_5xx",
        "http_other",
        "timeout",
        "connect",
        "other",
    ] {
        assert!(r["errors"][field].is_u64(), "{field}");
    }
    for field in ["count", "p50", "p90", "p99", "p999", "max"] {
        assert!(r["latency_us"][field].is_u64(), "{field}");
    }
    assert!(r["throughput_rps"].is_f64());
    assert!(r["status_codes"]["200"].is_u64());
    let parsed: bulwark_bench::BenchReport = serde_json::from_str(&text).expect("typed");
    check_invariants(&parsed.results[0]);
    assert_eq!(parsed.results[0].api, Api::V1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_down_stops_waits_for_breaker_and_restarts() {
    let g = Arc::new(Gateway::default());
    let url = gateway(Arc::clone(&g)).await;
    let control = supervisor(Arc::clone(&g)).await;
    let args = kv_args(&[
        "--target",
        &format!("CP={url}"),
        "--op",
        "write",
        "--scenario",
        "replica-down",
        "--control",
        &control,
        "--duration",
        "0.2",
        "--warmup",
        "0",
        "--concurrency",
        "2",
        "--breaker-wait",
        "30",
    ]);
    let report = bulwark_bench::run_kv(&args).await.expect("runs");
    let r = &report.results[0];
    assert_eq!(r.scenario, "CP write (db_g2 down)");
    assert_eq!(r.condition, Scenario::ReplicaDown);
    assert_eq!(r.replica_down.as_deref(), Some("db_g2"));
    check_invariants(r);
    assert_eq!(g.stops.load(Ordering::SeqCst), 1);
    assert_eq!(g.starts.load(Ordering::SeqCst), 1);
    assert!(!g.replica_stopped.load(Ordering::SeqCst));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_down_restarts_even_when_breaker_never_opens() {
    // A gateway whose breaker endpoint never reports OPEN.
    let g = Arc::new(Gateway::default());
    let app = Router::new()
        .route("/write/{key}/{value}", post(|| async { "ok" }))
        .route(
            "/circuit-breaker",
            get(|| async { r#"{"db_g2":{"state":"CLOSED"}}"# }),
        );
    let url = spawn(app).await;
    let control = supervisor(Arc::clone(&g)).await;
    let args = kv_args(&[
        "--target",
        &url,
        "--op",
        "write",
        "--scenario",
        "replica-down",
        "--control",
        &control,
        "--duration",
        "0.1",
        "--warmup",
        "0",
        "--breaker-wait",
        "0.3",
    ]);
    let err = bulwark_bench::run_kv(&args)
        .await
        .expect_err("breaker never opens");
    let msg = format!("{err:#}");
    assert!(msg.contains("not OPEN"), "{msg}");
    assert!(msg.contains("CLOSED"), "{msg}");
    assert_eq!(g.stops.load(Ordering::SeqCst), 1);
    assert_eq!(
        g.starts.load(Ordering::SeqCst),
        1,
        "replica restarted after failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_down_fails_cleanly_without_supervisor() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let args = kv_args(&[
        "--target",
        "http://127.0.0.1:9",
        "--op",
        "write",
        "--scenario",
        "replica-down",
        "--control",
        &format!("http://127.0.0.1:{port}"),
        "--duration",
        "0.1",
    ]);
    let err = bulwark_bench::run_kv(&args)
        .await
        .expect_err("no supervisor");
    assert!(format!("{err:#}").contains("stop of db_g2"), "{err:#}");
}

#[test]
fn target_type_is_public_for_the_binary() {
    let t: Target = "AP=http://127.0.0.1:5001".parse().expect("parses");
    assert_eq!(t.label, "AP");
}
