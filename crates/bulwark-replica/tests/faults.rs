//! A replica that hangs, answers garbage, or is not there yields a typed error, never a
//! panic or a hang, in both dialects.

use std::time::Duration;

use bulwark_replica::{Dialect, ReplicaClient, ReplicaError, ReplicaSpec};
use bulwark_testkit::{BlackHole, GarbageServer, free_port};

const SHORT: Duration = Duration::from_millis(200);

fn client(addr: String, dialect: Dialect) -> ReplicaClient {
    let spec = ReplicaSpec {
        name: "db_x".into(),
        addr,
    };
    ReplicaClient::new(spec, dialect, SHORT)
}

fn version() -> bulwark_core::Version {
    bulwark_core::Version {
        physical_ms: 1,
        logical: 0,
        writer: 1,
    }
}

#[tokio::test]
async fn black_hole_times_out_every_call() {
    let bh = BlackHole::start().await;
    for dialect in [Dialect::Bulwark, Dialect::Redis] {
        let c = client(bh.addr(), dialect);
        assert_eq!(c.get(b"k").await.expect_err("get"), ReplicaError::Timeout);
        assert_eq!(
            c.prepare(b"k", version(), "db_x", Some(b"v"))
                .await
                .expect_err("prepare"),
            ReplicaError::Timeout
        );
        assert_eq!(
            c.commit(b"k", version()).await.expect_err("commit"),
            ReplicaError::Timeout
        );
    }
}

#[tokio::test]
async fn bytes_that_are_not_resp_are_protocol_errors() {
    let g = GarbageServer::start(GarbageServer::NOT_RESP).await;
    for dialect in [Dialect::Bulwark, Dialect::Redis] {
        let c = client(g.addr(), dialect);
        for _ in 0..2 {
            let err = c.get(b"k").await.expect_err("garbage");
            // The Redis dialect fails while loading its function library, before the
            // request is sent: that is `Unreachable` (certainly not applied).
            let ok = match dialect {
                Dialect::Bulwark => matches!(err, ReplicaError::Protocol(_)),
                Dialect::Redis => {
                    matches!(&err, ReplicaError::Unreachable(m) if m.contains("protocol"))
                }
            };
            assert!(ok, "{dialect}: {err:?}");
        }
    }
}

#[tokio::test]
async fn well_formed_replies_of_the_wrong_shape_are_protocol_errors() {
    let g = GarbageServer::start(b":5\r\n").await;
    let c = client(g.addr(), Dialect::Bulwark);
    assert!(matches!(c.get(b"k").await, Err(ReplicaError::Protocol(_))));
    assert!(matches!(
        c.put(b"k", version(), None).await,
        Err(ReplicaError::Protocol(_))
    ));
    assert!(matches!(
        c.prepare(b"k", version(), "db_x", None).await,
        Err(ReplicaError::Protocol(_))
    ));
    assert!(matches!(
        c.abort(b"k", version()).await,
        Err(ReplicaError::Protocol(_))
    ));
    assert!(matches!(c.ping().await, Err(ReplicaError::Protocol(_))));
}

#[tokio::test]
async fn nobody_listening_is_unreachable() {
    let c = client(format!("127.0.0.1:{}", free_port()), Dialect::Bulwark);
    assert!(matches!(
        c.get(b"k").await,
        Err(ReplicaError::Unreachable(_))
    ));
    // Concurrent callers behind one failed connect all get an error, none hangs.
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.get(b"k").await })
        })
        .collect();
    for call in calls {
        assert!(matches!(
            call.await.expect("task"),
            Err(ReplicaError::Unreachable(_))
        ));
    }
}

#[tokio::test]
async fn unusable_address_is_reported_per_call() {
    let spec = ReplicaSpec {
        name: "db_x".into(),
        addr: "no-port".into(),
    };
    let c = ReplicaClient::new(spec, Dialect::Redis, SHORT);
    assert!(matches!(c.ping().await, Err(ReplicaError::Unreachable(_))));
}
