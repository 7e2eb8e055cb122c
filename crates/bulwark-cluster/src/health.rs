//! Health probes: the stand-in for compose `healthcheck:` entries.
//!
//! Probes speak just enough of each protocol by hand (a RESP `PING`, an HTTP/1.1 `GET`), so
//! they need no client library and each is bounded by one timeout.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::topology::HealthCheck;

/// Most bytes of a probe reply we read: the status line or `+PONG` fit many times over.
const MAX_REPLY: usize = 512;

/// Runs `check` against `127.0.0.1:port`; `true` when healthy within `timeout`.
pub async fn probe(check: &HealthCheck, port: u16, timeout: Duration) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    matches!(
        tokio::time::timeout(timeout, probe_inner(check, addr)).await,
        Ok(Ok(true))
    )
}

async fn probe_inner(check: &HealthCheck, addr: SocketAddr) -> std::io::Result<bool> {
    let mut stream = TcpStream::connect(addr).await?;
    match check {
        HealthCheck::Tcp => Ok(true),
        HealthCheck::RespPing => {
            stream.write_all(b"*1\r\n$4\r\nPING\r\n").await?;
            let reply = read_some(&mut stream, |buf| buf.windows(2).any(|w| w == b"\r\n")).await?;
            Ok(reply.starts_with(b"+PONG"))
        }
        HealthCheck::Http { path } => {
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: bulwark-up\r\nConnection: close\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).await?;
            let reply = read_some(&mut stream, |buf| buf.windows(2).any(|w| w == b"\r\n")).await?;
            // "HTTP/1.1 200 OK": the status code is the second word of the status line.
            let line = String::from_utf8_lossy(&reply);
            Ok(line.split_whitespace().nth(1) == Some("200"))
        }
    }
}

/// Reads until `done` says the buffer holds enough, EOF, or [`MAX_REPLY`] bytes.
async fn read_some(
    stream: &mut TcpStream,
    done: impl Fn(&[u8]) -> bool,
) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 128];
    while buf.len() < MAX_REPLY && !done(&buf) {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(buf)
}
