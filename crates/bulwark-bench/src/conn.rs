//! One keep-alive HTTP/1.1 connection per load worker.
//!
//! A flash sale's 6,000 buyers are 6,000 connections, each carrying one request at a
//! time. A shared connection pool does not give that: when no idle connection is at hand
//! it dials a new one *and* waits for an idle one, keeps whichever comes first and parks
//! the other, so a closed-loop warm-up of 6,000 workers opened ~10,000 sockets, and the
//! pool's idle bound then closed some, leaving 4,800–5,900 open for the measured phase.
//! Here worker `w` owns slot `w` for the whole run (warm-up and measurement): exactly one
//! connection, dialled on its first request, dialled again only after a failure, and no
//! lock shared with any other worker.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HOST, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::measure::Outcome;

/// The sending half of one connection.
type Sender = SendRequest<Full<Bytes>>;

/// The connections of one run's workers to one server.
#[derive(Debug)]
pub(crate) struct WorkerConns {
    /// `host:port`, dialled and sent as the `Host` header.
    authority: String,
    host: HeaderValue,
    connect_timeout: Duration,
    /// Slot `w` is worker `w`'s connection, `None` until dialled or after a failure.
    slots: Box<[Mutex<Option<Sender>>]>,
}

impl WorkerConns {
    /// Slots for `workers` workers talking to `authority` (`host:port`).
    pub(crate) fn new(
        authority: &str,
        workers: usize,
        connect_timeout: Duration,
    ) -> anyhow::Result<Self> {
        Ok(WorkerConns {
            authority: authority.to_owned(),
            host: HeaderValue::from_str(authority)?,
            connect_timeout,
            slots: (0..workers.max(1)).map(|_| Mutex::new(None)).collect(),
        })
    }

    /// Sends `req` (origin-form URI) on worker `worker`'s connection, dialling it first if
    /// it is not open, and returns the response head; the caller reads the body, which
    /// must end before this worker's next request can go out on the same connection.
    /// A connection whose exchange failed, or was dropped mid-way (a timeout), is closed;
    /// the worker's next request dials a new one. Like a pooled client, a request that
    /// found its kept-alive connection closed before it was written is sent once more, on
    /// a new connection.
    pub(crate) async fn send(
        &self,
        worker: usize,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, Outcome> {
        req.headers_mut().insert(HOST, self.host.clone());
        let slot = &self.slots[worker % self.slots.len()];
        // Taken out for the exchange and put back only when the response head came: a
        // request abandoned half-way (its future dropped) takes its connection with it.
        let cached = slot.lock().await.take();
        let (mut sender, reused) = match cached {
            Some(mut s) => match s.ready().await {
                Ok(()) => (s, true),
                Err(_) => (self.dial().await?, false),
            },
            None => (self.dial().await?, false),
        };
        let resp = match sender.try_send_request(req).await {
            Ok(resp) => resp,
            // A kept-alive connection the server had closed, noticed before the request
            // was written: the request never left, so it goes once on a new connection.
            Err(mut e) if reused => {
                let Some(req) = e.take_message() else {
                    return Err(Outcome::Other);
                };
                sender = self.dial().await?;
                sender.send_request(req).await.map_err(|_| Outcome::Other)?
            }
            Err(_) => return Err(Outcome::Other),
        };
        *slot.lock().await = Some(sender);
        Ok(resp)
    }

    /// Open connections (slots holding one that has not failed).
    #[cfg(test)]
    async fn open(&self) -> usize {
        let mut n = 0;
        for s in &self.slots {
            if s.lock().await.as_ref().is_some_and(|s| !s.is_closed()) {
                n += 1;
            }
        }
        n
    }

    async fn dial(&self) -> Result<Sender, Outcome> {
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.authority))
                .await
            {
                Ok(Ok(stream)) => stream,
                _ => return Err(Outcome::Connect),
            };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| Outcome::Connect)?;
        tokio::spawn(async move {
            // Ends when the server closes the connection or every sender is dropped.
            let _ = conn.await;
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A server that counts the connections it accepted and answers every request with
    /// its `Host` header, closing the connection after `close_after` requests.
    async fn server(
        close_after: usize,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let served = Arc::new(AtomicUsize::new(0));
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let n = served.fetch_add(1, Ordering::SeqCst) + 1;
                    let host = req
                        .headers()
                        .get(HOST)
                        .map(|h| h.to_str().unwrap_or("").to_owned())
                        .unwrap_or_default();
                    let mut resp = Response::new(Full::new(Bytes::from(host)));
                    if n >= close_after {
                        resp.headers_mut()
                            .insert("connection", HeaderValue::from_static("close"));
                    }
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        (addr, accepted)
    }

    async fn get(conns: &WorkerConns, worker: usize) -> String {
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.uri_mut() = "/x".parse().expect("uri");
        let resp = conns.send(worker, req).await.expect("response");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8(body.to_vec()).expect("utf-8")
    }

    #[tokio::test]
    async fn each_worker_keeps_one_connection_across_requests() {
        let (addr, accepted) = server(usize::MAX).await;
        let conns = WorkerConns::new(&addr, 3, Duration::from_secs(5)).expect("conns");
        for _ in 0..5 {
            for w in 0..3 {
                assert_eq!(get(&conns, w).await, addr, "Host header is the authority");
            }
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert_eq!(conns.open().await, 3);
    }

    #[tokio::test]
    async fn a_closed_connection_is_dialled_again() {
        let (addr, accepted) = server(2).await;
        let conns = WorkerConns::new(&addr, 1, Duration::from_secs(5)).expect("conns");
        for _ in 0..6 {
            get(&conns, 0).await;
            // Let the client side see the server's close before the next request.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Two requests per connection: six requests took three connections.
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_refused_dial_is_a_connect_outcome() {
        let free = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = free.local_addr().expect("addr").to_string();
        drop(free);
        let conns = WorkerConns::new(&addr, 1, Duration::from_secs(5)).expect("conns");
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.uri_mut() = "/x".parse().expect("uri");
        assert!(matches!(conns.send(0, req).await, Err(Outcome::Connect)));
    }
}
