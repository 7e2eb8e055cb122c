//! The CAP gateway's whole HTTP path on arbitrary bytes: one client connection whose
//! bytes are the input, through the connection guard, hyper, the shared layers (request
//! id, envelope, security) and the gateway's routes, which parse the key, the value in the
//! path, the consistency (query and header) and the JSON or raw body. The replicas are
//! unreachable, so a request that gets that far fails fast with 503.
//!
//! Beyond "never panics": whatever the bytes, the answer is HTTP; no answer is a 500; every
//! 4xx carries the JSON envelope (`{"error":{"code","message","request_id"}}`).

#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bulwark_gateway::config::GatewayConfig;
use bulwark_http::guard::{ConnMeta, GuardLimits, Guarded};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

struct Gateway {
    rt: tokio::runtime::Runtime,
    app: Router,
    guard: GuardLimits,
}

fn gateway() -> &'static Gateway {
    static GATEWAY: OnceLock<Gateway> = OnceLock::new();
    GATEWAY.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let settings = bulwark_config::Settings::from_pairs([
            // Closed ports: every replica call is refused at once.
            ("REPLICAS", "db_g1=127.0.0.1:9,db_g2=127.0.0.1:19"),
            ("NETWORK_TIMEOUT_SEC", "0.05"),
            ("RATE_LIMIT", "off"),
            ("MAX_KEY_BYTES", "64"),
            ("MAX_VALUE_BYTES", "256"),
        ]);
        let config = GatewayConfig::from_settings(&settings).expect("config");
        let guard = config.http.serve.guard;
        // The engine starts its replica clients on the runtime.
        let (_state, app, _security) = rt
            .block_on(async { bulwark_gateway::app(config) })
            .expect("app");
        Gateway { rt, app, guard }
    })
}

fuzz_target!(|data: &[u8]| {
    let gw = gateway();
    let answer = gw.rt.block_on(exchange(gw, data));
    check(&answer);
});

/// Sends `data` on one connection, closes the sending side, and returns every byte the
/// gateway answered before it closed.
async fn exchange(gw: &Gateway, data: &[u8]) -> Vec<u8> {
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let peer: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
    let meta = Arc::new(ConnMeta::new(peer, false));
    let guarded = Guarded::new(server, gw.guard, meta.clone());
    let app = gw.app.clone();
    // As `bulwark_http::serve` runs each connection.
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(meta.clone());
            req.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(req.map(Body::new))
        });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new());
    let conn = tokio::spawn(http.serve_connection(hyper_util::rt::TokioIo::new(guarded), service));
    let mut answer = Vec::new();
    let io = async {
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let _ = client.read_to_end(&mut answer).await;
    };
    // A connection that neither answers nor closes within the guard's timeouts is a hang.
    if tokio::time::timeout(Duration::from_secs(30), io)
        .await
        .is_err()
    {
        panic!("the connection neither answered nor closed");
    }
    conn.abort();
    answer
}

/// Checks the first answer on the connection (after it, a HEAD's answer without a body
/// cannot be told from a GET's without parsing the requests again).
fn check(answer: &[u8]) {
    if answer.is_empty() {
        // Closed without an answer: only for input that is no request at all.
        return;
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut res = httparse::Response::new(&mut headers);
    let head = match res.parse(answer) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!(
            "not an HTTP answer: {other:?} in {:?}",
            String::from_utf8_lossy(answer)
        ),
    };
    let status = res.code.expect("a status");
    let header = |name: &str| {
        res.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    assert_ne!(status, 500, "a 500: {:?}", String::from_utf8_lossy(answer));
    if !(400..500).contains(&status) {
        return;
    }
    let ctype = header("content-type").unwrap_or_default();
    assert!(
        ctype.starts_with("application/json"),
        "a {status} without the envelope"
    );
    let len: Option<usize> = header("content-length").and_then(|v| v.trim().parse().ok());
    if let Some(len) = len
        && answer.len() >= head + len
    {
        let text = String::from_utf8_lossy(&answer[head..head + len]);
        assert!(
            text.contains("\"error\"")
                && text.contains("\"code\"")
                && text.contains("\"request_id\""),
            "a {status} whose body is not the envelope: {text}"
        );
    }
}
