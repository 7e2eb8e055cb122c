//! Database unreachable → 503 fast (the `shop_db` breaker opens), nothing half-done; when
//! the database is back the breaker closes and the invariants hold. PostgreSQL is
//! reached through a TCP proxy the test can cut.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Server, SqlBackend, TestDatabase, assert_invariants};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy to PostgreSQL that can drop every connection and refuse new ones.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(AtomicBool::new(true));
        let conns = Arc::new(std::sync::Mutex::new(Vec::<tokio::task::AbortHandle>::new()));
        let (u, c) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
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
        Proxy { port, up, conns }
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
            ("SHOP_DB_BREAKER_OPEN_SEC", "1"),
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

    proxy.restore();
    let back = bulwark_testkit::wait_for(Duration::from_secs(30), || async {
        s.get("/health/ready").await.0 == 200
    })
    .await;
    assert!(back, "the breaker closes when the database is back");
    // The failed attempts reserved nothing; retried with their keys, they now succeed.
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
