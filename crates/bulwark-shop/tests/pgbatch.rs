//! The PostgreSQL one-statement batches (`pgbatch`) against a real PostgreSQL: each
//! writes all of its rows or none, skips exactly the rows the generic path would find
//! already done, and leaves events for exactly the rows it changed.

use std::time::Duration;

use bulwark_resilience::breaker::BreakerConfig;
use bulwark_shop::db::{Db, DbConfig, DbError};
use bulwark_shop::model::{Event, Order, Product, Step, new_order_id, now_ms};
use bulwark_shop::{pgbatch, store};
use bulwark_testkit::sql::{SqlBackend, TestDatabase};

async fn open() -> (TestDatabase, Db) {
    let tdb = TestDatabase::create(SqlBackend::Postgres).await;
    let db = Db::open(&DbConfig {
        url: tdb.url.clone(),
        replica_url: None,
        pool_size: 2,
        saga_pool_size: 1,
        timeout: Duration::from_secs(30),
        breaker: BreakerConfig {
            failure_threshold: 100,
            open_timeout: Duration::from_secs(1),
            half_open_max_probes: 1,
        },
    })
    .await
    .expect("open");
    db.migrate().await.expect("migrate");
    let d = db.dialect;
    let product = Product {
        id: "p1".into(),
        name: "P1".into(),
        description: String::new(),
        price_cents: 100,
        stock: 0,
    };
    db.tx(async |c| store::seed(c, d, &[(product, 3)], true).await)
        .await
        .expect("seed");
    (tdb, db)
}

fn order(key: &str, quantity: i64) -> Order {
    let now = now_ms();
    Order {
        id: new_order_id(),
        key: key.into(),
        fingerprint: format!("fp-{key}"),
        product_id: "p1".into(),
        customer_id: "c1".into(),
        quantity,
        amount_cents: 100 * quantity,
        step: Step::Reserved,
        attempts: 0,
        reason: None,
        created_ms: now,
        expires_ms: now + 60_000,
    }
}

/// Every outbox event, oldest row first.
async fn events(db: &Db) -> Vec<Event> {
    let d = db.dialect;
    db.primary(async |c| store::outbox_fetch(c, d, 1000).await)
        .await
        .expect("outbox")
        .into_iter()
        .flat_map(|(_, e)| e)
        .collect()
}

async fn stock(db: &Db) -> i64 {
    let d = db.dialect;
    db.primary(async |c| store::stock(c, d, "p1").await)
        .await
        .expect("stock")
        .expect("product")
        .0
}

/// The text column `m` of the one row `sql` returns (`None` for SQL NULL).
async fn text_of(db: &Db, sql: &'static str) -> Option<String> {
    db.primary(async |c| {
        let r = sqlx::query(sql).fetch_one(&mut *c).await?;
        Ok(sqlx::Row::try_get::<Option<String>, _>(&r, "m")?)
    })
    .await
    .expect(sql)
}

async fn order_count(db: &Db) -> usize {
    let d = db.dialect;
    db.primary(async |c| store::due_orders(c, d, i64::MAX, i64::MAX, 1000).await)
        .await
        .expect("orders")
        .len()
}

/// The saga pool (where the batch confirm runs) plans each execution: a generic plan
/// cached while a sale's `shop_orders` was nearly empty walks the whole primary key per
/// batch once it has grown.
#[tokio::test]
async fn the_saga_pool_plans_every_execution() {
    let (_tdb, db) = open().await;
    let mode = async |db: &Db| {
        text_of(db, "SELECT current_setting('plan_cache_mode') AS m")
            .await
            .expect("setting")
    };
    assert_eq!(mode(&db.for_sagas()).await, "force_custom_plan");
    assert_eq!(mode(&db).await, "auto");
}

/// Migration 0003: the outbox's event batches are compressed with lz4 on a server that
/// has it (this one does), and the events still read back whole.
#[tokio::test]
async fn the_outbox_compresses_its_batches_with_lz4() {
    let (_tdb, db) = open().await;
    let method = text_of(
        &db,
        "SELECT attcompression::text AS m FROM pg_attribute \
         WHERE attrelid = 'shop_outbox'::regclass AND attname = 'events'",
    )
    .await
    .expect("attribute");
    assert_eq!(method, "l", "shop_outbox.events compression");
    // A batch whose events are well over PostgreSQL's 2 KB TOAST threshold.
    db.primary(async |c| {
        sqlx::query("UPDATE shop_products SET stock = 100 WHERE id = 'p1'")
            .execute(&mut *c)
            .await?;
        Ok(())
    })
    .await
    .expect("restock");
    let orders: Vec<_> = (0..50).map(|i| order(&format!("z{i}"), 1)).collect();
    let done = db
        .tx_single(async |c| pgbatch::reserve(c, "p1", &orders).await)
        .await
        .expect("reserve")
        .expect("product exists");
    assert_eq!(done.inserted.len(), 50);
    let compressed = text_of(
        &db,
        "SELECT pg_column_compression(events) AS m FROM shop_outbox",
    )
    .await;
    assert_eq!(compressed.as_deref(), Some("lz4"), "{compressed:?}");
    let ev = events(&db).await;
    assert_eq!(ev.len(), 50);
    assert!(ev.iter().all(|e| e.kind == "ORDER_RESERVED"));
}

#[tokio::test]
async fn reserve_confirm_and_charge_write_all_or_nothing() {
    let (_tdb, db) = open().await;

    // Two new orders: both inserted, two units taken, one ORDER_RESERVED event each.
    let (a, b) = (order("a", 1), order("b", 1));
    let done = db
        .tx_single(async |c| pgbatch::reserve(c, "p1", &[a.clone(), b.clone()]).await)
        .await
        .expect("reserve")
        .expect("product exists");
    assert_eq!(done.inserted.len(), 2);
    assert!(done.inserted.contains(&a.id) && done.inserted.contains(&b.id));
    assert_eq!((done.stock, stock(&db).await), (1, 1));
    let ev = events(&db).await;
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert!(
        ev.iter()
            .all(|e| e.kind == "ORDER_RESERVED" && e.product_id == "p1")
    );

    // A replayed key is skipped and its units are not taken; the new order is inserted.
    let (again, c1) = (order("a", 1), order("c", 1));
    let done = db
        .tx_single(async |c| pgbatch::reserve(c, "p1", &[again.clone(), c1.clone()]).await)
        .await
        .expect("reserve")
        .expect("product exists");
    assert_eq!(done.inserted.len(), 1);
    assert!(done.inserted.contains(&c1.id));
    assert_eq!(stock(&db).await, 0);
    assert_eq!(events(&db).await.len(), 3);
    assert_eq!(order_count(&db).await, 3);

    // More units than are left: the CHECK refuses the statement, nothing is written.
    let short = db
        .tx_single(async |c| pgbatch::reserve(c, "p1", &[order("d", 1)]).await)
        .await;
    assert!(matches!(short, Err(DbError::StockShort)), "{short:?}");
    assert_eq!((stock(&db).await, order_count(&db).await), (0, 3));
    assert_eq!(events(&db).await.len(), 3);

    // A missing product: nothing inserted.
    let mut stray = order("e", 1);
    stray.product_id = "nope".into();
    let missing = db
        .tx_single(async |c| pgbatch::reserve(c, "nope", &[stray.clone()]).await)
        .await
        .expect("reserve");
    assert!(missing.is_none());
    assert_eq!(order_count(&db).await, 3);

    // Confirm: only orders still RESERVED change; two events each, for them alone.
    let ids = [a.id.as_str(), b.id.as_str(), "o_missing"];
    let confirmed = db
        .tx_single(async |c| pgbatch::confirm(c, &ids).await)
        .await
        .expect("confirm");
    let mut got: Vec<&str> = confirmed.iter().map(|o| o.id.as_str()).collect();
    got.sort_unstable();
    let mut want = vec![a.id.as_str(), b.id.as_str()];
    want.sort_unstable();
    assert_eq!(got, want);
    assert!(confirmed.iter().all(|o| o.step == Step::Confirmed));
    let ev = events(&db).await;
    assert_eq!(ev.len(), 7, "{ev:?}");
    for id in [&a.id, &b.id] {
        for kind in ["PAYMENT_CAPTURED", "ORDER_CONFIRMED"] {
            let e = ev.iter().find(|e| &e.order_id == id && e.kind == kind);
            assert_eq!(e.map(|e| e.id.clone()), Some(format!("{id}:{kind}")));
        }
    }
    let twice = db
        .tx_single(async |c| pgbatch::confirm(c, &[a.id.as_str()]).await)
        .await
        .expect("confirm");
    assert!(twice.is_empty(), "a second confirmation changes nothing");
    assert_eq!(events(&db).await.len(), 7);

    // Charges: recorded once; a repeat is skipped and the first status stays.
    let charge = |order_id, status| pgbatch::FirstCharge {
        order_id,
        amount_cents: 100,
        status,
    };
    let first = [
        charge(a.id.as_str(), "CAPTURED"),
        charge(b.id.as_str(), "DECLINED"),
    ];
    let recorded = db
        .tx_single(async |c| pgbatch::record_charges(c, &first).await)
        .await
        .expect("charges");
    assert_eq!(recorded.len(), 2);
    let repeat = [charge(a.id.as_str(), "DECLINED")];
    let recorded = db
        .tx_single(async |c| pgbatch::record_charges(c, &repeat).await)
        .await
        .expect("charges");
    assert!(recorded.is_empty());
    let d = db.dialect;
    let ledger = db
        .primary(async |c| store::payments(c, d, &[a.id.as_str(), b.id.as_str()], false).await)
        .await
        .expect("ledger");
    assert_eq!(ledger[&a.id], "CAPTURED");
    assert_eq!(ledger[&b.id], "DECLINED");
}
