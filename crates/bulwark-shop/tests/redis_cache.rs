//! SHOP-1 with `SHOP_CACHE=redis`: the catalog cache's shared level. Entries are written
//! to a real `redis-server` with the seed's TTLs (details 300 s, stock 5 s), and a
//! second instance whose own cache is cold serves product and stock reads from Redis
//! (values the database no longer has), with the hit counters moving.

mod common;

use std::time::Duration;

use common::{Server, SqlBackend, TestDatabase};
use serde_json::Value;

/// `shop_cache_requests_total{cache,result}` in a `/metrics` text (0 when absent).
fn lookups(metrics: &str, cache: &str, result: &str) -> u64 {
    let series = format!(r#"shop_cache_requests_total{{cache="{cache}",result="{result}"}}"#);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_reads_are_served_from_redis_with_the_seed_ttls() {
    let redis = bulwark_testkit::RedisServer::start(bulwark_testkit::RedisOptions::default()).await;
    let url = format!("redis://{}", redis.addr());
    let extra = [("SHOP_CACHE", "redis"), ("SHOP_REDIS_URL", url.as_str())];
    let a = Server::start(SqlBackend::Postgres, &extra).await;
    // A second instance on the same database, started while the catalog is empty, so
    // its warm-up leaves its own cache cold for p1.
    let b = Server::start_on(
        TestDatabase::existing(SqlBackend::Postgres, &a.db.url),
        &extra,
    )
    .await;
    let client = redis::Client::open(url.as_str()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");

    // Seeding through `a` writes both entries to Redis (in the background), with their
    // TTLs. (Seeded again if the 5 s stock entry expired before it was looked at.)
    let (details_ttl, stock_ttl) = bulwark_testkit::wait_for_some(Duration::from_secs(30), || {
        let (a, mut conn) = (&a, conn.clone());
        async move {
            a.seed("p1", 10).await;
            for _ in 0..50 {
                let d: i64 = redis::cmd("PTTL")
                    .arg("shop:details:p1")
                    .query_async(&mut conn)
                    .await
                    .expect("pttl");
                let s: i64 = redis::cmd("PTTL")
                    .arg("shop:stock:p1")
                    .query_async(&mut conn)
                    .await
                    .expect("pttl");
                if d > 0 && s > 0 {
                    return Some((d, s));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            None
        }
    })
    .await
    .expect("both entries reach Redis");
    assert!(
        details_ttl > 5_000 && details_ttl <= 300_000,
        "details TTL 300 s: {details_ttl} ms left"
    );
    assert!(stock_ttl <= 5_000, "stock TTL 5 s: {stock_ttl} ms left");
    let details: String = redis::cmd("GET")
        .arg("shop:details:p1")
        .query_async(&mut conn)
        .await
        .expect("get");
    let details: Value = serde_json::from_str(&details).expect("details JSON");
    assert_eq!(details["name"], "Flash item", "{details}");

    // The database changes behind the cache; Redis holds a stock entry (units:version)
    // the database never had.
    sqlx::any::install_default_drivers();
    let mut db = <sqlx::AnyConnection as sqlx::Connection>::connect(&a.db.url)
        .await
        .expect("connect");
    sqlx::query("UPDATE shop_products SET name = 'Renamed' WHERE id = 'p1'")
        .execute(&mut db)
        .await
        .expect("rename");
    let _: () = redis::cmd("SET")
        .arg("shop:stock:p1")
        .arg("7:0")
        .arg("EX")
        .arg(300)
        .query_async(&mut conn)
        .await
        .expect("set");

    let before = b.metrics().await;
    let r = b
        .client
        .get(format!("{}/v1/products/p1", b.base))
        .send()
        .await
        .expect("get");
    assert_eq!(r.headers()["x-cache"], "hit", "served by the cache");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["name"], "Flash item", "details from Redis: {body}");
    assert_eq!(body["stock"], 7, "stock from Redis: {body}");
    let after = b.metrics().await;
    for cache in ["details", "stock"] {
        assert_eq!(
            lookups(&after, cache, "hit"),
            lookups(&before, cache, "hit") + 1,
            "{cache} hit counted"
        );
        assert_eq!(
            lookups(&after, cache, "miss"),
            lookups(&before, cache, "miss"),
            "{cache}: no miss"
        );
    }
    assert!(
        after.contains(r#"shop_cache_hit_ratio{cache="details"} 1"#),
        "{after}"
    );
    b.stop().await;
    a.stop().await;
}
