//! The replica protocol against an in-process `bulwark node` (native `BW.*` commands):
//! the same suite as `redis_dialect.rs`, so both backends are held to one definition.

mod suite;

use std::time::Duration;

use bulwark_node::NodeArgs;
use bulwark_replica::{Dialect, ReplicaClient, ReplicaSpec};
use suite::{Started, TIMEOUT, guard};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A node serving on a free port from its own temporary directory; stopped when
/// dropped (the task is aborted before its directory is removed).
struct Node {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

async fn start_node() -> (Node, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let mut args = NodeArgs::new("db_g1");
    args.dir = Some(dir.path().to_path_buf());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
            "test finished".to_owned()
        };
        if let Err(e) = bulwark_node::serve(listener, args, shutdown).await {
            eprintln!("node stopped with an error: {e:#}");
        }
    });
    let node = Node {
        stop: Some(stop),
        task,
        _dir: dir,
    };
    (node, addr)
}

async fn started() -> Started {
    let (node, addr) = start_node().await;
    let spec = ReplicaSpec {
        name: "db_g1".into(),
        addr,
    };
    Started {
        client: ReplicaClient::new(spec, Dialect::Bulwark, TIMEOUT),
        guard: guard(node),
    }
}

protocol_suite!(started());

#[tokio::test]
async fn redis_dialect_against_a_node_is_a_server_error_not_a_panic() {
    let (_node, addr) = start_node().await;
    let spec = ReplicaSpec {
        name: "db_g1".into(),
        addr,
    };
    let c = ReplicaClient::new(spec, Dialect::Redis, Duration::from_secs(2));
    let err = c
        .get(b"k")
        .await
        .expect_err("a node has no FUNCTION command");
    // The function library cannot be loaded, so no request is ever sent.
    assert!(
        matches!(&err, bulwark_replica::ReplicaError::Unreachable(m) if m.contains("error reply")),
        "{err:?}"
    );
}
