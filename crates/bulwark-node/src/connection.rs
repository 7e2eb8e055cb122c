//! One client connection: read a batch, run it, acknowledge its writes once, reply.
//!
//! Pipelining is the common case under load (`redis-benchmark -P 16`), so the loop works
//! per *read*: every complete command in the read buffer runs, replies accumulate in one
//! output buffer, the batch's writes are acknowledged with a single [`Store::ack`] (one
//! group-committed fsync under `always`, one write to the OS otherwise), and the replies go
//! out in one `write`. Nothing is acknowledged before it is as durable as promised: if the
//! acknowledgement fails, the connection closes without sending the replies.
//!
//! [`Store::ack`]: bulwark_storage::Store::ack

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bulwark_resp::encode;
use bulwark_storage::Ticket;
use bulwark_tls::MaybeTls;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::cmd::{self, ClientState, CommandCounts};
use crate::server::Shared;

/// Replies buffered beyond this are written out before the batch ends, so a huge
/// pipeline cannot grow the output buffer without bound.
const FLUSH_AT: usize = 256 << 10;

/// Initial size of the read and write buffers.
const BUF: usize = 16 << 10;

/// A client connection and its buffers.
#[derive(Debug)]
pub struct Connection {
    /// The socket (after its TLS handshake, when the node speaks TLS).
    socket: MaybeTls,
    /// Server-wide state.
    shared: Arc<Shared>,
    /// Becomes `true` when the server shuts down; checked between batches.
    stop: watch::Receiver<bool>,
    /// Bytes read and not yet parsed.
    rbuf: BytesMut,
    /// Replies not yet written.
    out: BytesMut,
    /// Arguments of the command being run; reused to avoid an allocation per command.
    args: Vec<Bytes>,
    /// Per-connection state (CLIENT SETNAME, id).
    client: ClientState,
    /// Commands run since the counters were last published.
    counts: CommandCounts,
}

/// What ended a batch.
enum Next {
    /// Keep reading.
    Read,
    /// Close the connection (QUIT, protocol error, failed acknowledgement).
    Close,
}

impl Connection {
    /// Wraps an accepted socket.
    pub fn new(socket: MaybeTls, shared: Arc<Shared>, stop: watch::Receiver<bool>) -> Self {
        let id = shared.next_client_id.fetch_add(1, Ordering::Relaxed);
        Connection {
            socket,
            shared,
            stop,
            rbuf: BytesMut::with_capacity(BUF),
            out: BytesMut::with_capacity(BUF),
            args: Vec::with_capacity(8),
            client: ClientState::new(id),
            counts: CommandCounts::default(),
        }
    }

    /// Serves the client until it leaves, errs, or the server stops.
    pub async fn run(mut self) {
        if let Err(e) = self.serve().await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
        self.counts.publish(&self.shared);
    }

    async fn serve(&mut self) -> std::io::Result<()> {
        loop {
            if *self.stop.borrow() {
                return Ok(());
            }
            if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                self.rbuf.reserve(BUF);
            }
            let n = tokio::select! {
                read = self.socket.read_buf(&mut self.rbuf) => read?,
                _ = self.stop.changed() => return Ok(()),
            };
            if n == 0 {
                return Ok(());
            }
            let next = self.run_batch().await?;
            self.counts.publish(&self.shared);
            if let Next::Close = next {
                let _ = self.socket.shutdown().await;
                return Ok(());
            }
        }
    }

    /// Runs every complete command in the read buffer and sends the replies.
    async fn run_batch(&mut self) -> std::io::Result<Next> {
        let mut ticket = Ticket::NONE;
        let mut next = Next::Read;
        loop {
            match self
                .shared
                .parser
                .parse_command(&mut self.rbuf, &mut self.args)
            {
                Ok(false) => break,
                Ok(true) if self.args.is_empty() => continue,
                Ok(true) => {
                    let flow = cmd::execute(
                        &self.shared,
                        &mut self.client,
                        &self.args,
                        &mut self.out,
                        &mut self.counts,
                    )
                    .await;
                    ticket = ticket.merge(flow.ticket);
                    if flow.quit {
                        next = Next::Close;
                        break;
                    }
                    if self.out.len() >= FLUSH_AT {
                        if !self.acknowledge(ticket).await {
                            return Ok(Next::Close);
                        }
                        ticket = Ticket::NONE;
                        self.send().await?;
                    }
                }
                Err(e) => {
                    // The stream is out of sync: answer like redis and close.
                    encode::error(&mut self.out, &format!("ERR {e}"));
                    next = Next::Close;
                    break;
                }
            }
        }
        self.args.clear();
        if !self.acknowledge(ticket).await {
            return Ok(Next::Close);
        }
        if !self.out.is_empty() {
            self.send().await?;
        }
        Ok(next)
    }

    /// Writes the buffered replies out (through TLS's buffer, hence the flush).
    async fn send(&mut self) -> std::io::Result<()> {
        self.socket.write_all(&self.out).await?;
        self.socket.flush().await?;
        self.out.clear();
        Ok(())
    }

    /// Waits until the batch's writes are as durable as promised. On failure the replies
    /// are dropped unsent: the client sees the connection close, never a false "OK".
    async fn acknowledge(&mut self, ticket: Ticket) -> bool {
        match self.shared.store.ack(ticket).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(service = self.shared.name.as_str(), error = %e, "write not acknowledged; closing connection");
                self.out.clear();
                false
            }
        }
    }
}
