//! Accepting connections, bounding them, and shutting down gracefully.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bulwark_obs::events::{Emit, ServiceStarted, ShutdownEvent};
use bulwark_obs::metrics::metrics;
use bulwark_resp::{Limits, Parser};
use bulwark_storage::{FsyncObserver, Store, StoreConfig};
use bulwark_tls::{MaybeTls, ServerTls};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::NodeArgs;
use crate::connection;

/// How long shutdown waits for connections to finish the command they are running.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// How long a refused client gets to receive its error before the socket is dropped.
const REJECT_DEADLINE: Duration = Duration::from_secs(1);

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// State every connection shares.
#[derive(Debug)]
pub struct Shared {
    /// The data.
    pub store: Store,
    /// The node's name (INFO, logs).
    pub name: String,
    /// The port actually listened on (INFO).
    pub port: u16,
    /// When the server started, for `uptime_in_seconds`.
    pub started: tokio::time::Instant,
    /// Where SAVE and BGSAVE write the snapshot.
    pub snapshot_path: PathBuf,
    /// The connection bound (INFO `maxclients`, CONFIG GET maxclients).
    pub max_clients: usize,
    /// Permits for connections; `max_clients - available` are connected.
    pub slots: Arc<Semaphore>,
    /// Connections accepted since start, refused ones included (INFO).
    pub total_connections: AtomicU64,
    /// Connections refused because `max_clients` were connected (INFO).
    pub rejected_connections: AtomicU64,
    /// TLS handshakes that failed or timed out (INFO `tls_handshake_failures`).
    pub tls_handshake_failures: AtomicU64,
    /// Commands processed since start (INFO).
    pub total_commands: AtomicU64,
    /// Source of CLIENT ID values.
    pub next_client_id: AtomicU64,
    /// The request parser with the configured size limits.
    pub parser: Parser,
    /// Whether `BW.DEBUG` is accepted (`--enable-debug-command`).
    pub debug_commands: bool,
    /// The layout fence: calls routed with an older layout are refused.
    pub fence: crate::fence::Fence,
}

impl Shared {
    /// Clients connected right now.
    pub fn connected(&self) -> usize {
        self.max_clients
            .saturating_sub(self.slots.available_permits())
    }
}

/// Serves on `listener` until `shutdown` resolves; see [`crate::serve`].
pub async fn serve(
    listener: TcpListener,
    args: NodeArgs,
    tls: Option<ServerTls>,
    shutdown: impl Future<Output = String> + Send + 'static,
) -> anyhow::Result<()> {
    let dir = args.data_dir();
    let observer: FsyncObserver = Arc::new(|d: Duration| {
        metrics().node_fsync.observe(d.as_secs_f64());
    });
    let config = StoreConfig {
        fsync_observer: Some(observer),
        max_memory_bytes: (args.maxmemory > 0).then_some(args.maxmemory),
        ..StoreConfig::new(&dir, args.appendfsync, args.writer_id())
    };
    let (store, report) = tokio::task::spawn_blocking(move || Store::open(config))
        .await
        .map_err(|e| anyhow::anyhow!("storage open task failed: {e}"))?
        .map_err(|e| anyhow::anyhow!("cannot open storage in {}: {e}", dir.display()))?;
    tracing::info!(
        service = args.name.as_str(),
        dir = %dir.display(),
        created = report.created,
        live_keys = report.live_keys,
        tombstones = report.tombstones,
        pending = report.pending,
        journal_tail_discarded_bytes = report.journal_tail_discarded_bytes,
        "storage opened"
    );

    let fence = crate::fence::Fence::open(&dir).map_err(|e| anyhow::anyhow!(e))?;
    let addr = listener.local_addr()?;
    let max_clients = args.max_clients.max(1);
    let shared = Arc::new(Shared {
        snapshot_path: dir.join("dump.bwsnap"),
        store: store.clone(),
        name: args.name.clone(),
        port: addr.port(),
        started: tokio::time::Instant::now(),
        max_clients,
        slots: Arc::new(Semaphore::new(max_clients)),
        total_connections: AtomicU64::new(0),
        rejected_connections: AtomicU64::new(0),
        tls_handshake_failures: AtomicU64::new(0),
        total_commands: AtomicU64::new(0),
        next_client_id: AtomicU64::new(1),
        parser: Parser::new(Limits {
            max_bulk_len: args.max_request_bytes,
            max_frame_len: args.max_request_bytes,
            ..Limits::default()
        }),
        debug_commands: args.enable_debug_command,
        fence,
    });
    let tls_mode = match &tls {
        None => "off",
        Some(t) if t.requires_client_certs() => "mutual",
        Some(_) => "on",
    };
    if let Some(t) = &tls {
        t.spawn_watcher();
    }
    ServiceStarted {
        service: &args.name,
        addr: &addr.to_string(),
        detail: &format!(
            "bulwark node, appendfsync={}, dir={}, keys={}, max_clients={max_clients}, tls={tls_mode}",
            args.appendfsync,
            dir.display(),
            report.live_keys
        ),
    }
    .emit();

    // Connections watch `stop` between batches; each holds a clone of `done_tx`, so
    // `done_rx` closes when the last one has finished (mini-redis's pattern).
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    let reason = loop {
        tokio::select! {
            reason = &mut shutdown => break reason,
            accepted = listener.accept() => match accepted {
                Ok((socket, _peer)) => {
                    shared.total_connections.fetch_add(1, Ordering::Relaxed);
                    match Arc::clone(&shared.slots).try_acquire_owned() {
                        Ok(permit) => {
                            let (shared, stop, tls) =
                                (Arc::clone(&shared), stop_rx.clone(), tls.clone());
                            let done = done_tx.clone();
                            tokio::spawn(async move {
                                if let Some(stream) =
                                    handshake(socket, tls.as_ref(), &shared).await
                                {
                                    connection::Connection::new(stream, shared, stop).run().await;
                                }
                                drop(permit);
                                drop(done);
                            });
                        }
                        Err(_) => {
                            shared.rejected_connections.fetch_add(1, Ordering::Relaxed);
                            // A TLS client could not read a plain error: it just sees
                            // the close.
                            if tls.is_none() {
                                tokio::spawn(reject(socket));
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(service = args.name.as_str(), error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    };
    drop(listener);

    ShutdownEvent {
        service: &args.name,
        signal: &reason,
        phase: "started",
        in_flight: shared.connected(),
    }
    .emit();
    let _ = stop_tx.send(true);
    drop(done_tx);
    if tokio::time::timeout(DRAIN_DEADLINE, done_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!(
            service = args.name.as_str(),
            remaining = shared.connected(),
            "connections did not finish within the drain deadline; closing storage anyway"
        );
    }
    let closing = store.clone();
    tokio::task::spawn_blocking(move || closing.close())
        .await
        .map_err(|e| anyhow::anyhow!("storage close task failed: {e}"))?
        .map_err(|e| anyhow::anyhow!("storage close failed: {e}"))?;
    ShutdownEvent {
        service: &args.name,
        signal: &reason,
        phase: "completed",
        in_flight: shared.connected(),
    }
    .emit();
    Ok(())
}

/// The connection after its TLS handshake (when the node speaks TLS), or `None` when
/// the handshake failed or took longer than [`HANDSHAKE_DEADLINE`] (a plaintext client
/// on a TLS port, a wrong CA, no client certificate under mutual TLS).
async fn handshake(
    socket: TcpStream,
    tls: Option<&ServerTls>,
    shared: &Shared,
) -> Option<MaybeTls> {
    let _ = socket.set_nodelay(true);
    let Some(tls) = tls else {
        return Some(MaybeTls::Plain(socket));
    };
    let peer = socket.peer_addr().ok();
    match tokio::time::timeout(HANDSHAKE_DEADLINE, tls.accept(socket)).await {
        Ok(Ok(stream)) => Some(MaybeTls::Tls(Box::new(stream))),
        Ok(Err(e)) => {
            shared
                .tls_handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = ?peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            shared
                .tls_handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = ?peer, "TLS handshake timed out");
            None
        }
    }
}

/// Tells a client over the connection limit why, then closes (as redis does).
async fn reject(mut socket: TcpStream) {
    let _ = tokio::time::timeout(REJECT_DEADLINE, async {
        socket
            .write_all(b"-ERR max number of clients reached\r\n")
            .await?;
        socket.shutdown().await
    })
    .await;
}
