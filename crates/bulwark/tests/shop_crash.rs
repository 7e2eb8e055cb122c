//! SHOP-3 crash recovery with the real binary: `bulwark shop` is SIGKILLed while
//! hundreds of purchases are in flight, then restarted on the same database. Every saga
//! must reach a terminal state, every purchase answered 201 before the crash must still
//! be CONFIRMED, and the audit's invariants must hold — on SQLite, PostgreSQL and MariaDB.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bulwark_testkit::sql::{SqlBackend, TestDatabase};
use serde_json::{Value, json};

/// A `bulwark shop` child process.
struct Shop {
    child: Child,
    base: String,
}

impl Shop {
    /// Starts the binary on `url` (port 0) and waits for its `listening on` line.
    fn start(url: &str) -> Shop {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bulwark"))
            .args(["shop", "--port", "0", "--database-url", url])
            // Slow payments: hundreds of sagas are between their steps when the kill lands.
            .args(["--payment-latency-ms", "200"])
            .env("LOG_LEVEL", "WARNING")
            .env("SHOP_SWEEP_INTERVAL_SEC", "1")
            // Small batches spread the confirmations over time, so there is always a
            // moment with some orders confirmed and others unfinished to kill in.
            .env("SHOP_BATCH_MAX", "8")
            .env("SHOP_DB_TIMEOUT_SEC", "30")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn bulwark shop");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let first = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("bulwark shop printed no address");
        let addr = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        Shop {
            child,
            base: format!("http://{addr}"),
        }
    }

    fn kill(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("SIGKILL");
        let _ = self.child.wait();
    }

    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "graceful shutdown exits 0: {status}");
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get(c: &reqwest::Client, url: String) -> (u16, Value) {
    match c.get(url).send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

async fn crash_mid_load(backend: SqlBackend) {
    let db = TestDatabase::create(backend).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let mut shop = Shop::start(&db.url);
    let ready = bulwark_testkit::wait_for(Duration::from_secs(30), || async {
        get(&client, format!("{}/health/ready", shop.base)).await.0 == 200
    })
    .await;
    assert!(ready);
    let r = client
        .post(format!("{}/v1/admin/seed", shop.base))
        .json(&json!({"products": [{"id": "hot", "name": "Hot", "price_cents": 500, "stock": 150}], "reset": true}))
        .send()
        .await
        .expect("seed");
    assert_eq!(r.status(), 200);

    // The watcher's connection is opened before the buyers start: on a loaded machine a
    // late connect could miss the whole window in which sagas are unfinished.
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&db.url)
        .await
        .expect("connect");
    // 400 buyers at once; the kill lands while many sagas are between their steps.
    let confirmed_before = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let buyers: Vec<_> = (0..400)
        .map(|i| {
            let c = client.clone();
            let url = format!("{}/v1/orders", shop.base);
            let done = confirmed_before.clone();
            tokio::spawn(async move {
                let r = c
                    .post(url)
                    .header("idempotency-key", format!("crash-{i}"))
                    .json(&json!({"product_id": "hot", "quantity": 1, "customer_id": format!("c{i}")}))
                    .send()
                    .await;
                if let Ok(r) = r
                    && r.status().as_u16() == 201
                    && let Ok(body) = r.json::<Value>().await
                    && let Some(id) = body["order_id"].as_str()
                {
                    done.lock().expect("lock").push(id.to_string());
                }
            })
        })
        .collect();
    // Kill once some purchases completed and others are durable but unfinished.
    let pending = async |conn: &mut sqlx::AnyConnection| -> i64 {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM shop_orders WHERE status = 'PENDING'")
            .fetch_one(conn)
            .await
            .unwrap_or(0)
    };
    let mut ready = false;
    for _ in 0..3000 {
        if confirmed_before.lock().expect("lock").len() >= 5 && pending(&mut conn).await > 0 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ready, "no moment with confirmed and unfinished purchases");
    shop.kill();
    let unfinished = pending(&mut conn).await;
    assert!(unfinished > 0, "the kill left sagas to recover");
    for b in buyers {
        let _ = b.await;
    }
    let confirmed_before = confirmed_before.lock().expect("lock").clone();

    // Restart on the same database: recovery resumes or compensates every saga.
    let shop = Shop::start(&db.url);
    let audit = bulwark_testkit::wait_for_some(Duration::from_secs(90), || async {
        let (s, a) = get(
            &client,
            format!("{}/v1/admin/products/hot/audit", shop.base),
        )
        .await;
        (s == 200 && a["invariants"]["all_terminal"] == true).then_some(a)
    })
    .await
    .expect("every saga reaches a terminal state after the restart");
    for k in [
        "no_oversell",
        "stock_conserved",
        "all_terminal",
        "paid_orders_settled",
    ] {
        assert_eq!(audit["invariants"][k], true, "{k}: {audit}");
    }
    let sold = audit["sold"].as_i64().expect("sold");
    assert!(sold <= 150, "{audit}");
    assert!(sold >= confirmed_before.len() as i64, "{audit}");
    assert_eq!(audit["payments"]["captured"], sold, "{audit}");
    println!("recovered {unfinished} unfinished sagas; {sold} units sold");
    for id in &confirmed_before {
        let (s, o) = get(&client, format!("{}/v1/orders/{id}", shop.base)).await;
        assert_eq!(
            (s, &o["status"]),
            (200, &json!("CONFIRMED")),
            "201 before the crash is durable: {o}"
        );
    }
    // The buyers whose requests died with the process retry with their keys and get a
    // definite answer; no key buys twice.
    for i in 0..400 {
        let r = client
            .post(format!("{}/v1/orders", shop.base))
            .header("idempotency-key", format!("crash-{i}"))
            .json(&json!({"product_id": "hot", "quantity": 1, "customer_id": format!("c{i}")}))
            .send()
            .await
            .expect("retry");
        assert!(
            matches!(r.status().as_u16(), 201 | 202 | 409),
            "crash-{i}: {}",
            r.status()
        );
    }
    let audit = bulwark_testkit::wait_for_some(Duration::from_secs(60), || async {
        let (s, a) = get(
            &client,
            format!("{}/v1/admin/products/hot/audit", shop.base),
        )
        .await;
        (s == 200 && a["invariants"]["all_terminal"] == true).then_some(a)
    })
    .await
    .expect("terminal after retries");
    for k in [
        "no_oversell",
        "stock_conserved",
        "paid_orders_settled",
        "cache_matches_db",
    ] {
        assert_eq!(audit["invariants"][k], true, "{k}: {audit}");
    }
    let mut shop = shop;
    shop.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_crash_sqlite() {
    crash_mid_load(SqlBackend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_crash_postgres() {
    crash_mid_load(SqlBackend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_crash_mariadb() {
    crash_mid_load(SqlBackend::MySql).await;
}
