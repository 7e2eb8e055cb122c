//! SHOP-4 read replica on a real PostgreSQL streaming replica: the test makes its own
//! primary cluster (initdb on a free port) and a standby of it with `pg_basebackup -R`
//! on another free port, so the shared server is not touched. Catalog lists are served
//! by the replica; pausing the standby's WAL replay makes them stale (a new product is
//! missing there while purchases still commit on the primary) and the replica endpoint
//! reports the lag; resuming replay makes the product appear.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, SqlBackend, TestDatabase};
use serde_json::json;
use sqlx::Connection as _;

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// Runs a PostgreSQL tool as the `postgres` OS user when we are root (PostgreSQL refuses
/// to run as root).
fn pg(tool: &str, args: &[&str]) {
    let path = format!("{BIN}/{tool}");
    let out = if nix_is_root() {
        Command::new("runuser")
            .args(["-u", "postgres", "--", &path])
            .args(args)
            .output()
    } else {
        Command::new(&path).args(args).output()
    }
    .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

/// A cluster directory, stopped (fast) when dropped.
struct Cluster {
    dir: PathBuf,
    port: u16,
}

impl Cluster {
    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn configure(dir: &Path, port: u16, sockets: &Path) {
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             wal_level = replica\nmax_wal_senders = 4\nhot_standby = on\nfsync = on\n",
            sockets.display()
        );
        let path = dir.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path).expect("read postgresql.conf");
        text.push_str(&conf);
        std::fs::write(&path, text).expect("write postgresql.conf");
    }

    fn start(dir: PathBuf, port: u16) -> Cluster {
        let log = dir.with_extension("log");
        pg(
            "pg_ctl",
            &[
                "-D",
                dir.to_str().expect("utf8"),
                "-l",
                log.to_str().expect("utf8"),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        Cluster { dir, port }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(d) = self.dir.to_str() {
            let path = format!("{BIN}/pg_ctl");
            let args = ["-D", d, "-m", "immediate", "-w", "stop"];
            let _ = if nix_is_root() {
                Command::new("runuser")
                    .args(["-u", "postgres", "--", &path])
                    .args(args)
                    .output()
            } else {
                Command::new(&path).args(args).output()
            };
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_reads_come_from_a_streaming_replica_and_can_be_stale() {
    let base = tempfile::tempdir().expect("tempdir");
    let root = base.path().to_path_buf();
    if nix_is_root() {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres", root.to_str().expect("utf8")])
            .status()
            .expect("chown");
        assert!(ok.success());
    }
    let (p1, p2) = (bulwark_testkit::free_port(), bulwark_testkit::free_port());
    let primary_dir = root.join("primary");
    let replica_dir = root.join("replica");
    pg(
        "initdb",
        &[
            "-D",
            primary_dir.to_str().expect("utf8"),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ],
    );
    Cluster::configure(&primary_dir, p1, &root);
    let primary = Cluster::start(primary_dir, p1);
    pg(
        "pg_basebackup",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &p1.to_string(),
            "-U",
            "postgres",
            "-D",
            replica_dir.to_str().expect("utf8"),
            "-R",
            "-X",
            "stream",
        ],
    );
    Cluster::configure(&replica_dir, p2, &root);
    let replica = Cluster::start(replica_dir, p2);

    let db = existing(&primary.url()).await;
    let replica_url = replica.url();
    let s = Server::start_on(db, &[("SHOP_REPLICA_URL", replica_url.as_str())]).await;
    assert_eq!(s.db.backend, SqlBackend::Postgres);
    let (status, info) = s.get("/v1/admin/replica").await;
    assert_eq!((status, &info["configured"]), (200, &json!(true)), "{info}");

    // The seeded product reaches the replica by streaming; measure how long it takes.
    let started = Instant::now();
    s.seed("p1", 10).await;
    let seen = bulwark_testkit::wait_for(Duration::from_secs(30), || async {
        let (_, list) = s.get("/v1/products").await;
        list["items"].as_array().is_some_and(|i| !i.is_empty())
    })
    .await;
    assert!(seen, "the replica never received the seed");
    println!("replica staleness after seeding: {:?}", started.elapsed());
    let r = s
        .client
        .get(format!("{}/v1/products", s.base))
        .send()
        .await
        .expect("list");
    assert_eq!(r.headers()["x-read-source"], "replica");

    // Pause replay on the standby: reads there are now stale.
    let mut standby = sqlx::PgConnection::connect(&replica_url)
        .await
        .expect("standby");
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&mut standby)
        .await
        .expect("pause");
    let products =
        json!({"products": [{"id": "p2", "name": "late", "price_cents": 1, "stock": 3}]});
    let (status, _) = s.post("/v1/admin/seed", &products).await;
    assert_eq!(status, 200);
    // Writes still go to the primary.
    assert_eq!(s.purchase("r-1", "p1", 1).await.0, 201);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, list) = s.get("/v1/products").await;
    let ids: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|p| p["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        ["p1"],
        "the paused replica does not have p2 yet: {list}"
    );
    let (_, info) = s.get("/v1/admin/replica").await;
    assert!(
        info["lag_ms"].as_i64().is_some_and(|l| l > 0),
        "lag is reported: {info}"
    );
    println!("replica lag while paused: {info}");

    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&mut standby)
        .await
        .expect("resume");
    let caught_up = bulwark_testkit::wait_for(Duration::from_secs(30), || async {
        let (_, list) = s.get("/v1/products").await;
        list["items"].as_array().is_some_and(|i| i.len() == 2)
    })
    .await;
    assert!(caught_up, "after resuming, the replica catches up");
    let (_, info) = s.get("/v1/admin/replica").await;
    assert_eq!(info["lag_ms"], 0, "{info}");
    drop(standby);
    s.stop().await;
    drop(replica);
    drop(primary);
}

/// A `TestDatabase` for the cluster's own `postgres` database (the cluster is the
/// test's, so no separate database is needed).
async fn existing(url: &str) -> TestDatabase {
    let mut c = sqlx::PgConnection::connect(url).await.expect("primary");
    sqlx::query("SELECT 1")
        .execute(&mut c)
        .await
        .expect("primary answers");
    TestDatabase::existing(SqlBackend::Postgres, url)
}
