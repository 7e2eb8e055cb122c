//! [`RespProxy`] in front of a real redis-server, driven by the `redis` crate (and by raw
//! sockets where the exact bytes on the wire matter).

use std::time::Duration;

use bulwark_testkit::{Action, Persistence, RedisOptions, RedisServer, RespProxy, Rule};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisResult, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Response timeout of the test clients: a call whose reply is dropped fails after this.
const TIMEOUT: Duration = Duration::from_millis(300);

async fn redis() -> RedisServer {
    RedisServer::start(RedisOptions {
        persistence: Persistence::None,
        extra_args: Vec::new(),
    })
    .await
}

async fn connect(addr: &str) -> MultiplexedConnection {
    let client = Client::open(format!("redis://{addr}/")).expect("client");
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect")
}

async fn cmd(conn: &mut MultiplexedConnection, args: &[&str]) -> RedisResult<Value> {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query_async(conn).await
}

/// Reads from `sock` until it has `want` bytes or the peer closes; returns what came.
async fn read_until_closed_or(sock: &mut TcpStream, want: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < want {
        match tokio::time::timeout(Duration::from_secs(10), sock.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    out
}

#[tokio::test]
async fn forwards_pipelined_commands_in_order_and_counts_them() {
    let server = redis().await;
    let proxy = RespProxy::start(server.addr()).await;
    let mut conn = connect(&proxy.addr()).await;
    let mut pipe = redis::pipe();
    for i in 0..200 {
        pipe.cmd("RPUSH").arg("list").arg(i);
    }
    pipe.cmd("LRANGE").arg("list").arg(0).arg(-1);
    let replies: Vec<Value> = pipe.query_async(&mut conn).await.expect("pipeline");
    assert_eq!(replies.len(), 201);
    for (i, r) in replies[..200].iter().enumerate() {
        assert_eq!(*r, Value::Int(i as i64 + 1), "replies keep command order");
    }
    let list: Vec<i64> = redis::from_redis_value(replies[200].clone()).expect("ints");
    assert_eq!(list, (0..200).collect::<Vec<_>>());
    assert_eq!(proxy.counts("rpush"), 200);
    assert_eq!(proxy.counts("LRANGE"), 1);
    // A large value crosses many reads in both directions.
    let big = "x".repeat(1 << 20);
    cmd(&mut conn, &["SET", "big", &big]).await.expect("set");
    let back: String =
        redis::from_redis_value(cmd(&mut conn, &["GET", "big"]).await.expect("get")).expect("s");
    assert_eq!(back.len(), big.len());
}

#[tokio::test]
async fn drop_reply_applies_the_command_but_the_client_times_out_and_the_connection_stalls() {
    let server = redis().await;
    let proxy = RespProxy::start(server.addr()).await;
    let mut direct = connect(&server.addr()).await;
    let mut conn = connect(&proxy.addr()).await;
    proxy.set_rule(Rule::new("INCR", Action::DropReply));
    let err = cmd(&mut conn, &["INCR", "n"]).await.expect_err("no reply");
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(
        cmd(&mut direct, &["GET", "n"]).await.expect("get"),
        Value::BulkString(b"1".to_vec()),
        "the upstream applied the command whose reply was dropped"
    );
    // Nothing more comes back on that connection, and nothing more is forwarded.
    let err = cmd(&mut conn, &["SET", "after", "1"])
        .await
        .expect_err("stalled");
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(proxy.counts("SET"), 0);
    assert_eq!(
        cmd(&mut direct, &["EXISTS", "after"])
            .await
            .expect("exists"),
        Value::Int(0)
    );
    // A new connection works as usual once the rule is lifted.
    proxy.set_rule(Rule::new("incr", Action::Forward));
    let mut fresh = connect(&proxy.addr()).await;
    assert_eq!(
        cmd(&mut fresh, &["INCR", "n"]).await.expect("incr"),
        Value::Int(2)
    );
    assert_eq!(proxy.counts("INCR"), 2);
}

#[tokio::test]
async fn drop_reply_returns_the_replies_pipelined_before_it() {
    let server = redis().await;
    let proxy = RespProxy::start(server.addr()).await;
    proxy.set_rule(Rule::new("INCR", Action::DropReply));
    let mut sock = TcpStream::connect(proxy.addr()).await.expect("connect");
    sock.write_all(b"*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n*1\r\n$4\r\nPING\r\n")
        .await
        .expect("write");
    let mut got = vec![0u8; 7];
    sock.read_exact(&mut got).await.expect("first reply");
    assert_eq!(got, b"+PONG\r\n");
    let more = tokio::time::timeout(TIMEOUT, sock.read(&mut got)).await;
    assert!(more.is_err(), "nothing after the dropped reply: {more:?}");
    assert_eq!(
        proxy.counts("PING"),
        1,
        "the PING after INCR is not forwarded"
    );
}

#[tokio::test]
async fn refuse_never_forwards_returns_earlier_replies_then_closes() {
    let server = redis().await;
    let proxy = RespProxy::start(server.addr()).await;
    let mut direct = connect(&server.addr()).await;
    proxy.set_rule(Rule::new("SET", Action::Refuse));
    let mut conn = connect(&proxy.addr()).await;
    let err = cmd(&mut conn, &["SET", "k", "v"])
        .await
        .expect_err("refused");
    assert!(
        !err.is_timeout(),
        "the connection is closed, not hung: {err:?}"
    );
    assert_eq!(
        cmd(&mut direct, &["EXISTS", "k"]).await.expect("exists"),
        Value::Int(0)
    );
    assert_eq!((proxy.received("SET"), proxy.counts("SET")), (1, 0));

    let mut sock = TcpStream::connect(proxy.addr()).await.expect("connect");
    sock.write_all(
        b"*1\r\n$4\r\nPING\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*1\r\n$4\r\nPING\r\n",
    )
    .await
    .expect("write");
    let got = read_until_closed_or(&mut sock, 1 << 10).await;
    assert_eq!(got, b"+PONG\r\n", "the reply before the refusal, then EOF");
}

#[tokio::test]
async fn delay_keeps_the_order_of_pipelined_commands() {
    let server = redis().await;
    let proxy = RespProxy::start(server.addr()).await;
    let mut conn = connect(&proxy.addr()).await;
    let delay = Duration::from_millis(100);
    proxy.set_rule(Rule::new("SET", Action::Delay(delay)));
    let started = tokio::time::Instant::now();
    let (set, get): (Value, Value) = redis::pipe()
        .cmd("SET")
        .arg("k")
        .arg("late")
        .cmd("GET")
        .arg("k")
        .query_async(&mut conn)
        .await
        .expect("pipeline");
    assert!(started.elapsed() >= delay);
    assert_eq!(set, Value::Okay);
    assert_eq!(
        get,
        Value::BulkString(b"late".to_vec()),
        "the GET behind the delayed SET waited for it"
    );
}

#[tokio::test]
async fn forward_then_close_applies_answers_and_closes() {
    let server = redis().await;
    let proxy = RespProxy::start(server.addr()).await;
    let mut conn = connect(&proxy.addr()).await;
    proxy.set_rule(Rule::new("SET", Action::ForwardThenClose));
    assert_eq!(
        cmd(&mut conn, &["SET", "k", "v"]).await.expect("set"),
        Value::Okay
    );
    let err = cmd(&mut conn, &["GET", "k"]).await.expect_err("closed");
    assert!(!err.is_timeout(), "{err:?}");
    proxy.clear_rules();
    let mut fresh = connect(&proxy.addr()).await;
    assert_eq!(
        cmd(&mut fresh, &["GET", "k"]).await.expect("get"),
        Value::BulkString(b"v".to_vec())
    );
}

#[tokio::test]
async fn fcall_rules_match_the_function_name() {
    let server = redis().await;
    let proxy = RespProxy::start(server.addr()).await;
    let mut conn = connect(&proxy.addr()).await;
    let lib = "#!lua name=t\n\
               redis.register_function('t_one', function(keys, args) return 1 end)\n\
               redis.register_function('t_two', function(keys, args) return 2 end)";
    cmd(&mut conn, &["FUNCTION", "LOAD", "REPLACE", lib])
        .await
        .expect("load");
    proxy.set_rule(Rule::new("fcall T_ONE", Action::Refuse));
    assert_eq!(
        cmd(&mut conn, &["FCALL", "t_two", "0"]).await.expect("two"),
        Value::Int(2)
    );
    assert!(cmd(&mut conn, &["FCALL", "t_one", "0"]).await.is_err());
    assert_eq!(proxy.counts("FCALL t_two"), 1);
    assert_eq!(proxy.counts("FCALL t_one"), 0);
    assert_eq!(proxy.received("FCALL"), 2);
    assert_eq!(proxy.counts("FCALL"), 1);
    assert_eq!(proxy.counts("FUNCTION"), 1);
}

#[tokio::test]
async fn close_connections_and_a_missing_upstream_close_client_connections() {
    let mut server = redis().await;
    let proxy = RespProxy::start(server.addr()).await;
    assert_eq!(proxy.upstream(), server.addr());
    let mut conn = connect(&proxy.addr()).await;
    assert_eq!(
        cmd(&mut conn, &["PING"]).await.expect("ping"),
        Value::SimpleString("PONG".into())
    );
    proxy.close_connections();
    let closed = bulwark_testkit::wait_for(Duration::from_secs(5), || {
        let mut c = conn.clone();
        async move { cmd(&mut c, &["PING"]).await.is_err() }
    })
    .await;
    assert!(closed, "the connection survived close_connections");
    server.stop().await;
    // The upstream is down: a new client connection is closed without an answer.
    let mut sock = TcpStream::connect(proxy.addr()).await.expect("connect");
    let _ = sock.write_all(b"*1\r\n$4\r\nPING\r\n").await;
    assert_eq!(read_until_closed_or(&mut sock, 1).await, b"");
}
