//! TCP servers that misbehave on purpose, for testing that clients bound every call and
//! survive nonsense.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Connections a fault server keeps open at most; later ones are closed at once.
const MAX_HELD_CONNECTIONS: usize = 256;

/// A server that accepts connections and never answers (a hung replica, or one behind a
/// partition that drops packets after the handshake). Stops when dropped.
#[derive(Debug)]
pub struct BlackHole {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl BlackHole {
    /// Listens on a free loopback port. Must be called inside a tokio runtime.
    pub async fn start() -> BlackHole {
        let listener = bind().await;
        let addr = local_addr(&listener);
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                if held.len() < MAX_HELD_CONNECTIONS {
                    held.push(sock); // kept open, never read nor written
                }
            }
        });
        BlackHole { addr, task }
    }

    /// `host:port` of the server.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A server that answers every chunk it reads with fixed bytes (garbage, or a
/// well-formed reply of the wrong shape). Stops when dropped.
#[derive(Debug)]
pub struct GarbageServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl GarbageServer {
    /// Bytes that are not RESP at all (`@` is no RESP type marker).
    pub const NOT_RESP: &'static [u8] = b"@@garbage!\r\n\x00\xff\r\n";

    /// Listens on a free loopback port and answers every read with `reply`.
    pub async fn start(reply: &'static [u8]) -> GarbageServer {
        let listener = bind().await;
        let addr = local_addr(&listener);
        let reply = Arc::new(reply);
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let reply = Arc::clone(&reply);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = sock.read(&mut buf).await {
                        if n == 0 || sock.write_all(&reply).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        GarbageServer { addr, task }
    }

    /// `host:port` of the server.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for GarbageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn bind() -> TcpListener {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap_or_else(|e| panic!("cannot bind a loopback port: {e}"))
}

fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("bound socket has no address: {e}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpStream;

    use super::*;

    #[tokio::test]
    async fn black_hole_accepts_and_never_answers() {
        let bh = BlackHole::start().await;
        let mut s = TcpStream::connect(bh.addr()).await.expect("connect");
        s.write_all(b"*1\r\n$4\r\nPING\r\n").await.expect("write");
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await;
        assert!(r.is_err(), "black hole answered: {r:?}");
    }

    #[tokio::test]
    async fn garbage_server_answers_its_bytes() {
        let g = GarbageServer::start(GarbageServer::NOT_RESP).await;
        let mut s = TcpStream::connect(g.addr()).await.expect("connect");
        s.write_all(b"*1\r\n$4\r\nPING\r\n").await.expect("write");
        let mut buf = vec![0u8; GarbageServer::NOT_RESP.len()];
        s.read_exact(&mut buf).await.expect("read");
        assert_eq!(buf, GarbageServer::NOT_RESP);
    }
}
