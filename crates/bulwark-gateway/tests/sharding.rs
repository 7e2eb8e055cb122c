//! Sharding end to end (SPEC HARD-4, SHARD-1), for both backends: with more replicas than
//! N, every key lives on its preference list and nowhere else, whatever the mode; reads
//! and anti-entropy consult only a key's own replicas; readiness needs every replica set.

#[macro_use]
mod common;

use std::time::Duration;

use bulwark_core::Version;
use bulwark_placement::{NodeSpec, Placement, Ring};
use bulwark_replica::ReplicaClient;
use bulwark_testkit::wait_for;
use common::*;
use serde_json::{Value, json};

both_backends!(
    keys_live_on_their_replica_set_only,
    anti_entropy_repairs_inside_a_replica_set_and_spreads_nothing,
);

/// The ring the gateway builds for this cluster with the default N (3) and vnodes.
fn ring(cluster: &TestCluster) -> Ring {
    Ring::new(&Placement::with_defaults(
        cluster
            .replicas
            .iter()
            .map(|r| NodeSpec::new(r.name.clone(), r.addr()))
            .collect(),
    ))
    .expect("ring")
}

fn owners(ring: &Ring, key: &str) -> Vec<String> {
    let mut v: Vec<String> = ring
        .replicas(key.as_bytes())
        .iter()
        .map(|id| ring.name(*id).to_owned())
        .collect();
    v.sort();
    v
}

/// The replicas holding a committed record of `key`, sorted.
async fn holders(direct: &[ReplicaClient], key: &str) -> Vec<String> {
    let mut out = Vec::new();
    for c in direct {
        let state = c.get(key.as_bytes()).await.expect("direct get");
        if state.committed.is_some() {
            out.push(c.name().to_owned());
        }
    }
    out
}

async fn keys_live_on_their_replica_set_only(backend: Backend) {
    let cluster = TestCluster::start(backend, 5).await;
    let ring = ring(&cluster);
    let gw = cluster.gateway("cp", &[]).await;
    let c = client();
    let (status, ready) = get(&c, format!("{}/health/ready", gw.url)).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["replication_factor"], 3);
    assert_eq!(ready["write_quorum"], 3);

    let direct = cluster.direct();
    let mut on_node = [0usize; 5];
    for i in 0..30 {
        let key = format!("user:{i}");
        let mode = ["cp", "quorum", "ap"][i % 3];
        let r = c
            .put(format!("{}/v1/kv/{key}?consistency={mode}", gw.url))
            .json(&json!({"value": format!("v{i}")}))
            .send()
            .await
            .expect("put");
        assert_eq!(r.status(), 200, "{key} in {mode}");
        let body: Value = r.json().await.expect("json");
        let mut involved = acked_or_pending(&body);
        involved.extend(names(&body["behind"]));
        involved.sort();
        assert_eq!(involved, owners(&ring, &key), "{key} in {mode}: {body}");
        if mode != "ap" {
            let coordinator = body["coordinator"].as_str().expect("coordinator");
            assert!(
                owners(&ring, &key).iter().any(|o| o == coordinator),
                "{body}"
            );
        }
        // AP's slower replicas finish in the background.
        let want = owners(&ring, &key);
        assert!(
            wait_for(Duration::from_secs(5), || {
                let (direct, key, want) = (&direct, key.clone(), want.clone());
                async move { holders(direct, &key).await == want }
            })
            .await,
            "{key} in {mode}: held by {:?}, owners {want:?}",
            holders(&direct, &key).await
        );
        for (n, r) in cluster.replicas.iter().enumerate() {
            on_node[n] += usize::from(want.contains(&r.name));
        }

        let (status, read) = get(&c, format!("{}/v1/kv/{key}?consistency=cp", gw.url)).await;
        assert_eq!(status, 200, "{read}");
        assert_eq!(read["value"], format!("v{i}"));
        let mut consulted: Vec<String> = read["replicas"]
            .as_object()
            .expect("replicas")
            .keys()
            .cloned()
            .collect();
        consulted.sort();
        assert_eq!(
            consulted, want,
            "a read asks the key's replicas only: {read}"
        );
    }
    // 90 replicas over 5 nodes: the keys are spread, not copied everywhere.
    assert!(on_node.iter().all(|n| *n < 30), "{on_node:?}");
    gw.shutdown().await.expect("shutdown");
}

async fn anti_entropy_repairs_inside_a_replica_set_and_spreads_nothing(backend: Backend) {
    let cluster = TestCluster::start(backend, 4).await;
    let ring = ring(&cluster);
    let gw = cluster
        .gateway("ap", &[("ANTI_ENTROPY_INTERVAL_SEC", "0")])
        .await;
    let c = client();
    let direct = cluster.direct();
    let keys: Vec<String> = (0..20).map(|i| format!("ae:{i}")).collect();
    for key in &keys {
        let r = c
            .put(format!("{}/v1/kv/{key}?consistency=cp", gw.url))
            .json(&json!({"value": "x"}))
            .send()
            .await
            .expect("put");
        assert_eq!(r.status(), 200);
    }
    // Behind the gateway's back: a newer write of the first key reached two of its
    // owners only (its hints died with a gateway); the second key got a copy on a
    // replica that does not own it.
    let newer = Version {
        physical_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64
            + 60_000,
        logical: 0,
        writer: 42,
    };
    let client_of = |name: &str| {
        direct
            .iter()
            .find(|d| d.name() == name)
            .expect("replica")
            .clone()
    };
    let lost = &keys[0];
    let lost_owners = owners(&ring, lost);
    for name in &lost_owners[..2] {
        let r = client_of(name)
            .put(lost.as_bytes(), newer, Some(b"newer"))
            .await
            .expect("direct put");
        assert!(r.applied);
    }
    let stray = &keys[1];
    let outsider = cluster
        .replicas
        .iter()
        .find(|r| !owners(&ring, stray).contains(&r.name))
        .expect("a non-owner")
        .name
        .clone();
    client_of(&outsider)
        .put(stray.as_bytes(), newer, Some(b"stray"))
        .await
        .expect("stray put");

    let (status, summary) = post(&c, format!("{}/v1/admin/anti-entropy", gw.url)).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(holders(&direct, lost).await, lost_owners, "{summary}");
    let third = client_of(&lost_owners[2])
        .get(lost.as_bytes())
        .await
        .expect("get");
    assert_eq!(
        third.committed.map(|r| r.version),
        Some(newer),
        "the owner that missed the newer write got it: {summary}"
    );
    // The stray copy stays where it is (clean-up of unowned keys is the rebalancer's
    // job), and anti-entropy copied no key onto a replica that does not own it.
    for key in &keys[2..] {
        assert_eq!(holders(&direct, key).await, owners(&ring, key), "{key}");
    }
    let mut stray_holders = owners(&ring, stray);
    stray_holders.push(outsider);
    stray_holders.sort();
    assert_eq!(holders(&direct, stray).await, stray_holders);
    gw.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_needs_every_replica_set_to_be_writable() {
    let mut cluster = TestCluster::start(Backend::Bulwark, 4).await;
    let cp = cluster.gateway("cp", &[("HEALTH_INTERVAL_SEC", "1")]).await;
    let ap = cluster.gateway("ap", &[("HEALTH_INTERVAL_SEC", "1")]).await;
    let c = client();
    cluster.replicas[3].stop().await;
    let ready = |url: String| {
        let c = c.clone();
        async move { get(&c, format!("{url}/health/ready")).await.0 }
    };
    // With N = 3 of 4, every node is in some replica set: CP (W = 3) cannot write
    // those keys, so it is not ready; AP (W = 1) still is.
    assert!(
        wait_for(Duration::from_secs(10), || {
            let f = ready(cp.url.clone());
            async move { f.await == 503 }
        })
        .await
    );
    assert_eq!(ready(ap.url.clone()).await, 200);
    cluster.replicas[3].start_again().await;
    assert!(
        wait_for(Duration::from_secs(15), || {
            let f = ready(cp.url.clone());
            async move { f.await == 200 }
        })
        .await
    );
    cp.shutdown().await.expect("shutdown");
    ap.shutdown().await.expect("shutdown");
}

/// `?r=` and `?w=` (SPEC HARD-1): validated against N, used, and reported with whether
/// they overlap the mode's default quorum of the other kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_request_quorums_are_validated_used_and_reported() {
    let mut cluster = TestCluster::start(Backend::Bulwark, 5).await;
    let ring = ring(&cluster);
    let gw = cluster.gateway("quorum", &[]).await;
    let c = client();
    let put = |query: String| {
        let c = c.clone();
        let url = format!("{}/v1/kv/{query}", gw.url);
        async move {
            let r = c
                .put(url)
                .json(&json!({"value": "v"}))
                .send()
                .await
                .expect("put");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    let (status, body) = put("q1?w=all".into()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["quorum"], json!({"n": 3, "w": 3, "strong": true}));
    assert_eq!(names(&body["acked_by"]), owners(&ring, "q1"));
    let (status, body) = put("q2?consistency=ap&w=2".into()).await;
    assert_eq!(status, 200, "{body}");
    assert!(names(&body["acked_by"]).len() >= 2, "{body}");
    // AP reads one replica by default: 2 + 1 does not exceed 3.
    assert_eq!(body["quorum"], json!({"n": 3, "w": 2, "strong": false}));
    let (status, body) = put("q3".into()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["quorum"], json!({"n": 3, "w": 2, "strong": true}));

    let (status, body) = get(&c, format!("{}/v1/kv/q2?consistency=ap&r=quorum", gw.url)).await;
    assert_eq!(status, 200, "{body}");
    // AP writes wait for one replica by default: 2 + 1 does not exceed 3 either.
    assert_eq!(body["quorum"], json!({"n": 3, "r": 2, "strong": false}));
    let (status, body) = get(&c, format!("{}/v1/kv/q2?r=all", gw.url)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["quorum"], json!({"n": 3, "r": 3, "strong": true}));
    let (status, body) = get(&c, format!("{}/v1/kv/q2?r=1", gw.url)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["quorum"], json!({"n": 3, "r": 1, "strong": false}));

    for (query, status) in [
        ("k?w=4", 400),
        ("k?w=0", 400),
        ("k?w=01", 400),
        ("k?w=ALL", 400),
        ("k?w=", 400),
        ("k?w=1&w=2", 400),
        ("k?r=2", 400),
        ("k?consistency=cp&w=2", 422),
    ] {
        let (got, body) = put(query.into()).await;
        assert_eq!(got, status, "{query}: {body}");
        assert_eq!(body["error"]["code"], "INVALID_QUORUM", "{query}: {body}");
    }
    let (status, body) = put("k?consistency=cp&w=all".into()).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(&c, format!("{}/v1/kv/k?w=1", gw.url)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "INVALID_QUORUM");

    // An AP write that fewer than W owners acknowledge is not reported as W-durable.
    let key = "down";
    let victim = owners(&ring, key)[0].clone();
    let vi = cluster
        .replicas
        .iter()
        .position(|r| r.name == victim)
        .expect("owner");
    cluster.replicas[vi].stop().await;
    let (status, body) = put(format!("{key}?consistency=ap&w=all")).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "OUTCOME_UNKNOWN", "{body}");
    let (status, body) = put(format!("{key}?consistency=ap&w=2")).await;
    assert_eq!(status, 200, "{body}");
    gw.shutdown().await.expect("shutdown");
}
