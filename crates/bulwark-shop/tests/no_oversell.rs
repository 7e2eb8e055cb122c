//! SHOP-2: no strategy oversells. 1,000 buyers race for 100 units of one product on every
//! backend with every strategy: exactly 100 purchases succeed, the rest are sold out, and
//! the audit's invariants hold once every saga is terminal. (`layered` takes its Redis
//! counter before its lock, so the 900 buyers who find it empty never queue.)

mod common;

use bulwark_testkit::{RedisOptions, RedisServer};
use common::{Server, SqlBackend, assert_invariants};

const STOCK: i64 = 100;
const BUYERS: usize = 1000;

async fn no_oversell(backend: SqlBackend, strategy: &str) {
    let buyers = BUYERS;
    let redis = if matches!(strategy, "redis-lua" | "layered") {
        Some(RedisServer::start(RedisOptions::default()).await)
    } else {
        None
    };
    let redis_url = redis.as_ref().map(|r| format!("redis://{}", r.addr()));
    let mut extra = vec![("SHOP_STRATEGY", strategy)];
    if let Some(url) = &redis_url {
        extra.push(("SHOP_REDIS_URL", url.as_str()));
    }
    let server = std::sync::Arc::new(Server::start(backend, &extra).await);
    server.seed("p1", STOCK).await;

    let tasks: Vec<_> = (0..buyers)
        .map(|i| {
            let s = server.clone();
            tokio::spawn(async move { s.purchase_retrying(&format!("buyer-{i}"), "p1", 1).await })
        })
        .collect();
    let (mut created, mut sold_out) = (0, 0);
    for t in tasks {
        let (status, body) = t.await.expect("buyer task");
        let (status, body) = if status == 202 {
            // The saga outlived the request's wait: follow the order to its end.
            let id = body["order_id"].as_str().expect("order id").to_string();
            let done =
                bulwark_testkit::wait_for_some(std::time::Duration::from_secs(120), || async {
                    let (_, o) = server.get(&format!("/v1/orders/{id}")).await;
                    (o["saga"]["state"] == "terminal").then_some(o)
                })
                .await
                .expect("a 202 order reaches a terminal state");
            let code = if done["status"] == "CONFIRMED" {
                201
            } else {
                500
            };
            (code, done)
        } else {
            (status, body)
        };
        match status {
            201 => {
                assert_eq!(body["status"], "CONFIRMED", "{body}");
                created += 1;
            }
            409 => {
                assert_eq!(body["error"]["code"], "SOLD_OUT", "{body}");
                sold_out += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    if created != STOCK {
        eprintln!("DEBUG audit {}", server.audit("p1").await);
    }
    assert_eq!(created, STOCK, "exactly the stock is sold");
    assert_eq!(sold_out, buyers as i64 - STOCK);

    let audit = server.settled_audit("p1").await;
    assert_invariants(&audit);
    assert_eq!(audit["sold"], STOCK, "{audit}");
    assert_eq!(audit["db_stock"], 0, "{audit}");
    assert_eq!(audit["orders"]["CONFIRMED"], STOCK, "{audit}");
    assert_eq!(
        audit["payments"]["captured"], STOCK,
        "one charge per order: {audit}"
    );
    if redis.is_some() {
        assert_eq!(audit["redis_stock"], 0, "redis counter agrees: {audit}");
    }
    let server = std::sync::Arc::into_inner(server).expect("no other owner");
    server.stop().await;
}

macro_rules! matrix {
    ($($name:ident: $backend:ident, $strategy:literal;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            no_oversell(SqlBackend::$backend, $strategy).await;
        }
    )*};
}

matrix! {
    sqlite_batched: Sqlite, "batched";
    sqlite_row_lock: Sqlite, "row-lock";
    sqlite_optimistic: Sqlite, "optimistic";
    sqlite_redis_lua: Sqlite, "redis-lua";
    sqlite_layered: Sqlite, "layered";
    postgres_batched: Postgres, "batched";
    postgres_row_lock: Postgres, "row-lock";
    postgres_optimistic: Postgres, "optimistic";
    postgres_redis_lua: Postgres, "redis-lua";
    postgres_layered: Postgres, "layered";
    mariadb_batched: MySql, "batched";
    mariadb_row_lock: MySql, "row-lock";
    mariadb_optimistic: MySql, "optimistic";
    mariadb_redis_lua: MySql, "redis-lua";
    mariadb_layered: MySql, "layered";
}
