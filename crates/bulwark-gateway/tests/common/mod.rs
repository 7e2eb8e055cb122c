//! A real local cluster for gateway tests: replicas are either `bulwark node`s served
//! in-process on their own ports and directories, or real `redis-server` processes; the
//! gateways are served in-process on port 0. Replicas can be stopped and restarted on the
//! same port with their data, like `docker stop db_g2` / `docker start db_g2`.

#![allow(dead_code, unused_macros)] // Each test binary uses a different subset.

/// Runs an async scenario `fn(Backend)` as one test per backend (SPEC CAP-2: both).
/// The scenarios and `Backend` must be in scope where it is invoked.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod bulwark_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Bulwark).await
                }
            )*
        }
        mod redis_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Redis).await
                }
            )*
        }
    };
}

use std::time::Duration;

use bulwark_config::Settings;
use bulwark_gateway::config::GatewayConfig;
use bulwark_testkit::{RedisOptions, RedisServer, free_port, wait_for};
use clap::Parser;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Which replica implementation a test runs against (SPEC CAP-2: both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Bulwark,
    Redis,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Bulwark => "bulwark",
            Backend::Redis => "redis",
        }
    }
}

#[derive(Parser)]
struct NodeCli {
    #[command(flatten)]
    args: bulwark_node::NodeArgs,
}

/// An in-process `bulwark node`.
struct NodeProc {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

enum ReplicaProc {
    Node(NodeProc),
    Redis(RedisServer),
}

/// One replica of the test cluster.
pub struct TestReplica {
    pub name: String,
    pub port: u16,
    dir: tempfile::TempDir,
    proc: ReplicaProc,
}

async fn bind_retry(port: u16) -> TcpListener {
    for _ in 0..100 {
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)).await {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("port {port} did not become free");
}

async fn start_node(name: &str, port: u16, dir: &std::path::Path) -> NodeProc {
    let listener = bind_retry(port).await;
    let cli = NodeCli::parse_from([
        "node",
        "--name",
        name,
        "--port",
        &port.to_string(),
        "--dir",
        dir.to_str().expect("utf-8 temp dir"),
    ]);
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(bulwark_node::serve(listener, cli.args, async move {
        let _ = rx.await;
        "test stop".to_string()
    }));
    NodeProc {
        stop: Some(tx),
        task: Some(task),
    }
}

impl TestReplica {
    async fn start(backend: Backend, name: &str) -> TestReplica {
        let dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Bulwark => {
                let port = free_port();
                let node = start_node(name, port, dir.path()).await;
                TestReplica {
                    name: name.into(),
                    port,
                    dir,
                    proc: ReplicaProc::Node(node),
                }
            }
            Backend::Redis => {
                let server = RedisServer::start(RedisOptions::default()).await;
                TestReplica {
                    name: name.into(),
                    port: server.port(),
                    dir,
                    proc: ReplicaProc::Redis(server),
                }
            }
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the replica gracefully (`docker stop`).
    pub async fn stop(&mut self) {
        match &mut self.proc {
            ReplicaProc::Node(n) => {
                if let Some(tx) = n.stop.take() {
                    let _ = tx.send(());
                }
                if let Some(task) = n.task.take() {
                    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
                }
            }
            ReplicaProc::Redis(r) => r.stop().await,
        }
    }

    /// Starts it again on the same port with the same data (`docker start`).
    pub async fn start_again(&mut self) {
        match &mut self.proc {
            ReplicaProc::Node(n) => {
                *n = start_node(&self.name, self.port, self.dir.path()).await;
            }
            ReplicaProc::Redis(r) => r.restart().await,
        }
    }
}

/// A gateway served in-process.
pub struct TestGateway {
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestGateway {
    pub async fn start(settings: &[(&str, String)]) -> TestGateway {
        // A generous replica timeout: tests run in parallel on a small machine, and a
        // healthy replica must not look failed. Tests about timeouts set their own.
        let mut pairs: Vec<(&str, String)> = vec![
            ("PORT", "0".into()),
            ("HEALTH_INTERVAL_SEC", "600".into()),
            ("NETWORK_TIMEOUT_SEC", "1".into()),
        ];
        pairs.extend(settings.iter().cloned());
        let config =
            GatewayConfig::from_settings(&Settings::from_pairs(pairs)).expect("valid test config");
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(bulwark_gateway::serve(listener, config, async move {
            let _ = rx.await;
            "test stop".to_string()
        }));
        TestGateway {
            url,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Graceful shutdown; returns the server's result.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(t) => t.await.expect("gateway task panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// N replicas named db_g1 … db_gN.
pub struct TestCluster {
    pub backend: Backend,
    pub replicas: Vec<TestReplica>,
}

impl TestCluster {
    pub async fn start(backend: Backend, n: usize) -> TestCluster {
        let mut replicas = Vec::new();
        for i in 1..=n {
            replicas.push(TestReplica::start(backend, &format!("db_g{i}")).await);
        }
        TestCluster { backend, replicas }
    }

    pub fn replicas_setting(&self) -> String {
        self.replicas
            .iter()
            .map(|r| format!("{}={}", r.name, r.addr()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Direct clients to the replicas, bypassing every gateway (as a gateway that crashed
    /// after writing to some replicas would have).
    pub fn direct(&self) -> Vec<bulwark_replica::ReplicaClient> {
        let dialect = match self.backend {
            Backend::Bulwark => bulwark_replica::Dialect::Bulwark,
            Backend::Redis => bulwark_replica::Dialect::Redis,
        };
        self.replicas
            .iter()
            .map(|r| {
                bulwark_replica::ReplicaClient::new(
                    bulwark_replica::ReplicaSpec {
                        name: r.name.clone(),
                        addr: r.addr(),
                    },
                    dialect,
                    Duration::from_secs(5),
                )
            })
            .collect()
    }

    /// A gateway in `mode` over this cluster, with test-friendly settings plus `extra`.
    pub async fn gateway(&self, mode: &str, extra: &[(&str, &str)]) -> TestGateway {
        let mut s: Vec<(&str, String)> = vec![
            ("MODE", mode.into()),
            ("REPLICAS", self.replicas_setting()),
            ("BACKEND", self.backend.as_str().into()),
            (
                "SECRET_KEY",
                "test-secret-key-shared-by-all-gateways".into(),
            ),
        ];
        s.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        TestGateway::start(&s).await
    }
}

/// An HTTP client that keeps cookies (a session), like `curl -c/-b cookies.txt`.
pub fn session_client() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .expect("client")
}

/// An HTTP client without cookies.
pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

pub async fn post(c: &reqwest::Client, url: String) -> (u16, Value) {
    let r = c.post(url).send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub async fn get(c: &reqwest::Client, url: String) -> (u16, Value) {
    let r = c.get(url).send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Waits until the gateway's breaker for `node` is in `state`.
pub async fn wait_breaker(gw: &TestGateway, node: &str, state: &str) -> bool {
    let c = client();
    wait_for(Duration::from_secs(15), || {
        let c = c.clone();
        let url = format!("{}/circuit-breaker", gw.url);
        async move { get(&c, url).await.1[node]["state"] == state }
    })
    .await
}

/// The replica names in a JSON array (absent: none).
pub fn names(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Replicas a write response says did not (yet) acknowledge: `behind` (failed) and
/// `pending` (still in flight when the write was answered), sorted.
pub fn missed(body: &Value) -> Vec<String> {
    let mut out = names(&body["behind"]);
    out.extend(names(&body["pending"]));
    out.sort();
    out
}

/// Replicas that acknowledged or were still in flight, sorted.
pub fn acked_or_pending(body: &Value) -> Vec<String> {
    let mut out = names(&body["acked_by"]);
    out.extend(names(&body["pending"]));
    out.sort();
    out
}
