//! Each toxic on real TCP traffic: an echo server or a real `redis-server` behind an
//! in-process fault proxy. Timing assertions are lower bounds where the delay is the
//! toxic's meaning (a 200 ms latency delays by at least 200 ms), and generous upper
//! bounds only where the assertion is that something was *released*.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bulwark_testkit::{RedisOptions, RedisServer, wait_for};
use common::{FaultProxy, Next, echo_server, next, ping, read_up_to};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

const LONG: Duration = Duration::from_secs(10);

#[tokio::test]
async fn without_toxics_bytes_pass_both_ways_and_half_close_is_kept() {
    let fp = FaultProxy::start().await;
    let addr = fp.proxy("echo", &echo_server().await.to_string()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let payload: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = c.split();
    let send = async {
        w.write_all(&payload).await.unwrap();
        // Half-close: the echo server sees the FIN, echoes the rest, then closes.
        w.shutdown().await.unwrap();
    };
    let mut got = Vec::new();
    let recv = tokio::io::AsyncReadExt::read_to_end(&mut r, &mut got);
    let ((), n) = tokio::join!(send, recv);
    assert_eq!(n.unwrap(), payload.len());
    assert!(got == payload, "the echo came back intact");
    fp.shutdown().await;
}

#[tokio::test]
async fn latency_delays_redis_replies_and_applies_to_open_connections() {
    let redis = RedisServer::start(RedisOptions::default()).await;
    let fp = FaultProxy::start().await;
    let addr = fp.proxy("redis", &redis.addr()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    assert!(ping(&mut c, LONG).await.is_some());

    // Added while the connection is open: it applies to it (as Toxiproxy).
    let toxic = fp
        .toxic(
            "redis",
            json!({"type": "latency", "attributes": {"latency": 200}}),
        )
        .await;
    assert_eq!(toxic["name"], "latency_downstream");
    assert_eq!(toxic["stream"], "downstream");
    for _ in 0..3 {
        let start = Instant::now();
        assert!(ping(&mut c, LONG).await.is_some());
        assert!(
            start.elapsed() >= Duration::from_millis(200),
            "{:?}",
            start.elapsed()
        );
    }
    // A new connection gets it too.
    let mut fresh = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    assert!(ping(&mut fresh, LONG).await.is_some());
    assert!(start.elapsed() >= Duration::from_millis(200));

    // A reply held by a long latency is released, not lost, when the toxic goes.
    fp.remove("redis", "latency_downstream").await;
    fp.toxic(
        "redis",
        json!({"type": "latency", "name": "slow", "attributes": {"latency": 60_000}}),
    )
    .await;
    c.write_all(b"*1\r\n$4\r\nPING\r\n").await.unwrap();
    assert_eq!(
        next(&mut c, Duration::from_millis(300)).await,
        Next::Nothing
    );
    let start = Instant::now();
    fp.remove("redis", "slow").await;
    assert_eq!(read_up_to(&mut c, 7, LONG).await, b"+PONG\r\n");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "released, not waited out"
    );
    fp.shutdown().await;
}

#[tokio::test]
async fn upstream_latency_with_jitter_delays_requests() {
    let redis = RedisServer::start(RedisOptions::default()).await;
    let fp = FaultProxy::start().await;
    let addr = fp.proxy("redis", &redis.addr()).await;
    fp.toxic(
        "redis",
        json!({"type": "latency", "stream": "upstream", "attributes": {"latency": 150, "jitter": 50}}),
    )
    .await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    for _ in 0..5 {
        let start = Instant::now();
        assert!(ping(&mut c, LONG).await.is_some());
        assert!(
            start.elapsed() >= Duration::from_millis(100),
            "{:?}",
            start.elapsed()
        );
    }
}

#[tokio::test]
async fn bandwidth_limits_the_rate() {
    let fp = FaultProxy::start().await;
    let addr = fp.proxy("echo", &echo_server().await.to_string()).await;
    // 100 KB/s upstream: 60 KB take at least 0.5 s (0.6 s nominal).
    fp.toxic(
        "echo",
        json!({"type": "bandwidth", "stream": "upstream", "attributes": {"rate": 100}}),
    )
    .await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    c.write_all(&vec![7u8; 60_000]).await.unwrap();
    let got = read_up_to(&mut c, 60_000, LONG).await;
    assert_eq!(got.len(), 60_000);
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn slicer_delivers_the_same_bytes_in_small_pieces_spaced_in_time() {
    let fp = FaultProxy::start().await;
    let addr = fp.proxy("echo", &echo_server().await.to_string()).await;
    fp.toxic(
        "echo",
        json!({"type": "slicer", "attributes": {"average_size": 10, "size_variation": 5, "delay": 5000}}),
    )
    .await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let payload: Vec<u8> = (0..1000u32).map(|i| (i % 256) as u8).collect();
    let start = Instant::now();
    c.write_all(&payload).await.unwrap();
    let mut got = Vec::new();
    let mut reads = 0;
    let mut buf = [0u8; 4096];
    while got.len() < payload.len() {
        let n = tokio::time::timeout(LONG, tokio::io::AsyncReadExt::read(&mut c, &mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
        reads += 1;
    }
    assert_eq!(got, payload);
    // Pieces of at most 15 bytes: at least 67 of them, 5 ms apart. (A loaded reader may
    // get several pieces in one read, so the count of reads is only checked loosely.)
    assert!(
        start.elapsed() >= Duration::from_millis(330),
        "{:?}",
        start.elapsed()
    );
    assert!(reads >= 2, "{reads} reads");
}

#[tokio::test]
async fn limit_data_passes_the_limit_then_closes() {
    let fp = FaultProxy::start().await;
    let addr = fp.proxy("echo", &echo_server().await.to_string()).await;
    fp.toxic(
        "echo",
        json!({"type": "limit_data", "attributes": {"bytes": 10}}),
    )
    .await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(&[b'x'; 100]).await.unwrap();
    let got = read_up_to(&mut c, 100, LONG).await;
    assert_eq!(got, vec![b'x'; 10]);
    assert_eq!(next(&mut c, LONG).await, Next::Eof);
}

#[tokio::test]
async fn slow_close_delays_the_fin_only() {
    let fp = FaultProxy::start().await;
    let addr = fp.proxy("echo", &echo_server().await.to_string()).await;
    fp.toxic(
        "echo",
        json!({"type": "slow_close", "attributes": {"delay": 300}}),
    )
    .await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"hello").await.unwrap();
    assert_eq!(
        read_up_to(&mut c, 5, LONG).await,
        b"hello",
        "data is not delayed"
    );
    let start = Instant::now();
    c.shutdown().await.unwrap();
    assert_eq!(next(&mut c, LONG).await, Next::Eof);
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn timeout_drops_data_then_closes_the_connection() {
    let fp = FaultProxy::start().await;
    let addr = fp.proxy("echo", &echo_server().await.to_string()).await;
    fp.toxic(
        "echo",
        json!({"type": "timeout", "attributes": {"timeout": 300}}),
    )
    .await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    c.write_all(b"lost").await.unwrap();
    assert_eq!(next(&mut c, LONG).await, Next::Eof, "closed, no echo");
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn timeout_zero_blackholes_until_removed_then_closes() {
    let fp = FaultProxy::start().await;
    let addr = fp.proxy("echo", &echo_server().await.to_string()).await;
    fp.toxic(
        "echo",
        json!({"type": "timeout", "attributes": {"timeout": 0}}),
    )
    .await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"lost").await.unwrap();
    assert_eq!(
        next(&mut c, Duration::from_millis(500)).await,
        Next::Nothing
    );
    // Bytes were dropped, so the stream cannot go on: removal closes it (as Toxiproxy).
    fp.remove("echo", "timeout_downstream").await;
    assert_eq!(next(&mut c, LONG).await, Next::Eof);
    // New connections are healthy.
    let mut fresh = TcpStream::connect(addr).await.unwrap();
    fresh.write_all(b"back").await.unwrap();
    assert_eq!(read_up_to(&mut fresh, 4, LONG).await, b"back");
}

#[tokio::test]
async fn reset_peer_resets_the_connection() {
    let fp = FaultProxy::start().await;
    let addr = fp.proxy("echo", &echo_server().await.to_string()).await;
    fp.toxic(
        "echo",
        json!({"type": "reset_peer", "stream": "upstream", "attributes": {"timeout": 100}}),
    )
    .await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    c.write_all(b"hello").await.unwrap();
    assert_eq!(next(&mut c, LONG).await, Next::Reset);
    assert!(
        start.elapsed() >= Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn one_way_partitions_lose_requests_or_acknowledgements() {
    let redis = RedisServer::start(RedisOptions::default()).await;
    let direct = redis::Client::open(format!("redis://{}", redis.addr())).unwrap();
    let mut direct = direct.get_multiplexed_async_connection().await.unwrap();
    let fp = FaultProxy::start().await;
    let addr = fp.proxy("redis", &redis.addr()).await;
    let set = |key: &str| format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n$1\r\n1\r\n", key.len());

    // Requests blackholed: the write never reaches Redis, no answer comes back.
    fp.toxic(
        "redis",
        json!({"type": "timeout", "name": "cut_up", "stream": "upstream", "attributes": {"timeout": 0}}),
    )
    .await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(set("up").as_bytes()).await.unwrap();
    assert_eq!(
        next(&mut c, Duration::from_millis(500)).await,
        Next::Nothing
    );
    let seen: Option<String> = redis::cmd("GET")
        .arg("up")
        .query_async(&mut direct)
        .await
        .unwrap();
    assert_eq!(seen, None, "the request was dropped");
    fp.remove("redis", "cut_up").await;

    // Replies blackholed: the write is applied, its acknowledgement is lost.
    fp.toxic(
        "redis",
        json!({"type": "timeout", "name": "cut_down", "stream": "downstream", "attributes": {"timeout": 0}}),
    )
    .await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(set("down").as_bytes()).await.unwrap();
    assert_eq!(
        next(&mut c, Duration::from_millis(500)).await,
        Next::Nothing
    );
    let applied = wait_for(LONG, || {
        let mut direct = direct.clone();
        async move {
            let v: Option<String> = redis::cmd("GET")
                .arg("down")
                .query_async(&mut direct)
                .await
                .unwrap_or(None);
            v.as_deref() == Some("1")
        }
    })
    .await;
    assert!(applied, "the write reached Redis");
    fp.shutdown().await;
}

#[tokio::test]
async fn down_toxic_resets_existing_and_new_connections_until_removed() {
    let redis = RedisServer::start(RedisOptions::default()).await;
    let fp = FaultProxy::start().await;
    let addr = fp.proxy("redis", &redis.addr()).await;
    let mut existing = TcpStream::connect(addr).await.unwrap();
    assert!(ping(&mut existing, LONG).await.is_some());

    fp.toxic("redis", json!({"type": "down"})).await;
    assert_eq!(next(&mut existing, LONG).await, Next::Reset);
    let mut fresh = TcpStream::connect(addr).await.unwrap();
    assert!(matches!(
        next(&mut fresh, LONG).await,
        Next::Reset | Next::Eof
    ));

    fp.remove("redis", "down_downstream").await;
    let mut healed = TcpStream::connect(addr).await.unwrap();
    assert!(ping(&mut healed, LONG).await.is_some());
}

#[tokio::test]
async fn a_disabled_proxy_refuses_connections_and_drops_existing_ones() {
    let redis = RedisServer::start(RedisOptions::default()).await;
    let fp = FaultProxy::start().await;
    let addr = fp.proxy("redis", &redis.addr()).await;
    let mut existing = TcpStream::connect(addr).await.unwrap();
    assert!(ping(&mut existing, LONG).await.is_some());

    let (status, body) = fp
        .call("POST", "/proxies/redis", Some(json!({"enabled": false})))
        .await;
    assert_eq!((status, &body["enabled"]), (200, &json!(false)), "{body}");
    assert!(matches!(
        next(&mut existing, LONG).await,
        Next::Eof | Next::Reset
    ));
    let refused = TcpStream::connect(addr).await;
    assert!(refused.is_err(), "the port is closed");

    let (status, body) = fp
        .call("POST", "/proxies/redis", Some(json!({"enabled": true})))
        .await;
    assert_eq!((status, &body["listen"]), (200, &json!(addr.to_string())));
    let mut back = TcpStream::connect(addr).await.unwrap();
    assert!(ping(&mut back, LONG).await.is_some());
}

#[tokio::test]
async fn toxicity_decides_per_connection() {
    let redis = RedisServer::start(RedisOptions::default()).await;
    let fp = FaultProxy::start().await;
    let addr = fp.proxy("redis", &redis.addr()).await;
    fp.toxic(
        "redis",
        json!({"type": "timeout", "toxicity": 0.5, "attributes": {"timeout": 0}}),
    )
    .await;
    let mut replies = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"*1\r\n$4\r\nPING\r\n").await.unwrap();
        // Unaffected connections answer; affected ones stay silent.
        replies.spawn(async move {
            read_up_to(&mut c, 7, Duration::from_millis(500)).await == b"+PONG\r\n"
        });
    }
    let answered = replies.join_all().await.into_iter().filter(|a| *a).count();
    assert!(
        (8..=32).contains(&answered),
        "about half of 40 connections are affected; {answered} answered"
    );
    // Toxicity 0: none; 1: all.
    let (status, _) = fp
        .call(
            "POST",
            "/proxies/redis/toxics/timeout_downstream",
            Some(json!({"toxicity": 0.0})),
        )
        .await;
    assert_eq!(status, 200);
    for _ in 0..10 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        assert!(ping(&mut c, LONG).await.is_some());
    }
}

#[tokio::test]
async fn deleting_a_proxy_closes_every_connection_and_frees_its_port() {
    let fp = FaultProxy::start().await;
    let addr = fp.proxy("echo", &echo_server().await.to_string()).await;
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(TcpStream::connect(addr).await.unwrap());
    }
    // A toxic holding bytes does not keep a connection alive past the delete.
    fp.toxic(
        "echo",
        json!({"type": "latency", "attributes": {"latency": 60_000}}),
    )
    .await;
    conns[0].write_all(b"held").await.unwrap();
    let (status, _) = fp.call("DELETE", "/proxies/echo", None).await;
    assert_eq!(status, 204);
    for c in &mut conns {
        assert!(matches!(next(c, LONG).await, Next::Eof | Next::Reset));
    }
    tokio::net::TcpListener::bind(addr)
        .await
        .expect("the port is free");
    let (status, _) = fp.call("GET", "/proxies/echo", None).await;
    assert_eq!(status, 404);
}
