//! `bulwark gateway`: the CAP service (SPEC CAP-1 … CAP-12).
//!
//! An HTTP key-value gateway over N replicas (`bulwark node`s or real Redis servers).
//! Each request runs in a consistency [`mode::Mode`] (the gateway's, or the one the request
//! asks for): AP writes succeed on one acknowledgement and hand off the rest; CP and quorum
//! writes use two-phase commit decided at a coordinator replica, so a 503 `CP_ABORTED`
//! always means "not applied" (see `docs/ARCHITECTURE.md`).
//!
//! Code map: [`config`] (settings), [`engine`] (the protocol), [`replicas`] (clients +
//! breakers), [`hints`] (hinted handoff), [`anti_entropy`] (HARD-6: background repair of
//! every divergence), [`staleness`] (CAP-6), [`session`] (CAP-7), [`http`] (the HTTP
//! surface, the only module that knows HTTP).

#![forbid(unsafe_code)]

pub mod anti_entropy;
pub mod config;
pub mod engine;
pub mod hints;
pub mod http;
pub mod mode;
pub mod replicas;
pub mod routing;
pub mod session;
pub mod staleness;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bulwark_config::Settings;
use bulwark_obs::events::{Emit, ServiceStarted};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::GatewayConfig;
use crate::engine::Engine;
use crate::http::AppState;
use crate::session::SessionCodec;

/// Command-line flags of `bulwark gateway`. Each overrides the setting of the same name
/// (environment, `.env`, config file); see `.env.example` for all settings.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct GatewayArgs {
    /// Consistency mode: ap, cp or quorum (setting MODE).
    #[arg(long)]
    pub mode: Option<String>,
    /// Port to listen on (setting PORT; default 5001/5002/5003 by mode).
    #[arg(long)]
    pub port: Option<String>,
    /// Address to bind (setting BIND; default 127.0.0.1).
    #[arg(long)]
    pub bind: Option<String>,
    /// Service name in logs (setting GATEWAY_NAME; default app_<mode>).
    #[arg(long)]
    pub name: Option<String>,
    /// Replicas as name=host:port,… in preference order (setting REPLICAS).
    #[arg(long)]
    pub replicas: Option<String>,
    /// Replica kind: bulwark or redis (setting BACKEND).
    #[arg(long)]
    pub backend: Option<String>,
    /// Replicas per key, N (setting REPLICATION_FACTOR; default 3, or every replica when
    /// there are fewer).
    #[arg(long)]
    pub replication_factor: Option<String>,
    /// A TOML config file with the same settings (setting BULWARK_CONFIG).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl GatewayArgs {
    /// The merged settings: flags over environment over `.env` over the config file.
    pub fn settings(&self) -> Result<Settings, bulwark_config::ConfigError> {
        let flags = [
            ("MODE", &self.mode),
            ("PORT", &self.port),
            ("BIND", &self.bind),
            ("GATEWAY_NAME", &self.name),
            ("REPLICAS", &self.replicas),
            ("BACKEND", &self.backend),
            ("REPLICATION_FACTOR", &self.replication_factor),
        ];
        Settings::for_command_line(self.config.as_deref(), &flags)
    }
}

/// Validates the configuration (an error names the setting; nothing has started), sets
/// up logging, binds and serves until `shutdown` resolves.
pub async fn run(
    args: GatewayArgs,
    shutdown: impl Future<Output = String> + Send + 'static,
) -> anyhow::Result<()> {
    let settings = args.settings()?;
    let log_level = settings.log_level()?;
    let config = GatewayConfig::from_settings(&settings)?;
    bulwark_obs::logging::init(log_level.directive());
    let http = &config.http;
    let listener = TcpListener::bind((http.bind.as_str(), http.port))
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}:{} (setting PORT)",
                http.bind, http.port
            )
        })?;
    serve(listener, config, shutdown).await
}

/// The gateway's state and its whole HTTP application (the shared stack around the
/// routes), as `serve` runs it; the fuzz target (`fuzz/`) drives the same one.
pub fn app(
    config: GatewayConfig,
) -> Result<
    (
        Arc<AppState>,
        axum::Router,
        bulwark_http::security::Security,
    ),
    bulwark_config::ConfigError,
> {
    let state = Arc::new(AppState {
        sessions: SessionCodec::new(&config.secret_key),
        admission: bulwark_http::admission::Admission::new(config.max_in_flight),
        engine: Engine::new(config)?,
    });
    let config = &state.engine.config;
    let (app, security) = config.http.stack(
        &config.name,
        http::observed(config.mode),
        http::router(state.clone()),
    )?;
    Ok((state, app, security))
}

/// Serves on an already-bound listener until `shutdown` resolves, then drains in-flight
/// requests (bounded by `SHUTDOWN_TIMEOUT_SEC`), delivers queued hints, logs
/// `SHUTDOWN_EVENT` and returns.
pub async fn serve(
    listener: TcpListener,
    config: GatewayConfig,
    shutdown: impl Future<Output = String> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    if config.secret_is_default {
        tracing::warn!(
            event = "INSECURE_DEFAULT",
            setting = "SECRET_KEY",
            message = "SECRET_KEY is unset or the example value: session cookies can be forged; set a random one (openssl rand -hex 32) and ENVIRONMENT=production outside development",
        );
    }
    let (state, app, security) = app(config)?;
    let config = &state.engine.config;
    let detail = format!(
        "mode={} backend={:?} replicas={} replication_factor={} layout_version={} timeout_ms={} max_staleness_ms={} {}",
        config.mode,
        config.backend,
        config
            .replicas
            .iter()
            .map(|r| format!("{}={}", r.name, r.addr))
            .collect::<Vec<_>>()
            .join(","),
        config.placement.replication_factor,
        config.layout_version,
        config.network_timeout.as_millis(),
        config.max_staleness_ms,
        config.http.describe(),
    );
    ServiceStarted {
        service: &config.name,
        addr: &bulwark_http::describe(addr, &config.http.serve),
        detail: &detail,
    }
    .emit();

    let (stop_tx, stop_rx) = watch::channel(false);
    let background = tokio::spawn(background(state.clone(), stop_rx.clone()));
    let deadline = config.shutdown_timeout;
    let reason = bulwark_http::serve_until_shutdown(
        &config.name,
        listener,
        app,
        config.http.serve.clone(),
        deadline,
        shutdown,
    )
    .await;
    let _ = stop_tx.send(true);
    let _ = background.await;
    let left = state
        .engine
        .flush_hints(deadline.min(Duration::from_secs(5)))
        .await;
    if left > 0 {
        tracing::warn!(event = "HINTS_UNDELIVERED", hints = left);
    }
    security.close().await;
    bulwark_http::shutdown_completed(&config.name, &reason);
    Ok(())
}

/// Background work until stopped: replica health probes (which also close breakers when
/// a replica comes back), hinted handoff, and anti-entropy rounds (a round in progress is
/// abandoned at shutdown; it is idempotent and the next start runs another).
async fn background(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    let engine = &state.engine;
    let mut probe = tokio::time::interval(engine.config.health_interval);
    let mut handoff = tokio::time::interval(Duration::from_millis(200));
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    handoff.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ae_interval = engine.config.anti_entropy.interval;
    let mut next_round = ae_interval.map(|i| tokio::time::Instant::now() + jittered(i));
    loop {
        let round_due = async {
            match next_round {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.changed() => return,
            _ = probe.tick() => engine.probe().await,
            _ = handoff.tick() => {
                if engine.hints.total() > 0 {
                    engine.handoff_round().await;
                }
                engine.hints.publish_lag(engine.hlc.now_ms());
            }
            () = round_due => {
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = engine.anti_entropy_round() => {}
                }
                next_round = ae_interval.map(|i| tokio::time::Instant::now() + jittered(i));
            }
        }
    }
}

/// `interval` ± 20 %, so gateways started together do not scan the replicas in step.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.8 + 0.4 * rand::random::<f64>())
}
