//! Helpers for the workspace's integration tests (a dev-dependency only; never linked
//! into a binary).
//!
//! * [`free_port`]: a loopback port nobody listens on right now;
//! * [`RedisServer`]: a real `redis-server` on a free port with its own temporary
//!   directory, stopped, killed, restarted, paused and resumed on demand, killed on drop;
//! * [`wait_for`] / [`wait_for_some`]: poll a condition until a deadline instead of
//!   sleeping for a guessed time;
//! * [`BlackHole`] and [`GarbageServer`]: TCP servers that hang or answer nonsense, for
//!   fault tests of clients;
//! * [`RespProxy`]: a RESP-aware proxy in front of one server that drops the reply of,
//!   refuses, delays or closes after *specific* commands, switched at run time by
//!   [`Rule`]s, for tests of the two-phase commit's lost-message paths;
//! * [`schemathesis::run`]: schemathesis with every check against a live service;
//! * [`sql::TestDatabase`]: a uniquely named PostgreSQL or MariaDB database (or a
//!   temporary SQLite file) for one test, dropped with it.
//!
//! Helpers panic with a message on set-up failures: they run only inside tests, where a
//! panic is a test failure that says what went wrong.

#![forbid(unsafe_code)]

mod faults;
mod redis;
mod resp_proxy;
pub mod schemathesis;
pub mod sql;

use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};
use std::time::Duration;

pub use faults::{BlackHole, GarbageServer};
pub use redis::{Persistence, RedisOptions, RedisServer};
pub use resp_proxy::{Action, RespProxy, Rule};

/// How often the polling helpers re-check their condition.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
///
/// Another process could take it before the caller binds it; [`RedisServer::start`]
/// retries on another port when that happens.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap_or_else(|e| panic!("cannot bind a loopback port: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("bound socket has no address: {e}"))
        .port()
}

/// Polls `check` every 10 ms until it returns `true` (then returns `true`) or `deadline`
/// has passed (then returns `false`, after one last check).
pub async fn wait_for<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for_some(deadline, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await
    .is_some()
}

/// Polls `check` every 10 ms until it returns `Some(value)` (then returns it) or
/// `deadline` has passed (then returns `None`, after one last check).
pub async fn wait_for_some<T, F, Fut>(deadline: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn wait_for_returns_when_the_condition_holds_and_gives_up_at_the_deadline() {
        let n = AtomicU32::new(0);
        assert!(
            wait_for(Duration::from_secs(5), || async {
                n.fetch_add(1, Ordering::SeqCst) >= 2
            })
            .await
        );
        assert_eq!(n.load(Ordering::SeqCst), 3);
        assert!(!wait_for(Duration::from_millis(30), || async { false }).await);
        assert_eq!(
            wait_for_some(Duration::from_secs(1), || async { Some(7) }).await,
            Some(7)
        );
    }

    #[test]
    fn free_port_is_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("port should be free");
    }
}
