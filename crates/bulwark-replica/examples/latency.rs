//! Measures per-call latency of the Redis dialect at a fixed request rate (open loop), so
//! the client's share of the gateway's latency budget can be checked:
//!
//! ```text
//! cargo run --release -p bulwark-replica --example latency [rate_per_sec] [seconds] [redis|bulwark]
//! ```
//!
//! Starts its own backend on a free port: a redis-server (AOF, `appendfsync always`), or
//! an in-process `bulwark node` (default `appendfsync everysec`; prepare and commit are
//! fsynced whatever the policy).

use std::time::Duration;

use bulwark_core::Version;
use bulwark_replica::{Dialect, ReplicaClient, ReplicaSpec};
use bulwark_testkit::{RedisOptions, RedisServer};
use tokio::time::Instant;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let rate: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let dialect: Dialect = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(Dialect::Redis);
    let mut _redis = None;
    let mut _node_dir = None;
    let addr = match dialect {
        Dialect::Redis => {
            let server = RedisServer::start(RedisOptions::default()).await;
            let addr = server.addr();
            _redis = Some(server);
            addr
        }
        Dialect::Bulwark => {
            let Ok(dir) = tempfile::tempdir() else {
                eprintln!("cannot create a temp dir");
                return;
            };
            let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
                eprintln!("cannot bind");
                return;
            };
            let addr = listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            let mut node = bulwark_node::NodeArgs::new("db_g1");
            node.dir = Some(dir.path().to_path_buf());
            tokio::spawn(bulwark_node::serve(listener, node, std::future::pending()));
            _node_dir = Some(dir);
            addr
        }
    };
    let spec = ReplicaSpec {
        name: "db_g1".into(),
        addr,
    };
    println!("dialect={dialect} rate={rate}/s seconds={secs}");
    let client = ReplicaClient::new(spec, dialect, Duration::from_secs(1));
    if let Err(e) = client.ping().await {
        eprintln!("ping failed: {e}");
        return;
    }
    for op in ["get", "put", "prepare+commit"] {
        let mut interval = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut tasks = Vec::new();
        for i in 0..rate * secs {
            interval.tick().await;
            let c = client.clone();
            tasks.push(tokio::spawn(async move {
                let key = format!("key{}", i % 1000);
                let v = Version {
                    physical_ms: 1_700_000_000_000 + i,
                    logical: 0,
                    writer: 1,
                };
                let start = Instant::now();
                let ok = match op {
                    "get" => c.get(key.as_bytes()).await.is_ok(),
                    "put" => c.put(key.as_bytes(), v, Some(&[7u8; 100])).await.is_ok(),
                    _ => {
                        c.prepare(key.as_bytes(), v, "db_g1", Some(&[7u8; 100]))
                            .await
                            .is_ok()
                            && c.commit(key.as_bytes(), v).await.is_ok()
                    }
                };
                (start.elapsed(), ok)
            }));
        }
        let mut lat = Vec::with_capacity(tasks.len());
        let mut errors = 0;
        for t in tasks {
            match t.await {
                Ok((d, true)) => lat.push(d),
                _ => errors += 1,
            }
        }
        lat.sort();
        let pct =
            |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)));
        println!(
            "{op:>15}: n={} errors={errors} p50={:?} p99={:?} max={:?}",
            lat.len(),
            pct(0.50).copied().unwrap_or_default(),
            pct(0.99).copied().unwrap_or_default(),
            lat.last().copied().unwrap_or_default(),
        );
    }
}
