//! A real node on port 0, driven over TCP with the `redis` crate and raw sockets.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bulwark_node::NodeArgs;
use bulwark_storage::{Appendfsync, Store, StoreConfig};
use redis::Value;
use redis::aio::MultiplexedConnection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const V1: &str = "000000000001000000000001";
const V2: &str = "000000000002000000000001";
const V3: &str = "000000000003000000000001";

struct Node {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<String>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Node {
    async fn start(dir: &Path, tweak: impl FnOnce(&mut NodeArgs)) -> Node {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut args = NodeArgs::new("db_test");
        args.dir = Some(dir.to_path_buf());
        tweak(&mut args);
        let (tx, rx) = oneshot::channel::<String>();
        let task = tokio::spawn(bulwark_node::serve(listener, args, async move {
            rx.await.unwrap_or_else(|_| "test dropped".into())
        }));
        Node {
            addr,
            stop: Some(tx),
            task,
        }
    }

    async fn conn(&self) -> MultiplexedConnection {
        redis::Client::open(format!("redis://{}", self.addr))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send("test".into()).unwrap();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("node stops within the deadline")
            .unwrap()
            .unwrap();
    }
}

async fn q<T: redis::FromRedisValue>(c: &mut MultiplexedConnection, args: &[&[u8]]) -> T {
    let mut cmd = redis::cmd(std::str::from_utf8(args[0]).unwrap());
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(c).await.unwrap()
}

async fn q_err(c: &mut MultiplexedConnection, args: &[&[u8]]) -> String {
    let mut cmd = redis::cmd(std::str::from_utf8(args[0]).unwrap());
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let r: redis::RedisResult<Value> = cmd.query_async(c).await;
    r.unwrap_err().to_string()
}

fn bulk(s: &str) -> Value {
    Value::BulkString(s.as_bytes().to_vec())
}

/// Raw request/response over a socket; reads until `expect_len` bytes arrived or EOF.
async fn raw(addr: SocketAddr, request: &[u8], expect_len: usize) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        while got.len() < expect_len {
            let n = s.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap();
    got
}

#[tokio::test]
async fn redis_compatible_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path(), |_| {}).await;
    let mut c = node.conn().await;

    assert_eq!(q::<String>(&mut c, &[b"PING"]).await, "PONG");
    assert_eq!(q::<String>(&mut c, &[b"PING", b"hi"]).await, "hi");
    assert_eq!(
        q::<String>(&mut c, &[b"ECHO", b"bin\r\n\0"]).await,
        "bin\r\n\0"
    );
    assert_eq!(q::<String>(&mut c, &[b"SET", b"a", b"1"]).await, "OK");
    assert_eq!(q::<String>(&mut c, &[b"set", b"b", b""]).await, "OK");
    assert_eq!(
        q::<Option<String>>(&mut c, &[b"GET", b"a"])
            .await
            .as_deref(),
        Some("1")
    );
    assert_eq!(
        q::<Option<String>>(&mut c, &[b"GET", b"b"])
            .await
            .as_deref(),
        Some("")
    );
    assert_eq!(q::<Option<String>>(&mut c, &[b"GET", b"zz"]).await, None);
    assert_eq!(
        q::<i64>(&mut c, &[b"EXISTS", b"a", b"b", b"zz", b"a"]).await,
        3
    );
    assert_eq!(q::<i64>(&mut c, &[b"DBSIZE"]).await, 2);
    assert_eq!(q::<i64>(&mut c, &[b"DEL", b"a", b"zz", b"b"]).await, 2);
    assert_eq!(q::<i64>(&mut c, &[b"DBSIZE"]).await, 0);
    assert_eq!(q::<i64>(&mut c, &[b"DEL", b"a"]).await, 0);

    // Errors, never panics or silent acceptance.
    assert!(
        q_err(&mut c, &[b"SET", b"a", b"1", b"EX", b"10"])
            .await
            .contains("not supported")
    );
    assert!(
        q_err(&mut c, &[b"GET"])
            .await
            .contains("wrong number of arguments for 'get'")
    );
    assert!(
        q_err(&mut c, &[b"NOSUCH", b"x"])
            .await
            .contains("unknown command 'NOSUCH'")
    );
    assert!(
        q_err(&mut c, &[b"SELECT", b"1"])
            .await
            .contains("out of range")
    );
    assert_eq!(q::<String>(&mut c, &[b"SELECT", b"0"]).await, "OK");

    // Admin surface used by redis-cli and redis-benchmark.
    assert_eq!(q::<Vec<Value>>(&mut c, &[b"COMMAND"]).await, vec![]);
    assert_eq!(
        q::<Vec<Value>>(&mut c, &[b"COMMAND", b"DOCS"]).await,
        vec![]
    );
    assert_eq!(
        q::<Vec<String>>(&mut c, &[b"CONFIG", b"GET", b"save"]).await,
        vec!["save".to_owned(), String::new()]
    );
    assert_eq!(
        q::<Vec<String>>(&mut c, &[b"CONFIG", b"GET", b"appendonly"]).await,
        vec!["appendonly".to_owned(), "yes".to_owned()]
    );
    assert_eq!(
        q::<Vec<String>>(&mut c, &[b"CONFIG", b"GET", b"appendfsync"]).await,
        vec!["appendfsync".to_owned(), "everysec".to_owned()]
    );
    let id: i64 = q(&mut c, &[b"CLIENT", b"ID"]).await;
    assert!(id > 0);
    assert_eq!(
        q::<Option<String>>(&mut c, &[b"CLIENT", b"GETNAME"]).await,
        None
    );
    assert_eq!(
        q::<String>(&mut c, &[b"CLIENT", b"SETNAME", b"tester"]).await,
        "OK"
    );
    assert_eq!(
        q::<Option<String>>(&mut c, &[b"CLIENT", b"GETNAME"])
            .await
            .as_deref(),
        Some("tester")
    );

    q::<String>(&mut c, &[b"SET", b"k", b"v"]).await;
    let info: String = q(&mut c, &[b"INFO"]).await;
    for needle in [
        "# Server",
        "# Clients",
        "# Persistence",
        "# Stats",
        "# Keyspace",
        "appendfsync:everysec",
        "aof_enabled:1",
        "rdb_last_save_time:",
        "db0:keys=1,",
        "connected_clients:1",
    ] {
        assert!(info.contains(needle), "INFO lacks {needle:?}:\n{info}");
    }
    let persistence: String = q(&mut c, &[b"INFO", b"persistence"]).await;
    assert!(persistence.contains("# Persistence") && !persistence.contains("# Server"));

    // SAVE / BGSAVE / LASTSAVE write a snapshot in the data directory.
    assert_eq!(q::<String>(&mut c, &[b"SAVE"]).await, "OK");
    assert!(tmp.path().join("dump.bwsnap").exists());
    let last: i64 = q(&mut c, &[b"LASTSAVE"]).await;
    assert!(last > 1_600_000_000);
    let started: String = q(&mut c, &[b"BGSAVE"]).await;
    assert_eq!(started, "Background saving started");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let p: String = q(&mut c, &[b"INFO", b"persistence"]).await;
        if p.contains("rdb_bgsave_in_progress:0") {
            assert!(p.contains("rdb_last_bgsave_status:ok"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "BGSAVE never finished"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    assert_eq!(q::<String>(&mut c, &[b"FLUSHALL"]).await, "OK");
    assert_eq!(q::<i64>(&mut c, &[b"DBSIZE"]).await, 0);
    drop(c);
    node.stop().await;
}

#[tokio::test]
async fn inline_commands_quit_and_protocol_errors_over_raw_tcp() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path(), |_| {}).await;
    assert_eq!(raw(node.addr, b"PING\r\n", 7).await, b"+PONG\r\n");
    assert_eq!(
        raw(node.addr, b"SET x \"a b\"\r\nGET x\r\n", 14).await,
        b"+OK\r\n$3\r\na b\r\n"
    );
    // QUIT replies and closes: nothing after it runs.
    let got = raw(node.addr, b"QUIT\r\nSET y 1\r\n", 1 << 20).await;
    assert_eq!(got, b"+OK\r\n");
    // A malformed frame gets an error and the connection closes.
    let got = raw(node.addr, b"*1\r\n$x\r\n", 1 << 20).await;
    assert!(
        got.starts_with(b"-ERR Protocol error"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    node.stop().await;
}

#[tokio::test]
async fn pipelines_return_every_reply_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    for policy in [Appendfsync::Always, Appendfsync::Everysec] {
        let node = Node::start(&tmp.path().join(policy.as_str()), |a| {
            a.appendfsync = policy
        })
        .await;
        let mut c = node.conn().await;
        let mut p = redis::pipe();
        for i in 0..2000 {
            p.cmd("SET").arg(format!("k{i}")).arg(i);
        }
        for i in 0..2000 {
            p.cmd("GET").arg(format!("k{i}"));
        }
        let replies: Vec<Value> = p.query_async(&mut c).await.unwrap();
        assert_eq!(replies.len(), 4000);
        assert!(replies[..2000].iter().all(|r| *r == Value::Okay));
        for (i, r) in replies[2000..].iter().enumerate() {
            assert_eq!(*r, bulk(&i.to_string()));
        }
        // One raw write holding many commands (redis-benchmark -P style).
        let mut req = Vec::new();
        for _ in 0..100 {
            req.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$2\r\nk7\r\n");
        }
        let got = raw(node.addr, &req, 100 * 7).await;
        assert_eq!(got, b"$1\r\n7\r\n".repeat(100));
        drop(c);
        node.stop().await;
    }
}

#[tokio::test]
async fn versioned_protocol_semantics() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path(), |_| {}).await;
    let mut c = node.conn().await;

    // Never written: [nil, nil, 0, []].
    let r: Value = q(&mut c, &[b"BW.GET", b"k"]).await;
    assert_eq!(
        r,
        Value::Array(vec![
            Value::Nil,
            Value::Nil,
            Value::Int(0),
            Value::Array(vec![])
        ])
    );

    // PUT: last write wins.
    let r: Value = q(&mut c, &[b"BW.PUT", b"k", V2.as_bytes(), b"0", b"two"]).await;
    assert_eq!(r, Value::Array(vec![Value::Int(1), bulk(V2)]));
    let r: Value = q(&mut c, &[b"BW.PUT", b"k", V1.as_bytes(), b"0", b"one"]).await;
    assert_eq!(r, Value::Array(vec![Value::Int(0), bulk(V2)]));
    assert_eq!(
        q::<Option<String>>(&mut c, &[b"GET", b"k"])
            .await
            .as_deref(),
        Some("two")
    );

    // PREPARE at or below the committed version is STALE.
    let r: Value = q(
        &mut c,
        &[b"BW.PREPARE", b"k", V2.as_bytes(), b"db_g1", b"0", b"x"],
    )
    .await;
    assert_eq!(r, Value::Array(vec![bulk("STALE"), bulk(V2)]));
    // Newer: OK, pending is listed, committed value unchanged.
    let r: Value = q(
        &mut c,
        &[b"BW.PREPARE", b"k", V3.as_bytes(), b"db_g2", b"1"],
    )
    .await;
    assert_eq!(r, Value::Array(vec![bulk("OK"), bulk(V2)]));
    let r: Value = q(&mut c, &[b"BW.GET", b"k"]).await;
    assert_eq!(
        r,
        Value::Array(vec![
            bulk(V2),
            bulk("two"),
            Value::Int(0),
            Value::Array(vec![Value::Array(vec![bulk(V3), bulk("db_g2")])]),
        ])
    );
    // Abort, then a late commit answers 0.
    assert_eq!(
        q::<i64>(&mut c, &[b"BW.ABORT", b"k", V3.as_bytes()]).await,
        1
    );
    assert_eq!(
        q::<i64>(&mut c, &[b"BW.ABORT", b"k", V3.as_bytes()]).await,
        0
    );
    assert_eq!(
        q::<i64>(&mut c, &[b"BW.COMMIT", b"k", V3.as_bytes()]).await,
        0
    );

    // Prepare + commit of a tombstone deletes.
    q::<Value>(
        &mut c,
        &[b"BW.PREPARE", b"k", V3.as_bytes(), b"db_g1", b"1", b""],
    )
    .await;
    assert_eq!(
        q::<i64>(&mut c, &[b"BW.COMMIT", b"k", V3.as_bytes()]).await,
        1
    );
    let r: Value = q(&mut c, &[b"BW.GET", b"k"]).await;
    assert_eq!(
        r,
        Value::Array(vec![
            bulk(V3),
            Value::Nil,
            Value::Int(1),
            Value::Array(vec![])
        ])
    );
    assert_eq!(q::<Option<String>>(&mut c, &[b"GET", b"k"]).await, None);

    // BUSY after 16 pending writes.
    for i in 0..16u64 {
        let v = format!("{:012x}0000{:08x}", 100 + i, 1);
        let r: Value = q(
            &mut c,
            &[b"BW.PREPARE", b"b", v.as_bytes(), b"c", b"0", b"v"],
        )
        .await;
        assert_eq!(r, Value::Array(vec![bulk("OK"), Value::Nil]));
    }
    let v = format!("{:012x}0000{:08x}", 999, 1);
    let r: Value = q(
        &mut c,
        &[b"BW.PREPARE", b"b", v.as_bytes(), b"c", b"0", b"v"],
    )
    .await;
    assert_eq!(r, Value::Array(vec![bulk("BUSY"), Value::Nil]));

    // Bad arguments are errors.
    for (args, needle) in [
        (
            vec![&b"BW.PUT"[..], b"k", b"nothex", b"0", b"v"],
            "invalid version",
        ),
        (
            vec![&b"BW.PUT"[..], b"k", V1.as_bytes(), b"2", b"v"],
            "tombstone flag",
        ),
        (
            vec![&b"BW.PUT"[..], b"k", V1.as_bytes(), b"0"],
            "value is required",
        ),
        (
            vec![&b"BW.PREPARE"[..], b"k", V1.as_bytes(), b"", b"0", b"v"],
            "coordinator",
        ),
        (vec![&b"BW.COMMIT"[..], b"k"], "wrong number of arguments"),
        (
            vec![&b"BW.ABORT"[..], b"k", b"0000000000000000000000AA"],
            "invalid version",
        ),
        (vec![&b"BW.GET"[..]], "wrong number of arguments"),
    ] {
        let e = q_err(&mut c, &args).await;
        assert!(e.contains(needle), "{args:?}: {e}");
    }
    // The connection is still healthy.
    assert_eq!(q::<String>(&mut c, &[b"PING"]).await, "PONG");
    drop(c);
    node.stop().await;
}

#[tokio::test]
async fn connection_and_request_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path(), |a| {
        a.max_clients = 1;
        a.max_request_bytes = 1024;
    })
    .await;
    let mut first = node.conn().await;
    // A second client is told why and disconnected.
    let got = raw(node.addr, b"PING\r\n", 1 << 20).await;
    assert_eq!(got, b"-ERR max number of clients reached\r\n");
    // Oversized requests are refused by declared length, before the payload arrives.
    let e = q_err(&mut first, &[b"SET", b"big", &[b'x'; 2000]]).await;
    assert!(e.contains("exceeds the limit"), "{e}");
    drop(first);
    // The slot frees when the first client leaves.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = raw(node.addr, b"PING\r\n", 7).await;
        if got == b"+PONG\r\n" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    node.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_flushes_data_to_disk() {
    let tmp = tempfile::tempdir().unwrap();
    // `no`: nothing is fsynced until shutdown flushes it.
    let node = Node::start(tmp.path(), |a| a.appendfsync = Appendfsync::No).await;
    let mut c = node.conn().await;
    for i in 0..100 {
        q::<String>(&mut c, &[b"SET", format!("k{i}").as_bytes(), b"v"]).await;
    }
    q::<Value>(
        &mut c,
        &[b"BW.PREPARE", b"p", V1.as_bytes(), b"db_g1", b"0", b"x"],
    )
    .await;
    // An idle client does not hold up shutdown.
    let idle = node.conn().await;
    node.stop().await;
    drop((c, idle));

    let (store, report) = Store::open(StoreConfig::new(tmp.path(), Appendfsync::No, 1)).unwrap();
    assert_eq!(report.live_keys, 100);
    assert_eq!(report.pending, 1);
    assert_eq!(store.get(b"k42").await.unwrap().as_deref(), Some(&b"v"[..]));
}

#[tokio::test]
async fn run_binds_the_configured_address() {
    let tmp = tempfile::tempdir().unwrap();
    // Find a free port, release it, and ask `run` to bind it.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut args = NodeArgs::new("db_run");
    args.dir = Some(tmp.path().to_path_buf());
    args.port = port;
    let (tx, rx) = oneshot::channel::<String>();
    let task = tokio::spawn(bulwark_node::run(args, async move {
        rx.await.unwrap_or_default()
    }));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut s) = TcpStream::connect(addr).await {
            s.write_all(b"PING\r\n").await.unwrap();
            let mut buf = [0u8; 7];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"+PONG\r\n");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node never listened"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tx.send("SIGTERM".into()).unwrap();
    task.await.unwrap().unwrap();
}

/// Data faults for chaos experiments: refused unless enabled; CORRUPT keeps the version and
/// changes the value; DROP forgets the record (no tombstone), so a BW.PUT of the old
/// record restores it. Both survive a restart (they are written like any record).
#[tokio::test]
async fn bw_debug_corrupts_and_drops_only_when_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), |_| {}).await;
    let mut c = node.conn().await;
    let e = q_err(&mut c, &[b"BW.DEBUG", b"CORRUPT", b"k", b"x"]).await;
    assert!(e.contains("--enable-debug-command"), "{e}");
    node.stop().await;

    let node = Node::start(dir.path(), |a| a.enable_debug_command = true).await;
    let mut c = node.conn().await;
    let _: Value = q(&mut c, &[b"BW.PUT", b"k", V1.as_bytes(), b"0", b"good"]).await;
    let r: Vec<Option<String>> = q(&mut c, &[b"BW.DEBUG", b"CORRUPT", b"k", b"bad"]).await;
    assert_eq!(r, [Some(V1.to_owned()), Some("good".to_owned())]);
    let v: Option<String> = q(&mut c, &[b"GET", b"k"]).await;
    assert_eq!(v.as_deref(), Some("bad"));
    let state: Value = q(&mut c, &[b"BW.GET", b"k"]).await;
    let Value::Array(items) = state else {
        panic!("BW.GET reply")
    };
    assert_eq!(
        items[0],
        Value::BulkString(V1.as_bytes().to_vec()),
        "same version"
    );
    let missing: Option<Vec<String>> = q(&mut c, &[b"BW.DEBUG", b"CORRUPT", b"nope", b"x"]).await;
    assert_eq!(missing, None);

    let r: Vec<Option<String>> = q(&mut c, &[b"BW.DEBUG", b"DROP", b"k"]).await;
    assert_eq!(r, [Some(V1.to_owned()), Some("bad".to_owned())]);
    let n: i64 = q(&mut c, &[b"EXISTS", b"k"]).await;
    assert_eq!(n, 0);
    let size: i64 = q(&mut c, &[b"DBSIZE"]).await;
    assert_eq!(size, 0);
    // No tombstone: the old record applies again.
    let put: Value = q(&mut c, &[b"BW.PUT", b"k", V1.as_bytes(), b"0", b"good"]).await;
    assert!(
        matches!(put, Value::Array(ref a) if a[0] == Value::Int(1)),
        "{put:?}"
    );
    let r: Vec<Option<String>> = q(&mut c, &[b"BW.DEBUG", b"DROP", b"k"]).await;
    assert_eq!(r[1].as_deref(), Some("good"));
    node.stop().await;

    let node = Node::start(dir.path(), |a| a.enable_debug_command = true).await;
    let mut c = node.conn().await;
    let v: Option<String> = q(&mut c, &[b"GET", b"k"]).await;
    assert_eq!(v, None, "the drop is durable");
    let e = q_err(&mut c, &[b"BW.DEBUG", b"MELT", b"k"]).await;
    assert!(e.contains("usage"), "{e}");
    node.stop().await;
}

/// Layout fencing (docs/design/sharding.md, section 3): `BW.AT` runs a replica-protocol
/// command only if its layout is not older than the node's fence; `BW.FENCE` raises the
/// fence durably (it survives a restart) and never lowers it.
#[tokio::test]
async fn calls_routed_with_an_older_layout_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), |_| {}).await;
    let mut c = node.conn().await;
    let put = |layout: &'static [u8], version: &'static str, value: &'static [u8]| {
        [
            b"BW.AT".as_slice(),
            layout,
            b"BW.PUT",
            b"k",
            version.as_bytes(),
            b"0",
            value,
        ]
    };
    let applied: Vec<Value> = q(&mut c, &put(b"1", V1, b"one")).await;
    assert_eq!(applied[0], Value::Int(1));
    let fence: i64 = q(&mut c, &[b"BW.FENCE", b"3"]).await;
    assert_eq!(fence, 3);
    let e = q_err(&mut c, &put(b"2", V2, b"two")).await;
    assert!(e.contains("STALE_LAYOUT") && e.contains('3'), "{e}");
    let value: Option<String> = q(&mut c, &[b"GET", b"k"]).await;
    assert_eq!(
        value.as_deref(),
        Some("one"),
        "a refused call changes nothing"
    );
    let applied: Vec<Value> = q(&mut c, &put(b"3", V3, b"three")).await;
    assert_eq!(applied[0], Value::Int(1));
    let fence: i64 = q(&mut c, &[b"BW.FENCE", b"2"]).await;
    assert_eq!(fence, 3, "a fence is never lowered");
    let info: String = q(&mut c, &[b"INFO", b"server"]).await;
    assert!(info.contains("layout_fence:3\r\n"), "{info}");
    let state: Vec<Value> = q(&mut c, &[b"BW.AT", b"4", b"BW.GET", b"k"]).await;
    assert_eq!(state[1], Value::BulkString(b"three".to_vec()));
    for (args, want) in [
        (
            &[b"BW.AT".as_slice(), b"x", b"BW.GET", b"k"][..],
            "invalid layout version",
        ),
        (
            &[b"BW.AT", b"-1", b"BW.GET", b"k"],
            "invalid layout version",
        ),
        (&[b"BW.AT", b"5", b"GET", b"k"], "BW.AT carries"),
        (&[b"BW.AT", b"5", b"BW.FENCE", b"9"], "BW.AT carries"),
        (&[b"BW.AT", b"5"], "wrong number of arguments"),
        (&[b"BW.FENCE"], "wrong number of arguments"),
        (&[b"BW.FENCE", b"+4"], "invalid layout version"),
    ] {
        let e = q_err(&mut c, args).await;
        assert!(e.contains(want), "{args:?}: {e}");
    }
    // Plain commands are an operator's tool, not routed traffic: not fenced.
    let _: () = q(&mut c, &[b"SET", b"plain", b"ok"]).await;
    drop(c);
    node.stop().await;

    let node = Node::start(dir.path(), |_| {}).await;
    let mut c = node.conn().await;
    let e = q_err(&mut c, &[b"BW.AT", b"2", b"BW.GET", b"k"]).await;
    assert!(
        e.contains("STALE_LAYOUT") && e.contains("3 (this call was routed with layout 2)"),
        "the fence survived the restart: {e}"
    );
    node.stop().await;
}
