//! Database unreachable → 503 fast (the `shop_db` breaker opens), nothing half-done; when
//! the database is back the breaker closes and the invariants hold. PostgreSQL is
//! reached through a TCP proxy the test can cut.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{Server, SqlBackend, TestDatabase, assert_invariants};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy to PostgreSQL that can drop every connection and refuse new ones.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    /// Connections attempted through the proxy (refused ones included).
    attempts: Arc<AtomicUsize>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(AtomicBool::new(true));
        let conns = Arc::new(std::sync::Mutex::new(Vec::<tokio::task::AbortHandle>::new()));
        let attempts = Arc::new(AtomicUsize::new(0));
        let (u, c, a) = (up.clone(), conns.clone(), attempts.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                if !u.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                c.lock().expect("lock").push(task.abort_handle());
            }
        });
        Proxy {
            port,
            up,
            attempts,
            conns,
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().expect("lock").drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_answers_503_and_loses_nothing() {
    let real = TestDatabase::create(SqlBackend::Postgres).await;
    let url = real.url.clone();
    let rest = url.strip_prefix("postgres://").expect("postgres url");
    let (auth_host, path) = rest.split_once('/').expect("path");
    let (auth, host) = auth_host.rsplit_once('@').expect("user");
    let proxy = Proxy::start(host.to_string()).await;
    let proxied = TestDatabase::existing(
        SqlBackend::Postgres,
        &format!("postgres://{auth}@127.0.0.1:{}/{path}", proxy.port),
    );
    let s = Server::start_on(
        proxied,
        &[
            ("SHOP_DB_TIMEOUT_SEC", "2"),
            // Long enough that the requests below all meet the OPEN breaker.
            ("SHOP_DB_BREAKER_OPEN_SEC", "10"),
            ("SHOP_DB_BREAKER_FAILURES", "3"),
        ],
    )
    .await;
    s.seed("p1", 10).await;
    assert_eq!(s.purchase("before", "p1", 1).await.0, 201);

    proxy.cut();
    let mut codes = Vec::new();
    for i in 0..6 {
        let (status, body) = s.purchase(&format!("down-{i}"), "p1", 1).await;
        assert_eq!(status, 503, "{body}");
        codes.push(
            body["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    assert!(codes.iter().all(|c| c == "UNAVAILABLE"), "{codes:?}");
    let (status, ready) = s.get("/health/ready").await;
    assert_eq!(status, 503, "{ready}");
    let metrics = s
        .client
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(r#"circuit_breaker_state{node="shop_db"} 2"#),
        "the breaker is OPEN: later calls fail without touching the network"
    );
    // Fast: with the breaker OPEN, purchases are refused without a connection attempt
    // (no wait for the database's timeout).
    let before = proxy.attempts.load(Ordering::SeqCst);
    for i in 0..20 {
        let (status, body) = s.purchase(&format!("open-{i}"), "p1", 1).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "UNAVAILABLE", "{body}");
        assert!(body["error"]["request_id"].is_string(), "{body}");
    }
    assert_eq!(
        proxy.attempts.load(Ordering::SeqCst),
        before,
        "an OPEN breaker never reaches for the database"
    );

    proxy.restore();
    let back = bulwark_testkit::wait_for(Duration::from_secs(30), || async {
        s.get("/health/ready").await.0 == 200
    })
    .await;
    assert!(back, "the breaker closes when the database is back");
    // Nothing half-done: no unit and no order was taken by the refused attempts.
    let audit = s.audit("p1").await;
    assert_eq!(audit["db_stock"], 9, "{audit}");
    assert_eq!(audit["sold"], 1, "{audit}");
    assert_eq!(audit["reserved"], 0, "{audit}");
    assert_eq!(audit["orders"]["CANCELLED"], 0, "{audit}");
    // Retried with their keys, they now succeed.
    for i in 0..6 {
        let (status, body) = s.purchase_retrying(&format!("down-{i}"), "p1", 1).await;
        assert_eq!(status, 201, "{body}");
    }
    let audit = s.settled_audit("p1").await;
    assert_invariants(&audit);
    assert_eq!(audit["sold"], 7, "{audit}");
    assert_eq!(audit["db_stock"], 3, "{audit}");
    s.stop().await;
    drop(real);
}
