//! SHOP-3 events on a real NATS JetStream server (`SHOP_TEST_NATS_URL`, default
//! nats://127.0.0.1:4222), in a stream of the test's own. Every step of every saga
//! arrives; a relay that publishes again (a crash between publish and delete) is
//! deduplicated by JetStream; redeliveries to a consumer that did not acknowledge are
//! processed once by the idempotent consumer.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream;
use bulwark_shop::db::{Db, DbConfig};
use bulwark_shop::model::Event;
use bulwark_shop::outbox::{IdempotentConsumer, Sink};
use common::{Server, SqlBackend};
use futures::StreamExt as _;

fn nats_url() -> String {
    std::env::var("SHOP_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Messages delivered to `consumer` until `want` arrived or none comes for 500 ms,
/// acknowledged or not as asked.
async fn drain(consumer: &jetstream::consumer::PullConsumer, ack: bool, want: usize) -> Vec<Event> {
    let mut out = Vec::new();
    while out.len() < want {
        let mut batch = consumer
            .fetch()
            .max_messages(500)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .expect("fetch");
        let mut got = 0;
        while let Some(m) = batch.next().await {
            let m = m.expect("message");
            out.push(serde_json::from_slice::<Event>(&m.payload).expect("event json"));
            if ack {
                m.ack().await.expect("ack");
            }
            got += 1;
        }
        if got == 0 {
            break;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_events_reach_jetstream_at_least_once() {
    let stream = format!("SHOP_TEST_{:08x}", rand::random::<u32>());
    let url = nats_url();
    let s = Server::start(
        SqlBackend::Sqlite,
        &[
            ("SHOP_NATS_URL", url.as_str()),
            ("SHOP_NATS_STREAM", stream.as_str()),
        ],
    )
    .await;
    let client = async_nats::connect(&url).await.expect("nats");
    let js = jetstream::new(client);
    s.seed("p1", 20).await;
    let mut orders = HashSet::new();
    for i in 0..20 {
        let (status, body) = s.purchase(&format!("n-{i}"), "p1", 1).await;
        assert_eq!(status, 201, "{body}");
        orders.insert(body["order_id"].as_str().expect("id").to_string());
    }
    // Wait until the relay has emptied the outbox.
    let ok = bulwark_testkit::wait_for(Duration::from_secs(30), || async {
        match js.get_stream(&stream).await {
            Ok(mut st) => st.info().await.is_ok_and(|i| i.state.messages >= 60),
            Err(_) => false,
        }
    })
    .await;
    assert!(ok, "60 events (3 per saga) never arrived");

    let st = js.get_stream(&stream).await.expect("stream");
    let consumer: jetstream::consumer::PullConsumer = st
        .create_consumer(jetstream::consumer::pull::Config {
            ack_wait: Duration::from_millis(300),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let first = drain(&consumer, false, 60).await;
    assert_eq!(
        first.len(),
        60,
        "3 events per saga, each once in the stream"
    );
    let mut per_order: HashMap<&str, Vec<&str>> = HashMap::new();
    for e in &first {
        per_order.entry(&e.order_id).or_default().push(&e.kind);
    }
    assert_eq!(per_order.len(), 20);
    for (order, kinds) in &per_order {
        assert!(orders.contains(*order));
        let mut k = kinds.clone();
        k.sort_unstable();
        assert_eq!(
            k,
            ["ORDER_CONFIRMED", "ORDER_RESERVED", "PAYMENT_CAPTURED"],
            "{order}"
        );
    }

    // A relay that crashed after publishing and before deleting publishes again:
    // JetStream recognises every message id.
    let sink = Sink::nats(&url, &stream).await.expect("sink");
    let duplicates = sink.publish(&first).await.expect("republish");
    assert_eq!(
        duplicates,
        first.len(),
        "every republished event is a duplicate"
    );

    // Nothing was acknowledged: after ack_wait the server redelivers. The idempotent
    // consumer processes each event once across both deliveries.
    let db = Db::open(&DbConfig {
        url: s.db.url.clone(),
        replica_url: None,
        pool_size: 2,
        saga_pool_size: 1,
        timeout: Duration::from_secs(10),
        breaker: bulwark_resilience::breaker::BreakerConfig {
            failure_threshold: 3,
            open_timeout: Duration::from_secs(1),
            half_open_max_probes: 1,
        },
    })
    .await
    .expect("db");
    let idem = IdempotentConsumer::new(std::sync::Arc::new(db), "test-consumer");
    let mut processed = 0;
    for e in &first {
        if idem.first_time(&e.id).await.expect("mark") {
            processed += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let again = drain(&consumer, true, 60).await;
    assert!(!again.is_empty(), "unacknowledged messages are redelivered");
    for e in &again {
        if idem.first_time(&e.id).await.expect("mark") {
            processed += 1;
        }
    }
    assert_eq!(processed, 60, "each event processed exactly once");
    js.delete_stream(&stream).await.expect("delete stream");
    s.stop().await;
}
