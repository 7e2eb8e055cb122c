//! `bulwark up` runs the commerce service too (`app_shop` on 8080, SQLite under the data
//! directory), supervised like every other service: a purchase made through it survives
//! a SIGKILL of the service, which the supervisor restarts on the same database.

mod common;

use std::time::Duration;

use common::{SHOP, Up, client, ctl_ok, get};
use serde_json::{Value, json};

async fn post_json(path: &str, body: &Value, key: Option<&str>) -> (u16, Value) {
    let mut req = client().post(format!("{SHOP}{path}")).json(body);
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    match req.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(e) => (0, Value::String(e.to_string())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_the_commerce_service_and_restarts_it_on_its_database() {
    let up = Up::start(&[], &[]).await;
    assert!(
        up.data.path().join("shop").join("shop.db").exists(),
        "the shop's SQLite database lives under the data directory"
    );
    let status = ctl_ok(&["status"]);
    assert!(status.contains("app_shop"), "{status}");

    let (s, body) = post_json(
        "/v1/admin/seed",
        &json!({"products": [{"id": "p1", "name": "Flash item", "description": "d",
                 "price_cents": 1999, "stock": 5}], "reset": true}),
        None,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let order = json!({"product_id": "p1", "quantity": 2, "customer_id": "c1"});
    let (s, placed) = post_json("/v1/orders", &order, Some("k-1")).await;
    assert_eq!(s, 201, "{placed}");
    assert_eq!(placed["status"], "CONFIRMED", "{placed}");
    let id = placed["order_id"].as_str().expect("order id").to_owned();

    // The supervisor restarts a killed service (`restart: on-failure`).
    let pid_before = up.service("app_shop").await["pid"].clone();
    ctl_ok(&["kill", "app_shop"]);
    let restarted = bulwark_testkit::wait_for(Duration::from_secs(60), || async {
        let s = up.service("app_shop").await;
        s["state"] == "running" && s["healthy"] == true && s["pid"] != pid_before
    })
    .await;
    assert!(
        restarted,
        "app_shop restarted: {}",
        up.service("app_shop").await
    );

    let (s, after) = get(&client(), format!("{SHOP}/v1/orders/{id}")).await;
    assert_eq!(s, 200, "{after}");
    assert_eq!(
        after["status"], "CONFIRMED",
        "the confirmed order survived: {after}"
    );
    let (s, stock) = get(&client(), format!("{SHOP}/v1/products/p1/stock")).await;
    assert_eq!(s, 200, "{stock}");
    assert_eq!(stock["available"], 3, "{stock}");
    // The same key replays the original order instead of buying again.
    let (s, replay) = post_json("/v1/orders", &order, Some("k-1")).await;
    assert!(s == 200 || s == 201, "{s} {replay}");
    assert_eq!(replay["order_id"], id.as_str(), "{replay}");
}
