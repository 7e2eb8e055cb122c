//! Crash safety of CP writes (SPEC CAP-3, issue "crash test"): while a stream of CP writes
//! runs, SIGKILL a replica and then the CP gateway. After the supervisor restarts them:
//! every acknowledged (200) write is readable, and no write answered 503 ever appears.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;

/// What the client was told about one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Told {
    Committed,
    Aborted,
    Unknown,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cp_writes_survive_sigkill_with_bulwark_nodes() {
    crash_run("bulwark").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cp_writes_survive_sigkill_with_redis_servers() {
    crash_run("redis").await;
}

async fn crash_run(backend: &str) {
    let up = Up::start(&["--backend", backend], &[("CB_OPEN_TIMEOUT_SEC", "1")]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let c = client();
            let mut told = BTreeMap::new();
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) || i < 50 {
                let (status, _) = post(&c, format!("{CP}/write/crash-{i}/value-{i}")).await;
                let t = match status {
                    200 => Told::Committed,
                    503 => Told::Aborted,
                    _ => Told::Unknown, // 504, or the gateway died mid-request
                };
                told.insert(i, t);
                i += 1;
                if t != Told::Committed {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            told
        })
    };

    tokio::time::sleep(Duration::from_millis(500)).await;
    ctl_ok(&["kill", "db_g2"]); // SIGKILL a replica
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ctl_ok(&["kill", "app_cp"]); // SIGKILL the CP gateway
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(up.wait_healthy().await, "the supervisor restarted both");
    assert!(wait_breaker(CP, "db_g2", "CLOSED").await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let told = writer.await.expect("writer task");

    let count = |t: Told| told.values().filter(|v| **v == t).count();
    let (committed, aborted, unknown) = (
        count(Told::Committed),
        count(Told::Aborted),
        count(Told::Unknown),
    );
    eprintln!("writes: {committed} committed, {aborted} aborted (503), {unknown} unknown");
    assert!(committed > 0, "some writes must have succeeded");
    assert!(
        aborted + unknown > 0,
        "the faults must have hit some writes"
    );

    let c = client();
    for (i, t) in &told {
        let (status, body) = get(&c, format!("{CP}/read/crash-{i}")).await;
        match t {
            Told::Committed => {
                assert_eq!(status, 200, "acknowledged write crash-{i} lost: {body}");
                assert_eq!(body["value"], format!("value-{i}"));
            }
            Told::Aborted => {
                assert_eq!(
                    status, 404,
                    "write crash-{i} answered 503 but is visible: {body}"
                );
                let (ap_status, ap_body) = get(&c, format!("{AP}/read/crash-{i}")).await;
                assert_eq!(
                    ap_status, 404,
                    "aborted write visible through AP: {ap_body}"
                );
            }
            Told::Unknown => {} // either outcome is allowed
        }
    }
}
