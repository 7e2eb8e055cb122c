//! Shared by the fault proxy's integration tests: an in-process fault proxy on a free port,
//! its API, and a TCP echo server to put behind it.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A fault proxy serving its API on a free port, stopped when dropped.
pub struct FaultProxy {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// The API port.
    pub port: u16,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl FaultProxy {
    /// Starts one with a fixed seed (repeatable toxicity rolls).
    pub async fn start() -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut args = bulwark_faultproxy::ProxyArgs::new("127.0.0.1:0");
        args.seed = Some(42);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(bulwark_faultproxy::serve(listener, args, async move {
            let _ = stopped.await;
            "test".to_string()
        }));
        FaultProxy {
            url: format!("http://127.0.0.1:{port}"),
            port,
            http: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Calls the API; returns the status and the JSON body (`Null` when empty).
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    /// Creates a proxy on a free port in front of `upstream`; returns its address.
    pub async fn proxy(&self, name: &str, upstream: &str) -> SocketAddr {
        let (status, body) = self
            .call(
                "POST",
                "/proxies",
                Some(json!({"name": name, "listen": "127.0.0.1:0", "upstream": upstream})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["listen"].as_str().unwrap().parse().unwrap()
    }

    /// Adds a toxic; panics unless the API accepts it.
    pub async fn toxic(&self, proxy: &str, toxic: Value) -> Value {
        let (status, body) = self
            .call("POST", &format!("/proxies/{proxy}/toxics"), Some(toxic))
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Removes a toxic; panics unless the API accepts it.
    pub async fn remove(&self, proxy: &str, toxic: &str) {
        let (status, body) = self
            .call("DELETE", &format!("/proxies/{proxy}/toxics/{toxic}"), None)
            .await;
        assert_eq!(status, 204, "{body}");
    }

    /// Stops the server and waits for it (every proxy and connection closed).
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A TCP server that writes back what it reads, and closes its side when the client
/// closes its own. Returns its address.
pub async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = socket.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// Reads until `n` bytes arrived, EOF, or `limit` passed; returns what was read.
pub async fn read_up_to(stream: &mut TcpStream, n: usize, limit: Duration) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    let mut buf = vec![0u8; 64 * 1024];
    let _ = tokio::time::timeout(limit, async {
        while out.len() < n {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(k) => out.extend_from_slice(&buf[..k]),
            }
        }
    })
    .await;
    out
}

/// What the next read on `stream` gives within `limit`.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Some bytes.
    Data(usize),
    /// An orderly close (FIN).
    Eof,
    /// A reset (RST).
    Reset,
    /// Another error.
    Error(String),
    /// Nothing within the limit.
    Nothing,
}

pub async fn next(stream: &mut TcpStream, limit: Duration) -> Next {
    let mut buf = [0u8; 4096];
    match tokio::time::timeout(limit, stream.read(&mut buf)).await {
        Err(_) => Next::Nothing,
        Ok(Ok(0)) => Next::Eof,
        Ok(Ok(n)) => Next::Data(n),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => Next::Reset,
        Ok(Err(e)) => Next::Error(e.to_string()),
    }
}

/// Sends a RESP `PING` and reads the reply (`+PONG`) within `limit`.
pub async fn ping(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    stream.write_all(b"*1\r\n$4\r\nPING\r\n").await.ok()?;
    let got = read_up_to(stream, 7, limit).await;
    (got == b"+PONG\r\n").then_some(got)
}
