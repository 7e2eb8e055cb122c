//! The purchase API on every backend: idempotency replay, the bad-input matrix, payment
//! declines compensated, dead letters and operator retry, reconciliation.

mod common;

use std::time::Duration;

use common::{Server, SqlBackend, assert_invariants};
use serde_json::{Value, json};

/// Same key and body → the original answer and one charge; another body → 422.
async fn idempotency(backend: SqlBackend) {
    idempotency_with(backend, "batched").await;
}

async fn idempotency_with(backend: SqlBackend, strategy: &str) {
    let (s, redis) = Server::start_with_strategy(backend, strategy, &[]).await;
    s.seed("p1", 1).await;
    let first = s.purchase("key-1", "p1", 1).await;
    assert_eq!(first.0, 201, "{}", first.1);
    // Replayed after the product sold out: still the original 201 and order.
    let again = s.purchase("key-1", "p1", 1).await;
    assert_eq!(again, first);
    let other = s
        .purchase_raw(
            Some("key-1"),
            &json!({"product_id": "p1", "quantity": 2, "customer_id": "c1"}).to_string(),
        )
        .await;
    assert_eq!(other.0, 422, "{}", other.1);
    assert_eq!(other.1["error"]["code"], "IDEMPOTENCY_KEY_REUSED");
    // A fresh key finds the product sold out.
    let late = s.purchase("key-2", "p1", 1).await;
    assert_eq!(late.0, 409, "{}", late.1);
    // Concurrent replays of one key: one order, one charge.
    s.seed("p2", 10).await;
    let (a, b, c) = tokio::join!(
        s.purchase("same", "p2", 1),
        s.purchase("same", "p2", 1),
        s.purchase("same", "p2", 1)
    );
    let ids: Vec<&Value> = [&a, &b, &c].iter().map(|r| &r.1["order_id"]).collect();
    assert!(
        ids.iter().all(|id| *id == ids[0] && id.is_string()),
        "{a:?} {b:?} {c:?}"
    );
    let audit = s.settled_audit("p2").await;
    assert_invariants(&audit);
    assert_eq!(audit["payments"]["captured"], 1, "{audit}");
    assert_eq!(audit["sold"], 1, "{audit}");
    if redis.is_some() {
        // The Redis counter took the key's units once, and gave back none it kept.
        assert_eq!(audit["redis_stock"], 9, "{audit}");
    }
    s.stop().await;
}

/// Every malformed purchase gets a structured 4xx and reserves nothing.
async fn bad_input(backend: SqlBackend) {
    bad_input_with(backend, "batched").await;
}

async fn bad_input_with(backend: SqlBackend, strategy: &str) {
    let (s, redis) = Server::start_with_strategy(backend, strategy, &[]).await;
    s.seed("p1", 10).await;
    let long_key = "k".repeat(129);
    let body = |q: &str| format!(r#"{{"product_id":"p1","quantity":{q},"customer_id":"c"}}"#);
    let cases: Vec<(Option<&str>, String, u16, &str)> = vec![
        (None, body("1"), 400, "INVALID_REQUEST"),
        (Some(""), body("1"), 400, "INVALID_REQUEST"),
        (Some(&long_key), body("1"), 400, "INVALID_REQUEST"),
        (Some("k"), "{not json".into(), 400, "INVALID_REQUEST"),
        (Some("k"), "[]".into(), 400, "INVALID_REQUEST"),
        (
            Some("k"),
            r#"{"product_id":"p1"}"#.into(),
            400,
            "INVALID_REQUEST",
        ),
        (
            Some("k"),
            r#"{"product_id":"p1","quantity":1,"x":1}"#.into(),
            400,
            "INVALID_REQUEST",
        ),
        (Some("k"), body("0"), 400, "INVALID_QUANTITY"),
        (Some("k"), body("-5"), 400, "INVALID_QUANTITY"),
        (Some("k"), body("1001"), 400, "INVALID_QUANTITY"),
        (
            Some("k"),
            body("99999999999999999999"),
            400,
            "INVALID_QUANTITY",
        ),
        (Some("k"), body("1.5"), 400, "INVALID_QUANTITY"),
        (Some("k"), body("\"3\""), 400, "INVALID_QUANTITY"),
        (
            Some("k"),
            r#"{"product_id":"nope","quantity":1}"#.into(),
            404,
            "PRODUCT_NOT_FOUND",
        ),
        (
            Some("k"),
            r#"{"product_id":"../etc","quantity":1}"#.into(),
            404,
            "PRODUCT_NOT_FOUND",
        ),
        (
            Some("k"),
            format!(
                r#"{{"product_id":"p1","quantity":1,"customer_id":"{}"}}"#,
                "c".repeat(200)
            ),
            400,
            "INVALID_REQUEST",
        ),
        (
            Some("k"),
            format!(r#"{{"product_id":"{}","quantity":1}}"#, "p".repeat(100_000)),
            413,
            "PAYLOAD_TOO_LARGE",
        ),
    ];
    for (key, body, status, code) in cases {
        let (got, resp) = s.purchase_raw(key, &body).await;
        assert_eq!(
            got,
            status,
            "{key:?} {}: {resp}",
            &body[..body.len().min(80)]
        );
        assert_eq!(resp["error"]["code"], code, "{resp}");
        assert!(resp["error"]["request_id"].is_string(), "{resp}");
        assert!(resp["error"]["message"].is_string(), "{resp}");
    }
    // More than the stock (a valid quantity): 409, nothing reserved either.
    let (status, body) = s.purchase("too-many", "p1", 11).await;
    assert_eq!((status, &body["error"]["code"]), (409, &json!("SOLD_OUT")));
    let audit = s.audit("p1").await;
    assert_eq!(audit["db_stock"], 10, "nothing reserved: {audit}");
    assert_eq!(audit["orders"]["PENDING"], 0);
    assert_eq!(audit["orders"]["CONFIRMED"], 0);
    assert_eq!(audit["orders"]["CANCELLED"], 0);
    if redis.is_some() {
        assert_eq!(audit["redis_stock"], 10, "nothing held in Redis: {audit}");
    }
    let (status, body) = s.get("/v1/products/nope").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("PRODUCT_NOT_FOUND"))
    );
    let (status, body) = s.get("/v1/products?limit=0").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("INVALID_REQUEST"))
    );
    let (status, body) = s
        .post(
            "/v1/admin/seed",
            &json!({"products": [{"id": "bad id", "name": "x", "price_cents": 1, "stock": 1}]}),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("INVALID_REQUEST"))
    );
    s.stop().await;
}

/// With half the charges declined, declined orders are cancelled with their stock
/// released (402), and every invariant holds.
async fn declines_compensate(backend: SqlBackend) {
    let s = Server::start(backend, &[("SHOP_PAYMENT_FAILURE_RATE", "0.5")]).await;
    s.seed("p1", 40).await;
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let c = s.client.clone();
            let url = format!("{}/v1/orders", s.base);
            tokio::spawn(async move {
                let r = c
                    .post(url)
                    .header("idempotency-key", format!("d-{i}"))
                    .json(&json!({"product_id": "p1", "quantity": 1}))
                    .send()
                    .await
                    .expect("request");
                let status = r.status().as_u16();
                (status, r.json::<Value>().await.unwrap_or(Value::Null))
            })
        })
        .collect();
    let mut confirmed = 0;
    let mut declined = Vec::new();
    for t in tasks {
        let (status, body) = t.await.expect("task");
        match status {
            201 => confirmed += 1,
            402 => {
                assert_eq!(body["error"]["code"], "PAYMENT_DECLINED", "{body}");
                declined.push(
                    body["error"]["order_id"]
                        .as_str()
                        .expect("order id")
                        .to_string(),
                );
            }
            409 => {}
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(!declined.is_empty() && confirmed > 0, "seeded 50% declines");
    for id in &declined {
        let (status, order) = s.get(&format!("/v1/orders/{id}")).await;
        assert_eq!(status, 200);
        assert_eq!(order["status"], "CANCELLED", "{order}");
        assert_eq!(order["saga"]["reason"], "PAYMENT_DECLINED", "{order}");
    }
    let audit = s.settled_audit("p1").await;
    assert_invariants(&audit);
    assert_eq!(audit["sold"], confirmed, "{audit}");
    assert_eq!(audit["payments"]["captured"], confirmed, "{audit}");
    // A declined order replayed: the original 402, not a second attempt.
    let replay = s
        .purchase_raw(
            Some("d-0"),
            &json!({"product_id": "p1", "quantity": 1}).to_string(),
        )
        .await;
    assert!(matches!(replay.0, 201 | 402 | 409), "{replay:?}");
    s.stop().await;
}

/// A provider that stays down: the saga compensates, the refund cannot reach it either,
/// the order is dead-lettered (FAILED, stock still held, visible to operators); when the
/// provider is back, an operator retry completes the compensation.
async fn dead_letter_and_operator_retry(backend: SqlBackend) {
    let s = Server::start(
        backend,
        &[
            ("SHOP_SAGA_MAX_ATTEMPTS", "2"),
            ("SHOP_SAGA_BACKOFF_MS", "1"),
        ],
    )
    .await;
    s.seed("p1", 5).await;
    let (status, _) = s
        .post("/v1/admin/payment-provider", &json!({"available": false}))
        .await;
    assert_eq!(status, 200);
    let (status, body) = s.purchase("dl-1", "p1", 2).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "ORDER_FAILED", "{body}");
    let id = body["error"]["order_id"]
        .as_str()
        .expect("order id")
        .to_string();
    let (_, letters) = s.get("/v1/admin/dead-letters").await;
    assert_eq!(letters["items"][0]["order_id"], id.as_str(), "{letters}");
    let audit = s.audit("p1").await;
    assert_eq!(audit["orders"]["FAILED"], 1, "{audit}");
    assert_eq!(
        audit["reserved"], 2,
        "a dead letter keeps its stock: {audit}"
    );
    assert_eq!(audit["invariants"]["stock_conserved"], true, "{audit}");
    // Retrying while the provider is still down dead-letters again; a non-dead order
    // cannot be retried.
    s.post("/v1/admin/payment-provider", &json!({"available": true}))
        .await;
    let (status, body) = s
        .post(&format!("/v1/admin/orders/{id}/retry"), &json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    let done = bulwark_testkit::wait_for_some(Duration::from_secs(30), || async {
        let (_, o) = s.get(&format!("/v1/orders/{id}")).await;
        (o["status"] == "CANCELLED").then_some(o)
    })
    .await;
    assert!(
        done.is_some(),
        "operator retry must complete the compensation"
    );
    let (status, body) = s
        .post(&format!("/v1/admin/orders/{id}/retry"), &json!({}))
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("NOT_DEAD_LETTERED"))
    );
    let audit = s.settled_audit("p1").await;
    assert_invariants(&audit);
    assert_eq!(audit["db_stock"], 5, "stock released: {audit}");
    s.stop().await;
}

/// Reconciliation raises `InventoryInconsistency` when the database stock is changed
/// behind the service's back, and repairs the cache from the database.
async fn reconciliation_detects_drift(backend: SqlBackend) {
    let s = Server::start(backend, &[("SHOP_SWEEP_INTERVAL_SEC", "3600")]).await;
    s.seed("p1", 10).await;
    assert_eq!(s.purchase("r-1", "p1", 1).await.0, 201);
    let (_, report) = s.post("/v1/admin/reconcile", &json!({})).await;
    assert_eq!(report["products"][0]["stock_conserved"], true, "{report}");
    // Someone edits the database directly.
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&s.db.url)
        .await
        .expect("connect");
    sqlx::query("UPDATE shop_products SET stock = stock - 3")
        .execute(&mut conn)
        .await
        .expect("tamper");
    let (_, report) = s.post("/v1/admin/reconcile", &json!({})).await;
    let p = &report["products"][0];
    assert_eq!(p["stock_conserved"], false, "{report}");
    assert_eq!(p["cache_matches_db"], false, "{report}");
    let audit = s.audit("p1").await;
    assert_eq!(audit["conditions"][0], "InventoryInconsistency", "{audit}");
    assert_eq!(
        audit["cache_stock"], 6,
        "cache repaired from the database: {audit}"
    );
    let (_, metrics) = {
        let r = s
            .client
            .get(format!("{}/metrics", s.base))
            .send()
            .await
            .expect("metrics");
        (0, r.text().await.expect("text"))
    };
    assert!(
        metrics.contains(r#"shop_inventory_inconsistency{product="p1"} 1"#),
        "{metrics}"
    );
    // The writer reloads its counter: purchases go on within the real stock.
    assert_eq!(s.purchase("r-2", "p1", 6).await.0, 201);
    assert_eq!(s.purchase("r-3", "p1", 1).await.0, 409);
    s.stop().await;
}

/// SHOP-6 under load: buyers purchase without pause while reconciliation runs again and
/// again; not one round reports an inconsistency (the conservation check reads one
/// snapshot, and a cache entry that merely lags behind commits is told apart by its
/// version). Then the stock is corrupted behind the service's back, purchases still
/// running, and the next round reports it with the alarm's metric.
async fn reconciliation_exact_under_load(backend: SqlBackend, strategy: &str) {
    const ROUNDS: usize = 30;
    let s = std::sync::Arc::new(
        Server::start(
            backend,
            &[
                ("SHOP_SWEEP_INTERVAL_SEC", "3600"),
                ("SHOP_STRATEGY", strategy),
            ],
        )
        .await,
    );
    s.seed("p1", 1_000_000).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let buyers: Vec<_> = (0..8)
        .map(|b| {
            let (s, stop) = (s.clone(), stop.clone());
            tokio::spawn(async move {
                let mut bought = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Retrying a 503: on SQLite the tampering connection below takes the
                    // one write lock for a moment.
                    let (status, body) = s
                        .purchase_retrying(&format!("load-{b}-{bought}"), "p1", 1)
                        .await;
                    assert!(matches!(status, 201 | 202), "{status}: {body}");
                    bought += 1;
                }
                bought
            })
        })
        .collect();
    let inconsistency = |metrics: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(r#"shop_inventory_inconsistency{product="p1"}"#))
            .map(|l| l.ends_with(" 1"))
    };
    let (mut in_flight, mut lagging) = (0, 0);
    for round in 0..ROUNDS {
        let (status, report) = s.post("/v1/admin/reconcile", &json!({})).await;
        assert_eq!(status, 200, "{report}");
        let p = &report["products"][0];
        assert_eq!(p["stock_conserved"], true, "round {round}: {report}");
        assert_eq!(p["cache_consistent"], true, "round {round}: {report}");
        assert_eq!(
            inconsistency(&s.metrics().await),
            Some(false),
            "round {round}: {report}"
        );
        in_flight += usize::from(p["reserved"].as_i64() > Some(0));
        lagging += usize::from(p["cache_version"].as_i64() < p["db_version"].as_i64());
    }
    // The rounds really overlapped purchases: some saw sagas between reserve and confirm.
    assert!(in_flight > 0, "no round saw a purchase in flight");
    eprintln!(
        "{ROUNDS} rounds: {in_flight} with orders in flight, {lagging} with a lagging cache entry"
    );
    // A real corruption, while buyers go on: 7 units appear from nowhere.
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&s.db.url)
        .await
        .expect("connect");
    sqlx::query("UPDATE shop_products SET stock = stock + 7")
        .execute(&mut conn)
        .await
        .expect("tamper");
    let (_, report) = s.post("/v1/admin/reconcile", &json!({})).await;
    assert_eq!(report["products"][0]["stock_conserved"], false, "{report}");
    assert_eq!(inconsistency(&s.metrics().await), Some(true));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut bought = 0;
    for b in buyers {
        bought += b.await.expect("buyer");
    }
    assert!(bought > 0);
    let audit = s.settled_audit("p1").await;
    assert_eq!(audit["conditions"][0], "InventoryInconsistency", "{audit}");
    let s = std::sync::Arc::into_inner(s).expect("no other owner");
    s.stop().await;
}

async fn reconciliation_exact_under_load_batched(backend: SqlBackend) {
    reconciliation_exact_under_load(backend, "batched").await;
}

async fn reconciliation_exact_under_load_row_lock(backend: SqlBackend) {
    reconciliation_exact_under_load(backend, "row-lock").await;
}

/// Catalog reads: cache hits after warm-up, pagination, the hit-rate metric.
async fn catalog_reads(backend: SqlBackend) {
    let s = Server::start(backend, &[]).await;
    let products: Vec<Value> = (0..5)
        .map(|i| json!({"id": format!("p{i}"), "name": format!("n{i}"), "price_cents": 100 + i, "stock": 10}))
        .collect();
    let (status, _) = s
        .post(
            "/v1/admin/seed",
            &json!({"products": products, "reset": true}),
        )
        .await;
    assert_eq!(status, 200);
    let r = s
        .client
        .get(format!("{}/v1/products/p1", s.base))
        .send()
        .await
        .expect("get");
    assert_eq!(r.headers()["x-cache"], "hit", "seeding warms the cache");
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        body,
        json!({"id": "p1", "name": "n1", "description": "", "price_cents": 101, "stock": 10})
    );
    let (_, page1) = s.get("/v1/products?limit=2").await;
    assert_eq!(page1["items"].as_array().map(Vec::len), Some(2));
    let cursor = page1["next_cursor"].as_str().expect("cursor").to_string();
    let (_, page2) = s
        .get(&format!("/v1/products?limit=10&cursor={cursor}"))
        .await;
    assert_eq!(page2["items"].as_array().map(Vec::len), Some(3));
    assert_eq!(page2["next_cursor"], Value::Null);
    let (status, stock) = s.get("/v1/products/p3/stock").await;
    assert_eq!(
        (status, stock),
        (200, json!({"product_id": "p3", "available": 10}))
    );
    let text = s
        .client
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains("shop_cache_hit_ratio{cache=\"details\"} 1"),
        "{text}"
    );
    s.stop().await;
}

/// The strategies other than `batched` reach the database by other paths (per-request
/// transactions, the Redis counter and its holds): the idempotency and bad-input checks on
/// each, on PostgreSQL.
mod strategies {
    use super::{SqlBackend, bad_input_with, idempotency_with};

    macro_rules! each {
        ($($name:ident: $f:ident, $strategy:literal;)*) => {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $f(SqlBackend::Postgres, $strategy).await;
            }
        )*};
    }

    each! {
        idempotency_row_lock: idempotency_with, "row-lock";
        idempotency_optimistic: idempotency_with, "optimistic";
        idempotency_redis_lua: idempotency_with, "redis-lua";
        idempotency_layered: idempotency_with, "layered";
        bad_input_redis_lua: bad_input_with, "redis-lua";
        bad_input_layered: bad_input_with, "layered";
    }
}

macro_rules! on_every_backend {
    ($($test:ident),*) => {
        mod sqlite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(super::SqlBackend::Sqlite).await } )* }
        mod postgres { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(super::SqlBackend::Postgres).await } )* }
        mod mariadb { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(super::SqlBackend::MySql).await } )* }
    };
}

on_every_backend!(
    idempotency,
    bad_input,
    declines_compensate,
    dead_letter_and_operator_retry,
    reconciliation_detects_drift,
    reconciliation_exact_under_load_batched,
    reconciliation_exact_under_load_row_lock,
    catalog_reads
);
