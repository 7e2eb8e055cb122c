//! The replica protocol against a real redis-server running the `bulwark` function
//! library, plus behaviour specific to the Redis dialect (library loading, layout
//! version, reconnect after a restart).

mod suite;

use std::time::Duration;

use bulwark_replica::{Dialect, LUA_FORMAT, ReplicaClient, ReplicaError, ReplicaSpec};
use bulwark_testkit::{RedisOptions, RedisServer, wait_for};
use suite::{Started, TIMEOUT, guard, v};

async fn start_redis() -> (RedisServer, ReplicaClient) {
    let server = RedisServer::start(RedisOptions::default()).await;
    let spec = ReplicaSpec {
        name: "db_g1".into(),
        addr: server.addr(),
    };
    let client = ReplicaClient::new(spec, Dialect::Redis, TIMEOUT);
    (server, client)
}

async fn started() -> Started {
    let (server, client) = start_redis().await;
    Started {
        client,
        guard: guard(server),
    }
}

protocol_suite!(started());

/// A plain connection for inspecting the server behind the client's back.
async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{}", server.addr()))
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection")
}

#[tokio::test]
async fn library_reports_its_layout_and_uses_one_hash_per_key() {
    let (server, client) = start_redis().await;
    client.put(b"k", v(1), Some(b"one")).await.expect("put");
    let mut raw = raw(&server).await;
    let format: i64 = redis::cmd("FCALL")
        .arg("bw_format")
        .arg(0)
        .query_async(&mut raw)
        .await
        .expect("bw_format");
    assert_eq!(format, LUA_FORMAT);
    let fields: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
        .arg("bw:k")
        .query_async(&mut raw)
        .await
        .expect("hgetall");
    let mut fields = fields;
    fields.sort();
    assert_eq!(
        fields,
        [
            ("d".to_owned(), b"one".to_vec()),
            ("t".to_owned(), b"0".to_vec()),
            ("v".to_owned(), v(1).to_string().into_bytes()),
        ]
    );
}

#[tokio::test]
async fn functions_refuse_malformed_arguments() {
    let (server, client) = start_redis().await;
    client.ping().await.expect("ping loads the library");
    let mut raw = raw(&server).await;
    for args in [
        vec!["bw_put", "1", "k", "not-a-version", "0", "x"],
        vec!["bw_put", "1", "k", "00000000000000000000000A", "0", "x"],
        vec!["bw_put", "1", "k", &"0".repeat(24), "2", "x"],
        vec!["bw_prepare", "1", "k", &"1".repeat(24), "", "0", "x"],
        vec!["bw_commit", "1", "k", "123"],
    ] {
        let r: redis::RedisResult<redis::Value> =
            redis::cmd("FCALL").arg(&args).query_async(&mut raw).await;
        assert!(r.is_err(), "{args:?} accepted: {r:?}");
    }
}

#[tokio::test]
async fn library_is_reloaded_after_function_flush() {
    let (server, client) = start_redis().await;
    client.put(b"k", v(1), Some(b"one")).await.expect("put");
    let mut raw = raw(&server).await;
    let _: () = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async(&mut raw)
        .await
        .expect("flush");
    let s = client.get(b"k").await.expect("get after flush");
    assert_eq!(s.committed_version(), v(1));
}

#[tokio::test]
async fn reconnects_after_restart_and_keeps_acknowledged_writes() {
    let (mut server, client) = start_redis().await;
    client
        .prepare(b"k", v(1), "db_g1", Some(b"one"))
        .await
        .expect("prepare");
    server.kill(); // crash: the AOF (fsync always) must have the prepare
    let err = client.get(b"k").await.expect_err("server is down");
    assert!(
        matches!(
            err,
            ReplicaError::Connect(_) | ReplicaError::Unreachable(_) | ReplicaError::Timeout
        ),
        "{err:?}"
    );
    server.restart().await;
    let back = wait_for(Duration::from_secs(10), || {
        let c = client.clone();
        async move { c.get(b"k").await.is_ok() }
    })
    .await;
    assert!(back, "client did not reconnect");
    let s = client.get(b"k").await.expect("get");
    assert_eq!(s.pending.len(), 1, "prepared write lost in the crash");
    assert!(client.commit(b"k", v(1)).await.expect("commit"));
}

#[tokio::test]
async fn hung_server_times_out_and_recovers_when_resumed() {
    let (server, _) = start_redis().await;
    let spec = ReplicaSpec {
        name: "db_g1".into(),
        addr: server.addr(),
    };
    let client = ReplicaClient::new(spec, Dialect::Redis, Duration::from_millis(200));
    client.put(b"k", v(1), Some(b"one")).await.expect("put");
    server.pause();
    assert_eq!(
        client.get(b"k").await.expect_err("paused"),
        ReplicaError::Timeout
    );
    server.resume();
    let back = wait_for(Duration::from_secs(10), || {
        let c = client.clone();
        async move { c.get(b"k").await.is_ok() }
    })
    .await;
    assert!(back, "client did not recover after the server resumed");
}

#[tokio::test]
async fn native_commands_on_redis_are_server_errors() {
    let (server, _) = start_redis().await;
    let spec = ReplicaSpec {
        name: "db_g1".into(),
        addr: server.addr(),
    };
    let client = ReplicaClient::new(spec, Dialect::Bulwark, TIMEOUT);
    let err = client
        .get(b"k")
        .await
        .expect_err("BW.GET is unknown to Redis");
    assert!(
        matches!(&err, ReplicaError::Server(m) if m.contains("unknown command")),
        "{err:?}"
    );
    client
        .ping()
        .await
        .expect("the connection survives an error reply");
}
