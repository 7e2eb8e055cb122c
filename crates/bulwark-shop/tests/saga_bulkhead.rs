//! Saga bulkhead: saga steps (payment ledger, confirm, compensations) run on their own
//! pool of the primary, so per-request purchase transactions that hold every connection
//! of the purchase pool cannot keep a saga from finishing.
//!
//! Deterministic, no timing: the purchase pool (2 connections) is pinned by two
//! `row-lock` purchases blocked on a product row the test locks, with more queued
//! behind them; a saga whose charge was held back until then must still confirm (201)
//! while the lock is held. Without the bulkhead its ledger and confirm transactions
//! would wait for a purchase connection that never frees.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Server, SqlBackend, assert_invariants};
use serde_json::json;
use sqlx::Connection as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_steps_finish_while_purchases_hold_every_purchase_connection() {
    let s = Arc::new(
        Server::start(
            SqlBackend::Postgres,
            &[
                ("SHOP_STRATEGY", "row-lock"),
                ("SHOP_DB_POOL_SIZE", "2"),
                ("SHOP_SAGA_POOL_SIZE", "2"),
                ("SHOP_SAGA_MAX_ATTEMPTS", "100"),
                ("SHOP_SYNC_WAIT_MS", "45000"),
                ("SHOP_SWEEP_INTERVAL_SEC", "3600"),
            ],
        )
        .await,
    );
    let products = ["p1", "p2"]
        .map(|id| json!({"id": id, "name": "Flash item", "price_cents": 1999, "stock": 10}));
    let (status, body) = s
        .post(
            "/v1/admin/seed",
            &json!({"products": products, "reset": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // A saga reserves p2, then its charge fails (provider down) and is retried.
    let (status, _) = s
        .post("/v1/admin/payment-provider", &json!({"available": false}))
        .await;
    assert_eq!(status, 200);
    let buyer = {
        let s = s.clone();
        tokio::spawn(async move { s.purchase("saga-a", "p2", 1).await })
    };
    let reserved = bulwark_testkit::wait_for(Duration::from_secs(30), || async {
        s.audit("p2").await["reserved"] == 1
    })
    .await;
    assert!(reserved, "the saga reserved p2");

    // Pin the purchase pool: lock p1's row, and send purchases of p1 until both pool
    // connections wait on that lock inside PostgreSQL.
    let mut locker = sqlx::PgConnection::connect(&s.db.url)
        .await
        .expect("connect");
    sqlx::query("BEGIN")
        .execute(&mut locker)
        .await
        .expect("begin");
    sqlx::query("SELECT stock FROM shop_products WHERE id = 'p1' FOR UPDATE")
        .execute(&mut locker)
        .await
        .expect("lock p1");
    let blocked: Vec<_> = (0..4)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.purchase_retrying(&format!("p1-{i}"), "p1", 1).await })
        })
        .collect();
    let watcher = sqlx::PgPool::connect(&s.db.url).await.expect("connect");
    let pinned = bulwark_testkit::wait_for(Duration::from_secs(30), || {
        let watcher = watcher.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&watcher)
            .await
            .expect("pg_stat_activity");
            n >= 2
        }
    })
    .await;
    assert!(pinned, "both purchase connections wait on p1's row lock");

    // The provider is back: the saga's next charge succeeds, and its ledger write and
    // confirm go through the saga pool while every purchase connection is still pinned.
    let (status, _) = s
        .post("/v1/admin/payment-provider", &json!({"available": true}))
        .await;
    assert_eq!(status, 200);
    let (status, body) = buyer.await.expect("buyer");
    assert_eq!(
        status, 201,
        "the saga confirmed under a pinned purchase pool: {body}"
    );
    assert_eq!(body["status"], "CONFIRMED", "{body}");

    // Let the pinned purchases go: they all complete.
    sqlx::query("ROLLBACK")
        .execute(&mut locker)
        .await
        .expect("rollback");
    for b in blocked {
        let (status, body) = b.await.expect("p1 buyer");
        assert_eq!(status, 201, "{body}");
    }
    for p in ["p1", "p2"] {
        let audit = s.settled_audit(p).await;
        assert_invariants(&audit);
    }
    let s = Arc::into_inner(s).expect("no other owner");
    s.stop().await;
}
