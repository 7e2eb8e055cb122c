//! Health probes: the stand-in for compose `healthcheck:` entries.
//!
//! Probes speak just enough of each protocol by hand (a RESP `PING`, an HTTP/1.1 `GET`), so
//! they need no client library and each is bounded by one timeout. Over TLS (`up --tls`)
//! they check the service's certificate against the cluster's CA and present `up`'s own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::topology::HealthCheck;

/// Most bytes of a probe reply we read: the status line or `+PONG` fit many times over.
const MAX_REPLY: usize = 512;

/// Runs `check` against `127.0.0.1:port` (over TLS with `tls`); `true` when healthy
/// within `timeout`.
pub async fn probe(
    check: &HealthCheck,
    port: u16,
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    matches!(
        tokio::time::timeout(timeout, connect_and_probe(check, addr, tls)).await,
        Ok(Ok(true))
    )
}

async fn connect_and_probe(
    check: &HealthCheck,
    addr: SocketAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> std::io::Result<bool> {
    let stream = TcpStream::connect(addr).await?;
    let Some(config) = tls else {
        return probe_inner(check, addr, stream).await;
    };
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let stream = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, stream)
        .await?;
    probe_inner(check, addr, stream).await
}

async fn probe_inner(
    check: &HealthCheck,
    addr: SocketAddr,
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
) -> std::io::Result<bool> {
    match check {
        HealthCheck::Tcp => Ok(true),
        HealthCheck::RespPing => {
            stream.write_all(b"*1\r\n$4\r\nPING\r\n").await?;
            stream.flush().await?;
            let reply = read_some(&mut stream, |buf| buf.windows(2).any(|w| w == b"\r\n")).await?;
            Ok(reply.starts_with(b"+PONG"))
        }
        HealthCheck::Http { path } => {
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: bulwark-up\r\nConnection: close\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).await?;
            stream.flush().await?;
            let reply = read_some(&mut stream, |buf| buf.windows(2).any(|w| w == b"\r\n")).await?;
            // "HTTP/1.1 200 OK": the status code is the second word of the status line.
            let line = String::from_utf8_lossy(&reply);
            Ok(line.split_whitespace().nth(1) == Some("200"))
        }
    }
}

/// Reads until `done` says the buffer holds enough, EOF, or [`MAX_REPLY`] bytes.
async fn read_some(
    stream: &mut (impl AsyncRead + Unpin),
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
