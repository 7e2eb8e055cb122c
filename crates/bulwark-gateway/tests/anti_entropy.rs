//! Anti-entropy (SPEC HARD-6) end to end, for both backends: replicas that diverged
//! behind the gateways' backs (a write acknowledged by one replica whose hints died with
//! its gateway, a corrupt copy, a missed deletion) converge without anyone reading the
//! keys, and what cannot be decided is reported, not guessed.

#[macro_use]
mod common;

use std::time::Duration;

use bulwark_core::Version;
use bulwark_replica::ReplicaClient;
use bulwark_testkit::wait_for;
use common::*;
use serde_json::{Value, json};

both_backends!(
    every_kind_of_divergence_is_repaired_and_the_replicas_converge,
    conflicting_copies_without_a_majority_are_reported_not_written,
    periodic_rounds_repair_keys_nobody_reads,
    rounds_are_bounded_and_skip_replicas_whose_breaker_is_open,
);

fn v(n: u64) -> Version {
    Version {
        physical_ms: 1_700_000_000_000 + n,
        logical: 0,
        writer: 42,
    }
}

async fn put(c: &ReplicaClient, key: &str, version: Version, value: Option<&str>) {
    let r = c
        .put(key.as_bytes(), version, value.map(str::as_bytes))
        .await
        .expect("direct put");
    assert!(r.applied, "{key} on {}", c.name());
}

/// The committed `(version, value)` of `key` on every replica.
async fn states(clients: &[ReplicaClient], key: &str) -> Vec<Option<(Version, Option<Vec<u8>>)>> {
    let mut out = Vec::new();
    for c in clients {
        let s = c.get(key.as_bytes()).await.expect("direct get");
        out.push(
            s.committed
                .map(|r| (r.version, r.value.map(|b| b.to_vec()))),
        );
    }
    out
}

async fn round(gw: &TestGateway) -> Value {
    let (status, body) = post(&client(), format!("{}/v1/admin/anti-entropy", gw.url)).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn repaired(summary: &Value, node: &str, reason: &str) -> u64 {
    summary["repaired"]
        .as_array()
        .expect("repaired list")
        .iter()
        .find(|r| r["node"] == node && r["reason"] == reason)
        .map_or(0, |r| r["count"].as_u64().expect("count"))
}

async fn every_kind_of_divergence_is_repaired_and_the_replicas_converge(backend: Backend) {
    let cluster = TestCluster::start(backend, 3).await;
    let gw = cluster
        .gateway("ap", &[("ANTI_ENTROPY_INTERVAL_SEC", "0")])
        .await;
    let r = cluster.direct();
    // In sync everywhere: untouched.
    for c in &r {
        put(c, "same", v(1), Some("s")).await;
    }
    // Acknowledged by db_g1 only (its gateway crashed before handing off): missing on
    // db_g2 and db_g3.
    put(&r[0], "only-on-g1", v(2), Some("one")).await;
    // db_g3 missed the newest write: stale there.
    for c in &r {
        put(c, "stale-on-g3", v(3), Some("old")).await;
    }
    put(&r[0], "stale-on-g3", v(4), Some("new")).await;
    put(&r[1], "stale-on-g3", v(4), Some("new")).await;
    // A deletion db_g2 missed.
    for c in &r {
        put(c, "deleted", v(5), Some("alive")).await;
    }
    put(&r[0], "deleted", v(6), None).await;
    put(&r[2], "deleted", v(6), None).await;
    // A corrupt copy on db_g2: same version, different bytes (BW.REPAIR can write it).
    for c in &r {
        put(c, "corrupt-on-g2", v(7), Some("right")).await;
    }
    r[1].repair(b"corrupt-on-g2", v(7), Some(b"wrong"))
        .await
        .expect("corrupt it");
    // Only on db_g3, newest there.
    put(&r[2], "only-on-g3", v(8), Some("three")).await;

    let summary = round(&gw).await;
    assert_eq!(summary["result"], "repaired", "{summary}");
    assert_eq!(summary["compared"], json!(["db_g1", "db_g2", "db_g3"]));
    assert_eq!(summary["conflicts"], 0);
    assert_eq!(summary["errors"], 0);
    assert_eq!(repaired(&summary, "db_g2", "missing"), 2, "{summary}");
    assert_eq!(repaired(&summary, "db_g3", "missing"), 1, "{summary}");
    assert_eq!(repaired(&summary, "db_g1", "missing"), 1, "{summary}");
    assert_eq!(repaired(&summary, "db_g3", "stale"), 1, "{summary}");
    assert_eq!(repaired(&summary, "db_g2", "stale"), 1, "{summary}");
    assert_eq!(repaired(&summary, "db_g2", "corrupt"), 1, "{summary}");

    for key in [
        "same",
        "only-on-g1",
        "stale-on-g3",
        "deleted",
        "corrupt-on-g2",
        "only-on-g3",
    ] {
        let s = states(&r, key).await;
        assert!(s.iter().all(|x| *x == s[0]), "{key}: {s:?}");
    }
    assert_eq!(
        states(&r, "corrupt-on-g2").await[1],
        Some((v(7), Some(b"right".to_vec())))
    );
    assert_eq!(states(&r, "deleted").await[1], Some((v(6), None)));
    let digests: Vec<_> = futures::future::join_all(r.iter().map(|c| c.digest())).await;
    let digests: Vec<_> = digests.into_iter().map(|d| d.expect("digest")).collect();
    assert!(digests.iter().all(|d| *d == digests[0]));

    let again = round(&gw).await;
    assert_eq!(again["result"], "in_sync", "{again}");
    assert_eq!(again["divergent_buckets"], 0);

    // The gateway serves what anti-entropy converged on, and the metrics count it.
    let (status, body) = get(&client(), format!("{}/read/only-on-g1", gw.url)).await;
    assert_eq!((status, body["value"].clone()), (200, json!("one")));
    let text = client()
        .get(format!("{}/metrics", gw.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains(r#"anti_entropy_repairs_total{node="db_g2",reason="corrupt"}"#),
        "{text}"
    );
    gw.shutdown().await.expect("clean shutdown");
}

async fn conflicting_copies_without_a_majority_are_reported_not_written(backend: Backend) {
    let cluster = TestCluster::start(backend, 2).await;
    let gw = cluster
        .gateway("ap", &[("ANTI_ENTROPY_INTERVAL_SEC", "0")])
        .await;
    let r = cluster.direct();
    put(&r[0], "split", v(1), Some("left")).await;
    put(&r[1], "split", v(1), Some("right")).await;
    put(&r[0], "fine", v(2), Some("x")).await;

    let summary = round(&gw).await;
    assert_eq!(summary["result"], "conflict", "{summary}");
    assert_eq!(summary["conflicts"], 1);
    // The undecidable key is left as it is; the decidable one is still repaired.
    assert_eq!(
        states(&r, "split").await,
        vec![
            Some((v(1), Some(b"left".to_vec()))),
            Some((v(1), Some(b"right".to_vec())))
        ]
    );
    assert_eq!(repaired(&summary, "db_g2", "missing"), 1, "{summary}");
    gw.shutdown().await.expect("clean shutdown");
}

async fn periodic_rounds_repair_keys_nobody_reads(backend: Backend) {
    let cluster = TestCluster::start(backend, 2).await;
    let gw = cluster
        .gateway("ap", &[("ANTI_ENTROPY_INTERVAL_SEC", "1")])
        .await;
    let r = cluster.direct();
    for i in 0..20 {
        put(&r[0], &format!("unread-{i}"), v(i), Some("payload")).await;
    }
    let converged = wait_for(Duration::from_secs(20), || {
        let c = r[1].clone();
        async move {
            let mut all = true;
            for i in 0..20 {
                let key = format!("unread-{i}");
                all &= c
                    .get(key.as_bytes())
                    .await
                    .is_ok_and(|s| s.committed.is_some());
            }
            all
        }
    })
    .await;
    assert!(
        converged,
        "db_g2 never received the keys written only to db_g1"
    );
    gw.shutdown().await.expect("clean shutdown");
}

async fn rounds_are_bounded_and_skip_replicas_whose_breaker_is_open(backend: Backend) {
    let mut cluster = TestCluster::start(backend, 3).await;
    let gw = cluster
        .gateway(
            "ap",
            &[
                ("ANTI_ENTROPY_INTERVAL_SEC", "0"),
                ("ANTI_ENTROPY_MAX_KEYS", "10"),
            ],
        )
        .await;
    let r = cluster.direct();
    for i in 0..25 {
        put(&r[0], &format!("bounded-{i}"), v(i), Some("p")).await;
    }
    // db_g3 goes down and the gateway's breaker for it opens.
    cluster.replicas[2].stop().await;
    let c = client();
    for i in 0..3 {
        let (status, _) = post(&c, format!("{}/write/trip-{i}/x", gw.url)).await;
        assert_eq!(status, 200);
    }
    assert!(wait_breaker(&gw, "db_g3", "OPEN").await);

    // Ten keys per round: three rounds leave db_g2 complete; db_g3 is never contacted.
    let mut total = 0;
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let s = round(&gw).await;
        assert_eq!(s["compared"], json!(["db_g1", "db_g2"]), "{s}");
        assert_eq!(s["skipped"], json!(["db_g3"]), "{s}");
        total += repaired(&s, "db_g2", "missing");
        rounds.push(s["result"].as_str().expect("result").to_owned());
        if s["result"] == "in_sync" {
            break;
        }
    }
    assert_eq!(total, 25);
    assert_eq!(rounds, ["incomplete", "incomplete", "repaired", "in_sync"]);
    gw.shutdown().await.expect("clean shutdown");
}
