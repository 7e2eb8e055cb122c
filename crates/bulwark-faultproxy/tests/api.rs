//! The Toxiproxy-compatible API: shapes, status codes, and its error matrix. Every refused
//! request is checked to have changed nothing.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{FaultProxy, echo_server, read_up_to};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn echo_works(addr: &str) -> bool {
    let Ok(mut c) = TcpStream::connect(addr).await else {
        return false;
    };
    if c.write_all(b"ping").await.is_err() {
        return false;
    }
    read_up_to(&mut c, 4, Duration::from_secs(10)).await == b"ping"
}

#[tokio::test]
async fn proxies_and_toxics_have_toxiproxys_shapes() {
    let fp = FaultProxy::start().await;
    let upstream = echo_server().await.to_string();
    let (status, proxy) = fp
        .call(
            "POST",
            "/proxies",
            Some(json!({"name": "echo", "listen": "127.0.0.1:0", "upstream": upstream})),
        )
        .await;
    assert_eq!(status, 201);
    let listen = proxy["listen"].as_str().unwrap().to_string();
    assert!(
        !listen.ends_with(":0"),
        "the chosen port is shown: {listen}"
    );
    assert_eq!(
        proxy,
        json!({"name": "echo", "listen": listen, "upstream": upstream, "enabled": true, "toxics": []})
    );

    // Defaults: name <type>_<stream>, stream downstream, toxicity 1; answered with 200.
    let (status, toxic) = fp
        .call(
            "POST",
            "/proxies/echo/toxics",
            Some(json!({"type": "latency", "attributes": {"latency": 10}})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        toxic,
        json!({"attributes": {"latency": 10, "jitter": 0}, "name": "latency_downstream",
               "type": "latency", "stream": "downstream", "toxicity": 1.0})
    );
    fp.toxic(
        "echo",
        json!({"type": "bandwidth", "stream": "upstream", "toxicity": 0.5, "attributes": {"rate": 1000}}),
    )
    .await;

    // Listed upstream first, then downstream, as Toxiproxy does.
    let (_, toxics) = fp.call("GET", "/proxies/echo/toxics", None).await;
    let names: Vec<&str> = toxics
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bandwidth_upstream", "latency_downstream"]);
    let (_, all) = fp.call("GET", "/proxies", None).await;
    assert_eq!(all["echo"]["toxics"], toxics);
    let (_, one) = fp.call("GET", "/proxies/echo", None).await;
    assert_eq!(one, all["echo"]);
    let (status, t) = fp
        .call("GET", "/proxies/echo/toxics/bandwidth_upstream", None)
        .await;
    assert_eq!((status, &t["toxicity"]), (200, &json!(0.5)));

    // An update changes the attributes given and keeps the others.
    fp.call(
        "POST",
        "/proxies/echo/toxics/latency_downstream",
        Some(json!({"attributes": {"jitter": 5}})),
    )
    .await;
    let (status, t) = fp
        .call(
            "PATCH",
            "/proxies/echo/toxics/latency_downstream",
            Some(json!({"attributes": {"latency": 20}, "toxicity": 0.25})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(t["attributes"], json!({"latency": 20, "jitter": 5}));
    assert_eq!(t["toxicity"], json!(0.25));

    let (status, body) = fp
        .call("DELETE", "/proxies/echo/toxics/latency_downstream", None)
        .await;
    assert_eq!((status, body), (204, Value::Null));
    let (status, version) = fp.call("GET", "/version", None).await;
    assert_eq!(status, 200);
    assert!(version["version"].is_string());
    let resp = reqwest::get(format!("{}/metrics", fp.url)).await.unwrap();
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("fault_proxy_toxics{proxy=\"echo\"} 1"),
        "{text}"
    );
    fp.shutdown().await;
}

#[tokio::test]
async fn bad_proxy_requests_are_refused_and_change_nothing() {
    let fp = FaultProxy::start().await;
    let upstream = echo_server().await.to_string();
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let first = fp.proxy("a", &upstream).await.to_string();

    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"upstream": upstream}),
            400,
            "missing required field: name",
        ),
        (
            json!({"name": "b"}),
            400,
            "missing required field: upstream",
        ),
        (
            json!({"name": "b", "upstream": "nowhere"}),
            400,
            "upstream must be host:port",
        ),
        (
            json!({"name": "b", "upstream": upstream, "listen": "127.0.0.1:99999"}),
            400,
            "listen must be host:port",
        ),
        (
            json!({"name": "b/c", "upstream": upstream}),
            400,
            "without '/'",
        ),
        (
            json!({"name": "b", "upstream": upstream, "colour": "red"}),
            400,
            "bad request body: unknown field `colour`",
        ),
        (
            json!({"name": "b", "upstream": upstream, "enabled": "yes"}),
            400,
            "bad request body",
        ),
        (
            json!({"name": "a", "upstream": upstream}),
            409,
            "proxy already exists",
        ),
        (
            json!({"name": "b", "upstream": upstream, "listen": taken_addr}),
            409,
            "Address already in use",
        ),
    ];
    for (body, status, message) in cases {
        let (got, err) = fp.call("POST", "/proxies", Some(body.clone())).await;
        assert_eq!(got, status, "{body} → {err}");
        assert_eq!(err["status"], json!(status));
        assert!(
            err["error"].as_str().unwrap().contains(message),
            "{body} → {err}"
        );
    }
    let (status, err) = fp.call("POST", "/proxies", None).await;
    assert_eq!(status, 400);
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .starts_with("bad request body")
    );

    let (_, all) = fp.call("GET", "/proxies", None).await;
    assert_eq!(
        all.as_object().unwrap().len(),
        1,
        "only the first proxy: {all}"
    );

    // Moving a proxy onto a taken port fails and leaves it working where it was.
    let (status, err) = fp
        .call("POST", "/proxies/a", Some(json!({"listen": taken_addr})))
        .await;
    assert_eq!(status, 409, "{err}");
    let (_, a) = fp.call("GET", "/proxies/a", None).await;
    assert_eq!(a["listen"], json!(first));
    assert!(echo_works(&first).await);

    for (method, path) in [
        ("GET", "/proxies/zz"),
        ("POST", "/proxies/zz"),
        ("DELETE", "/proxies/zz"),
        ("GET", "/proxies/zz/toxics"),
        ("POST", "/proxies/zz/toxics"),
        ("GET", "/proxies/zz/toxics/t"),
        ("DELETE", "/proxies/zz/toxics/t"),
    ] {
        let (status, err) = fp.call(method, path, Some(json!({}))).await;
        assert_eq!(
            (status, err),
            (404, json!({"error": "proxy not found", "status": 404})),
            "{method} {path}"
        );
    }
    fp.shutdown().await;
}

#[tokio::test]
async fn bad_toxics_are_refused_and_nothing_is_added() {
    let fp = FaultProxy::start().await;
    let upstream = echo_server().await.to_string();
    let addr = fp.proxy("a", &upstream).await.to_string();
    fp.toxic("a", json!({"type": "latency", "name": "lat"}))
        .await;

    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"type": "lightning"}), 400, "invalid toxic type"),
        (json!({}), 400, "invalid toxic type"),
        (
            json!({"type": "latency", "stream": "sideways"}),
            400,
            "stream was invalid, can be either upstream or downstream",
        ),
        (
            json!({"type": "latency", "attributes": {"latancy": 1}}),
            400,
            "unknown attribute 'latancy'",
        ),
        (
            json!({"type": "latency", "attributes": {"latency": -1}}),
            400,
            "attribute latency must be a whole number",
        ),
        (
            json!({"type": "latency", "attributes": {"latency": "1s"}}),
            400,
            "attribute latency must be a whole number",
        ),
        (
            json!({"type": "bandwidth", "attributes": {"rate": 0}}),
            400,
            "rate must be at least 1",
        ),
        (
            json!({"type": "slicer", "attributes": {"average_size": 5, "size_variation": 9}}),
            400,
            "size_variation",
        ),
        (
            json!({"type": "latency", "toxicity": 1.5}),
            400,
            "toxicity must be between 0 and 1",
        ),
        (
            json!({"type": "http_fault", "attributes": {"status": 503}}),
            400,
            "stream must be upstream",
        ),
        (
            json!({"type": "http_fault", "stream": "upstream", "attributes": {"status": 999}}),
            400,
            "status",
        ),
        (
            json!({"type": "latency", "name": "lat"}),
            409,
            "toxic already exists",
        ),
        (
            json!({"type": "latency", "extra": 1}),
            400,
            "unknown field `extra`",
        ),
    ];
    for (body, status, message) in cases {
        let (got, err) = fp
            .call("POST", "/proxies/a/toxics", Some(body.clone()))
            .await;
        assert_eq!(got, status, "{body} → {err}");
        assert_eq!(err["status"], json!(status));
        assert!(
            err["error"].as_str().unwrap().contains(message),
            "{body} → {err}"
        );
    }
    let (_, toxics) = fp.call("GET", "/proxies/a/toxics", None).await;
    assert_eq!(toxics.as_array().unwrap().len(), 1, "{toxics}");

    // Updates: a bad attribute or a type change is refused; the toxic keeps its values.
    for body in [
        json!({"attributes": {"latency": -5}}),
        json!({"type": "timeout"}),
        json!({"toxicity": -0.1}),
    ] {
        let (status, err) = fp
            .call("POST", "/proxies/a/toxics/lat", Some(body.clone()))
            .await;
        assert_eq!(status, 400, "{body} → {err}");
    }
    let (_, lat) = fp.call("GET", "/proxies/a/toxics/lat", None).await;
    assert_eq!(lat["attributes"]["latency"], json!(0));
    for (method, body) in [("GET", None), ("POST", Some(json!({}))), ("DELETE", None)] {
        let (status, err) = fp.call(method, "/proxies/a/toxics/nope", body).await;
        assert_eq!(
            (status, err),
            (404, json!({"error": "toxic not found", "status": 404})),
            "{method}"
        );
    }
    assert!(echo_works(&addr).await);
    fp.shutdown().await;
}

#[tokio::test]
async fn populate_is_atomic_and_keeps_unchanged_proxies() {
    let fp = FaultProxy::start().await;
    let upstream = echo_server().await.to_string();
    let other_upstream = echo_server().await.to_string();
    let a = fp.proxy("a", &upstream).await.to_string();
    fp.toxic("a", json!({"type": "latency", "name": "kept"}))
        .await;
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();

    // One bad entry (a taken port): nothing is created.
    let (status, err) = fp
        .call(
            "POST",
            "/populate",
            Some(json!([
                {"name": "a", "listen": a, "upstream": upstream},
                {"name": "b", "listen": "127.0.0.1:0", "upstream": upstream},
                {"name": "c", "listen": taken_addr, "upstream": upstream},
            ])),
        )
        .await;
    assert_eq!(status, 409, "{err}");
    assert_eq!(err["proxies"], json!([]));
    let (status, _) = fp.call("GET", "/proxies/b", None).await;
    assert_eq!(status, 404, "b was not created");
    // A missing field or a duplicate name: 400, nothing created.
    for body in [
        json!([{"name": "b", "upstream": upstream}, {"name": "c"}]),
        json!([{"name": "b", "upstream": upstream}, {"name": "b", "upstream": upstream}]),
        json!({"name": "b"}),
    ] {
        let (status, err) = fp.call("POST", "/populate", Some(body)).await;
        assert_eq!(status, 400, "{err}");
    }
    let (_, all) = fp.call("GET", "/proxies", None).await;
    assert_eq!(all.as_object().unwrap().len(), 1);

    // A valid populate: a unchanged (kept with its toxic), b created; in the order given.
    let (status, body) = fp
        .call(
            "POST",
            "/populate",
            Some(json!([
                {"name": "b", "listen": "127.0.0.1:0", "upstream": upstream},
                {"name": "a", "listen": a, "upstream": upstream},
            ])),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let list = body["proxies"].as_array().unwrap();
    assert_eq!(list[0]["name"], "b");
    assert_eq!(list[1]["toxics"][0]["name"], "kept");
    assert!(echo_works(list[0]["listen"].as_str().unwrap()).await);

    // A changed upstream replaces the proxy (no toxics), on the same port.
    let (status, body) = fp
        .call(
            "POST",
            "/populate",
            Some(json!([{"name": "a", "listen": a, "upstream": other_upstream}])),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(body["proxies"][0]["upstream"], json!(other_upstream));
    assert_eq!(body["proxies"][0]["toxics"], json!([]));
    assert!(echo_works(&a).await);
    fp.shutdown().await;
}

#[tokio::test]
async fn reset_removes_toxics_and_enables_proxies_or_changes_nothing() {
    let fp = FaultProxy::start().await;
    let upstream = echo_server().await.to_string();
    let a = fp.proxy("a", &upstream).await.to_string();
    let b = fp.proxy("b", &upstream).await.to_string();
    fp.toxic(
        "a",
        json!({"type": "timeout", "attributes": {"timeout": 0}}),
    )
    .await;
    fp.call("POST", "/proxies/b", Some(json!({"enabled": false})))
        .await;

    // b's port taken meanwhile: reset fails and changes nothing.
    let squatter = tokio::net::TcpListener::bind(&b).await.unwrap();
    let (status, err) = fp.call("POST", "/reset", None).await;
    assert_eq!(status, 409, "{err}");
    let (_, toxics) = fp.call("GET", "/proxies/a/toxics", None).await;
    assert_eq!(
        toxics.as_array().unwrap().len(),
        1,
        "the toxic is still there"
    );
    drop(squatter);

    let (status, body) = fp.call("POST", "/reset", None).await;
    assert_eq!((status, body), (204, Value::Null));
    let (_, all) = fp.call("GET", "/proxies", None).await;
    assert_eq!(all["a"]["toxics"], json!([]));
    assert_eq!(all["b"]["enabled"], json!(true));
    assert!(echo_works(&a).await);
    assert!(echo_works(&b).await);
    fp.shutdown().await;
}

#[tokio::test]
async fn unknown_routes_methods_browsers_and_big_bodies_get_json_errors() {
    let fp = FaultProxy::start().await;
    let (status, err) = fp.call("GET", "/nope", None).await;
    assert_eq!(
        (status, err),
        (404, json!({"error": "not found", "status": 404}))
    );
    let (status, err) = fp.call("PUT", "/proxies", None).await;
    assert_eq!(
        (status, err),
        (405, json!({"error": "method not allowed", "status": 405}))
    );
    let resp = reqwest::Client::new()
        .get(format!("{}/proxies", fp.url))
        .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64)")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let huge = format!("[{}]", vec!["{}"; 400_000].join(","));
    let resp = reqwest::Client::new()
        .post(format!("{}/populate", fp.url))
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["status"], json!(413));
    fp.shutdown().await;
}

#[tokio::test]
async fn a_config_file_creates_proxies_before_serving_and_a_bad_one_stops_the_start() {
    let upstream = echo_server().await.to_string();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("proxies.json");
    std::fs::write(
        &good,
        json!([{"name": "from_file", "listen": "127.0.0.1:0", "upstream": upstream}]).to_string(),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut args = bulwark_faultproxy::ProxyArgs::new("127.0.0.1:0");
    args.config = Some(good);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bulwark_faultproxy::serve(listener, args, async move {
        let _ = stopped.await;
        "test".to_string()
    }));
    let proxy: Value = reqwest::get(format!("http://127.0.0.1:{port}/proxies/from_file"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        echo_works(proxy["listen"].as_str().unwrap()).await,
        "{proxy}"
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"[{"name": "x"}]"#).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut args = bulwark_faultproxy::ProxyArgs::new("127.0.0.1:0");
    args.config = Some(bad);
    let err = bulwark_faultproxy::serve(listener, args, std::future::pending())
        .await
        .unwrap_err();
    assert!(
        err.downcast_ref::<bulwark_config::ConfigError>().is_some(),
        "a config error (exit code 2): {err:#}"
    );
    assert!(
        format!("{err:#}").contains("missing required field: upstream at proxy 1"),
        "{err:#}"
    );
}
