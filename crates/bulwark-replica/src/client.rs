//! [`ReplicaClient`]: one replica, one multiplexed connection, every call bounded.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bulwark_core::ae::{AeEntry, Digest};
use bulwark_core::{ReplicaState, Version};
use redis::aio::MultiplexedConnection;
use redis::io::tcp::TcpSettings;
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, Value,
};
use tokio::time::{Instant, timeout_at};

use crate::error::from_redis;
use crate::reply::{self, version_wire};
pub use crate::reply::{PrepareReply, PutReply};
use crate::{Dialect, ReplicaError, ReplicaSpec, ReplicaTls};

/// The Redis function library implementing the protocol (`lua/bulwark.lua`).
pub const LUA_LIBRARY: &str = include_str!("../lua/bulwark.lua");
/// The key layout version `FCALL bw_format 0` returns for [`LUA_LIBRARY`].
pub const LUA_FORMAT: i64 = 1;

/// Keys a Redis replica scans per anti-entropy call (`SCAN … COUNT`): small enough that
/// one call blocks the server for a millisecond or so.
const SCAN_CHUNK: usize = 1000;

/// Requests in flight on one connection at most; later ones wait (within their timeout).
const MAX_IN_FLIGHT: usize = 1024;

/// Replica operations, with their names in both dialects (constants, not built per call).
#[derive(Clone, Copy, Debug)]
enum Op {
    Get,
    Put,
    Prepare,
    Commit,
    Abort,
    Repair,
}

impl Op {
    fn native(self) -> &'static str {
        match self {
            Op::Get => "BW.GET",
            Op::Put => "BW.PUT",
            Op::Prepare => "BW.PREPARE",
            Op::Commit => "BW.COMMIT",
            Op::Abort => "BW.ABORT",
            Op::Repair => "BW.REPAIR",
        }
    }

    fn function(self) -> &'static str {
        match self {
            Op::Get => "bw_get",
            Op::Put => "bw_put",
            Op::Prepare => "bw_prepare",
            Op::Commit => "bw_commit",
            Op::Abort => "bw_abort",
            Op::Repair => "bw_repair",
        }
    }
}

/// A client for one replica. Cheap to clone (all clones share one connection).
///
/// The connection is opened on first use and reopened on the next call after any error
/// that may have left it closed, hung or out of sync (everything but an error reply).
/// At most one connect is in flight: callers that queued behind a failed connect get its
/// error instead of each trying again.
#[derive(Clone)]
pub struct ReplicaClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// Name and address.
    spec: ReplicaSpec,
    /// Which command set the replica speaks.
    dialect: Dialect,
    /// Bound on every call, connect included.
    timeout: Duration,
    /// The `redis` client for the address, or why the address (or TLS files) is unusable
    /// (reported by every call rather than panicking at construction). Under TLS it is
    /// rebuilt from the files at every connect; a failed rebuild keeps the last one.
    client: Mutex<Result<redis::Client, String>>,
    /// TLS on this link, if any.
    tls: Option<ReplicaTls>,
    /// Connection settings (timeouts, in-flight bound).
    config: AsyncConnectionConfig,
    /// The current connection. A std mutex: held to clone a handle, never across await.
    slot: Mutex<Slot>,
    /// Serializes connects (one in flight); held across the connect's await.
    connecting: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Slot {
    /// The open connection and its generation (so a late error on an old connection does
    /// not drop a newer one).
    conn: Option<(MultiplexedConnection, u64)>,
    /// Last generation handed out.
    generation: u64,
    /// Connect attempts finished (success or failure).
    attempts: u64,
    /// Error of the last failed connect, for callers that queued behind it.
    last_error: Option<ReplicaError>,
}

impl fmt::Debug for ReplicaClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaClient")
            .field("name", &self.inner.spec.name)
            .field("addr", &self.inner.spec.addr)
            .field("dialect", &self.inner.dialect)
            .field("timeout", &self.inner.timeout)
            .finish()
    }
}

impl ReplicaClient {
    /// A client for `spec` speaking `dialect`; every call (connect included) fails with
    /// [`ReplicaError::Timeout`] after `timeout`. Does not connect yet.
    pub fn new(spec: ReplicaSpec, dialect: Dialect, timeout: Duration) -> Self {
        Self::with_tls(spec, dialect, timeout, None)
    }

    /// Like [`ReplicaClient::new`], over TLS when `tls` is given.
    pub fn with_tls(
        spec: ReplicaSpec,
        dialect: Dialect,
        timeout: Duration,
        tls: Option<ReplicaTls>,
    ) -> Self {
        let client = build_client(&spec, tls.as_ref());
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_concurrency_limit(MAX_IN_FLIGHT);
        ReplicaClient {
            inner: Arc::new(Inner {
                spec,
                dialect,
                timeout,
                client: Mutex::new(client),
                tls,
                config,
                slot: Mutex::new(Slot::default()),
                connecting: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The replica's name.
    pub fn name(&self) -> &str {
        &self.inner.spec.name
    }

    /// The replica's name and address.
    pub fn spec(&self) -> &ReplicaSpec {
        &self.inner.spec
    }

    /// The dialect this client speaks.
    pub fn dialect(&self) -> Dialect {
        self.inner.dialect
    }

    /// `PING` (connecting, and on Redis loading the function library, if needed).
    pub async fn ping(&self) -> Result<(), ReplicaError> {
        let mut cmd = Cmd::with_capacity(1, 4);
        cmd.arg("PING");
        reply::pong(self.exec(&cmd).await?)
    }

    /// The key's committed record and pending writes (`BW.GET`).
    pub async fn get(&self, key: &[u8]) -> Result<ReplicaState, ReplicaError> {
        let cmd = self.command(Op::Get, key, 0, 0);
        reply::get(self.exec(&cmd).await?)
    }

    /// Last-write-wins write of `value` (`None`: tombstone) at `version` (`BW.PUT`).
    pub async fn put(
        &self,
        key: &[u8],
        version: Version,
        value: Option<&[u8]>,
    ) -> Result<PutReply, ReplicaError> {
        self.versioned_write(Op::Put, key, version, value).await
    }

    /// First phase of a two-phase write (`BW.PREPARE`): records a pending write naming
    /// its `coordinator`.
    pub async fn prepare(
        &self,
        key: &[u8],
        version: Version,
        coordinator: &str,
        value: Option<&[u8]>,
    ) -> Result<PrepareReply, ReplicaError> {
        let body = value.unwrap_or_default();
        let mut cmd = self.command(Op::Prepare, key, 4, body.len() + coordinator.len());
        cmd.arg(&version_wire(version)[..])
            .arg(coordinator)
            .arg(tomb_flag(value))
            .arg(body);
        reply::prepare(self.exec(&cmd).await?)
    }

    /// Commits pending `version` (`BW.COMMIT`): `true` if it was pending here, `false` if
    /// it never was or was aborted.
    pub async fn commit(&self, key: &[u8], version: Version) -> Result<bool, ReplicaError> {
        let mut cmd = self.command(Op::Commit, key, 1, 0);
        cmd.arg(&version_wire(version)[..]);
        reply::existed(self.exec(&cmd).await?)
    }

    /// Aborts pending `version` (`BW.ABORT`): `true` if it was removed.
    pub async fn abort(&self, key: &[u8], version: Version) -> Result<bool, ReplicaError> {
        let mut cmd = self.command(Op::Abort, key, 1, 0);
        cmd.arg(&version_wire(version)[..]);
        reply::existed(self.exec(&cmd).await?)
    }

    /// Anti-entropy repair (`BW.REPAIR`): as [`ReplicaClient::put`], but also replaces a
    /// committed record of the same version whose bytes differ (a corrupt copy).
    pub async fn repair(
        &self,
        key: &[u8],
        version: Version,
        value: Option<&[u8]>,
    ) -> Result<PutReply, ReplicaError> {
        self.versioned_write(Op::Repair, key, version, value).await
    }

    /// `BW.PUT` or `BW.REPAIR`: the same arguments and reply.
    async fn versioned_write(
        &self,
        op: Op,
        key: &[u8],
        version: Version,
        value: Option<&[u8]>,
    ) -> Result<PutReply, ReplicaError> {
        let body = value.unwrap_or_default();
        let mut cmd = self.command(op, key, 3, body.len());
        cmd.arg(&version_wire(version)[..])
            .arg(tomb_flag(value))
            .arg(body);
        reply::put(self.exec(&cmd).await?)
    }

    /// The replica's anti-entropy digest of its committed records: one `BW.DIGEST` on a
    /// node; on Redis, `FCALL bw_digest` over `SCAN` chunks until the cursor returns to
    /// 0 (each chunk bounded by the timeout). A write between chunks may or may not be
    /// counted; the next round sees it.
    pub async fn digest(&self) -> Result<Digest, ReplicaError> {
        match self.inner.dialect {
            Dialect::Bulwark => {
                let mut cmd = Cmd::with_capacity(1, 16);
                cmd.arg("BW.DIGEST");
                reply::digest(self.exec(&cmd).await?)
            }
            Dialect::Redis => {
                let mut digest = Digest::default();
                let mut cursor = "0".to_owned();
                loop {
                    let mut cmd = Cmd::with_capacity(5, 64);
                    cmd.arg("FCALL")
                        .arg("bw_digest")
                        .arg(0)
                        .arg(&cursor)
                        .arg(SCAN_CHUNK);
                    let (next, items) = reply::page(self.exec(&cmd).await?)?;
                    reply::digest_chunk(items, &mut digest)?;
                    if next == "0" {
                        return Ok(digest);
                    }
                    cursor = next;
                }
            }
        }
    }

    /// The committed records in `buckets` (each in `0..4096`), as anti-entropy compares
    /// them: `BW.BUCKETS` on a node, a chunked `FCALL bw_buckets` scan on Redis.
    pub async fn bucket_entries(&self, buckets: &[u16]) -> Result<Vec<AeEntry>, ReplicaError> {
        let mut out = Vec::new();
        if buckets.is_empty() {
            return Ok(out);
        }
        match self.inner.dialect {
            Dialect::Bulwark => {
                let mut cmd = Cmd::with_capacity(1 + buckets.len(), 8 * buckets.len() + 16);
                cmd.arg("BW.BUCKETS");
                for b in buckets {
                    cmd.arg(*b);
                }
                reply::ae_entries(self.exec(&cmd).await?, &mut out)?;
                Ok(out)
            }
            Dialect::Redis => {
                let mut cursor = "0".to_owned();
                loop {
                    let mut cmd = Cmd::with_capacity(5 + buckets.len(), 8 * buckets.len() + 64);
                    cmd.arg("FCALL")
                        .arg("bw_buckets")
                        .arg(0)
                        .arg(&cursor)
                        .arg(SCAN_CHUNK);
                    for b in buckets {
                        cmd.arg(*b);
                    }
                    let (next, items) = reply::page(self.exec(&cmd).await?)?;
                    reply::ae_entries(items, &mut out)?;
                    if next == "0" {
                        return Ok(out);
                    }
                    cursor = next;
                }
            }
        }
    }

    /// The command for `op` on `key`, with room for `extra_args` more arguments of about
    /// `extra_bytes` bytes (one allocation for the whole command in the common case).
    fn command(&self, op: Op, key: &[u8], extra_args: usize, extra_bytes: usize) -> Cmd {
        let bytes = key.len() + extra_bytes + 3 * 24;
        match self.inner.dialect {
            Dialect::Bulwark => {
                let mut cmd = Cmd::with_capacity(2 + extra_args, bytes);
                cmd.arg(op.native()).arg(key);
                cmd
            }
            Dialect::Redis => {
                let mut cmd = Cmd::with_capacity(4 + extra_args, bytes);
                cmd.arg("FCALL").arg(op.function()).arg(b"1").arg(key);
                cmd
            }
        }
    }

    /// Sends `cmd`, connecting first if needed; the whole call is bounded by the timeout.
    async fn exec(&self, cmd: &Cmd) -> Result<Value, ReplicaError> {
        let deadline = Instant::now() + self.inner.timeout;
        let (mut conn, generation) = timeout_at(deadline, self.connection())
            .await
            .map_err(|_| ReplicaError::Timeout)??;
        let mut result = send(&mut conn, cmd, deadline).await;
        if self.inner.dialect == Dialect::Redis
            && matches!(&result, Err(ReplicaError::Server(m)) if m.contains("Function not found"))
        {
            // The library vanished under an open connection (FUNCTION FLUSH, or a
            // restart our connection survived): load it again and retry once.
            result = match send(&mut conn, &load_library_cmd(), deadline).await {
                Ok(_) => send(&mut conn, cmd, deadline).await,
                Err(e) => Err(e),
            };
        }
        if let Err(e) = &result
            && !matches!(e, ReplicaError::Server(_))
        {
            self.invalidate(generation);
        }
        result
    }

    /// The open connection, or a new one (one connect in flight; see the type's docs).
    async fn connection(&self) -> Result<(MultiplexedConnection, u64), ReplicaError> {
        let attempts_seen = {
            let slot = self.slot();
            if let Some((conn, generation)) = &slot.conn {
                return Ok((conn.clone(), *generation));
            }
            slot.attempts
        };
        let _connecting = self.inner.connecting.lock().await;
        {
            let slot = self.slot();
            if let Some((conn, generation)) = &slot.conn {
                return Ok((conn.clone(), *generation));
            }
            if slot.attempts != attempts_seen
                && let Some(e) = &slot.last_error
            {
                return Err(e.clone()); // a connect failed while we waited: no stampede
            }
        }
        let result = self.open().await;
        let mut slot = self.slot();
        slot.attempts += 1;
        match result {
            Ok(conn) => {
                slot.generation += 1;
                let generation = slot.generation;
                slot.conn = Some((conn.clone(), generation));
                slot.last_error = None;
                Ok((conn, generation))
            }
            Err(e) => {
                slot.last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Connects; on Redis, (re)loads the function library on the new connection. Any
    /// failure but a timeout is [`ReplicaError::Unreachable`]: no request was sent yet.
    async fn open(&self) -> Result<MultiplexedConnection, ReplicaError> {
        self.open_inner().await.map_err(|e| match e {
            ReplicaError::Timeout | ReplicaError::Unreachable(_) => e,
            other => ReplicaError::Unreachable(other.to_string()),
        })
    }

    async fn open_inner(&self) -> Result<MultiplexedConnection, ReplicaError> {
        let client = {
            let mut current = self.inner.client.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(tls) = &self.inner.tls
                && let Ok(fresh) = build_client(&self.inner.spec, Some(tls))
            {
                *current = Ok(fresh);
            }
            current.clone().map_err(ReplicaError::Connect)?
        };
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&self.inner.config)
            .await
            .map_err(|e| from_redis(&e))?;
        if self.inner.dialect == Dialect::Redis {
            let deadline = Instant::now() + self.inner.timeout;
            match send(&mut conn, &load_library_cmd(), deadline).await? {
                Value::BulkString(name) if name == b"bulwark" => {}
                other => {
                    return Err(ReplicaError::Protocol(format!(
                        "FUNCTION LOAD answered {:.80}",
                        format!("{other:?}")
                    )));
                }
            }
        }
        Ok(conn)
    }

    /// Drops connection `generation` if it is still the current one.
    fn invalidate(&self, generation: u64) {
        let mut slot = self.slot();
        if slot.conn.as_ref().is_some_and(|(_, g)| *g == generation) {
            slot.conn = None;
        }
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.inner.slot.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One request/reply on `conn`, bounded by `deadline`; error replies become
/// [`ReplicaError::Server`].
async fn send(
    conn: &mut MultiplexedConnection,
    cmd: &Cmd,
    deadline: Instant,
) -> Result<Value, ReplicaError> {
    match timeout_at(deadline, conn.send_packed_command(cmd)).await {
        Err(_) => Err(ReplicaError::Timeout),
        Ok(Err(e)) => Err(from_redis(&e)),
        Ok(Ok(Value::ServerError(e))) => Err(ReplicaError::Server(match e.details() {
            Some(d) => format!("{} {d}", e.code()),
            None => e.code().to_owned(),
        })),
        Ok(Ok(v)) => Ok(v),
    }
}

fn load_library_cmd() -> Cmd {
    let mut cmd = Cmd::with_capacity(4, LUA_LIBRARY.len() + 32);
    cmd.arg("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(LUA_LIBRARY);
    cmd
}

fn tomb_flag(value: Option<&[u8]>) -> &'static [u8] {
    if value.is_some() { b"0" } else { b"1" }
}

/// The `redis` client for `spec`, over TLS with `tls`'s files when given.
fn build_client(spec: &ReplicaSpec, tls: Option<&ReplicaTls>) -> Result<redis::Client, String> {
    let (host, port) = spec.host_port().map_err(|e| e.to_string())?;
    redis_client(host, port, tls)
}

/// A `redis` client for `host:port` (no delay, no `CLIENT SETINFO`), over TLS with
/// `tls`'s files (read now) when given: what every Bulwark RESP client connects with.
pub fn redis_client(
    host: &str,
    port: u16,
    tls: Option<&ReplicaTls>,
) -> Result<redis::Client, String> {
    let addr = match tls {
        None => ConnectionAddr::Tcp(host.to_owned(), port),
        Some(_) => ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: false,
            tls_params: None,
        },
    };
    let info = addr
        .into_connection_info()
        .map_err(|e| e.to_string())?
        // Latency matters more than packet count: no Nagle delay.
        .set_tcp_settings(TcpSettings::default().set_nodelay(true))
        // No CLIENT SETINFO round trip: a bulwark node does not need it.
        .set_redis_settings(RedisConnectionInfo::default().set_skip_set_lib_name());
    let Some(tls) = tls else {
        return redis::Client::open(info).map_err(|e| e.to_string());
    };
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let client_tls = match &tls.identity {
        None => None,
        Some((cert, key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
    };
    let certificates = redis::TlsCertificates {
        client_tls,
        root_cert: Some(read(&tls.ca)?),
    };
    redis::Client::build_with_tls(info, certificates)
        .map_err(|e| format!("TLS to {host}:{port}: {e}"))
}
