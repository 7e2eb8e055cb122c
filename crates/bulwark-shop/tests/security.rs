//! The commerce service behind credentials (SPEC OPS-4): every route by role, anonymous
//! callers refused everywhere but health and the OpenAPI document, the seed's reset
//! guarded, and bad path bytes answered with the JSON envelope.

mod common;

use common::{Server, SqlBackend};
use serde_json::{Value, json};

/// Every route with the least role it needs (None: open).
const ROUTES: &[(&str, &str, Option<&str>)] = &[
    ("GET", "/v1/products", Some("read")),
    ("GET", "/v1/products/p1", Some("read")),
    ("GET", "/v1/products/p1/stock", Some("read")),
    ("POST", "/v1/orders", Some("write")),
    ("GET", "/v1/orders/o1", Some("read")),
    ("POST", "/v1/admin/seed", Some("admin")),
    ("GET", "/v1/admin/products/p1/audit", Some("admin")),
    ("POST", "/v1/admin/orders/o1/retry", Some("admin")),
    ("GET", "/v1/admin/dead-letters", Some("admin")),
    ("POST", "/v1/admin/reconcile", Some("admin")),
    ("POST", "/v1/admin/payment-provider", Some("admin")),
    ("GET", "/v1/admin/replica", Some("admin")),
    ("GET", "/metrics", Some("read")),
    ("GET", "/health", None),
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

async fn call(s: &Server, method: &str, path: &str, key: Option<&str>) -> (u16, Value) {
    let mut rb = s
        .client
        .request(method.parse().expect("method"), format!("{}{path}", s.base));
    if method == "POST" {
        rb = rb
            .header("idempotency-key", "sec-1")
            .json(&json!({"products": [], "product_id": "p1", "quantity": 1}));
    }
    if let Some(k) = key {
        rb = rb.header("authorization", format!("Bearer {k}"));
    }
    let r = rb.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_by_role() {
    let dir = tempfile::tempdir().expect("dir");
    let mut keys = Vec::new();
    let mut file = String::new();
    for role in ["read", "write", "admin"] {
        let (key, hash) = bulwark_http::auth::new_key();
        file.push_str(&format!("{role}er {role} {hash}\n"));
        keys.push((role, key));
    }
    let keys_file = dir.path().join("api-keys");
    std::fs::write(&keys_file, file).expect("keys");
    let audit = dir.path().join("audit.jsonl");
    let s = Server::start(
        SqlBackend::Sqlite,
        &[
            ("API_KEYS_FILE", &keys_file.display().to_string()),
            ("RATE_LIMIT", "off"),
            ("AUDIT_LOG", &audit.display().to_string()),
        ],
    )
    .await;

    // The table covers every documented operation.
    let (_, doc) = call(&s, "GET", "/openapi.json", None).await;
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for method in ops.as_object().expect("operations").keys() {
            let method = method.to_uppercase();
            let covered = ROUTES.iter().any(|(m, p, _)| {
                let (t, q): (Vec<&str>, Vec<&str>) =
                    (path.split('/').collect(), p.split('/').collect());
                *m == method
                    && t.len() == q.len()
                    && t.iter().zip(&q).all(|(a, b)| a == b || a.starts_with('{'))
            });
            assert!(covered, "{method} {path} is documented but not in ROUTES");
        }
    }

    for (method, path, needs) in ROUTES {
        let (status, body) = call(&s, method, path, None).await;
        match needs {
            None => assert!(status < 400, "{method} {path} is open: {status}"),
            Some(_) => {
                assert_eq!(status, 401, "{method} {path} anonymous: {body}");
                assert_eq!(body["error"]["code"], "UNAUTHENTICATED");
            }
        }
        for (role, key) in &keys {
            let (status, body) = call(&s, method, path, Some(key)).await;
            if needs.is_none_or(|n| rank(role) >= rank(n)) {
                assert!(
                    status != 401 && status != 403,
                    "{method} {path} as {role}: {status} {body}"
                );
            } else {
                assert_eq!(status, 403, "{method} {path} as {role}: {body}");
                assert_eq!(body["error"]["code"], "FORBIDDEN");
            }
        }
    }

    // A path id that is not UTF-8 is refused with the envelope, not plain text.
    let admin = &keys[2].1;
    let (status, body) = call(&s, "GET", "/v1/products/%FF", Some(admin)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["code"].is_string(), "{body}");
    assert!(body["error"]["request_id"].is_string(), "{body}");

    s.stop().await;
    let summary = bulwark_audit::verify(&audit).expect("the audit chain verifies");
    assert!(summary.lines > 0);
    let text = std::fs::read_to_string(&audit).expect("audit");
    assert!(
        text.contains("\"route\":\"/v1/admin/seed\""),
        "admin calls are audited"
    );
    for (_, key) in &keys {
        assert!(!text.contains(key.as_str()), "a key is in the audit log");
    }
}
