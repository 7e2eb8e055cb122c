//! A running proxy: its listener, its accept loop and its connections.
//!
//! Invariants:
//! * a proxy's connections live in one [`TaskTracker`] and watch one stop token, so
//!   [`Running::stop`] returns only after every connection's sockets are closed;
//! * the accept loop gives its listener back when stopped, so a proxy restarted on the same
//!   address (its upstream changed) keeps its port with no window for another process;
//! * at most `max_connections` connections are open at once per proxy; more are accepted
//!   and closed at once, so a flood cannot exhaust the process's file descriptors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::{self, Context, ToxicSet};

/// How long stopping waits for connections to close before giving up on them (they are
/// cancelled already; this only bounds a stuck task).
const STOP_DEADLINE: Duration = Duration::from_secs(5);
/// Pause after a failed accept (too many open files), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What the accept loop hands to each connection.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    /// Proxy name.
    pub name: Arc<str>,
    /// Upstream address.
    pub upstream: Arc<str>,
    /// The proxy's toxics.
    pub toxics: watch::Receiver<ToxicSet>,
    /// Seed of the first connection's randomness; each next connection adds one.
    pub seed: u64,
    /// Most connections open at once.
    pub max_connections: usize,
}

/// A proxy that is enabled: listening and forwarding.
#[derive(Debug)]
pub(crate) struct Running {
    /// The address it listens on (with the port chosen when it was 0).
    pub addr: SocketAddr,
    stop: CancellationToken,
    connections: TaskTracker,
    accept: JoinHandle<TcpListener>,
}

impl Running {
    /// Starts accepting on `listener`.
    pub(crate) fn start(listener: TcpListener, spec: Spec) -> std::io::Result<Running> {
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let connections = TaskTracker::new();
        let accept = tokio::spawn(accept_loop(
            listener,
            spec,
            stop.clone(),
            connections.clone(),
        ));
        Ok(Running {
            addr,
            stop,
            connections,
            accept,
        })
    }

    /// Open connections.
    pub(crate) fn connections(&self) -> usize {
        self.connections.len()
    }

    /// Stops accepting, closes every connection, and returns the listener (still bound)
    /// if the accept loop could give it back.
    pub(crate) async fn stop(self) -> Option<TcpListener> {
        self.stop.cancel();
        let listener = self.accept.await.ok();
        self.connections.close();
        if tokio::time::timeout(STOP_DEADLINE, self.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.connections.len(),
                "fault proxy connections did not close in time"
            );
        }
        listener
    }
}

async fn accept_loop(
    listener: TcpListener,
    spec: Spec,
    stop: CancellationToken,
    connections: TaskTracker,
) -> TcpListener {
    let mut seed = spec.seed;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((socket, _)) => {
                if connections.len() >= spec.max_connections {
                    tracing::warn!(
                        proxy = &*spec.name,
                        max = spec.max_connections,
                        "fault proxy at its connection limit: connection refused"
                    );
                    continue;
                }
                seed = seed.wrapping_add(1);
                let ctx = Context {
                    proxy: spec.name.clone(),
                    upstream: spec.upstream.clone(),
                    toxics: spec.toxics.clone(),
                    stop: stop.clone(),
                    seed,
                };
                connections.spawn(connection::serve(socket, ctx));
            }
            Err(e) => {
                tracing::warn!(proxy = &*spec.name, error = %e, "fault proxy accept failed");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    }
    listener
}
