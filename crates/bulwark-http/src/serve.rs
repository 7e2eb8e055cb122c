//! The HTTP/1.1 server loop and the service lifecycle every HTTP service shares.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use bulwark_obs::events::{Emit, ShutdownEvent};
use bulwark_obs::metrics::metrics;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt as _;

use crate::guard::{ConnMeta, GuardLimits, Guarded, Refusal};

/// Longest a refused connection may take to receive its answer.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(5);
/// Refused connections still being answered beyond which new ones are dropped at once.
const MAX_REFUSING: usize = 1024;

/// How the server loop treats connections.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Bounds and timeouts of request heads and bodies.
    pub guard: GuardLimits,
    /// Idle time allowed between requests on a kept-alive connection.
    pub keepalive: Duration,
    /// Connections open at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Connections open at once from one client address; more are answered 429.
    pub max_connections_per_ip: Option<usize>,
    /// TLS, when the service serves HTTPS.
    pub tls: Option<bulwark_tls::ServerTls>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            guard: GuardLimits::default(),
            keepalive: Duration::from_secs(75),
            max_connections: 10_000,
            max_connections_per_ip: None,
            tls: None,
        }
    }
}

/// Connections open, in total and per client address.
#[derive(Debug, Default)]
struct Connections {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    refusing: AtomicUsize,
}

/// A connection's place in [`Connections`], given back when dropped.
#[derive(Debug)]
struct Slot {
    table: Arc<Connections>,
    ip: IpAddr,
    counted_per_ip: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.total.fetch_sub(1, Ordering::Relaxed);
        metrics().http_connections_open.dec();
        if self.counted_per_ip
            && let Ok(mut per_ip) = self.table.per_ip.lock()
            && let Some(n) = per_ip.get_mut(&self.ip)
        {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

impl Connections {
    fn open(self: &Arc<Self>, ip: IpAddr, opts: &ServeOptions) -> Result<Slot, Refusal> {
        if self.total.load(Ordering::Relaxed) >= opts.max_connections {
            return Err(Refusal::TooManyConnections);
        }
        if let Some(cap) = opts.max_connections_per_ip {
            let mut per_ip = self
                .per_ip
                .lock()
                .map_err(|_| Refusal::TooManyConnections)?;
            let n = per_ip.entry(ip).or_insert(0);
            if *n >= cap {
                return Err(Refusal::TooManyConnectionsFromClient);
            }
            *n += 1;
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        metrics().http_connections_open.inc();
        Ok(Slot {
            table: self.clone(),
            ip,
            counted_per_ip: opts.max_connections_per_ip.is_some(),
        })
    }
}

/// Serves HTTP/1.1 with keep-alive until `shutdown` resolves, then stops accepting,
/// closes idle connections and waits for the requests in flight.
///
/// This is `axum::serve` without HTTP/2 detection and upgrades, which thousands of
/// keep-alive connections (a flash sale's) pay for in memory: measured with 6,000 open
/// connections, a plain axum server held ~19 KB per connection and this loop ~12 KB
/// (docs/BENCHMARKS.md). Every connection gets `TCP_NODELAY` (answers are small and
/// latency is the point), a place under the connection caps, the TLS handshake when
/// configured (bounded by the head timeout) and the connection guard
/// ([`crate::guard`]); each request carries an `Arc<ConnMeta>` and `ConnectInfo`.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    // hyper's default read buffer bound (~400 KB) stays: a smaller one leaves the unread
    // part of an oversized body in the socket when the 413 closes the connection, and the
    // kernel then resets it before the client has read its answer. The guard's head
    // limits are far below it, so hyper never answers a head by itself.
    http.timer(hyper_util::rt::TokioTimer::new());
    // hyper runs this timer only while it waits for a new request (never while one is
    // being answered): the keep-alive idle timeout.
    http.header_read_timeout(opts.keepalive);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let table = Arc::new(Connections::default());
    let opts = Arc::new(opts);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: the
                    // listener itself is fine; back off a little instead of spinning.
                    tracing::warn!(event = "ACCEPT_FAILED", message = %e);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let slot = table.open(peer.ip(), &opts);
        if slot.is_err() && table.refusing.load(Ordering::Relaxed) >= MAX_REFUSING {
            drop(stream); // a flood: not even an answer
            continue;
        }
        let app = app.clone();
        let opts = opts.clone();
        let table = table.clone();
        let http = http.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = opts.tls.is_some();
            let io = match accept_tls(stream, &opts).await {
                Some(io) => io,
                None => return,
            };
            let meta = Arc::new(ConnMeta::new(peer, tls));
            let (guarded, slot) = match slot {
                Ok(slot) => (Guarded::new(io, opts.guard, meta.clone()), Some(slot)),
                Err(refusal) => (Guarded::refusing(io, refusal, meta.clone()), None),
            };
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(meta.clone());
                    req.extensions_mut().insert(ConnectInfo(peer));
                    app.clone().oneshot(req.map(Body::new))
                },
            );
            let conn = watcher
                .watch(http.serve_connection(hyper_util::rt::TokioIo::new(guarded), service));
            match slot {
                // A client that goes away mid-request is not the server's error.
                Some(_slot) => {
                    let _ = conn.await;
                }
                None => {
                    table.refusing.fetch_add(1, Ordering::Relaxed);
                    let _ = tokio::time::timeout(REFUSAL_DEADLINE, conn).await;
                    table.refusing.fetch_sub(1, Ordering::Relaxed);
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The connection's byte stream: TLS after a handshake bounded by the head timeout, or
/// the plain socket. `None` when the handshake failed (plaintext to a TLS port, a
/// client that does not trust the certificate): the connection is closed.
async fn accept_tls(stream: TcpStream, opts: &ServeOptions) -> Option<bulwark_tls::MaybeTls> {
    match &opts.tls {
        None => Some(bulwark_tls::MaybeTls::Plain(stream)),
        Some(tls) => {
            match tokio::time::timeout(opts.guard.head_timeout, tls.accept(stream)).await {
                Ok(Ok(s)) => Some(bulwark_tls::MaybeTls::Tls(Box::new(s))),
                Ok(Err(e)) => {
                    tracing::debug!(event = "TLS_HANDSHAKE_FAILED", error = %e);
                    metrics()
                        .http_connections_refused
                        .with_label_values(&["TLS_HANDSHAKE_FAILED"])
                        .inc();
                    None
                }
                Err(_) => None,
            }
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves (with its reason, `SIGTERM`);
/// then logs `SHUTDOWN_EVENT` (phase `started`), stops accepting, and drains the requests
/// in flight for at most `drain`. Returns the reason; the service then finishes its own
/// work and calls [`shutdown_completed`].
pub async fn serve_until_shutdown(
    service: &str,
    listener: TcpListener,
    app: axum::Router,
    opts: ServeOptions,
    drain: Duration,
    shutdown: impl Future<Output = String> + Send + 'static,
) -> String {
    let (signal_tx, signal_rx) = tokio::sync::watch::channel(None::<String>);
    let name = service.to_owned();
    tokio::spawn(async move {
        let reason = shutdown.await;
        ShutdownEvent {
            service: &name,
            signal: &reason,
            phase: "started",
            in_flight: metrics().http_connections_open.get().max(0) as usize,
        }
        .emit();
        let _ = signal_tx.send(Some(reason));
    });
    let signalled = |mut rx: tokio::sync::watch::Receiver<Option<String>>| async move {
        let _ = rx.wait_for(Option::is_some).await;
    };
    let server = serve(listener, app, opts, signalled(signal_rx.clone()));
    let deadline = async {
        signalled(signal_rx.clone()).await;
        tokio::time::sleep(drain).await;
    };
    tokio::select! {
        () = server => {}
        () = deadline => tracing::warn!(event = "SHUTDOWN_DEADLINE", message = "in-flight requests did not finish in time"),
    }
    signal_rx.borrow().clone().unwrap_or_default()
}

/// Logs `SHUTDOWN_EVENT` (phase `completed`).
pub fn shutdown_completed(service: &str, reason: &str) {
    ShutdownEvent {
        service,
        signal: reason,
        phase: "completed",
        in_flight: 0,
    }
    .emit();
}

/// The address a service would listen on, for its `SERVICE_STARTED` line.
pub fn describe(addr: SocketAddr, opts: &ServeOptions) -> String {
    let scheme = if opts.tls.is_some() { "https" } else { "http" };
    format!("{scheme}://{addr}")
}
