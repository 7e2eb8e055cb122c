//! Replicas converge after faults (SPEC CAP-4 "eventually", HARD-6), checked by comparing
//! the replicas themselves rather than by reading through a gateway (a read would repair
//! what it reads and hide the problem).
//!
//! While AP writes stream in, db_g3 is stopped (so the AP gateway queues hints for it),
//! then the AP gateway is SIGKILLed (its hints die with it) and db_g2 is SIGKILLed too.
//! Once everything is back, no client reads anything: only anti-entropy can bring db_g3
//! the writes whose hints were lost. The test waits for the three replicas' digests to be
//! equal and then checks every acknowledged write on every replica.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bulwark_replica::{Dialect, ReplicaClient, ReplicaSpec};
use bulwark_testkit::wait_for;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ap_replicas_converge_after_hints_are_lost_with_bulwark_nodes() {
    converge("bulwark", Dialect::Bulwark).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ap_replicas_converge_after_hints_are_lost_with_redis_servers() {
    converge("redis", Dialect::Redis).await;
}

fn replicas(dialect: Dialect) -> Vec<ReplicaClient> {
    (1..=3)
        .map(|i| {
            ReplicaClient::new(
                ReplicaSpec {
                    name: format!("db_g{i}"),
                    addr: format!("127.0.0.1:{}", 6400 + i),
                },
                dialect,
                Duration::from_secs(5),
            )
        })
        .collect()
}

async fn converge(backend: &str, dialect: Dialect) {
    let up = Up::start(
        &["--backend", backend, "--replicas", "3"],
        &[
            ("CB_OPEN_TIMEOUT_SEC", "1"),
            ("ANTI_ENTROPY_INTERVAL_SEC", "2"),
        ],
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let c = client();
            // Every key is written once, so nothing written during the outage is
            // overwritten later: only anti-entropy can bring it to db_g3.
            let mut acked: BTreeMap<String, String> = BTreeMap::new();
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("conv-{i}");
                let value = format!("v{i}");
                let (status, _) = post(&c, format!("{AP}/write/{key}/{value}")).await;
                if status == 200 {
                    acked.insert(key, value);
                } else {
                    // The gateway is restarting; this write's outcome is unknown.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                i += 1;
            }
            (acked, i)
        })
    };

    tokio::time::sleep(Duration::from_millis(500)).await;
    ctl_ok(&["stop", "db_g3"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ctl_ok(&["kill", "app_ap"]); // SIGKILL: the hints for db_g3 are gone
    tokio::time::sleep(Duration::from_millis(500)).await;
    ctl_ok(&["kill", "db_g2"]);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    ctl_ok(&["start", "db_g3"]);
    assert!(up.wait_healthy().await, "everything is back");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let (acked, sent) = writer.await.expect("writer task");
    eprintln!("{sent} writes sent, {} acknowledged", acked.len());
    assert!(
        acked.len() > 50,
        "too few acknowledged writes to test anything"
    );

    let r = replicas(dialect);
    let converged = wait_for(Duration::from_secs(60), || {
        let r = r.clone();
        async move {
            let mut digests = Vec::new();
            for c in &r {
                match c.digest().await {
                    Ok(d) => digests.push(d),
                    Err(_) => return false,
                }
            }
            digests.iter().all(|d| *d == digests[0])
        }
    })
    .await;
    assert!(converged, "the replicas' digests never became equal");

    for (key, value) in &acked {
        for c in &r {
            let state = c.get(key.as_bytes()).await.expect("direct read");
            let got = state.committed.and_then(|rec| rec.value);
            assert_eq!(
                got.as_deref(),
                Some(value.as_bytes()),
                "{key} on {}: the acknowledged write is missing",
                c.name()
            );
        }
    }
    let repairs = log_events("app_ap", "ANTI_ENTROPY_ROUND")
        .into_iter()
        .chain(log_events("app_cp", "ANTI_ENTROPY_ROUND"))
        .chain(log_events("app_quorum", "ANTI_ENTROPY_ROUND"))
        .filter(|e| e["repaired"].as_u64().unwrap_or(0) > 0)
        .count();
    assert!(repairs > 0, "no anti-entropy round repaired anything");
}
