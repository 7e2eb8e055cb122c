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

/// Layout fencing in the library, as on a node (docs/design/sharding.md, section 3):
/// `bw_at` runs an operation only if its layout is not older than the fence; `bw_fence`
/// raises the fence and never lowers it; a refused call changes nothing.
#[tokio::test]
async fn calls_routed_with_an_older_layout_are_refused_and_change_nothing() {
    let (server, client) = start_redis().await;
    client.get(b"warm-up").await.expect("loads the library");
    let mut raw = raw(&server).await;
    let fcall = |args: &[&str]| {
        let mut cmd = redis::cmd("FCALL");
        for a in args {
            cmd.arg(*a);
        }
        cmd
    };
    let v1 = v(1).to_string();
    let v2 = v(2).to_string();
    let applied: Vec<redis::Value> = fcall(&["bw_at", "1", "k", "1", "put", &v1, "0", "one"])
        .query_async(&mut raw)
        .await
        .expect("fenced put");
    assert_eq!(applied[0], redis::Value::Int(1));
    let fence: i64 = fcall(&["bw_fence", "0", "3"])
        .query_async(&mut raw)
        .await
        .expect("fence");
    assert_eq!(fence, 3);
    let refused: redis::RedisResult<redis::Value> =
        fcall(&["bw_at", "1", "k", "2", "put", &v2, "0", "two"])
            .query_async(&mut raw)
            .await;
    let e = refused.unwrap_err().to_string();
    assert!(
        e.contains("STALE_LAYOUT") && e.contains("3 (this call was routed with layout 2)"),
        "{e}"
    );
    let state = client.get(b"k").await.expect("get");
    assert_eq!(
        state.committed.map(|r| r.version),
        Some(v(1)),
        "nothing changed"
    );
    let fence: i64 = fcall(&["bw_fence", "0", "2"])
        .query_async(&mut raw)
        .await
        .expect("fence");
    assert_eq!(fence, 3, "never lowered");
    let _: redis::Value = fcall(&["bw_at", "1", "k", "3", "put", &v2, "0", "two"])
        .query_async(&mut raw)
        .await
        .expect("current layout");
    assert_eq!(
        client
            .get(b"k")
            .await
            .expect("get")
            .committed
            .map(|r| r.version),
        Some(v(2))
    );
    for (args, want) in [
        (
            vec!["bw_at", "1", "k", "x", "get"],
            "invalid layout version",
        ),
        (
            vec!["bw_at", "1", "k", "-1", "get"],
            "invalid layout version",
        ),
        (vec!["bw_at", "1", "k", "5", "digest"], "bw_at carries"),
        (vec!["bw_fence", "0", "+4"], "invalid layout version"),
    ] {
        let r: redis::RedisResult<redis::Value> = fcall(&args).query_async(&mut raw).await;
        let e = r.unwrap_err().to_string();
        assert!(e.contains(want), "{args:?}: {e}");
    }
}
