//! `bulwark chaos proxy`: a TCP fault proxy driven by a Toxiproxy-compatible HTTP API.
//!
//! Clients connect to a proxy's `listen` address; the proxy connects to its `upstream` and
//! passes bytes both ways through the *toxics* added to it: `latency`, `bandwidth`,
//! `slow_close`, `timeout`, `reset_peer`, `slicer`, `limit_data` with Toxiproxy's names,
//! attributes, `stream` and `toxicity`, plus two Bulwark extensions, `down` (a partition
//! of the whole proxy) and `http_fault` (abort, delay or fail the first N HTTP requests by
//! method and path). Existing Toxiproxy clients drive it unchanged.
//!
//! The code, from the outside in:
//!
//! * [`api`]: the HTTP API (routes, bodies, Toxiproxy's error shape);
//! * [`collection`]: the proxies and every change to them, each all or nothing;
//! * [`proxy`]: one enabled proxy: listener, accept loop, its connections;
//! * [`connection`]: one connection as one task owning both sockets;
//! * [`link`]: one direction of a connection: HTTP tracker, toxic stages, output;
//! * [`stage`]: one toxic's effect on a byte stream, as a state machine without I/O;
//! * [`http`]: HTTP/1.1 request and response framing for `http_fault`;
//! * [`toxic`]: toxic types, attributes and their validation.
//!
//! The design, its invariants and why the core is ours rather than the `noxious` crate's
//! are in `docs/ARCHITECTURE.md` ("Fault proxy").

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use bulwark_config::ConfigError;
use bulwark_obs::events::{Emit, ServiceStarted, ShutdownEvent};

mod api;
mod collection;
mod connection;
mod error;
mod http;
mod link;
mod proxy;
mod stage;
mod toxic;

/// Flags and environment of `bulwark chaos proxy`.
#[derive(clap::Args, Debug, Clone)]
pub struct ProxyArgs {
    /// Address of the Toxiproxy-compatible HTTP API.
    #[arg(long, env = "CHAOS_PROXY_LISTEN", default_value = "127.0.0.1:8474")]
    pub listen: String,
    /// JSON file of proxies to create before serving, in Toxiproxy's format:
    /// `[{"name": …, "listen": …, "upstream": …, "enabled": true}]`.
    #[arg(long, env = "CHAOS_PROXY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Seed of the proxy's randomness (toxicity, jitter, slicing), for repeatable runs
    /// [default: a random seed, logged at start].
    #[arg(long, env = "CHAOS_PROXY_SEED")]
    pub seed: Option<u64>,
    /// Most connections open at once through one proxy; more are closed on arrival.
    #[arg(long, env = "CHAOS_PROXY_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
}

impl ProxyArgs {
    /// Defaults as the command line gives them, listening on `listen` (tests and other
    /// crates that start a fault proxy in-process).
    pub fn new(listen: &str) -> ProxyArgs {
        ProxyArgs {
            listen: listen.to_string(),
            config: None,
            seed: None,
            max_connections: 4096,
        }
    }
}

/// Binds `--listen` and serves the API until `shutdown` resolves (with the reason, e.g.
/// `"SIGTERM"`); then closes every proxy and connection.
pub async fn run(
    args: ProxyArgs,
    shutdown: impl Future<Output = String> + Send + 'static,
) -> anyhow::Result<()> {
    let log_level = bulwark_config::Settings::load(None)?.log_level()?;
    bulwark_obs::logging::init(log_level.directive());
    if args
        .listen
        .rsplit_once(':')
        .is_none_or(|(_, p)| p.parse::<u16>().is_err())
    {
        return Err(
            ConfigError::invalid("CHAOS_PROXY_LISTEN", &args.listen, "expected host:port").into(),
        );
    }
    if args.max_connections == 0 {
        return Err(ConfigError::invalid(
            "CHAOS_PROXY_MAX_CONNECTIONS",
            "0",
            "expected at least 1",
        )
        .into());
    }
    let http = http_config(&args.listen)?;
    let listener = tokio::net::TcpListener::bind(args.listen.as_str())
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    serve_with(listener, args, http, shutdown).await
}

/// The API's listener and security from the settings every HTTP service shares
/// (`API_KEYS_FILE`, `TLS_*`, …) and `--listen`. Toxiproxy's clients send no
/// credentials, so protected mode is the expected set-up: loopback only; any other
/// address needs credentials and TLS.
fn http_config(listen: &str) -> Result<bulwark_http::HttpConfig, ConfigError> {
    let (host, port) = listen
        .rsplit_once(':')
        .ok_or_else(|| ConfigError::invalid("CHAOS_PROXY_LISTEN", listen, "expected host:port"))?;
    let mut settings = bulwark_config::Settings::load(None)?;
    settings.set(
        "CHAOS_PROXY_LISTEN",
        host.trim_start_matches('[').trim_end_matches(']'),
    );
    settings.set("CHAOS_PROXY_PORT", port);
    bulwark_http::HttpConfig::from_settings(
        &settings,
        bulwark_http::Listen {
            bind: "CHAOS_PROXY_LISTEN",
            port: "CHAOS_PROXY_PORT",
            default_port: 8474,
        },
    )
}

/// Like [`run`], on a listener the caller already bound (tests bind port 0 first), in
/// protected mode (loopback, no credentials). `args.listen` is ignored.
pub async fn serve(
    listener: tokio::net::TcpListener,
    args: ProxyArgs,
    shutdown: impl Future<Output = String> + Send + 'static,
) -> anyhow::Result<()> {
    let http = http_config("127.0.0.1:0")?;
    serve_with(listener, args, http, shutdown).await
}

async fn serve_with(
    listener: tokio::net::TcpListener,
    args: ProxyArgs,
    http: bulwark_http::HttpConfig,
    shutdown: impl Future<Output = String> + Send + 'static,
) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let proxies = Arc::new(collection::Proxies::new(collection::Limits {
        seed,
        max_connections: args.max_connections.max(1),
    }));
    if let Some(path) = &args.config {
        populate_from_file(&proxies, path).await?;
    }
    let addr = listener.local_addr()?;
    ServiceStarted {
        service: "chaos_proxy",
        addr: &bulwark_http::describe(addr, &http.serve),
        detail: &format!("toxiproxy-compatible API, seed {seed}, {}", http.describe()),
    }
    .emit();
    let (app, security) =
        http.stack("chaos_proxy", api::observed(), api::router(proxies.clone()))?;
    let (reason_tx, reason_rx) = tokio::sync::oneshot::channel::<String>();
    let graceful = async move {
        let reason = shutdown.await;
        let _ = reason_tx.send(reason);
    };
    bulwark_http::serve(listener, app, http.serve.clone(), graceful).await;
    security.close().await;
    let reason = reason_rx.await.unwrap_or_default();
    let open = proxies.connections().await;
    ShutdownEvent {
        service: "chaos_proxy",
        signal: &reason,
        phase: "started",
        in_flight: open,
    }
    .emit();
    proxies.shutdown().await;
    bulwark_http::shutdown_completed("chaos_proxy", &reason);
    Ok(())
}

/// Creates the proxies of a `--config` file; any problem stops the program before it
/// serves, naming the file (exit code 2).
async fn populate_from_file(
    proxies: &collection::Proxies,
    path: &std::path::Path,
) -> Result<(), ConfigError> {
    let file_err = |reason: String| ConfigError::File {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read(path).map_err(|e| file_err(e.to_string()))?;
    let input = collection::parse(&text).map_err(|e| file_err(e.message))?;
    proxies
        .populate(input)
        .await
        .map_err(|e| file_err(e.message))?;
    Ok(())
}
