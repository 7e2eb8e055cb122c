//! TLS on replica links (SPEC OPS-4): a `bulwark node` and a real `redis-server` serving
//! RESP over TLS with client certificates required, reached by the gateway's client and
//! by `redis-cli --tls`; a wrong CA, a missing client certificate and plaintext are
//! refused; a node's renewed certificate is served without a restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bulwark_core::Version;
use bulwark_node::NodeArgs;
use bulwark_replica::{Dialect, ReplicaClient, ReplicaSpec, ReplicaTls};
use bulwark_testkit::{RedisOptions, RedisServer, free_port, wait_for};
use bulwark_tls::ca::LocalCa;
use tokio::sync::oneshot;

const TIMEOUT: Duration = Duration::from_secs(3);

/// A CA with a server certificate (`db_g1`) and a client certificate (`app_ap`).
struct Pki {
    dir: tempfile::TempDir,
    ca: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = LocalCa::open_or_create(dir.path()).expect("CA");
        ca.issue("db_g1", &[]).expect("server certificate");
        ca.issue("app_ap", &[]).expect("client certificate");
        Pki {
            ca: ca.ca_file(),
            dir,
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn client_tls(&self, with_identity: bool) -> ReplicaTls {
        ReplicaTls {
            ca: self.ca.clone(),
            identity: with_identity.then(|| (self.file("app_ap.pem"), self.file("app_ap-key.pem"))),
        }
    }
}

/// A node serving mutual TLS with `pki`'s `db_g1` certificate; stopped when dropped.
struct Node {
    addr: String,
    stop: Option<oneshot::Sender<()>>,
    _data: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn tls_node(cert: &Path, key: &Path, client_ca: &Path) -> Node {
    let data = tempfile::tempdir().expect("temp dir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let mut args = NodeArgs::new("db_g1");
    args.dir = Some(data.path().to_path_buf());
    args.tls_cert_file = Some(cert.to_path_buf());
    args.tls_key_file = Some(key.to_path_buf());
    args.tls_ca_cert_file = Some(client_ca.to_path_buf());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
            "test finished".to_owned()
        };
        if let Err(e) = bulwark_node::serve(listener, args, shutdown).await {
            eprintln!("node stopped with an error: {e:#}");
        }
    });
    Node {
        addr,
        stop: Some(stop),
        _data: data,
    }
}

fn client(addr: &str, dialect: Dialect, tls: Option<ReplicaTls>) -> ReplicaClient {
    let spec = ReplicaSpec {
        name: "db_g1".into(),
        addr: addr.to_owned(),
    };
    ReplicaClient::with_tls(spec, dialect, TIMEOUT, tls)
}

fn version(ms: u64) -> Version {
    Version {
        physical_ms: ms,
        logical: 0,
        writer: 7,
    }
}

async fn round_trip(c: ReplicaClient) -> Result<(), String> {
    c.put(b"tls-key", version(1), Some(b"over tls"))
        .await
        .map_err(|e| e.to_string())?;
    let state = c.get(b"tls-key").await.map_err(|e| e.to_string())?;
    let record = state.committed.ok_or("no committed record")?;
    if record.value.as_deref() != Some(&b"over tls"[..]) {
        return Err(format!("read back {record:?}"));
    }
    Ok(())
}

/// Runs `redis-cli` (without blocking the runtime the node serves on).
async fn redis_cli(args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new("redis-cli")
        .args(args)
        .output()
        .await
        .expect("redis-cli runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && text.contains("PONG"), text)
}

#[tokio::test]
async fn a_node_serves_mutual_tls_and_refuses_everything_else() {
    let pki = Pki::new();
    let node = tls_node(&pki.file("db_g1.pem"), &pki.file("db_g1-key.pem"), &pki.ca).await;

    // The gateway's client, with the CA and its own certificate.
    round_trip(client(
        &node.addr,
        Dialect::Bulwark,
        Some(pki.client_tls(true)),
    ))
    .await
    .expect("mutual TLS round trip");

    // No client certificate, a CA that did not sign the node's, plaintext: refused.
    let no_cert = round_trip(client(
        &node.addr,
        Dialect::Bulwark,
        Some(pki.client_tls(false)),
    ));
    assert!(
        no_cert.await.is_err(),
        "served a client without a certificate"
    );
    let other = Pki::new();
    let wrong_ca = round_trip(client(
        &node.addr,
        Dialect::Bulwark,
        Some(other.client_tls(true)),
    ));
    assert!(
        wrong_ca.await.is_err(),
        "a client trusting another CA connected"
    );
    let plain = round_trip(client(&node.addr, Dialect::Bulwark, None));
    assert!(plain.await.is_err(), "plaintext was served on a TLS port");

    // redis-cli, as a user would run it.
    let port = node.addr.rsplit(':').next().expect("port").to_owned();
    let (ca, cert, key) = (
        pki.ca.display().to_string(),
        pki.file("app_ap.pem").display().to_string(),
        pki.file("app_ap-key.pem").display().to_string(),
    );
    let base = ["-h", "127.0.0.1", "-p", port.as_str()];
    let tls_args = |extra: &[&str]| -> Vec<String> {
        base.iter()
            .chain(["--tls", "--cacert", ca.as_str()].iter())
            .chain(extra.iter())
            .chain(["PING"].iter())
            .map(|s| (*s).to_owned())
            .collect()
    };
    let with_cert = tls_args(&["--cert", cert.as_str(), "--key", key.as_str()]);
    let (ok, out) = redis_cli(&with_cert.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(ok, "redis-cli --tls with a client certificate: {out}");
    let without = tls_args(&[]);
    let (ok, out) = redis_cli(&without.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(
        !ok,
        "redis-cli without a client certificate was served: {out}"
    );
    let (ok, out) = redis_cli(&[&base[..], &["PING"]].concat()).await;
    assert!(!ok, "plain redis-cli was served: {out}");
}

#[tokio::test]
async fn a_renewed_node_certificate_is_served_without_a_restart() {
    let pki = Pki::new();
    let other = Pki::new();
    // The node serves copies of its files, so they can be replaced under it.
    let live = tempfile::tempdir().expect("temp dir");
    let (cert, key) = (
        live.path().join("node.pem"),
        live.path().join("node-key.pem"),
    );
    std::fs::copy(pki.file("db_g1.pem"), &cert).expect("copy");
    std::fs::copy(pki.file("db_g1-key.pem"), &key).expect("copy");
    // Clients of either CA may connect (their certificates are checked against `both`).
    let both = live.path().join("clients-ca.pem");
    let pems = [&pki.ca, &other.ca].map(|p| std::fs::read_to_string(p).expect("read"));
    std::fs::write(&both, pems.concat()).expect("write");
    let node = tls_node(&cert, &key, &both).await;

    round_trip(client(
        &node.addr,
        Dialect::Bulwark,
        Some(pki.client_tls(true)),
    ))
    .await
    .expect("the first certificate is served");
    let trusting_other = client(&node.addr, Dialect::Bulwark, Some(other.client_tls(true)));
    assert!(
        round_trip(trusting_other).await.is_err(),
        "a client trusting the other CA accepted the first certificate"
    );
    // Renew the node's certificate from the other CA (key first: a torn pair fails to
    // load and leaves the old one in force).
    std::fs::copy(other.file("db_g1-key.pem"), &key).expect("copy");
    std::fs::copy(other.file("db_g1.pem"), &cert).expect("copy");
    let started = std::time::Instant::now();
    let renewed = wait_for(Duration::from_secs(10), || async {
        let c = client(&node.addr, Dialect::Bulwark, Some(other.client_tls(true)));
        round_trip(c).await.is_ok()
    })
    .await;
    eprintln!("renewed certificate served after {:?}", started.elapsed());
    assert!(renewed, "the renewed certificate was not served");
}

#[tokio::test]
async fn a_real_redis_serves_the_protocol_over_tls() {
    let pki = Pki::new();
    let tls_port = free_port();
    let (cert, key, ca) = (
        pki.file("db_g1.pem").display().to_string(),
        pki.file("db_g1-key.pem").display().to_string(),
        pki.ca.display().to_string(),
    );
    let redis = RedisServer::start(RedisOptions {
        extra_args: [
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "yes",
        ]
        .map(str::to_owned)
        .to_vec(),
        ..RedisOptions::default()
    })
    .await;
    let addr = format!("127.0.0.1:{tls_port}");
    round_trip(client(&addr, Dialect::Redis, Some(pki.client_tls(true))))
        .await
        .expect("the function library over mutual TLS");
    let no_cert = round_trip(client(&addr, Dialect::Redis, Some(pki.client_tls(false))));
    assert!(
        no_cert.await.is_err(),
        "redis served a client without a certificate"
    );
    drop(redis);
}
