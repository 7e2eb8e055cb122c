//! The CAP service end to end over real replicas, for both backends (SPEC CAP-2): each
//! scenario runs once against `bulwark node`s and once against real `redis-server`s.
//! The scenarios follow seed 000, section III, steps 4–7, plus the bad-input rules.

#[macro_use]
mod common;

use std::time::Duration;

use bulwark_testkit::{BlackHole, GarbageServer, wait_for};
use common::*;
use serde_json::Value;

both_backends!(
    ap_write_then_read_is_consistent,
    breaker_opens_after_three_failures_then_fails_fast,
    staleness_exceeds_the_bound_while_a_replica_misses_writes,
    hinted_handoff_converges_after_the_replica_returns,
    read_your_writes_across_two_gateways,
    cp_abort_is_never_visible,
    cp_write_commits_on_every_replica,
    quorum_tolerates_a_minority,
    v1_api_round_trips_binary_values_and_deletes,
);

async fn ap_write_then_read_is_consistent(backend: Backend) {
    let cluster = TestCluster::start(backend, 2).await;
    let ap = cluster.gateway("ap", &[]).await;
    let c = client();
    let (status, body) = post(&c, format!("{}/write/PROD_ITEM/V1_AP_TEST", ap.url)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "success");
    // Both healthy replicas acknowledged, or (on a loaded machine) one was still in flight
    // when the AP write was answered: reported pending, never behind.
    assert_eq!(acked_or_pending(&body), ["db_g1", "db_g2"], "{body}");
    assert_eq!(body["behind"], serde_json::json!([]), "{body}");
    let (status, body) = get(&c, format!("{}/read/PROD_ITEM", ap.url)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["value"], "V1_AP_TEST");
    assert_eq!(body["G1_Staleness_ms"], 0);
    assert_eq!(body["G2_Staleness_ms"], 0);
    assert_eq!(body["Consistency_Status"], "CONSISTENT");
    assert_eq!(body["RYW_Consistent"], true);
    ap.shutdown().await.expect("clean shutdown");
}

async fn breaker_opens_after_three_failures_then_fails_fast(backend: Backend) {
    let mut cluster = TestCluster::start(backend, 2).await;
    let ap = cluster.gateway("ap", &[]).await;
    let c = client();
    let (_, cb) = get(&c, format!("{}/circuit-breaker", ap.url)).await;
    assert_eq!(cb["db_g2"]["state"], "CLOSED", "{cb}");
    assert_eq!(cb["db_g2"]["failures"], 0);

    cluster.replicas[1].stop().await;
    for (k, v) in [("TEST1", "V1"), ("TEST2", "V2"), ("TEST3", "V3")] {
        let (status, body) = post(&c, format!("{}/write/{k}/{v}", ap.url)).await;
        assert_eq!(status, 200, "AP keeps accepting writes: {body}");
        assert_eq!(missed(&body), ["db_g2"], "{body}");
    }
    let (_, cb) = get(&c, format!("{}/circuit-breaker", ap.url)).await;
    assert_eq!(cb["db_g2"]["state"], "OPEN", "{cb}");
    assert_eq!(cb["db_g2"]["failures"], 3);
    assert_eq!(cb["db_g1"]["state"], "CLOSED");

    // Fail fast: the next write does not touch db_g2 at all (its rejected count grows).
    let rejected_before = cb["db_g2"]["total_rejected"].as_u64().expect("counter");
    let (status, _) = post(&c, format!("{}/write/TEST4/V4", ap.url)).await;
    assert_eq!(status, 200);
    let (_, cb) = get(&c, format!("{}/circuit-breaker", ap.url)).await;
    assert!(
        cb["db_g2"]["total_rejected"].as_u64().expect("counter") > rejected_before,
        "{cb}"
    );

    // The metrics say the same.
    let text = c
        .get(format!("{}/metrics", ap.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains("circuit_breaker_state{node=\"db_g2\"} 2"),
        "{text}"
    );
}

async fn staleness_exceeds_the_bound_while_a_replica_misses_writes(backend: Backend) {
    let mut cluster = TestCluster::start(backend, 2).await;
    let ap = cluster.gateway("ap", &[("MAX_STALENESS_MS", "100")]).await;
    let c = client();
    cluster.replicas[1].stop().await;
    let (status, body) = post(&c, format!("{}/write/OLD_DATA/V_OLD", ap.url)).await;
    assert_eq!(status, 200, "{body}");
    // Staleness grows with time while db_g2 misses the write; poll until it passes the bound.
    let url = format!("{}/read/OLD_DATA", ap.url);
    let stale = wait_for(Duration::from_secs(5), || {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let (_, b) = get(&c, url).await;
            b["Consistency_Status"] == "INCONSISTENT/STALE (EXCEEDS_STALENESS_BOUND)"
        }
    })
    .await;
    assert!(stale, "status never reported the bound exceeded");
    let (_, body) = get(&c, url).await;
    assert_eq!(body["value"], "V_OLD");
    assert_eq!(
        body["G1_Staleness_ms"], 0,
        "db_g1 holds the newest version: {body}"
    );
    assert!(
        body["G2_Staleness_ms"]
            .as_u64()
            .expect("known from the hint")
            > 100,
        "{body}"
    );
    assert_eq!(body["replicas"]["db_g2"]["reachable"], false);
}

async fn hinted_handoff_converges_after_the_replica_returns(backend: Backend) {
    let mut cluster = TestCluster::start(backend, 2).await;
    let ap = cluster
        .gateway(
            "ap",
            &[
                ("CB_OPEN_TIMEOUT_SEC", "0.2"),
                ("HEALTH_INTERVAL_SEC", "0.1"),
            ],
        )
        .await;
    let c = client();
    cluster.replicas[1].stop().await;
    for i in 0..20 {
        let (status, _) = post(&c, format!("{}/write/HANDOFF_{i}/V{i}", ap.url)).await;
        assert_eq!(status, 200);
    }
    cluster.replicas[1].start_again().await;
    // Every missed write reaches db_g2, in whatever order the handoff delivers them.
    for i in 0..20 {
        let url = format!("{}/read/HANDOFF_{i}", ap.url);
        let converged = wait_for(Duration::from_secs(15), || {
            let (c, url) = (c.clone(), url.clone());
            async move {
                let (_, b) = get(&c, url).await;
                b["replicas"]["db_g2"]["version"] == b["version"]
                    && b["Consistency_Status"] == "CONSISTENT"
            }
        })
        .await;
        assert!(converged, "db_g2 never received HANDOFF_{i}");
    }
}

async fn read_your_writes_across_two_gateways(backend: Backend) {
    let mut cluster = TestCluster::start(backend, 2).await;
    // Gateway 1 gives up on undelivered hints quickly when it stops, so the primary
    // really stays behind (hints live in memory, by design).
    let gw1 = cluster
        .gateway("ap", &[("SHUTDOWN_TIMEOUT_SEC", "0.3")])
        .await;
    let gw2 = cluster.gateway("ap", &[]).await;
    let me = session_client();
    let stranger = client();

    // The primary misses my write; gateway 2 knows nothing about it (no hints there).
    cluster.replicas[0].stop().await;
    let (status, body) = post(&me, format!("{}/write/SESSION_DATA/MY_VALUE", gw1.url)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(missed(&body), ["db_g1"], "{body}");
    gw1.shutdown().await.expect("clean shutdown");
    cluster.replicas[0].start_again().await;

    // My session, through the other gateway: it must skip the stale primary.
    let (status, body) = get(&me, format!("{}/read/SESSION_DATA", gw2.url)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["value"], "MY_VALUE");
    assert_eq!(body["RYW_Consistent"], true);
    assert_eq!(body["source"], "db_g2");

    // Without the session the preferred replica answers; it may still be stale (seed step
    // 6.3) or already repaired by the read above (read repair), and RYW holds trivially.
    let (status, body) = get(&stranger, format!("{}/read/SESSION_DATA", gw2.url)).await;
    assert_eq!(body["RYW_Consistent"], true, "{body}");
    assert_eq!(body["source"], "db_g1");
    assert!(status == 404 || body["value"] == "MY_VALUE", "{body}");

    // Read repair brings the primary up to date.
    let repaired = wait_for(Duration::from_secs(10), || {
        let c = stranger.clone();
        let url = format!("{}/read/SESSION_DATA", gw2.url);
        async move { get(&c, url).await.1["replicas"]["db_g1"]["version"].is_string() }
    })
    .await;
    assert!(repaired, "read repair never reached db_g1");

    // A forged cookie is ignored, not trusted.
    let forged = stranger
        .get(format!("{}/read/SESSION_DATA", gw2.url))
        .header("cookie", "bulwark_session=eyJ3Ijp7fX0.AAAA")
        .send()
        .await
        .expect("request");
    let body: Value = forged.json().await.expect("json");
    assert_eq!(body["RYW_Consistent"], true);
}

async fn cp_abort_is_never_visible(backend: Backend) {
    let mut cluster = TestCluster::start(backend, 2).await;
    let cp = cluster.gateway("cp", &[]).await;
    let ap = cluster.gateway("ap", &[]).await;
    let c = client();
    cluster.replicas[1].stop().await;
    let (status, body) = post(&c, format!("{}/write/CRITICAL_LOCK/V_FAIL", cp.url)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "CP_ABORTED");
    assert_eq!(body["error"]["outcome"], "not_applied");
    assert!(body["error"]["request_id"].is_string());
    cluster.replicas[1].start_again().await;
    // Neither a CP nor an AP read may ever return the aborted write.
    for gw in [&cp, &ap] {
        let (status, body) = get(&c, format!("{}/read/CRITICAL_LOCK", gw.url)).await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["value"], Value::Null);
    }
    // AP sacrifices consistency instead (seed step 7.2).
    cluster.replicas[1].stop().await;
    let (status, body) = post(&c, format!("{}/write/CONFIG/AP_V1_NEW", ap.url)).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["warning"]
            .as_str()
            .is_some_and(|w| w.starts_with("AP_STALE_RISK")),
        "{body}"
    );
}

async fn cp_write_commits_on_every_replica(backend: Backend) {
    let cluster = TestCluster::start(backend, 2).await;
    let cp = cluster.gateway("cp", &[]).await;
    let c = client();
    for i in 0..10 {
        let (status, body) = post(&c, format!("{}/write/CP_KEY/V{i}", cp.url)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["coordinator"], "db_g1");
        assert_eq!(body["acked_by"], serde_json::json!(["db_g1", "db_g2"]));
        let (status, body) = get(&c, format!("{}/read/CP_KEY", cp.url)).await;
        assert_eq!(status, 200);
        assert_eq!(
            body["value"],
            format!("V{i}"),
            "a CP read returns the latest committed write"
        );
        assert_eq!(body["Consistency_Status"], "CONSISTENT", "{body}");
    }
}

async fn quorum_tolerates_a_minority(backend: Backend) {
    let mut cluster = TestCluster::start(backend, 3).await;
    let q = cluster
        .gateway(
            "quorum",
            &[
                ("CB_OPEN_TIMEOUT_SEC", "0.2"),
                ("HEALTH_INTERVAL_SEC", "0.1"),
            ],
        )
        .await;
    let c = client();
    cluster.replicas[2].stop().await;
    let (status, body) = post(&c, format!("{}/write/Q/V1", q.url)).await;
    assert_eq!(status, 200, "2 of 3 is a quorum: {body}");
    assert_eq!(missed(&body), ["db_g3"], "{body}");
    let (status, body) = get(&c, format!("{}/read/Q", q.url)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["value"], "V1");
    cluster.replicas[1].stop().await;
    let (status, body) = post(&c, format!("{}/write/Q/V2", q.url)).await;
    assert_eq!(status, 503, "1 of 3 is not: {body}");
    let (status, _) = get(&c, format!("{}/read/Q", q.url)).await;
    assert_eq!(status, 503, "a quorum read needs 2 answers");
    cluster.replicas[1].start_again().await;
    assert!(wait_breaker(&q, "db_g2", "CLOSED").await);
    let (status, body) = get(&c, format!("{}/read/Q", q.url)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["value"], "V1", "the aborted V2 is never visible");
}

async fn v1_api_round_trips_binary_values_and_deletes(backend: Backend) {
    let cluster = TestCluster::start(backend, 2).await;
    let gw = cluster.gateway("ap", &[]).await;
    let c = client();
    let binary: Vec<u8> = (0..=255u8).collect();
    for consistency in ["ap", "cp"] {
        let url = format!(
            "{}/v1/kv/bin-{consistency}?consistency={consistency}",
            gw.url
        );
        let r = c
            .put(&url)
            .header("content-type", "application/octet-stream")
            .body(binary.clone())
            .send()
            .await
            .expect("put");
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["mode"], consistency.to_uppercase());
        let raw = c
            .get(&url)
            .header("accept", "application/octet-stream")
            .send()
            .await
            .expect("get");
        assert_eq!(raw.status(), 200);
        assert_eq!(raw.bytes().await.expect("bytes").to_vec(), binary);
        let (_, body) = get(&c, url.clone()).await;
        assert_eq!(body["value"], Value::Null);
        assert!(body["value_base64"].is_string(), "{body}");
        let r = c.delete(&url).send().await.expect("delete");
        assert_eq!(r.status(), 200);
        let (status, body) = get(&c, url).await;
        assert_eq!(status, 404, "{body}");
    }
    let r = c
        .put(format!("{}/v1/kv/json", gw.url))
        .json(&serde_json::json!({"value": "text"}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    let (_, body) = get(&c, format!("{}/v1/kv/json", gw.url)).await;
    assert_eq!(body["value"], "text");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_structured_errors_and_changes_nothing() {
    let cluster = TestCluster::start(Backend::Bulwark, 2).await;
    let gw = cluster.gateway("ap", &[("MAX_VALUE_BYTES", "1000")]).await;
    let c = client();
    let long_key = "k".repeat(1025);
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            c.post(format!("{}/write/{long_key}/v", gw.url)),
            413,
            "KEY_TOO_LARGE",
        ),
        (
            c.post(format!("{}/write/k/{}", gw.url, "v".repeat(1001))),
            413,
            "VALUE_TOO_LARGE",
        ),
        (
            c.put(format!("{}/v1/kv/k", gw.url)).body(vec![0u8; 1001]),
            413,
            "VALUE_TOO_LARGE",
        ),
        (
            c.post(format!("{}/write/%FF%FE/v", gw.url)),
            400,
            "INVALID_KEY",
        ),
        (c.get(format!("{}/v1/kv/", gw.url)), 400, "INVALID_KEY"),
        (
            c.put(format!("{}/v1/kv/k", gw.url))
                .header("content-type", "application/json")
                .body("{not json"),
            400,
            "INVALID_BODY",
        ),
        (
            c.put(format!("{}/v1/kv/k", gw.url))
                .header("content-type", "application/json")
                .body(r#"{"value":"a","value_base64":"YQ=="}"#),
            400,
            "INVALID_BODY",
        ),
        (
            c.get(format!("{}/v1/kv/k?consistency=eventual", gw.url)),
            400,
            "INVALID_CONSISTENCY",
        ),
        (
            c.get(format!("{}/no/such/endpoint", gw.url)),
            404,
            "NOT_FOUND",
        ),
    ];
    for (req, status, code) in cases {
        let r = req.send().await.expect("request");
        assert_eq!(r.status().as_u16(), status, "{code}");
        let body: Value = r.json().await.expect("structured error body");
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(body["error"]["request_id"].is_string(), "{body}");
        assert!(body["error"]["message"].is_string(), "{body}");
    }
    let (_, body) = post(&c, format!("{}/write/{long_key}/v", gw.url)).await;
    assert_eq!(body["error"]["limit"], 1024);
    // Nothing was written by any of them.
    let (status, _) = get(&c, format!("{}/read/k", gw.url)).await;
    assert_eq!(status, 404);
    // A client-supplied request id is echoed back.
    let r = c
        .get(format!("{}/read/k", gw.url))
        .header("x-request-id", "req-123")
        .send()
        .await
        .expect("request");
    assert_eq!(r.headers()["x-request-id"], "req-123");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_and_garbage_replicas_are_failures_bounded_by_the_timeout() {
    let cluster = TestCluster::start(Backend::Bulwark, 1).await;
    let hole = BlackHole::start().await;
    let garbage = GarbageServer::start(b"+what is this\r\n:12\r\n$-5\r\n").await;
    let replicas = format!(
        "{},db_hang={},db_garbage={}",
        cluster.replicas_setting(),
        hole.addr(),
        garbage.addr()
    );
    let gw = TestGateway::start(&[
        ("MODE", "ap".into()),
        ("REPLICAS", replicas),
        // Long enough that the healthy replica answers in time on a loaded CI machine.
        ("NETWORK_TIMEOUT_SEC", "0.5".into()),
    ])
    .await;
    let c = client();
    for i in 0..3 {
        let (status, body) = post(&c, format!("{}/write/K{i}/V", gw.url)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["acked_by"], serde_json::json!(["db_g1"]), "{body}");
        assert_eq!(missed(&body), ["db_garbage", "db_hang"], "{body}");
        // The AP write did not wait for the hung replica's timeout: it was answered
        // with the call still in flight.
        assert!(
            names(&body["pending"]).contains(&"db_hang".to_owned()),
            "{body}"
        );
    }
    // The hung replica's calls time out after the answers: each then queues a hint.
    let hinted = wait_for(Duration::from_secs(15), || {
        let (c, url) = (c.clone(), format!("{}/metrics", gw.url));
        async move {
            let text = c.get(url).send().await.expect("metrics").text().await;
            text.is_ok_and(|t| t.contains(r#"hint_queue_depth{node="db_hang"} 3"#))
        }
    })
    .await;
    assert!(
        hinted,
        "the straggling writes to db_hang were not handed off"
    );
    let (_, cb) = get(&c, format!("{}/circuit-breaker", gw.url)).await;
    assert_eq!(cb["db_hang"]["state"], "OPEN", "{cb}");
    assert_eq!(cb["db_garbage"]["state"], "OPEN", "{cb}");
    let (status, body) = get(&c, format!("{}/read/K0", gw.url)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replicas"]["db_hang"]["reachable"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_and_health_are_served() {
    let cluster = TestCluster::start(Backend::Bulwark, 2).await;
    let gw = cluster.gateway("cp", &[]).await;
    let c = client();
    let (status, doc) = get(&c, format!("{}/openapi.json", gw.url)).await;
    assert_eq!(status, 200);
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with('3')),
        "{doc}"
    );
    assert!(doc["paths"]["/v1/kv/{key}"]["put"].is_object(), "{doc}");
    let (status, body) = get(&c, format!("{}/health", gw.url)).await;
    assert_eq!((status, body["mode"].as_str()), (200, Some("CP")));
    let (status, body) = get(&c, format!("{}/health/ready", gw.url)).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_max_in_flight_are_shed_not_queued() {
    // A replica that never answers keeps the admitted request in flight for the timeout.
    let hole = BlackHole::start().await;
    let gw = TestGateway::start(&[
        ("MODE", "ap".into()),
        ("REPLICAS", format!("db_hang={}", hole.addr())),
        ("NETWORK_TIMEOUT_SEC", "3".into()),
        ("MAX_IN_FLIGHT", "1".into()),
    ])
    .await;
    let c = client();
    // Five reads at once: one is admitted and waits for the replica; the others arrive
    // while it holds the only permit and must be refused at once, not queued.
    let reads: Vec<_> = (0..5)
        .map(|_| {
            let (c, url) = (c.clone(), format!("{}/read/k", gw.url));
            tokio::spawn(async move {
                let r = c.get(url).send().await.expect("request");
                let retry_after = r.headers().contains_key("retry-after");
                let body: Value = r.json().await.expect("json");
                (
                    body["error"]["code"].as_str().unwrap_or("").to_string(),
                    retry_after,
                )
            })
        })
        .collect();
    // Health checks are never shed, even while the gateway is saturated.
    let (status, _) = get(&c, format!("{}/health", gw.url)).await;
    assert_eq!(status, 200);
    let mut codes = Vec::new();
    for r in reads {
        codes.push(r.await.expect("read task"));
    }
    let shed = codes
        .iter()
        .filter(|(code, retry)| code == "OVERLOADED" && *retry)
        .count();
    let admitted = codes
        .iter()
        .filter(|(code, _)| code == "READ_UNAVAILABLE")
        .count();
    assert_eq!((admitted, shed), (1, 4), "{codes:?}");
}
