//! `bulwark up`: check, lock, start in dependency order, serve the control API, and stop
//! everything in reverse order when asked.

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::unistd::Pid;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use bulwark_chaos::{Controller, ControllerConfig};

use crate::args::{Backend, UpArgs};
use crate::chaos::SupervisedProcesses;
use crate::control;
use crate::logs;
use crate::supervisor::Supervisor;
use crate::topology::{ServiceKind, Topology};

/// Name of the lock file in the data directory; holds the pid of the `up` using it.
pub const LOCK_FILE: &str = "bulwark-up.pid";
/// How long the control API may take to finish in-flight requests at shutdown.
const API_DRAIN: Duration = Duration::from_secs(2);
/// Log lines shown for a service that failed to become healthy.
const FAILURE_LOG_LINES: usize = 10;

/// Why `up` could not start.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// A port the cluster needs is taken.
    #[error("port {port} ({service}) is already in use")]
    PortInUse {
        /// The port.
        port: u16,
        /// The service that needs it (`control API` for the control port).
        service: String,
    },
    /// Another `bulwark up` uses the data directory.
    #[error("another bulwark up (pid {pid}) is already running with data dir {}", dir.display())]
    Locked {
        /// Its pid, from the lock file.
        pid: i32,
        /// The data directory.
        dir: PathBuf,
    },
    /// `--backend redis` without a usable `redis-server`.
    #[error("{0}")]
    Redis(String),
    /// Flags that contradict each other.
    #[error("{0}")]
    Args(String),
    /// The layout file cannot be read, parsed or kept.
    #[error("{}: {what}", path.display())]
    Layout {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Some services did not become healthy in time (their logs were printed).
    #[error("not healthy within {timeout:?}: {}", services.join(", "))]
    Unhealthy {
        /// The services that did not become healthy.
        services: Vec<String>,
        /// The start-up timeout.
        timeout: Duration,
    },
    /// The fault proxy refused to create the links' proxies.
    #[error("chaos_proxy: {0}")]
    Proxy(String),
    /// A setting of the control API (credentials, TLS, audit log) is unusable.
    #[error("{0}")]
    Config(String),
    /// The chaos controller could not open its journal.
    #[error("chaos controller: {0}")]
    Chaos(#[from] bulwark_chaos::ChaosError),
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> UpError {
    move |source| UpError::Io {
        what: what.into(),
        source,
    }
}

/// Runs `bulwark up` until `shutdown` resolves (its output, e.g. `SIGINT`, is printed as the
/// reason), then stops everything and returns.
pub async fn run_up(
    args: UpArgs,
    shutdown: impl Future<Output = String> + Send + 'static,
) -> anyhow::Result<()> {
    if let Some(n) = args.replication_factor
        && n > args.replicas
    {
        return Err(UpError::Args(format!(
            "--replication-factor {n} needs at least {n} replicas; --replicas is {}",
            args.replicas
        ))
        .into());
    }
    if args.backend == Backend::Redis {
        check_redis().await?;
    }
    let exe = std::env::current_exe().map_err(io_err("cannot locate the bulwark executable"))?;
    let mut topology = Topology::from_up_args(&args, &exe);
    topology.layout = crate::sharding::settle(&args.data_dir, topology.layout.target().clone())?;
    if args.auth {
        std::fs::create_dir_all(&args.data_dir)
            .map_err(io_err(format!("cannot create {}", args.data_dir.display())))?;
        let admin = crate::secure::ensure_keys(&args.data_dir)?;
        topology.identity = crate::secure::identity(Some(admin));
    }
    crate::secure::ensure_tls(&mut topology)?;
    let level = bulwark_config::Settings::load(None)?.log_level()?;
    init_own_log(&topology, level)?;
    run(topology, shutdown).await?;
    Ok(())
}

/// Name of `up`'s own log (the chaos controller's `CHAOS_FAULT`/`CHAOS_EXPERIMENT` events
/// and whatever else the supervisor process itself logs), next to the services' logs:
/// `bulwark ctl logs up`.
pub const OWN_LOG: &str = "up";

/// Sends this process's JSON log lines (at `LOG_LEVEL`) to `<data>/logs/up.log` and, unless
/// `--quiet`, to the merged terminal stream as `up | …`.
fn init_own_log(topology: &Topology, level: bulwark_config::LogLevel) -> Result<(), UpError> {
    let dir = topology.log_dir();
    std::fs::create_dir_all(&dir).map_err(io_err(format!("cannot create {}", dir.display())))?;
    let path = logs::log_path(&dir, OWN_LOG);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io_err(format!("cannot open {}", path.display())))?;
    let width = topology
        .services
        .iter()
        .map(|s| s.name.len())
        .chain([OWN_LOG.len()])
        .max()
        .unwrap_or(0);
    let echo = topology
        .echo_logs
        .then(|| logs::Echo::new(OWN_LOG, topology.services.len(), width));
    bulwark_obs::logging::init_with_writer(level.directive(), logs::OwnLog::new(file, echo));
    Ok(())
}

/// Runs a cluster for `topology` until `shutdown` resolves. This is `up` without the
/// Bulwark-specific topology: tests call it with fake services.
pub async fn run(
    topology: Topology,
    shutdown: impl Future<Output = String> + Send + 'static,
) -> Result<(), UpError> {
    let cluster = Cluster::prepare(&topology).await?;
    let mut shutdown = std::pin::pin!(shutdown);
    let started = tokio::select! {
        r = cluster.start() => r,
        reason = &mut shutdown => {
            println!("bulwark up: {reason} during start-up, stopping");
            cluster.shutdown().await;
            return Ok(());
        }
    };
    if let Err(e) = started {
        cluster.shutdown().await;
        return Err(e);
    }
    println!("{}", endpoints_table(&topology, &cluster.control_url()));
    let reason = shutdown.await;
    println!("bulwark up: {reason} received, stopping services and gateways, then replicas");
    cluster.shutdown().await;
    println!("bulwark up: all services stopped");
    Ok(())
}

/// A cluster whose checks passed: data directory locked, control API serving, supervisor
/// ready (nothing started until [`Cluster::start`]).
#[derive(Debug)]
pub struct Cluster {
    supervisor: Arc<Supervisor>,
    chaos: Controller,
    control_addr: SocketAddr,
    control_url: String,
    server: JoinHandle<()>,
    stop_server: CancellationToken,
    topology: Topology,
    _lock: LockFile,
}

impl Cluster {
    /// Locks the data directory, checks every port is free, creates the log directory and
    /// starts the control API. Fails with one clear error before anything is started.
    pub async fn prepare(topology: &Topology) -> Result<Cluster, UpError> {
        let data_dir = &topology.data_dir;
        std::fs::create_dir_all(data_dir)
            .map_err(io_err(format!("cannot create {}", data_dir.display())))?;
        let lock = LockFile::acquire(data_dir)?;
        // Before anything else: undo the faults a dead controller left in the journal
        // (a process it paused may still be around; a burner's fill file still is).
        let supervisor = Arc::new(Supervisor::new(topology));
        let (chaos, recovered) = Controller::open(
            ControllerConfig {
                dir: topology.chaos_dir(),
                enabled: topology.chaos,
                cluster: crate::chaos::cluster_map(topology),
                gateway_token: topology.chaos_token.clone(),
                burner: std::env::current_exe().ok(),
                identity: topology.identity.clone(),
            },
            Arc::new(SupervisedProcesses(supervisor.clone())),
        )
        .await?;
        for r in recovered.iter().filter(|r| r.undone) {
            println!(
                "bulwark up: chaos: removed {} on {} ({}) left by a previous controller",
                r.fault.kind, r.fault.target, r.fault.id
            );
        }
        // The control port is bound for real (and kept), the others only tried.
        let listener = tokio::net::TcpListener::bind(topology.control)
            .await
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    UpError::PortInUse {
                        port: topology.control.port(),
                        service: "control API".to_owned(),
                    }
                } else {
                    UpError::Io {
                        what: format!("cannot listen on {}", topology.control),
                        source: e,
                    }
                }
            })?;
        check_ports(topology)?;
        let log_dir = topology.log_dir();
        std::fs::create_dir_all(&log_dir)
            .map_err(io_err(format!("cannot create {}", log_dir.display())))?;
        // Each replica keeps its data in <data-dir>/<name>; redis-server refuses to start
        // when its --dir does not exist, so create them all up front.
        for s in topology
            .services
            .iter()
            .filter(|s| s.kind == ServiceKind::Replica)
        {
            let dir = data_dir.join(&s.name);
            std::fs::create_dir_all(&dir)
                .map_err(io_err(format!("cannot create {}", dir.display())))?;
        }
        let control_addr = listener
            .local_addr()
            .map_err(io_err("control API address"))?;
        let stop_server = CancellationToken::new();
        let http = control_http(topology, control_addr)?;
        let admission = Arc::new(bulwark_http::admission::Admission::new(
            control::MAX_IN_FLIGHT,
        ));
        let sharding = crate::sharding::Sharding::new(topology.layout.clone())
            .map_err(|e| UpError::Config(e.to_string()))?;
        let routes = control::router(supervisor.clone())
            .merge(crate::sharding::router(Arc::new(sharding)))
            .merge(bulwark_chaos::api::router(
                chaos.clone(),
                &control_url(control_addr, &http),
                topology.identity.clone(),
            ))
            .layer(axum::middleware::from_fn(move |req, next| {
                let admission = admission.clone();
                async move {
                    bulwark_http::admission::admit(
                        &admission,
                        bulwark_chaos::api::MAX_BODY,
                        req,
                        next,
                    )
                    .await
                }
            }));
        let (app, security) = http
            .stack(OWN_LOG, control::observed(), routes)
            .map_err(|e| UpError::Config(e.to_string()))?;
        // `bulwark ctl` and `bulwark chaos` find the API (and its scheme) here.
        let url_file = data_dir.join(bulwark_http::client::CONTROL_URL_FILE);
        std::fs::write(&url_file, format!("{}\n", control_url(control_addr, &http)))
            .map_err(io_err(format!("cannot write {}", url_file.display())))?;
        let stop = stop_server.clone();
        let serve_options = http.serve.clone();
        let server = tokio::spawn(async move {
            bulwark_http::serve(listener, app, serve_options, async move {
                stop.cancelled().await;
            })
            .await;
            security.close().await;
        });
        Ok(Cluster {
            supervisor,
            chaos,
            control_addr,
            control_url: control_url(control_addr, &http),
            server,
            stop_server,
            topology: topology.clone(),
            _lock: lock,
        })
    }

    /// Where the control API listens.
    pub fn control_addr(&self) -> SocketAddr {
        self.control_addr
    }

    /// The control API's base URL (`https://` under `--tls`).
    pub fn control_url(&self) -> String {
        self.control_url.clone()
    }

    /// The supervisor (for status and actions without going through HTTP).
    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    /// The chaos controller.
    pub fn chaos(&self) -> &Controller {
        &self.chaos
    }

    /// Starts replicas, waits until they are healthy, then the fault proxy (and creates
    /// its proxies through its API), then starts gateways and waits for them, printing
    /// progress. On failure prints the last log lines of each unhealthy service; the caller
    /// then shuts down.
    pub async fn start(&self) -> Result<(), UpError> {
        let progress = |name: &str, took: Option<Duration>| {
            let line = match took {
                Some(d) => format!("starting {name} … healthy ({} ms)", d.as_millis()),
                None => format!(
                    "starting {name} … NOT healthy after {} s",
                    self.topology.policy.startup_timeout.as_secs()
                ),
            };
            let _ = writeln!(std::io::stdout().lock(), "{line}");
        };
        let mut failed = Vec::new();
        for kind in [
            ServiceKind::Replica,
            ServiceKind::Proxy,
            ServiceKind::Gateway,
            ServiceKind::App,
        ] {
            if kind == ServiceKind::Gateway && !self.topology.links.is_empty() {
                self.populate_proxies().await?;
            }
            failed = self.supervisor.start_kind(kind, &progress).await;
            if !failed.is_empty() {
                break;
            }
        }
        if failed.is_empty() {
            for r in self.chaos.finish_recovery().await {
                println!(
                    "bulwark up: chaos: {} {} on {} ({}) left by a previous controller",
                    if r.undone {
                        "removed"
                    } else {
                        "could NOT remove"
                    },
                    r.fault.kind,
                    r.fault.target,
                    r.fault.id
                );
            }
            return Ok(());
        }
        for name in &failed {
            let status = self.supervisor.status(name).ok();
            let what = status
                .as_ref()
                .map(crate::ctl::describe_state)
                .unwrap_or_default();
            eprintln!("bulwark up: {name} is not healthy ({what}); last log lines:");
            let path = logs::log_path(&self.topology.log_dir(), name);
            let _ =
                logs::read_log(&path, None, Some(FAILURE_LOG_LINES), |l| eprintln!("  {l}")).await;
        }
        Err(UpError::Unhealthy {
            services: failed,
            timeout: self.topology.policy.startup_timeout,
        })
    }

    /// Creates the proxies of every gateway → replica link through the fault proxy's API
    /// (it just became healthy), then keeps them in place if the proxy restarts.
    async fn populate_proxies(&self) -> Result<(), UpError> {
        let created = self
            .chaos
            .ensure_proxies()
            .await
            .map_err(|e| UpError::Proxy(e.to_string()))?;
        println!("creating {created} proxied links in chaos_proxy … done");
        self.chaos.spawn_reconciler(self.stop_server.clone());
        Ok(())
    }

    /// Removes every active fault, stops gateways, then replicas (SIGTERM, SIGKILL after
    /// the stop timeout), then the control API, and releases the lock.
    pub async fn shutdown(self) {
        // Faults first: a paused replica would otherwise stall the gateways' drain.
        self.chaos.shutdown().await;
        self.supervisor.shutdown().await;
        self.stop_server.cancel();
        let _ = tokio::time::timeout(API_DRAIN, self.server).await;
        let _ = std::fs::remove_file(
            self.topology
                .data_dir
                .join(bulwark_http::client::CONTROL_URL_FILE),
        );
    }
}

/// The control API's listener and security, from `up`'s settings (the same names as
/// every HTTP service: `API_KEYS_FILE`, `TLS_*`, `RATE_LIMIT*`, `AUDIT_LOG`) and its
/// address. Its audit log is the cluster's, `<data-dir>/logs/audit.jsonl`, unless
/// `AUDIT_LOG` says otherwise; its rate limits are off unless set (its clients are the
/// operator and the chaos runner).
fn control_http(
    topology: &Topology,
    addr: SocketAddr,
) -> Result<bulwark_http::HttpConfig, UpError> {
    let mut settings =
        bulwark_config::Settings::load(None).map_err(|e| UpError::Config(e.to_string()))?;
    settings.set("CONTROL_BIND", addr.ip().to_string());
    settings.set("CONTROL_PORT", addr.port().to_string());
    if settings.get("AUDIT_LOG").is_none() {
        settings.set("AUDIT_LOG", topology.audit_log().display().to_string());
    }
    if settings.get("RATE_LIMIT").is_none() {
        settings.set("RATE_LIMIT", "off");
    }
    if let Some(keys) = &topology.keys_file {
        settings.set("API_KEYS_FILE", keys.display().to_string());
    }
    if let Some(tls) = &topology.tls
        && settings.get("TLS_CERT_FILE").is_none()
    {
        settings.set("TLS_CERT_FILE", tls.cert("control").display().to_string());
        settings.set("TLS_KEY_FILE", tls.key("control").display().to_string());
    }
    bulwark_http::HttpConfig::from_settings(
        &settings,
        bulwark_http::Listen {
            bind: "CONTROL_BIND",
            port: "CONTROL_PORT",
            default_port: addr.port(),
        },
    )
    .map_err(|e| UpError::Config(e.to_string()))
}

/// The control API's base URL.
fn control_url(addr: SocketAddr, http: &bulwark_http::HttpConfig) -> String {
    let scheme = if http.serve.tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{addr}")
}

/// Tries to bind every service and link port on 127.0.0.1; the first taken one is the
/// error.
fn check_ports(topology: &Topology) -> Result<(), UpError> {
    let ports = topology
        .services
        .iter()
        .map(|s| (s.port, s.name.clone()))
        .chain(
            topology
                .links
                .iter()
                .map(|l| (l.listen, format!("link {}", l.proxy_name()))),
        );
    for (port, name) in ports {
        if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return Err(if e.kind() == std::io::ErrorKind::AddrInUse {
                UpError::PortInUse {
                    port,
                    service: name,
                }
            } else {
                UpError::Io {
                    what: format!("cannot check port {port} ({name})"),
                    source: e,
                }
            });
        }
    }
    Ok(())
}

/// The table printed once everything is healthy.
pub fn endpoints_table(topology: &Topology, control: &str) -> String {
    let mut rows: Vec<(String, String)> = Vec::new();
    for kind in [
        ServiceKind::Gateway,
        ServiceKind::App,
        ServiceKind::Replica,
        ServiceKind::Proxy,
    ] {
        for s in topology.services.iter().filter(|s| s.kind == kind) {
            rows.push((s.label.clone(), format!("{}  ({})", s.url(), s.name)));
        }
    }
    rows.push((
        "control API".to_owned(),
        format!("{control}  (bulwark ctl status)"),
    ));
    rows.push((
        "logs".to_owned(),
        format!("{}/", topology.log_dir().display()),
    ));
    rows.push((
        "audit log".to_owned(),
        format!("{}  (bulwark audit verify)", topology.audit_log().display()),
    ));
    let placement = topology.layout.target();
    rows.push((
        "layout".to_owned(),
        format!(
            "{}  (version {}: {} nodes, N = {}; bulwark ctl shard status)",
            crate::sharding::layout_path(&topology.data_dir).display(),
            topology.layout.version,
            placement.nodes.len(),
            placement.replication_factor
        ),
    ));
    if let Some(tls) = &topology.tls {
        rows.push((
            "TLS CA".to_owned(),
            format!(
                "{}  (curl --cacert, redis-cli --tls --cacert)",
                tls.ca().display()
            ),
        ));
    }
    if let Some(keys) = &topology.keys_file {
        let dir = keys
            .parent()
            .map_or_else(String::new, |d| d.display().to_string());
        rows.push((
            "API keys".to_owned(),
            format!("{dir}/{{reader,writer,admin}}.key  (Authorization: Bearer <key>)"),
        ));
    }
    let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let mut out = format!("bulwark up: {} services healthy\n", topology.services.len());
    for (label, value) in rows {
        out.push_str(&format!("  {label:<width$}  {value}\n"));
    }
    out.push_str("Press Ctrl-C to stop.");
    out
}

/// Refuses a second `up` on the same data directory. The file holds our pid; a file left
/// by a process that no longer exists is stale and replaced. Removed on drop.
#[derive(Debug)]
struct LockFile {
    path: PathBuf,
}

impl LockFile {
    fn acquire(dir: &Path) -> Result<LockFile, UpError> {
        let path = dir.join(LOCK_FILE);
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    writeln!(f, "{}", std::process::id())
                        .map_err(io_err(format!("cannot write {}", path.display())))?;
                    return Ok(LockFile { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    if let Ok(pid) = text.trim().parse::<i32>()
                        && pid > 0
                        && process_alive(pid)
                    {
                        return Err(UpError::Locked {
                            pid,
                            dir: dir.to_path_buf(),
                        });
                    }
                    // Stale (or unreadable) lock: remove it and try once more.
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => return Err(io_err(format!("cannot create {}", path.display()))(e)),
            }
        }
        Err(UpError::Io {
            what: format!("cannot take the lock {}", path.display()),
            source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        })
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn process_alive(pid: i32) -> bool {
    // Signal 0 checks existence; EPERM means it exists but belongs to someone else.
    match nix::sys::signal::kill(Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(e) => e == nix::Error::EPERM,
    }
}

/// Checks `redis-server` exists and is version 7 or later (functions need 7).
async fn check_redis() -> Result<(), UpError> {
    let output = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::process::Command::new("redis-server")
            .arg("--version")
            .kill_on_drop(true)
            .output(),
    )
    .await;
    let output = match output {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            return Err(UpError::Redis(format!(
                "--backend redis needs redis-server (version 7 or later) on PATH: {e}"
            )));
        }
        Err(_) => {
            return Err(UpError::Redis(
                "redis-server --version did not answer within 5 s".to_owned(),
            ));
        }
    };
    let text = String::from_utf8_lossy(&output.stdout);
    match redis_major_version(&text) {
        Some(v) if v >= 7 => Ok(()),
        Some(v) => Err(UpError::Redis(format!(
            "--backend redis needs redis-server 7 or later; found version {v} ({})",
            text.trim()
        ))),
        None => Err(UpError::Redis(format!(
            "cannot tell the version of redis-server from '{}'",
            text.trim()
        ))),
    }
}

/// `Redis server v=7.0.15 sha=…` → 7.
fn redis_major_version(text: &str) -> Option<u32> {
    let v = text.split_whitespace().find_map(|w| w.strip_prefix("v="))?;
    v.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_versions() {
        assert_eq!(
            redis_major_version(
                "Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=1"
            ),
            Some(7)
        );
        assert_eq!(redis_major_version("Redis server v=6.2.1 sha=0"), Some(6));
        assert_eq!(redis_major_version("nonsense"), None);
    }

    #[test]
    fn lock_refuses_a_live_owner_and_replaces_a_stale_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = LockFile::acquire(dir.path()).expect("first lock");
        let second = LockFile::acquire(dir.path());
        assert!(
            matches!(second, Err(UpError::Locked { pid, .. }) if pid == std::process::id() as i32)
        );
        drop(first);
        // A pid that cannot exist (above Linux's pid_max) is a stale lock.
        std::fs::write(dir.path().join(LOCK_FILE), "2147483647\n").expect("write");
        let third = LockFile::acquire(dir.path());
        assert!(third.is_ok());
    }
}
