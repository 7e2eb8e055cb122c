//! The HTTP/1.1 server loop.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;

/// Serves HTTP/1.1 with keep-alive until `shutdown` resolves, then stops accepting,
/// closes idle connections and waits for the requests in flight.
///
/// This is `axum::serve` without HTTP/2 detection and upgrades, which thousands of
/// keep-alive connections (a flash sale's) pay for in memory: measured with 6,000 open
/// connections, a plain axum server held ~19 KB per connection and this loop ~12 KB
/// (docs/BENCHMARKS.md). Every connection gets `TCP_NODELAY` (answers are small and
/// latency is the point); a slow client gets 30 s to send its request head.
pub async fn serve_http1(
    listener: TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    // hyper's default read buffer bound (~400 KB) stays: a smaller one leaves the unread
    // part of an oversized body in the socket when the 413 closes the connection, and the
    // kernel then resets it before the client has read its answer.
    http.timer(hyper_util::rt::TokioTimer::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
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
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn =
            graceful.watch(http.serve_connection(hyper_util::rt::TokioIo::new(stream), service));
        tokio::spawn(async move {
            // A client that goes away mid-request is not the server's error.
            let _ = conn.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
