//! The chaos controller: the only component that applies or removes faults. It owns the
//! rollback journal and enforces every fault's TTL (see `docs/ARCHITECTURE.md`, "Journal
//! and TTL invariants").

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bulwark_http::client::ClientIdentity;
use bulwark_obs::events::{ChaosFault, ChaosUndoFailed, Emit};
use nix::sys::signal::Signal;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use base64::Engine as _;

use crate::cluster::{ClusterMap, ReplicaBackend};
use crate::data;
use crate::fault::{Fault, FaultError, FaultRequest, Undo};
use crate::journal::{Entry, Journal, JournalError};
use crate::processes::{ProcessError, Processes, start_ticks};
use crate::toxiproxy::{ProxySpec, Toxiproxy, ToxiproxyError};

/// How long removal keeps retrying an undo step whose target does not answer, before it
/// leaves the fault in the journal for the next controller start.
const UNDO_RETRY_FOR: Duration = Duration::from_secs(30);
/// Pause between undo retries.
const UNDO_RETRY_EVERY: Duration = Duration::from_secs(1);
/// Bound on one call to a gateway's admin endpoint.
const GATEWAY_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the proxies of the links are checked (and re-created after a proxy restart).
const RECONCILE_EVERY: Duration = Duration::from_secs(1);

/// Why the controller refused or failed a request.
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// Fault injection is disabled (the safety switch).
    #[error(
        "chaos is disabled: enable it with `bulwark chaos enable` (or start up with --chaos / CHAOS_ENABLED=true)"
    )]
    Disabled,
    /// The fault does not fit the cluster or the limits.
    #[error("invalid fault: {0}")]
    Invalid(#[from] FaultError),
    /// No active fault has this id.
    #[error("no active fault '{0}'")]
    NotFound(String),
    /// Applying the fault failed; whatever part of it took effect was undone.
    #[error("cannot apply {kind} on {target}: {message}")]
    Apply {
        /// Fault kind.
        kind: String,
        /// Its target.
        target: String,
        /// What failed.
        message: String,
    },
    /// The journal cannot be written: no fault is applied without it.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The controller is stopping.
    #[error("the chaos controller is shutting down")]
    ShuttingDown,
}

/// A fault in effect, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ActiveFault {
    /// Its id.
    pub id: String,
    /// Its kind (`pause`).
    pub kind: String,
    /// Its target (`db_g2`).
    pub target: String,
    /// The fault.
    pub fault: Fault,
    /// The services it impacts directly.
    pub services: Vec<String>,
    /// The run that asked for it.
    pub run: Option<String>,
    /// When it was applied (Unix ms).
    pub applied_at_ms: u64,
    /// When it expires (Unix ms).
    pub expires_at_ms: u64,
}

impl ActiveFault {
    fn of(e: &Entry, cluster: &ClusterMap) -> ActiveFault {
        ActiveFault {
            id: e.id.clone(),
            kind: e.fault.kind().to_owned(),
            target: e.fault.target(),
            services: e.fault.services(cluster),
            fault: e.fault.clone(),
            run: e.run.clone(),
            applied_at_ms: e.applied_at_ms,
            expires_at_ms: e.expires_at_ms,
        }
    }
}

/// A fault removed at start-up because a previous controller left it in the journal.
#[derive(Debug, Clone, Serialize)]
pub struct Recovered {
    /// The fault as journaled.
    pub fault: ActiveFault,
    /// Whether every undo step succeeded (otherwise it stays in the journal).
    pub undone: bool,
}

/// What a controller needs.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Directory of the journal (`<data-dir>/chaos`).
    pub dir: PathBuf,
    /// Initial state of the safety switch (`--chaos`, `CHAOS_ENABLED`).
    pub enabled: bool,
    /// The cluster it may break.
    pub cluster: ClusterMap,
    /// The `bulwark` executable, run as `bulwark chaos burn` for resource faults.
    pub burner: Option<PathBuf>,
    /// The token of the gateways' chaos admin endpoint (`CHAOS_TOKEN`); never journaled
    /// nor shown.
    pub gateway_token: Option<String>,
    /// The admin key and CA for the gateways' admin endpoint and the fault proxy's API
    /// (under `up --auth`/`--tls`).
    pub identity: ClientIdentity,
}

/// The controller. Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cluster: ClusterMap,
    processes: Arc<dyn Processes>,
    /// The fault proxy's API, when `up` runs one.
    proxy: Option<Toxiproxy>,
    /// Calls to gateways' admin endpoints.
    http: reqwest::Client,
    /// Their token.
    gateway_token: Option<String>,
    /// The executable of burners.
    burner: Option<PathBuf>,
    enabled: AtomicBool,
    journal: Mutex<Journal>,
    active: Mutex<BTreeMap<String, Running>>,
    /// Journaled faults of a dead controller whose undo waits for the cluster to start.
    leftover: Mutex<Vec<Entry>>,
    /// Set when the controller stops: no new faults.
    closed: AtomicBool,
}

/// A fault in effect and the token that ends its timer (and a crash loop's task).
#[derive(Debug)]
struct Running {
    entry: Entry,
    cancel: CancellationToken,
    /// Being removed: still listed (its undo is running) but not removable twice.
    removing: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn b64_decode(text: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("journal value is not base64: {e}"))
}

/// Milliseconds since the Unix epoch (the journal's clock; TTL timers use Tokio's).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Controller {
    /// Opens the journal and undoes every fault a previous controller left in it (invariant
    /// 3) before returning; returns the controller and what it undid.
    pub async fn open(
        config: ControllerConfig,
        processes: Arc<dyn Processes>,
    ) -> Result<(Controller, Vec<Recovered>), ChaosError> {
        let dir = config.dir.clone();
        let (journal, leftover) = tokio::task::spawn_blocking(move || Journal::open(&dir))
            .await
            .map_err(|_| ChaosError::ShuttingDown)??;
        let controller = Controller {
            inner: Arc::new(Inner {
                proxy: config
                    .cluster
                    .proxy_api
                    .as_deref()
                    .map(|base| Toxiproxy::new(base, &config.identity)),
                http: config
                    .identity
                    .http_client(GATEWAY_TIMEOUT, Duration::from_secs(2)),
                gateway_token: config.gateway_token,
                burner: config.burner,
                cluster: config.cluster,
                processes,
                enabled: AtomicBool::new(config.enabled),
                journal: Mutex::new(journal),
                active: Mutex::new(BTreeMap::new()),
                leftover: Mutex::new(Vec::new()),
                closed: AtomicBool::new(false),
            }),
        };
        let mut recovered = Vec::new();
        for entry in leftover {
            let undone = controller.undo_all(&entry.undo, true).await;
            if undone {
                controller.journal_removed(&entry.id, "recovered").await?;
            } else {
                // Its target is not running yet (a replica's data): retried by
                // `finish_recovery` once `up` has started everything.
                lock(&controller.inner.leftover).push(entry.clone());
            }
            recovered.push(Recovered {
                fault: ActiveFault::of(&entry, &controller.inner.cluster),
                undone,
            });
        }
        Ok((controller, recovered))
    }

    /// Undoes what start-up recovery could not (its targets were not running yet); call
    /// once the cluster is up. Returns what it tried.
    pub async fn finish_recovery(&self) -> Vec<Recovered> {
        let leftover: Vec<Entry> = std::mem::take(&mut *lock(&self.inner.leftover));
        let mut out = Vec::new();
        for entry in leftover {
            let undone = self.undo_all(&entry.undo, false).await
                && self.journal_removed(&entry.id, "recovered").await.is_ok();
            out.push(Recovered {
                fault: ActiveFault::of(&entry, &self.inner.cluster),
                undone,
            });
        }
        out
    }

    /// The cluster this controller breaks.
    pub fn cluster(&self) -> &ClusterMap {
        &self.inner.cluster
    }

    /// Whether faults may be injected.
    pub fn enabled(&self) -> bool {
        self.inner.enabled.load(Ordering::SeqCst)
    }

    /// Turns the safety switch on.
    pub fn enable(&self) {
        self.inner.enabled.store(true, Ordering::SeqCst);
    }

    /// Turns the safety switch off and removes every active fault (the big red button).
    /// Returns how many were removed.
    pub async fn disable(&self) -> usize {
        self.inner.enabled.store(false, Ordering::SeqCst);
        self.remove_where(|_| true, "disable").await
    }

    /// The faults in effect, oldest first.
    pub fn active(&self) -> Vec<ActiveFault> {
        let mut v: Vec<ActiveFault> = lock(&self.inner.active)
            .values()
            .map(|r| ActiveFault::of(&r.entry, &self.inner.cluster))
            .collect();
        v.sort_by(|a, b| (a.applied_at_ms, &a.id).cmp(&(b.applied_at_ms, &b.id)));
        v
    }

    /// Journals, then applies, a fault; it is removed at its TTL at the latest.
    pub async fn inject(&self, req: FaultRequest) -> Result<ActiveFault, ChaosError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(ChaosError::ShuttingDown);
        }
        if !self.enabled() {
            return Err(ChaosError::Disabled);
        }
        req.validate(&self.inner.cluster)?;
        let id = format!("f-{:016x}", rand::random::<u64>());
        let undo = self.plan(&id, &req.fault).await?;
        let applied_at_ms = now_ms();
        let entry = Entry {
            id,
            fault: req.fault.clone(),
            undo,
            run: req.run.clone(),
            applied_at_ms,
            expires_at_ms: applied_at_ms + req.ttl_ms,
        };
        // Invariant 1: durable before the first side effect.
        self.journal_applied(&entry).await?;
        let cancel = CancellationToken::new();
        if let Err(message) = self.apply(&entry, &cancel).await {
            cancel.cancel();
            if self.undo_all(&entry.undo, false).await {
                self.journal_removed(&entry.id, "failed").await?;
            }
            return Err(ChaosError::Apply {
                kind: entry.fault.kind().to_owned(),
                target: entry.fault.target(),
                message,
            });
        }
        let view = ActiveFault::of(&entry, &self.inner.cluster);
        ChaosFault {
            id: &entry.id,
            kind: entry.fault.kind(),
            phase: "applied",
            target: &view.target,
            reason: "",
            ttl_ms: req.ttl_ms,
        }
        .emit();
        lock(&self.inner.active).insert(
            entry.id.clone(),
            Running {
                entry,
                cancel: cancel.clone(),
                removing: false,
            },
        );
        let me = self.clone();
        let id = view.id.clone();
        let ttl = Duration::from_millis(req.ttl_ms);
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(ttl) => { let _ = me.remove(&id, "ttl").await; }
                () = cancel.cancelled() => {}
            }
        });
        Ok(view)
    }

    /// Removes one active fault (its undo steps, then the journal record).
    /// It stays listed until its undo is done, so "no active fault" means "nothing left
    /// in effect".
    pub async fn remove(&self, id: &str, reason: &str) -> Result<ActiveFault, ChaosError> {
        let entry = {
            let mut active = lock(&self.inner.active);
            let running = active
                .get_mut(id)
                .filter(|r| !r.removing)
                .ok_or_else(|| ChaosError::NotFound(id.to_owned()))?;
            running.removing = true;
            running.cancel.cancel();
            running.entry.clone()
        };
        let view = ActiveFault::of(&entry, &self.inner.cluster);
        let undone = self.undo_all(&entry.undo, false).await;
        lock(&self.inner.active).remove(id);
        let reason = if undone { reason } else { "undo_failed" };
        if undone {
            self.journal_removed(&entry.id, reason).await?;
        }
        ChaosFault {
            id: &entry.id,
            kind: entry.fault.kind(),
            phase: "removed",
            target: &view.target,
            reason,
            ttl_ms: entry.expires_at_ms.saturating_sub(entry.applied_at_ms),
        }
        .emit();
        Ok(view)
    }

    /// Removes every active fault of `run`; returns how many.
    pub async fn remove_run(&self, run: &str, reason: &str) -> usize {
        self.remove_where(|e| e.run.as_deref() == Some(run), reason)
            .await
    }

    async fn remove_where(&self, pick: impl Fn(&Entry) -> bool, reason: &str) -> usize {
        let ids: Vec<String> = lock(&self.inner.active)
            .values()
            .filter(|r| !r.removing && pick(&r.entry))
            .map(|r| r.entry.id.clone())
            .collect();
        let removals = ids.iter().map(|id| self.remove(id, reason));
        futures::future::join_all(removals)
            .await
            .into_iter()
            .filter(Result::is_ok)
            .count()
    }

    /// Refuses new faults and removes every active one (`up` is stopping).
    pub async fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.remove_where(|_| true, "shutdown").await;
    }

    /// What removing `fault` (to be applied as `id`) will take, computed before it is
    /// applied.
    async fn plan(&self, id: &str, fault: &Fault) -> Result<Vec<Undo>, ChaosError> {
        let apply_err = |message: String| ChaosError::Apply {
            kind: fault.kind().to_owned(),
            target: fault.target(),
            message,
        };
        Ok(match fault {
            Fault::Kill { .. } | Fault::Restart { .. } | Fault::CrashLoop { .. } => Vec::new(),
            Fault::Stop { service } => vec![Undo::Start {
                service: service.clone(),
            }],
            Fault::Pause { service } => {
                let pid = self
                    .inner
                    .processes
                    .pid(service)
                    .map_err(|e| apply_err(e.to_string()))?
                    .ok_or_else(|| apply_err(format!("service '{service}' is not running")))?;
                let ticks =
                    start_ticks(pid).ok_or_else(|| apply_err(format!("process {pid} vanished")))?;
                vec![Undo::Signal {
                    service: service.clone(),
                    pid,
                    start_ticks: ticks,
                    signal: Signal::SIGCONT.as_str().to_owned(),
                }]
            }
            Fault::CpuBurn { .. } | Fault::MemoryHog { .. } => vec![Undo::StopBurner {
                fault_id: id.to_owned(),
            }],
            Fault::DiskFill { dir, .. } => vec![
                Undo::StopBurner {
                    fault_id: id.to_owned(),
                },
                Undo::RemoveFile {
                    path: crate::resource::fill_path(dir, id),
                },
            ],
            Fault::Corrupt {
                replica,
                key,
                restore,
                ..
            }
            | Fault::DropKey {
                replica,
                key,
                restore,
            } => {
                let at = self.replica(replica).map_err(apply_err)?;
                let (backend, port) = (at.backend, at.port);
                let record = data::read(at, key)
                    .await
                    .map_err(apply_err)?
                    .ok_or_else(|| {
                        apply_err(format!("'{key}' has no committed record on {replica}"))
                    })?;
                let b64 = |v: &Vec<u8>| base64::engine::general_purpose::STANDARD.encode(v);
                let (replica, key, version) =
                    (replica.clone(), key.clone(), record.version.clone());
                match (fault, restore) {
                    (_, false) => Vec::new(),
                    (Fault::Corrupt { .. }, true) => {
                        let value = record.value.as_ref().ok_or_else(|| {
                            apply_err(format!("'{key}' is deleted (a tombstone) on {replica}"))
                        })?;
                        vec![Undo::RestoreValue {
                            replica,
                            port,
                            backend,
                            key,
                            version,
                            value_b64: b64(value),
                        }]
                    }
                    _ => vec![Undo::RestoreRecord {
                        replica,
                        port,
                        backend,
                        key,
                        version,
                        value_b64: record.value.as_ref().map(b64),
                    }],
                }
            }
            Fault::ClockSkew { gateway, .. } => {
                let port = self
                    .inner
                    .cluster
                    .gateway(gateway)
                    .map(|g| g.port)
                    .ok_or_else(|| apply_err(format!("unknown gateway '{gateway}'")))?;
                vec![Undo::ResetClock {
                    gateway: gateway.clone(),
                    port,
                }]
            }
            network => network
                .toxics(id, &self.inner.cluster)?
                .into_iter()
                .map(|(proxy, toxic)| Undo::DeleteToxic {
                    proxy,
                    toxic: toxic.name,
                })
                .collect(),
        })
    }

    /// Creates the proxies of every link that the fault proxy lacks (at start-up, and after
    /// the proxy restarted empty), then adds the toxics of the active network faults again.
    /// Returns how many proxies were created.
    pub async fn ensure_proxies(&self) -> Result<usize, ToxiproxyError> {
        let Some(api) = &self.inner.proxy else {
            return Ok(0);
        };
        let have = api.proxy_names().await?;
        let missing: Vec<ProxySpec> = self
            .inner
            .cluster
            .links
            .iter()
            .filter(|l| !have.contains(&l.proxy_name()))
            .map(|l| ProxySpec {
                name: l.proxy_name(),
                listen: format!("127.0.0.1:{}", l.listen),
                upstream: format!("127.0.0.1:{}", l.upstream),
                enabled: true,
            })
            .collect();
        if missing.is_empty() {
            return Ok(0);
        }
        api.populate(&missing).await?;
        let entries: Vec<Entry> = lock(&self.inner.active)
            .values()
            .map(|r| r.entry.clone())
            .collect();
        for e in entries {
            for (proxy, toxic) in e
                .fault
                .toxics(&e.id, &self.inner.cluster)
                .unwrap_or_default()
            {
                api.add_toxic(&proxy, &toxic).await?;
            }
        }
        Ok(missing.len())
    }

    /// Keeps the fault proxy's proxies in place until `stop`: checks every second and
    /// re-creates them (with the active faults' toxics) after a proxy restart.
    pub fn spawn_reconciler(&self, stop: CancellationToken) {
        if self.inner.proxy.is_none() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(RECONCILE_EVERY) => {}
                }
                // A proxy that does not answer is restarting: try again next time.
                let _ = me.ensure_proxies().await;
            }
        });
    }

    /// The fault's side effect.
    async fn apply(&self, entry: &Entry, cancel: &CancellationToken) -> Result<(), String> {
        let procs = &self.inner.processes;
        let text = |e: ProcessError| e.to_string();
        match &entry.fault {
            Fault::Kill { service } => procs
                .signal(service, Signal::SIGKILL, None)
                .await
                .map(drop)
                .map_err(text),
            Fault::Stop { service } => procs
                .signal(service, Signal::SIGTERM, None)
                .await
                .map(drop)
                .map_err(text),
            Fault::Pause { service } => {
                let pid = entry.undo.iter().find_map(|u| match u {
                    Undo::Signal { pid, .. } => Some(*pid),
                    _ => None,
                });
                procs
                    .signal(service, Signal::SIGSTOP, pid)
                    .await
                    .map(drop)
                    .map_err(text)
            }
            Fault::Restart { service } => procs.restart(service).await.map_err(text),
            Fault::CpuBurn { workers } => {
                self.spawn_burner(entry, &["--cpu".into(), workers.to_string()])
            }
            Fault::MemoryHog { megabytes } => {
                self.spawn_burner(entry, &["--memory-mb".into(), megabytes.to_string()])
            }
            Fault::DiskFill { dir, megabytes } => self.spawn_burner(
                entry,
                &[
                    "--disk-mb".into(),
                    megabytes.to_string(),
                    "--dir".into(),
                    dir.display().to_string(),
                ],
            ),
            Fault::Corrupt {
                replica,
                key,
                value,
                ..
            } => {
                let at = self.replica(replica)?;
                let record = data::read(at, key)
                    .await?
                    .ok_or_else(|| format!("'{key}' has no committed record on {replica}"))?;
                let bytes = value.as_deref().unwrap_or("CORRUPTED").as_bytes();
                if data::corrupt(at, key, &record.version, bytes).await? {
                    Ok(())
                } else {
                    Err(format!(
                        "'{key}' changed on {replica} while being corrupted"
                    ))
                }
            }
            Fault::DropKey { replica, key, .. } => {
                let at = self.replica(replica)?;
                let record = data::read(at, key)
                    .await?
                    .ok_or_else(|| format!("'{key}' has no committed record on {replica}"))?;
                if data::drop_record(at, key, &record.version).await? {
                    Ok(())
                } else {
                    Err(format!("'{key}' changed on {replica} while being dropped"))
                }
            }
            Fault::ClockSkew { offset_ms, .. } => {
                let port = entry.undo.iter().find_map(|u| match u {
                    Undo::ResetClock { port, .. } => Some(*port),
                    _ => None,
                });
                let port = port.ok_or("no gateway port")?;
                self.clock(port, reqwest::Method::PUT, Some(*offset_ms))
                    .await
            }
            network @ (Fault::Latency { .. }
            | Fault::Bandwidth { .. }
            | Fault::ResetPeer { .. }
            | Fault::Timeout { .. }
            | Fault::Loss { .. }
            | Fault::SlowClose { .. }
            | Fault::LimitData { .. }
            | Fault::Partition { .. }) => {
                let api = self.inner.proxy.as_ref().ok_or("no fault proxy")?;
                let toxics = network
                    .toxics(&entry.id, &self.inner.cluster)
                    .map_err(|e| e.to_string())?;
                for (proxy, toxic) in &toxics {
                    api.add_toxic(proxy, toxic)
                        .await
                        .map_err(|e| format!("{proxy}: {e}"))?;
                }
                Ok(())
            }
            Fault::CrashLoop {
                service,
                interval_ms,
            } => {
                // The first kill is the fault taking effect; the loop ends with the fault.
                procs
                    .signal(service, Signal::SIGKILL, None)
                    .await
                    .map_err(text)?;
                let procs = procs.clone();
                let service = service.clone();
                let every = Duration::from_millis(*interval_ms);
                let cancel = cancel.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            () = cancel.cancelled() => return,
                            () = tokio::time::sleep(every) => {}
                        }
                        // Not running (restarting after the last kill) is expected.
                        let _ = procs.signal(&service, Signal::SIGKILL, None).await;
                    }
                });
                Ok(())
            }
        }
    }

    /// Runs undo steps, retrying failures for a while; true when all succeeded. During
    /// start-up recovery (`recovering`) each step is tried once; services are about to be
    /// started by `up` anyway, so `Start` steps have nothing to do, and a fault proxy or
    /// gateway that does not answer took its toxics or clock skew with it.
    async fn undo_all(&self, steps: &[Undo], recovering: bool) -> bool {
        let mut all = true;
        for step in steps {
            // At start-up, one attempt: what fails is retried once the cluster runs.
            let retry_for = if recovering {
                Duration::ZERO
            } else {
                UNDO_RETRY_FOR
            };
            let deadline = tokio::time::Instant::now() + retry_for;
            loop {
                match self.undo(step, recovering).await {
                    Ok(()) => break,
                    Err(e) if tokio::time::Instant::now() >= deadline => {
                        ChaosUndoFailed {
                            step: &format!("{step:?}"),
                            error: &e,
                        }
                        .emit();
                        all = false;
                        break;
                    }
                    Err(_) => tokio::time::sleep(UNDO_RETRY_EVERY).await,
                }
            }
        }
        all
    }

    async fn undo(&self, step: &Undo, recovering: bool) -> Result<(), String> {
        match step {
            Undo::Signal {
                pid,
                start_ticks: ticks,
                signal,
                ..
            } => {
                // Only the very process the fault hit; a new one (or none) needs nothing.
                if start_ticks(*pid) != Some(*ticks) {
                    return Ok(());
                }
                let sig: Signal = signal.parse().map_err(|_| format!("bad signal {signal}"))?;
                let pid = i32::try_from(*pid).map_err(|_| format!("bad pid {pid}"))?;
                match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig) {
                    Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            }
            Undo::StopBurner { fault_id } => {
                for pid in crate::resource::burners_of(fault_id) {
                    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(0));
                    let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
                }
                // Wait (bounded by the retries) until they are gone, so their file is.
                if crate::resource::burners_of(fault_id).is_empty() {
                    Ok(())
                } else {
                    Err("burner still running".into())
                }
            }
            Undo::RemoveFile { path } => match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(format!("{}: {e}", path.display())),
            },
            Undo::RestoreValue {
                port,
                backend,
                key,
                version,
                value_b64,
                ..
            } => {
                let value = b64_decode(value_b64)?;
                // False means the record was rewritten since: nothing left to restore.
                data::corrupt(self.at(*backend, *port), key, version, &value)
                    .await
                    .map(drop)
            }
            Undo::RestoreRecord {
                port,
                backend,
                key,
                version,
                value_b64,
                ..
            } => {
                let value = value_b64.as_deref().map(b64_decode).transpose()?;
                let record = data::Record {
                    version: version.clone(),
                    value,
                };
                data::restore_dropped(self.at(*backend, *port), key, &record).await
            }
            Undo::ResetClock { port, .. } => {
                match self.clock(*port, reqwest::Method::DELETE, None).await {
                    Ok(()) => Ok(()),
                    // The gateway process is gone, and its skew (in its memory) with it.
                    Err(e) if e.starts_with("unreachable") => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Undo::DeleteToxic { proxy, toxic } => {
                let Some(api) = &self.inner.proxy else {
                    return Ok(());
                };
                match api.delete_toxic(proxy, toxic).await {
                    Ok(()) => Ok(()),
                    // A proxy that is gone took its toxics with it; one that restarts comes
                    // back empty (the reconciler only re-adds active faults).
                    Err(ToxiproxyError::Unreachable(_)) if recovering => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            }
            Undo::Start { service } => {
                if recovering {
                    return Ok(());
                }
                match self.inner.processes.start(service).await {
                    Ok(()) | Err(ProcessError::Unknown(_)) => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    }

    /// Starts a burner for `entry` (its own process group, so Ctrl-C in `up`'s terminal
    /// does not reach it, and not killed with `up`: it ends at its deadline by itself).
    fn spawn_burner(&self, entry: &Entry, args: &[String]) -> Result<(), String> {
        let exe = self
            .inner
            .burner
            .as_ref()
            .ok_or("no burner executable configured")?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.args(["chaos", "burn"])
            .args(args)
            .args(["--until-ms", &entry.expires_at_ms.to_string()])
            .args(["--fault-id", &entry.id])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        // Reap it when it ends, so it does not linger as a zombie of `up`.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(())
    }

    /// A replica's kind, port and TLS.
    fn replica(&self, name: &str) -> Result<data::At<'_>, String> {
        let c = &self.inner.cluster;
        let node = c
            .replica(name)
            .ok_or_else(|| format!("unknown replica '{name}'"))?;
        let backend = c.backend.ok_or("the replicas' kind is unknown")?;
        Ok(self.at(backend, node.port))
    }

    /// The replica of `backend` at `port`, with the cluster's replica TLS.
    fn at(&self, backend: ReplicaBackend, port: u16) -> data::At<'_> {
        data::At {
            backend,
            port,
            tls: self.inner.cluster.replica_tls.as_ref(),
        }
    }

    /// Each replica's committed record of `key` (for probes that detect divergence).
    pub async fn read_replicas(
        &self,
        key: &str,
    ) -> Vec<(String, Result<Option<data::Record>, String>)> {
        let c = &self.inner.cluster;
        let Some(backend) = c.backend else {
            return Vec::new();
        };
        let reads = c.replicas.iter().map(|r| async move {
            (
                r.name.clone(),
                data::read(self.at(backend, r.port), key).await,
            )
        });
        futures::future::join_all(reads).await
    }

    /// Calls a gateway's chaos clock endpoint (`PUT` with an offset, or `DELETE`).
    async fn clock(
        &self,
        port: u16,
        method: reqwest::Method,
        offset: Option<i64>,
    ) -> Result<(), String> {
        let token = self
            .inner
            .gateway_token
            .as_deref()
            .ok_or("the gateways were started without a chaos token")?;
        let scheme = if self.inner.cluster.https {
            "https"
        } else {
            "http"
        };
        let mut req = self
            .inner
            .http
            .request(
                method,
                format!("{scheme}://127.0.0.1:{port}/admin/chaos/clock"),
            )
            // Authorization carries the admin key when the gateways require one.
            .header("x-chaos-token", token);
        if let Some(o) = offset {
            req = req.json(&serde_json::json!({"offset_ms": o}));
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() {
                format!("unreachable: {e}")
            } else {
                e.to_string()
            }
        })?;
        if resp.status().is_success() {
            Ok(())
        } else {
            let status = resp.status().as_u16();
            Err(format!(
                "HTTP {status}: {}",
                resp.text().await.unwrap_or_default()
            ))
        }
    }

    async fn journal_applied(&self, entry: &Entry) -> Result<(), ChaosError> {
        let inner = self.inner.clone();
        let entry = entry.clone();
        tokio::task::spawn_blocking(move || lock(&inner.journal).applied(&entry))
            .await
            .map_err(|_| ChaosError::ShuttingDown)?
            .map_err(ChaosError::from)
    }

    async fn journal_removed(&self, id: &str, reason: &str) -> Result<(), ChaosError> {
        let inner = self.inner.clone();
        let (id, reason) = (id.to_owned(), reason.to_owned());
        tokio::task::spawn_blocking(move || lock(&inner.journal).removed(&id, &reason, now_ms()))
            .await
            .map_err(|_| ChaosError::ShuttingDown)?
            .map_err(ChaosError::from)
    }
}
