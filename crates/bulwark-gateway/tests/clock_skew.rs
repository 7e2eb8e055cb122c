//! Clock skew on a writer (SPEC CHAOS-1): the chaos admin endpoint skews one gateway's HLC
//! clock source; versions written under skew then behave as the protocol says
//! (docs/ARCHITECTURE.md): last-write-wins by HLC version, so
//!
//! * a CP write after a write from a clock 60 s ahead still commits: its prepare meets the
//!   newer version (`STALE`), the gateway's clock observes it and the retry is ordered
//!   after it;
//! * an AP write from an unskewed gateway after it is acknowledged but superseded (the
//!   replicas keep the version from the future) — the documented AP anomaly under skew —
//!   and the next AP write from that gateway, whose clock has now observed the future
//!   version, wins.
//!
//! The endpoint itself is refused without `CHAOS_TOKEN`, or with a wrong token.

#[macro_use]
mod common;

use common::*;
use serde_json::{Value, json};

const TOKEN: &str = "test-chaos-token-0123456789";
const SKEW_MS: i64 = 60_000;

fn physical_ms(version: &Value) -> u64 {
    let v = version.as_str().expect("version string");
    u64::from_str_radix(&v[..12], 16).expect("hex")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

async fn skew(gw: &TestGateway, token: Option<&str>, offset: i64) -> (u16, Value) {
    let mut req = client()
        .put(format!("{}/admin/chaos/clock", gw.url))
        .json(&json!({"offset_ms": offset}));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("request");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn versions_under_skew_follow_the_protocol(backend: Backend) {
    let cluster = TestCluster::start(backend, 3).await;
    let token = [("CHAOS_TOKEN", TOKEN)];
    let skewed_cp = cluster.gateway("cp", &token).await;
    let cp = cluster.gateway("cp", &[]).await;
    let skewed_ap = cluster.gateway("ap", &token).await;
    let ap = cluster.gateway("ap", &[]).await;
    let c = client();

    // Guarded: no token configured, no token given, wrong token.
    let (status, body) = skew(&cp, Some(TOKEN), SKEW_MS).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("CHAOS_DISABLED"))
    );
    assert_eq!(skew(&skewed_cp, None, SKEW_MS).await.0, 401);
    assert_eq!(
        skew(&skewed_cp, Some("wrong-token-wrong-token"), SKEW_MS)
            .await
            .0,
        401
    );
    let (status, body) = skew(&skewed_cp, Some(TOKEN), 86_400_001).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("INVALID_BODY"))
    );

    let (status, body) = skew(&skewed_cp, Some(TOKEN), SKEW_MS).await;
    assert_eq!((status, body["offset_ms"].as_i64()), (200, Some(SKEW_MS)));
    assert_eq!(skew(&skewed_ap, Some(TOKEN), SKEW_MS).await.0, 200);

    // CP: the write from the future commits with a version 60 s ahead …
    let (status, w1) = post(&c, format!("{}/write/skew-cp/from-future", skewed_cp.url)).await;
    assert_eq!(status, 200, "{w1}");
    let future = physical_ms(&w1["version"]);
    assert!(future >= now_ms() + (SKEW_MS as u64) - 5_000, "{w1}");
    // … and a later CP write from an unskewed gateway is ordered after it, not lost.
    let (status, w2) = post(&c, format!("{}/write/skew-cp/from-now", cp.url)).await;
    assert_eq!(status, 200, "{w2}");
    assert!(
        w2["version"].as_str() > w1["version"].as_str(),
        "{w1} then {w2}"
    );
    let (status, read) = get(&c, format!("{}/read/skew-cp", cp.url)).await;
    assert_eq!(
        (status, read["value"].as_str()),
        (200, Some("from-now")),
        "{read}"
    );

    // AP: the skewed writer's value stays although a later write was acknowledged …
    let (status, a1) = post(&c, format!("{}/write/skew-ap/from-future", skewed_ap.url)).await;
    assert_eq!(status, 200, "{a1}");
    let (status, a2) = post(&c, format!("{}/write/skew-ap/from-now", ap.url)).await;
    assert_eq!(status, 200, "acknowledged: {a2}");
    assert!(
        a2["version"].as_str() < a1["version"].as_str(),
        "{a1} then {a2}"
    );
    let (_, read) = get(&c, format!("{}/read/skew-ap", ap.url)).await;
    assert_eq!(
        read["value"].as_str(),
        Some("from-future"),
        "LWW by HLC: {read}"
    );
    // … and once the unskewed gateway has observed the future version, it wins again.
    let (status, a3) = post(&c, format!("{}/write/skew-ap/after", ap.url)).await;
    assert_eq!(status, 200, "{a3}");
    assert!(
        a3["version"].as_str() > a1["version"].as_str(),
        "{a1} then {a3}"
    );
    let (_, read) = get(&c, format!("{}/read/skew-ap", ap.url)).await;
    assert_eq!(read["value"].as_str(), Some("after"), "{read}");

    // Reset: new versions from the skewed gateway are back near real time (the HLC never
    // goes backwards for keys it has seen, but a fresh key gets the real clock).
    let r = client()
        .delete(format!("{}/admin/chaos/clock", skewed_cp.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("reset");
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        (
            body["offset_ms"].as_i64(),
            body["previous_offset_ms"].as_i64()
        ),
        (Some(0), Some(SKEW_MS))
    );
    let (_, w) = post(&c, format!("{}/write/skew-fresh/x", skewed_cp.url)).await;
    assert!(
        physical_ms(&w["version"]) >= future,
        "the HLC does not go back: {w}"
    );
}

both_backends!(versions_under_skew_follow_the_protocol);
