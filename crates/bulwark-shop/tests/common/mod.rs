//! A real `bulwark shop` server on a free port over a fresh database, and an HTTP client
//! for it.

#![allow(dead_code)] // Each test binary uses its own subset of the helpers.

use std::time::Duration;

use bulwark_config::Settings;
use bulwark_shop::config::ShopConfig;
pub use bulwark_testkit::sql::{SqlBackend, TestDatabase};
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// A running service.
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// A client with a large connection pool.
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    /// The server runs on its own runtime in its own thread, as in the binary (`serve`
    /// is driven by `block_on` there, which does not require its future to be `Send`).
    handle: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    /// The database (dropped after the server).
    pub db: TestDatabase,
}

/// Settings every test uses: generous database timeouts (CI machines are slow and
/// shared), quick sweeps.
const BASE: &[(&str, &str)] = &[
    ("SHOP_DB_TIMEOUT_SEC", "30"),
    ("SHOP_SWEEP_INTERVAL_SEC", "1"),
    ("SHOP_SYNC_WAIT_MS", "20000"),
    ("SHOP_PAYMENT_LATENCY_MS", "1"),
];

impl Server {
    /// Starts a service on a new database of `backend` with extra settings.
    pub async fn start(backend: SqlBackend, extra: &[(&str, &str)]) -> Server {
        let db = TestDatabase::create(backend).await;
        Server::start_on(db, extra).await
    }

    /// Starts a service with purchase strategy `strategy`, and a `redis-server` of its own
    /// when the strategy needs one (returned: it stops when dropped).
    pub async fn start_with_strategy(
        backend: SqlBackend,
        strategy: &str,
        extra: &[(&str, &str)],
    ) -> (Server, Option<bulwark_testkit::RedisServer>) {
        let redis = if matches!(strategy, "redis-lua" | "layered") {
            Some(
                bulwark_testkit::RedisServer::start(bulwark_testkit::RedisOptions::default()).await,
            )
        } else {
            None
        };
        let redis_url = redis.as_ref().map(|r| format!("redis://{}", r.addr()));
        let mut pairs = vec![("SHOP_STRATEGY", strategy)];
        if let Some(url) = &redis_url {
            pairs.push(("SHOP_REDIS_URL", url.as_str()));
        }
        pairs.extend_from_slice(extra);
        (Server::start(backend, &pairs).await, redis)
    }

    /// Starts a service on an existing test database.
    pub async fn start_on(db: TestDatabase, extra: &[(&str, &str)]) -> Server {
        let mut pairs: Vec<(&str, &str)> = BASE.to_vec();
        pairs.push(("SHOP_DATABASE_URL", &db.url));
        pairs.extend_from_slice(extra);
        let config = ShopConfig::from_settings(&Settings::from_pairs(pairs)).expect("config");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                bulwark_shop::serve(listener, config, async move {
                    let _ = stopped.await;
                    "test".to_string()
                })
                .await
            })
        });
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(2048)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let server = Server {
            base,
            client,
            stop: Some(stop),
            handle: Some(handle),
            db,
        };
        let ok = bulwark_testkit::wait_for(Duration::from_secs(30), || async {
            server.get("/health/ready").await.0 == 200
        })
        .await;
        assert!(ok, "service never became ready");
        server
    }

    /// Stops the service gracefully and returns its database.
    pub async fn stop(mut self) -> TestDatabase {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            tokio::task::spawn_blocking(move || h.join())
                .await
                .expect("join")
                .expect("server thread")
                .expect("server result");
        }
        let Server { db, .. } = self;
        db
    }

    /// `GET path` → (status, JSON body or null).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        match self.client.get(format!("{}{path}", self.base)).send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.json().await.unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        }
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Seeds one product `id` with `stock` units at 1999 cents (reset first).
    pub async fn seed(&self, id: &str, stock: i64) {
        let (status, body) = self
            .post(
                "/v1/admin/seed",
                &json!({"products": [{"id": id, "name": "Flash item", "description": "d",
                        "price_cents": 1999, "stock": stock}], "reset": true}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    /// One purchase attempt → (status, body).
    pub async fn purchase(&self, key: &str, product: &str, qty: i64) -> (u16, Value) {
        self.purchase_raw(
            Some(key),
            &json!({"product_id": product, "quantity": qty, "customer_id": "c1"}).to_string(),
        )
        .await
    }

    /// A purchase with any header and body text.
    pub async fn purchase_raw(&self, key: Option<&str>, body: &str) -> (u16, Value) {
        let mut req = self
            .client
            .post(format!("{}/v1/orders", self.base))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        let r = req.send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A purchase retried with the same key while the service sheds load or is
    /// unavailable, as a well-behaved client does.
    pub async fn purchase_retrying(&self, key: &str, product: &str, qty: i64) -> (u16, Value) {
        let mut last = (0, Value::Null);
        for attempt in 0..200u64 {
            last = self.purchase(key, product, qty).await;
            if last.0 != 429 && last.0 != 503 {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(5 + attempt.min(20) * 5)).await;
        }
        last
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// The audit of `product`.
    pub async fn audit(&self, product: &str) -> Value {
        let (status, body) = self
            .get(&format!("/v1/admin/products/{product}/audit"))
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Polls the audit until every order is terminal (30 s), then returns it.
    pub async fn settled_audit(&self, product: &str) -> Value {
        let audit = bulwark_testkit::wait_for_some(Duration::from_secs(60), || async {
            let a = self.audit(product).await;
            (a["invariants"]["all_terminal"] == true).then_some(a)
        })
        .await;
        audit.unwrap_or_else(|| {
            panic!(
                "orders never all terminal: {}",
                self_audit_text(self, product)
            )
        })
    }
}

fn self_audit_text(_s: &Server, product: &str) -> String {
    format!("product {product}")
}

/// Asserts the contract's invariants on an audit.
pub fn assert_invariants(audit: &Value) {
    for k in [
        "no_oversell",
        "stock_conserved",
        "all_terminal",
        "paid_orders_settled",
        "cache_matches_db",
    ] {
        assert_eq!(audit["invariants"][k], true, "{k} failed: {audit}");
    }
}
