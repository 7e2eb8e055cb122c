//! The gateway as a hostile network sees it (SPEC OPS-4, CAP-8): every route by role and
//! against bad credentials, rate limits with their headers, the audit trail, refused heads
//! as JSON, trickled bodies and connection floods. Over real `bulwark node` replicas.

mod common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const JWT_SECRET: &str = "a-test-jwt-secret-of-at-least-32-bytes!";
const AUDIENCE: &str = "bulwark-test";

/// Keys for the three roles, written to a keys file in `dir`.
struct Keys {
    reader: String,
    writer: String,
    admin: String,
    file: String,
}

fn keys_in(dir: &Path) -> Keys {
    let (reader, rh) = bulwark_http::auth::new_key();
    let (writer, wh) = bulwark_http::auth::new_key();
    let (admin, ah) = bulwark_http::auth::new_key();
    let file = dir.join("api-keys");
    std::fs::write(
        &file,
        format!("reader read {rh}\nwriter write {wh}\nadmin admin {ah}\n"),
    )
    .expect("keys file");
    Keys {
        reader,
        writer,
        admin,
        file: file.display().to_string(),
    }
}

fn jwt(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()).expect("key"),
    )
    .expect("token")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

const CHAOS_TOKEN: &str = "chaos-token-for-the-route-table";

/// Every route the gateway serves, with the least role it needs (None: open). Kept
/// beside the OpenAPI document: the test fails when a documented route is missing here.
const ROUTES: &[(&str, &str, Option<&str>)] = &[
    ("POST", "/write/k1/v1", Some("write")),
    ("GET", "/read/k1", Some("read")),
    ("PUT", "/v1/kv/k1", Some("write")),
    ("GET", "/v1/kv/k1", Some("read")),
    ("DELETE", "/v1/kv/k1", Some("write")),
    ("GET", "/circuit-breaker", Some("read")),
    ("GET", "/metrics", Some("read")),
    ("POST", "/v1/admin/anti-entropy", Some("admin")),
    ("GET", "/admin/chaos/clock", Some("admin")),
    ("PUT", "/admin/chaos/clock", Some("admin")),
    ("DELETE", "/admin/chaos/clock", Some("admin")),
    ("GET", "/health", None),
    ("GET", "/health/live", None),
    ("GET", "/health/ready", None),
    ("GET", "/openapi.json", None),
];

fn rank(role: &str) -> u8 {
    match role {
        "read" => 1,
        "write" => 2,
        _ => 3,
    }
}

async fn call(
    c: &reqwest::Client,
    base: &str,
    method: &str,
    path: &str,
    auth: Option<&str>,
) -> (u16, Value) {
    let url = format!("{base}{path}");
    let mut rb = c.request(method.parse().expect("method"), url);
    if method == "PUT" {
        rb = rb.json(&json!({"value": "v1"}));
    }
    if let Some(a) = auth {
        rb = rb.header("authorization", a);
    }
    // The chaos routes need the fault-injection token besides an admin role.
    if path.starts_with("/admin/chaos/") {
        rb = rb.header("x-chaos-token", CHAOS_TOKEN);
    }
    let r = rb.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn assert_envelope(body: &Value, code: &str, what: &str) {
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
    assert!(
        body["error"]["request_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{what}: {body}"
    );
}

#[tokio::test]
async fn every_route_answers_by_role_and_refuses_every_bad_credential() {
    let dir = tempfile::tempdir().expect("dir");
    let keys = keys_in(dir.path());
    let cluster = TestCluster::start(Backend::Bulwark, 2).await;
    let audit = dir.path().join("audit.jsonl");
    let gw = cluster
        .gateway(
            "ap",
            &[
                ("API_KEYS_FILE", &keys.file),
                ("JWT_SECRET", JWT_SECRET),
                ("JWT_AUDIENCE", AUDIENCE),
                ("RATE_LIMIT", "off"),
                ("CHAOS_TOKEN", CHAOS_TOKEN),
                ("AUDIT_LOG", &audit.display().to_string()),
            ],
        )
        .await;
    let c = client();

    // The table covers every documented operation.
    let (_, doc) = call(&c, &gw.url, "GET", "/openapi.json", None).await;
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for method in ops.as_object().expect("operations").keys() {
            let method = method.to_uppercase();
            if method == "PARAMETERS" {
                continue;
            }
            let covered = ROUTES
                .iter()
                .any(|(m, p, _)| *m == method && template_matches(path, p));
            assert!(covered, "{method} {path} is documented but not in ROUTES");
        }
    }

    let expired = jwt(json!({"sub":"old","aud":AUDIENCE,"role":"admin","exp":now() - 3600}));
    let wrong_aud = jwt(json!({"sub":"x","aud":"elsewhere","role":"admin","exp":now() + 3600}));
    let none_alg = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(
            json!({"sub":"x","aud":AUDIENCE,"role":"admin","exp":now() + 3600})
                .to_string()
                .as_bytes()
        )
    );
    let forged = {
        let good = jwt(json!({"sub":"x","aud":AUDIENCE,"role":"read","exp":now() + 3600}));
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(
            json!({"sub":"x","aud":AUDIENCE,"role":"admin","exp":now() + 3600})
                .to_string()
                .as_bytes(),
        );
        parts.join(".")
    };
    let bad: Vec<(String, Option<String>)> = vec![
        ("no credentials".into(), None),
        ("empty bearer".into(), Some("Bearer ".into())),
        ("not bearer".into(), Some(format!("Basic {}", keys.admin))),
        (
            "unknown key".into(),
            Some("Bearer bw_0000000000000000000000000000000000000000".into()),
        ),
        (
            "key with a byte changed".into(),
            Some(format!("Bearer {}x", keys.admin)),
        ),
        ("expired jwt".into(), Some(format!("Bearer {expired}"))),
        (
            "jwt for another audience".into(),
            Some(format!("Bearer {wrong_aud}")),
        ),
        ("alg none jwt".into(), Some(format!("Bearer {none_alg}"))),
        ("forged jwt claims".into(), Some(format!("Bearer {forged}"))),
    ];
    let reader_jwt = jwt(json!({"sub":"svc","aud":AUDIENCE,"role":"read","exp":now() + 3600}));
    let good: Vec<(&str, String)> = vec![
        ("read", format!("Bearer {}", keys.reader)),
        ("write", format!("Bearer {}", keys.writer)),
        ("admin", format!("Bearer {}", keys.admin)),
        ("read", format!("Bearer {reader_jwt}")),
    ];

    for (method, path, needs) in ROUTES {
        for (what, auth) in &bad {
            let (status, body) = call(&c, &gw.url, method, path, auth.as_deref()).await;
            match needs {
                None => assert!(status < 400, "{method} {path} is open; {what} got {status}"),
                Some(_) => {
                    assert_eq!(status, 401, "{method} {path} with {what}: {body}");
                    assert_envelope(&body, "UNAUTHENTICATED", &format!("{method} {path} {what}"));
                }
            }
        }
        // The key in the query string is never read: it would land in access logs.
        let (status, _) = call(
            &c,
            &gw.url,
            method,
            &format!("{path}?api_key={}", keys.admin),
            None,
        )
        .await;
        if needs.is_some() {
            assert_eq!(status, 401, "{method} {path} with the key in the query");
        }
        for (role, auth) in &good {
            let (status, body) = call(&c, &gw.url, method, path, Some(auth)).await;
            let allowed = needs.is_none_or(|n| rank(role) >= rank(n));
            if allowed {
                assert!(
                    status != 401 && status != 403,
                    "{method} {path} as {role}: {status} {body}"
                );
            } else {
                assert_eq!(status, 403, "{method} {path} as {role}: {body}");
                assert_envelope(&body, "FORBIDDEN", &format!("{method} {path} as {role}"));
            }
        }
    }

    // Every refusal and every write is in the audit log, whose chain verifies, and no
    // credential appears in it.
    gw.shutdown().await.expect("shutdown");
    let summary = bulwark_audit::verify(&audit).expect("the audit chain verifies");
    assert!(summary.lines > 0);
    let text = std::fs::read_to_string(&audit).expect("audit");
    for secret in [&keys.reader, &keys.writer, &keys.admin, &reader_jwt] {
        assert!(
            !text.contains(secret.as_str()),
            "a credential is in the audit log"
        );
    }
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert!(
        lines.iter().any(|l| l["outcome"] == "refused"
            && l["status"] == 401
            && l["route"] == "/v1/admin/anti-entropy"),
        "refusals are audited"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["key_id"] == "writer" && l["method"] == "PUT" && l["status"] == 200),
        "writes are audited with the key id"
    );
    assert!(
        lines.iter().all(|l| !l.to_string().contains("\"v1\"")),
        "no value is in the audit log"
    );
}

/// `/v1/kv/{key}` matches `/v1/kv/k1`.
fn template_matches(template: &str, path: &str) -> bool {
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(a, b)| a == b || (a.starts_with('{') && a.ends_with('}')))
}

#[tokio::test]
async fn rate_limits_answer_429_per_key_with_the_headers() {
    let dir = tempfile::tempdir().expect("dir");
    let keys = keys_in(dir.path());
    let cluster = TestCluster::start(Backend::Bulwark, 2).await;
    let gw = cluster
        .gateway(
            "ap",
            &[
                ("API_KEYS_FILE", &keys.file),
                ("RATE_LIMIT", "5/min"),
                ("AUDIT_LOG", "off"),
            ],
        )
        .await;
    let c = client();
    let reader = format!("Bearer {}", keys.reader);
    for i in 0..5 {
        let r = c
            .get(format!("{}/v1/kv/a", gw.url))
            .header("authorization", &reader)
            .send()
            .await
            .expect("request");
        assert_ne!(r.status().as_u16(), 429, "request {i} is within the quota");
        assert!(
            r.headers().contains_key("ratelimit-policy"),
            "{:?}",
            r.headers()
        );
    }
    let r = c
        .get(format!("{}/v1/kv/a", gw.url))
        .header("authorization", &reader)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry), "retry after {retry}");
    assert!(r.headers().contains_key("ratelimit"));
    let body: Value = r.json().await.expect("json");
    assert_envelope(&body, "RATE_LIMITED", "the sixth request");
    // Another key has its own quota; health is never limited.
    let (status, _) = call(
        &c,
        &gw.url,
        "GET",
        "/v1/kv/a",
        Some(&format!("Bearer {}", keys.writer)),
    )
    .await;
    assert_ne!(status, 429, "the writer's quota is its own");
    for _ in 0..10 {
        let (status, _) = call(&c, &gw.url, "GET", "/health/ready", None).await;
        assert_eq!(status, 200);
    }
}

/// Sends `raw` on a new connection and reads the whole answer.
async fn raw(addr: &str, raw: &[u8]) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(raw).await.expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    parse_answer(&buf)
}

fn parse_answer(buf: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn hostile_heads_get_the_json_envelope() {
    let cluster = TestCluster::start(Backend::Bulwark, 2).await;
    let gw = cluster.gateway("ap", &[]).await;
    let addr = gw.url.trim_start_matches("http://").to_owned();
    let long_uri = format!(
        "GET /v1/kv/{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(20_000)
    );
    let big_head = format!(
        "GET /v1/kv/a HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(70_000)
    );
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("a long URI", long_uri.into_bytes(), 414, "URI_TOO_LONG"),
        ("a big head", big_head.into_bytes(), 431, "HEADERS_TOO_LARGE"),
        (
            "a bad Content-Length",
            b"PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n".to_vec(),
            400,
            "BAD_CONTENT_LENGTH",
        ),
        (
            "two Content-Lengths",
            b"PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc"
                .to_vec(),
            400,
            "BAD_CONTENT_LENGTH",
        ),
        (
            "a garbage request line",
            b"\x01\x02 nonsense\r\n\r\n".to_vec(),
            400,
            "MALFORMED_REQUEST",
        ),
        (
            "a path that is not UTF-8",
            b"GET /v1/kv/%FF HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
            400,
            "",
        ),
    ];
    for (what, bytes, status, code) in cases {
        let (got, body) = raw(&addr, &bytes).await;
        assert_eq!(got, status, "{what}: {body}");
        assert!(
            body["error"]["code"].is_string(),
            "{what}: not the envelope: {body}"
        );
        if !code.is_empty() {
            assert_eq!(body["error"]["code"], code, "{what}");
        }
    }
    // The gateway still serves.
    let (status, _) = call(&client(), &gw.url, "GET", "/health", None).await;
    assert_eq!(status, 200);
}

/// A client holding a request head open and trickling its body must not take the
/// admission slots: MAX_IN_FLIGHT counts requests whose body is in.
#[tokio::test]
async fn trickled_bodies_neither_starve_clients_nor_hide_from_readiness() {
    let cluster = TestCluster::start(Backend::Bulwark, 2).await;
    let gw = cluster
        .gateway(
            "ap",
            &[("MAX_IN_FLIGHT", "4"), ("BODY_READ_TIMEOUT_SEC", "3")],
        )
        .await;
    let addr = gw.url.trim_start_matches("http://").to_owned();
    let mut slow = Vec::new();
    for i in 0..64 {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        s.write_all(
            format!(
                "PUT /v1/kv/slow{i} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
            )
            .as_bytes(),
        )
        .await
        .expect("head");
        slow.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = client();
    let started = Instant::now();
    for i in 0..20 {
        let (status, body) = call(&c, &gw.url, "PUT", &format!("/v1/kv/ok{i}"), None).await;
        assert_eq!(
            status, 200,
            "a well-behaved write while 64 bodies trickle: {body}"
        );
    }
    let (status, body) = call(&c, &gw.url, "GET", "/health/ready", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "served before the slow bodies timed out"
    );
    // The slow bodies are answered 408 once their time is up.
    let mut timed_out = 0;
    for mut s in slow {
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut buf)).await;
        let (status, body) = parse_answer(&buf);
        if status == 408 {
            assert_envelope(&body, "REQUEST_TIMEOUT", "a trickled body");
            timed_out += 1;
        }
    }
    assert_eq!(timed_out, 64, "every trickled body is answered 408");
}

async fn connect_from(ip: &str, addr: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{ip}:0").parse().expect("local"))
        .expect("bind");
    socket
        .connect(addr.parse().expect("addr"))
        .await
        .expect("connect")
}

#[tokio::test]
async fn one_client_cannot_take_every_connection() {
    let cluster = TestCluster::start(Backend::Bulwark, 2).await;
    let gw = cluster
        .gateway("ap", &[("MAX_CONNECTIONS_PER_IP", "8")])
        .await;
    let addr = gw.url.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(connect_from("127.0.0.1", &addr).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ninth = connect_from("127.0.0.1", &addr).await;
    ninth
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), ninth.read_to_end(&mut buf)).await;
    let (status, body) = parse_answer(&buf);
    assert_eq!(status, 429, "{}", String::from_utf8_lossy(&buf));
    assert_envelope(&body, "TOO_MANY_CONNECTIONS", "the ninth connection");
    // Another address is served while the first holds its share.
    let mut other = connect_from("127.0.0.2", &addr).await;
    other
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), other.read_to_end(&mut buf)).await;
    assert_eq!(
        parse_answer(&buf).0,
        200,
        "{}",
        String::from_utf8_lossy(&buf)
    );
    drop(held);
}
