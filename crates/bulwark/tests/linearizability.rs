//! SPEC CAP-3, "linearizable for single keys — checked, not assumed": concurrent clients
//! read and write a few keys through the CP gateway, then through the quorum gateway,
//! while replicas and the gateway are killed, stopped and restarted. Every request is
//! recorded with its invoke and completion time and what the client was told; the
//! history is then checked with `bulwark-check` (a Wing–Gong/Lowe search per key).
//!
//! How answers map to the history:
//!
//! * write 200 → ok; 503 `CP_ABORTED` → failed (must never be observed); a refused
//!   connection → failed (the request was never sent); 504, a timeout, a broken
//!   connection or anything else → unknown (may take effect at any later time, or never);
//! * read 200 → ok with its value; 404 → ok, absent; anything else → failed or unknown,
//!   which constrains nothing.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulwark_check::{Call, Completion, History, Limits, Recorder, check};
use common::*;
use serde_json::Value;

/// Concurrent clients per phase.
const CLIENTS: u64 = 8;
/// Keys they share: few, so operations on a key overlap often.
const KEYS: u64 = 4;
/// How long clients run in each phase.
const PHASE: Duration = Duration::from_secs(8);
/// Client-side bound on one request; beyond it the outcome is unknown.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// splitmix64: seeded, dependency-free randomness for the clients' choices.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

/// What a client was told, with counts kept for the report.
fn write_completion(res: &Result<(u16, Value), reqwest::Error>) -> Completion {
    match res {
        Ok((200, _)) => Completion::Ok(None),
        Ok((503, body)) if body["error"]["code"] == "CP_ABORTED" => Completion::Fail,
        // Never sent: the gateway was down.
        Err(e) if e.is_connect() => Completion::Fail,
        _ => Completion::Info,
    }
}

fn read_completion(res: &Result<(u16, Value), reqwest::Error>) -> Completion {
    match res {
        Ok((200, body)) => match body["value"].as_str() {
            Some(v) => Completion::Ok(Some(v.to_string())),
            // A 200 without a string value is not something the checker can use.
            None => Completion::Info,
        },
        Ok((404, _)) => Completion::Ok(None),
        Ok((503, _)) => Completion::Fail,
        Err(e) if e.is_connect() => Completion::Fail,
        _ => Completion::Info,
    }
}

async fn send(req: reqwest::RequestBuilder) -> Result<(u16, Value), reqwest::Error> {
    let r = req.send().await?;
    let status = r.status().as_u16();
    // A body cut off by a dying gateway is an error like any other transport failure.
    let body = r.json::<Value>().await.unwrap_or(Value::Null);
    Ok((status, body))
}

/// One client: random reads and writes of unique values until `until`.
async fn client_loop(
    recorder: Arc<Recorder>,
    base: &'static str,
    phase: &'static str,
    id: u64,
    until: Instant,
) -> Answers {
    let mut answers = Answers::new();
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("http client");
    let mut rng = Rng(0xB01A_0000 + id);
    let mut n = 0u64;
    while Instant::now() < until {
        let key = format!("lin-{phase}-{}", rng.below(KEYS));
        let completion = if rng.below(2) == 0 {
            let value = format!("c{id}-{n}");
            n += 1;
            let op = recorder.invoke(id, &key, Call::Write(value.clone()));
            let res = send(http.post(format!("{base}/write/{key}/{value}"))).await;
            *answers
                .entry(format!("write {}", answer(&res)))
                .or_default() += 1;
            let c = write_completion(&res);
            recorder.complete(op, c.clone());
            c
        } else {
            let op = recorder.invoke(id, &key, Call::Read);
            let res = send(http.get(format!("{base}/read/{key}"))).await;
            *answers.entry(format!("read {}", answer(&res))).or_default() += 1;
            let c = read_completion(&res);
            recorder.complete(op, c.clone());
            c
        };
        // Do not spin against a gateway that is down or refusing everything.
        if !matches!(completion, Completion::Ok(_)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    answers
}

/// How many requests got each kind of answer (`"write 503 CP_ABORTED"`: 17).
type Answers = BTreeMap<String, usize>;

/// A short label for an answer: status and error code, or the kind of transport error.
fn answer(res: &Result<(u16, Value), reqwest::Error>) -> String {
    match res {
        Ok((status, body)) => match body["error"]["code"].as_str() {
            Some(code) => format!("{status} {code}"),
            None => status.to_string(),
        },
        Err(e) if e.is_connect() => "connection refused".into(),
        Err(e) if e.is_timeout() => "timeout".into(),
        Err(_) => "transport error".into(),
    }
}

/// Runs `bulwark ctl` off the async workers (it is a blocking child process).
async fn ctl_async(args: Vec<&'static str>) {
    tokio::task::spawn_blocking(move || ctl_ok(&args))
        .await
        .expect("ctl task");
}

/// The faults of one phase, at fixed offsets from its start; returns what was done.
async fn inject_faults(gateway: &'static str) -> Vec<String> {
    let start = Instant::now();
    let mut done = Vec::new();
    let schedule = [
        (1000, vec!["kill", "db_g2"]),
        (2500, vec!["stop", "db_g3"]),
        (4000, vec!["start", "db_g3"]),
        (5000, vec!["kill", "db_g1"]), // the coordinator of most writes
        (6500, vec!["kill", gateway_name(gateway)]),
    ];
    for (at_ms, args) in schedule {
        let at = start + Duration::from_millis(at_ms);
        tokio::time::sleep_until(at.into()).await;
        let line = format!("{:.1}s ctl {}", at_ms as f64 / 1000.0, args.join(" "));
        ctl_async(args).await;
        done.push(line);
    }
    done
}

fn gateway_name(base: &str) -> &'static str {
    if base == QUORUM {
        "app_quorum"
    } else {
        "app_cp"
    }
}

/// Runs one phase against `base` and checks its history.
async fn phase(up: &Up, base: &'static str, phase: &'static str) {
    assert!(
        up.wait_healthy().await,
        "cluster healthy before the {phase} phase"
    );
    for node in ["db_g1", "db_g2", "db_g3"] {
        assert!(
            wait_breaker(base, node, "CLOSED").await,
            "{phase}: breaker of {node} closed"
        );
    }
    let recorder = Arc::new(Recorder::new());
    let until = Instant::now() + PHASE;
    let faults = tokio::spawn(inject_faults(base));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(client_loop(recorder.clone(), base, phase, id, until)))
        .collect();
    let mut answers = Answers::new();
    for c in clients {
        for (label, n) in c.await.expect("client task") {
            *answers.entry(label).or_default() += n;
        }
    }
    let faults = faults.await.expect("fault task");
    let history = recorder.history();
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("linearizability-{phase}.json"));
    let json = serde_json::to_vec(&history).expect("history serializes");
    std::fs::write(&path, json).expect("write history");

    let started = Instant::now();
    let result = check(&history, &Limits::default());
    let took = started.elapsed();
    let report = match result {
        Ok(r) => r,
        Err(e) => panic!(
            "{phase}: history could not be checked: {e} (history: {})",
            path.display()
        ),
    };
    let (ok, failed, unknown) = history.outcome_counts();
    let searched: usize = report.keys.iter().map(|k| k.searched).sum();
    let states: usize = report.keys.iter().map(|k| k.states).sum();
    eprintln!(
        "{phase}: {} ops ({ok} ok, {failed} failed, {unknown} unknown), {searched} searched, \
         {states} states, checked in {took:?}; answers: {answers:?}; faults: {faults:?}; \
         history: {}",
        history.ops.len(),
        path.display()
    );
    let violations: Vec<String> = report.violations().map(|c| c.to_string()).collect();
    assert!(
        violations.is_empty(),
        "{phase} history is not linearizable (history: {}):\n{}",
        path.display(),
        violations.join("\n")
    );
    assert_meaningful(&history, phase);
}

/// The run must have exercised something: enough operations, reads that saw writes, and
/// faults that hit requests.
fn assert_meaningful(history: &History, phase: &str) {
    use bulwark_check::{OpKind, Outcome};
    let (ok, failed, unknown) = history.outcome_counts();
    let reads_of_values = history
        .ops
        .iter()
        .filter(|o| o.outcome == Outcome::Ok && matches!(&o.kind, OpKind::Read { value: Some(_) }))
        .count();
    let ok_writes = history
        .ops
        .iter()
        .filter(|o| o.outcome == Outcome::Ok && matches!(&o.kind, OpKind::Write { .. }))
        .count();
    assert!(ok >= 300, "{phase}: only {ok} successful operations");
    assert!(
        ok_writes >= 100 && reads_of_values >= 100,
        "{phase}: {ok_writes} writes, {reads_of_values} reads of values"
    );
    assert!(failed + unknown > 0, "{phase}: the faults hit no request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cp_and_quorum_reads_and_writes_are_linearizable_under_faults() {
    let up = Up::start(
        &["--backend", "bulwark", "--replicas", "3"],
        &[("CB_OPEN_TIMEOUT_SEC", "1")],
    )
    .await;
    phase(&up, CP, "cp").await;
    phase(&up, QUORUM, "quorum").await;
}
