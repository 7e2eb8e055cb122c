//! `bulwark node`: a storage replica speaking RESP2 (mini-redis style).
//!
//! Bytes → [`bulwark_resp`] frames → a command under [`cmd`] → [`bulwark_storage::Store`]
//! is a straight line:
//!
//! * [`server`]: binds, accepts (at most `--max-clients` at once), shuts down gracefully;
//! * [`connection`]: one task per client; reads a batch of pipelined commands, runs them,
//!   acknowledges their writes once (one fsync for the batch under `always`), writes all
//!   replies in one go;
//! * [`cmd`]: one file per command family: plain keys, server/admin, `CLIENT`, and the
//!   versioned replica protocol `BW.*` (see `docs/ARCHITECTURE.md`).
//!
//! Shutdown is an input: [`run`] and [`serve`] take a future that resolves to the reason
//! (`"SIGTERM"`), so tests can drive it.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::future::Future;
use std::path::PathBuf;

use bulwark_storage::Appendfsync;

pub mod cmd;
pub mod connection;
pub mod fence;
pub mod server;

/// Flags and environment of `bulwark node`.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    /// Replica name: the coordinator name other replicas store, and the log's `service`.
    #[arg(long, env = "NODE_NAME", default_value = "db_g1")]
    pub name: String,
    /// Address to listen on.
    #[arg(long, env = "NODE_BIND", default_value = "127.0.0.1")]
    pub bind: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "NODE_PORT", default_value_t = 6401)]
    pub port: u16,
    /// Data directory [default: ./data/<name>].
    #[arg(long, env = "DATA_DIR")]
    pub dir: Option<PathBuf>,
    /// When writes are fsynced: always, everysec or no (as Redis's appendfsync).
    /// BW.PREPARE/COMMIT/ABORT are fsynced before replying whatever this says.
    #[arg(long, env = "APPENDFSYNC", default_value = "everysec")]
    pub appendfsync: Appendfsync,
    /// Most simultaneous client connections; more are refused with an error.
    #[arg(long, env = "MAX_CLIENTS", default_value_t = 10_000)]
    pub max_clients: usize,
    /// Largest request (one command with its arguments), in bytes.
    #[arg(long, env = "MAX_REQUEST_BYTES", default_value_t = 8 << 20)]
    pub max_request_bytes: usize,
    /// Writer id stamped into versions of plain SET/DEL [default: derived from the name].
    #[arg(long, env = "WRITER_ID")]
    pub writer_id: Option<u32>,
    /// Refuse writes that add data (`-OOM`) once the in-memory data set is over this many
    /// bytes (estimated, `INFO memory`); 0: no limit, as in Redis. Commits, aborts and
    /// deletions are always accepted.
    #[arg(long, env = "MAXMEMORY", default_value_t = 0)]
    pub maxmemory: u64,
    /// Accept `BW.DEBUG CORRUPT|DROP` (data faults for chaos experiments), as Redis's
    /// `enable-debug-command`; refused otherwise. `bulwark up` enables it on its replicas.
    #[arg(long, env = "ENABLE_DEBUG_COMMAND")]
    pub enable_debug_command: bool,
    /// Serve RESP over TLS with this certificate chain (PEM), as Redis's `tls-cert-file`;
    /// the port then speaks TLS only. Reloaded when the file changes or on SIGHUP.
    #[arg(long, env = "TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// The private key of `--tls-cert-file` (PEM).
    #[arg(long, env = "TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// Require clients to present a certificate signed by this CA (PEM): mutual TLS, the
    /// node's authentication (as Redis's `tls-ca-cert-file` with `tls-auth-clients yes`).
    #[arg(long, env = "TLS_CLIENT_CA_FILE", requires = "tls_cert_file")]
    pub tls_ca_cert_file: Option<PathBuf>,
}

impl NodeArgs {
    /// Defaults as the command line would give them, for a node called `name`
    /// (for tests and other crates that start a node in-process).
    pub fn new(name: &str) -> Self {
        NodeArgs {
            name: name.to_owned(),
            bind: "127.0.0.1".to_owned(),
            port: 6401,
            dir: None,
            appendfsync: Appendfsync::Everysec,
            max_clients: 10_000,
            max_request_bytes: 8 << 20,
            writer_id: None,
            maxmemory: 0,
            enable_debug_command: false,
            tls_cert_file: None,
            tls_key_file: None,
            tls_ca_cert_file: None,
        }
    }

    /// The TLS files, when `--tls-cert-file` is set.
    pub fn tls_files(&self) -> Option<bulwark_tls::TlsFiles> {
        Some(bulwark_tls::TlsFiles {
            cert: self.tls_cert_file.clone()?,
            key: self.tls_key_file.clone()?,
            client_ca: self.tls_ca_cert_file.clone(),
        })
    }

    /// The node's TLS acceptor, or `None` for plain RESP; and protected mode, as Redis
    /// has it: a node has no passwords, so a non-loopback `--bind` needs mutual TLS
    /// (`--tls-cert-file`, `--tls-key-file` and `--tls-ca-cert-file`). An error names the
    /// setting or file.
    pub fn server_tls(&self) -> anyhow::Result<Option<bulwark_tls::ServerTls>> {
        let loopback = self.bind == "localhost"
            || self
                .bind
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        let files = self.tls_files();
        if !loopback && files.as_ref().is_none_or(|f| f.client_ca.is_none()) {
            anyhow::bail!(
                "invalid NODE_BIND (--bind) {:?}: protected mode: a node bound beyond loopback needs mutual TLS (set --tls-cert-file, --tls-key-file and --tls-ca-cert-file)",
                self.bind
            );
        }
        match files {
            None => Ok(None),
            Some(f) => Ok(Some(bulwark_tls::ServerTls::load(&f, &[])?)),
        }
    }

    /// The data directory: `--dir`, or `./data/<name>`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("data").join(&self.name))
    }

    /// The writer id: `--writer-id`, or a hash of the name (FNV-1a, 32 bits), so that
    /// nodes with different names get different ids without configuration.
    pub fn writer_id(&self) -> u32 {
        self.writer_id.unwrap_or_else(|| {
            let mut h: u32 = 0x811c_9dc5;
            for &b in self.name.as_bytes() {
                h ^= u32::from(b);
                h = h.wrapping_mul(0x0100_0193);
            }
            h
        })
    }
}

/// Binds `--bind:--port` and serves until `shutdown` resolves (with the reason, e.g.
/// `"SIGTERM"`), then drains connections, flushes storage and returns.
pub async fn run(
    args: NodeArgs,
    shutdown: impl Future<Output = String> + Send + 'static,
) -> anyhow::Result<()> {
    let log_level = bulwark_config::Settings::load(None)?.log_level()?;
    bulwark_obs::logging::init(log_level.directive());
    // Refused before the port is bound.
    let tls = args.server_tls()?;
    let listener = tokio::net::TcpListener::bind((args.bind.as_str(), args.port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", args.bind, args.port))?;
    server::serve(listener, args, tls, shutdown).await
}

/// Like [`run`], on a listener the caller already bound (tests bind port 0 and read the
/// address from the listener first). `args.bind`/`args.port` are ignored.
pub async fn serve(
    listener: tokio::net::TcpListener,
    args: NodeArgs,
    shutdown: impl Future<Output = String> + Send + 'static,
) -> anyhow::Result<()> {
    let tls = args.server_tls()?;
    server::serve(listener, args, tls, shutdown).await
}
