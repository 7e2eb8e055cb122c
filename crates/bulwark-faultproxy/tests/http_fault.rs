//! The `http_fault` toxic against a real axum server: abort by path and method, first N,
//! delay, keep-alive connections that existed before the fault, and pipelining.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::routing::get;
use common::{FaultProxy, read_up_to};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// What the server saw: `METHOD path` of each request, and the client ports.
#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<String>>,
    ports: Mutex<BTreeSet<u16>>,
}

impl Seen {
    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
    fn connections(&self) -> usize {
        self.ports.lock().unwrap().len()
    }
}

async fn record(
    State(seen): State<Arc<Seen>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    body: String,
) -> String {
    seen.requests
        .lock()
        .unwrap()
        .push(format!("{method} {}", uri.path()));
    seen.ports.lock().unwrap().insert(peer.port());
    format!("{} {}", uri.path(), body)
}

/// A real axum server on a free port; every route answers `<path> <body>`.
async fn server() -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route("/{*path}", get(record).post(record).head(record))
        .route("/", get(record).post(record))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    (addr, seen)
}

/// An HTTP client that keeps one connection alive.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap()
}

async fn setup() -> (FaultProxy, String, Arc<Seen>) {
    let (upstream, seen) = server().await;
    let fp = FaultProxy::start().await;
    let addr = fp.proxy("web", &upstream.to_string()).await;
    (fp, format!("http://{addr}"), seen)
}

#[tokio::test]
async fn aborts_only_requests_matching_method_and_path() {
    let (fp, base, seen) = setup().await;
    fp.toxic(
        "web",
        json!({"type": "http_fault", "name": "fail", "stream": "upstream",
               "attributes": {"status": 503, "method": "get", "path_prefix": "/orders"}}),
    )
    .await;
    let http = client();
    let resp = http
        .get(format!("{base}/orders/42"))
        .header("x-request-id", "req-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(resp.headers()["x-bulwark-fault"], "fail");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "FAULT_INJECTED");
    assert_eq!(body["error"]["request_id"], "req-1");

    let ok = http.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    let post = http
        .post(format!("{base}/orders/42"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(
        post.text().await.unwrap(),
        "/orders/42 x",
        "other methods pass"
    );
    assert_eq!(seen.requests(), ["GET /health", "POST /orders/42"]);
    assert_eq!(
        seen.connections(),
        1,
        "one keep-alive connection throughout"
    );
    fp.shutdown().await;
}

#[tokio::test]
async fn fails_the_first_n_requests_then_lets_them_through() {
    let (fp, base, seen) = setup().await;
    fp.toxic(
        "web",
        json!({"type": "http_fault", "stream": "upstream",
               "attributes": {"status": 500, "first_n": 2, "body": "{\"oops\":true}"}}),
    )
    .await;
    let http = client();
    let mut statuses = Vec::new();
    for i in 0..4 {
        let resp = http.get(format!("{base}/n/{i}")).send().await.unwrap();
        statuses.push(resp.status().as_u16());
        if i == 0 {
            assert_eq!(resp.text().await.unwrap(), "{\"oops\":true}");
        } else {
            let _ = resp.bytes().await.unwrap();
        }
    }
    assert_eq!(statuses, [500, 500, 200, 200]);
    assert_eq!(seen.requests(), ["GET /n/2", "GET /n/3"]);
    fp.shutdown().await;
}

#[tokio::test]
async fn delays_matching_requests() {
    let (fp, base, seen) = setup().await;
    fp.toxic(
        "web",
        json!({"type": "http_fault", "stream": "upstream",
               "attributes": {"delay_ms": 300, "path_prefix": "/slow"}}),
    )
    .await;
    let http = client();
    let start = Instant::now();
    let resp = http.get(format!("{base}/slow")).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "/slow ");
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
    let resp = http.get(format!("{base}/fast")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(seen.requests(), ["GET /slow", "GET /fast"]);
    fp.shutdown().await;
}

#[tokio::test]
async fn applies_to_a_keepalive_connection_opened_before_the_fault() {
    let (fp, base, seen) = setup().await;
    let http = client();
    assert_eq!(
        http.get(format!("{base}/a")).send().await.unwrap().status(),
        200
    );
    fp.toxic(
        "web",
        json!({"type": "http_fault", "name": "late", "stream": "upstream", "attributes": {"status": 429}}),
    )
    .await;
    let resp = http.get(format!("{base}/b")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    let _ = resp.bytes().await.unwrap();
    fp.remove("web", "late").await;
    let resp = http.get(format!("{base}/c")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let _ = resp.bytes().await.unwrap();
    assert_eq!(seen.requests(), ["GET /a", "GET /c"]);
    assert_eq!(
        seen.connections(),
        1,
        "the same connection before, during and after"
    );
    fp.shutdown().await;
}

#[tokio::test]
async fn pipelined_requests_get_their_answers_in_order() {
    let (fp, base, seen) = setup().await;
    fp.toxic(
        "web",
        json!({"type": "http_fault", "stream": "upstream",
               "attributes": {"status": 503, "path_prefix": "/fail"}}),
    )
    .await;
    let addr = base.trim_start_matches("http://");
    let mut c = TcpStream::connect(addr).await.unwrap();
    // Three requests in one write: a Content-Length body, an aborted chunked one, and
    // another Content-Length body.
    let requests = "POST /one HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
                    POST /fail HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwxyz\r\n0\r\n\r\n\
                    POST /three HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    c.write_all(requests.as_bytes()).await.unwrap();
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !text.contains("/three hello") && Instant::now() < deadline {
        let got = read_up_to(&mut c, 1, Duration::from_secs(10)).await;
        if got.is_empty() {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&got));
    }
    let first = text.find("/one abc").expect("first answer");
    let injected = text.find("HTTP/1.1 503").expect("injected answer");
    let third = text.find("/three hello").expect("third answer");
    assert!(first < injected && injected < third, "{text}");
    assert_eq!(seen.requests(), ["POST /one", "POST /three"]);
    fp.shutdown().await;
}

#[tokio::test]
async fn head_requests_get_an_answer_without_a_body() {
    let (fp, base, _seen) = setup().await;
    fp.toxic(
        "web",
        json!({"type": "http_fault", "stream": "upstream", "attributes": {"status": 502, "method": "HEAD"}}),
    )
    .await;
    let http = client();
    let resp = http.head(format!("{base}/x")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 502);
    assert!(resp.bytes().await.unwrap().is_empty());
    // The connection is still in step: the next request gets its own answer.
    let resp = http.get(format!("{base}/y")).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "/y ");
    fp.shutdown().await;
}

#[tokio::test]
async fn a_text_protocol_that_looks_like_http_passes_untouched() {
    // Redis inline commands start like a request line ("SET k v"): the tracker gives up
    // on the first line and the bytes go through as they are, fault or no fault.
    let redis = bulwark_testkit::RedisServer::start(bulwark_testkit::RedisOptions::default()).await;
    let fp = FaultProxy::start().await;
    let addr = fp.proxy("redis", &redis.addr()).await;
    fp.toxic(
        "redis",
        json!({"type": "http_fault", "stream": "upstream", "attributes": {"status": 503}}),
    )
    .await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    for _ in 0..3 {
        c.write_all(b"SET k v\r\nGET k\r\n").await.unwrap();
        let got = read_up_to(&mut c, 12, Duration::from_secs(10)).await;
        assert_eq!(got, b"+OK\r\n$1\r\nv\r\n");
    }
    fp.shutdown().await;
}
