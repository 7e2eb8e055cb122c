//! The process supervisor: one actor task per service owns its child process; everyone else
//! (the control API, `up`'s start and stop sequence) sends it commands and reads a shared
//! status snapshot.
//!
//! Restart policy (SPEC CAP-9, compose `restart: on-failure`): a child that exits with a
//! non-zero status, or is killed by a signal the supervisor did not send as part of a stop,
//! has crashed and is restarted after a backoff (0.5 s, 1 s, 2 s … at most 10 s, back to
//! 0.5 s once a run lasted 30 s). A child that exits 0 stopped cleanly and stays `exited`.
//! A service stopped through the control API stays `stopped` until it is started again.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::health;
use crate::logs::{self, Echo};
use crate::topology::{Policy, ServiceKind, ServiceSpec, Topology};

/// Commands waiting for a service's actor; a few suffice since callers wait for replies.
const COMMAND_QUEUE: usize = 16;
/// How often start-up polls a service's health while waiting for it.
const STARTUP_POLL: Duration = Duration::from_millis(50);

/// What a service is doing, as shown in `ctl status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Its process is alive.
    Running,
    /// Not started yet, or stopped on request (`ctl stop`, shutdown); not restarted.
    Stopped,
    /// Its process exited with status 0 on its own: a clean stop, not restarted.
    Exited,
    /// Its process crashed; a restart is scheduled after the backoff.
    Restarting,
    /// Its program could not be started at all (not found, not executable); retried after
    /// the backoff.
    Crashed,
}

impl State {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Stopped => "stopped",
            State::Exited => "exited",
            State::Restarting => "restarting",
            State::Crashed => "crashed",
        }
    }
}

/// A snapshot of one service, the JSON of `GET /api/v1/services`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Service name.
    pub name: String,
    /// Replica or gateway.
    pub kind: ServiceKind,
    /// Port it listens on (127.0.0.1).
    pub port: u16,
    /// Process id while running.
    pub pid: Option<u32>,
    /// What it is doing.
    pub state: State,
    /// Exit status of the last process that ended normally.
    pub exit_code: Option<i32>,
    /// Signal that ended the last process (`SIGKILL`), if one did.
    pub exit_signal: Option<String>,
    /// Automatic restarts after crashes since `up` started (not `ctl start/restart`).
    pub restarts: u32,
    /// Seconds since the current process started.
    pub uptime_secs: Option<f64>,
    /// Result of the latest health probe (always false when not running).
    pub healthy: bool,
    /// Why the last start failed, if it did.
    pub last_error: Option<String>,
    /// The service's log file (`ctl logs` reads it).
    pub log_file: PathBuf,
}

/// What the control API can ask of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start it if it is not running.
    Start,
    /// SIGTERM, SIGKILL after the stop timeout; it stays stopped.
    Stop,
    /// Stop, then start.
    Restart,
    /// Send this signal; the restart policy decides what happens when it exits.
    Kill(Signal),
    /// Send this signal only if the running process still has this pid (a fault planned
    /// against one process must not hit its successor).
    KillPid(Signal, u32),
}

/// Why an action was refused.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// No service has this name.
    #[error("unknown service '{name}' (known: {})", known.join(", "))]
    UnknownService {
        /// The name asked for.
        name: String,
        /// Every service name.
        known: Vec<String>,
    },
    /// A signal can only be sent to a running process.
    #[error("service '{0}' is not running")]
    NotRunning(String),
    /// `kill(2)` failed.
    #[error("cannot signal service '{name}': {source}")]
    Signal {
        /// Service name.
        name: String,
        /// The errno.
        source: nix::Error,
    },
    /// The supervisor is shutting down.
    #[error("the supervisor is shutting down")]
    ShuttingDown,
}

/// Mutable status of a service, shared between its actor, its health task and readers.
/// Locked only for short, synchronous updates; never across an `.await`.
#[derive(Debug)]
struct Live {
    state: State,
    pid: Option<u32>,
    exit_code: Option<i32>,
    exit_signal: Option<String>,
    restarts: u32,
    started_at: Option<Instant>,
    healthy: bool,
    last_error: Option<String>,
}

fn lock(live: &Mutex<Live>) -> MutexGuard<'_, Live> {
    // A panic while holding this lock leaves plain data behind; keep serving it.
    live.lock().unwrap_or_else(PoisonError::into_inner)
}

enum Msg {
    Act(Action, oneshot::Sender<Result<(), ActionError>>),
    /// Stop the child and end the actor.
    Shutdown(oneshot::Sender<()>),
}

/// One service as the supervisor's users see it.
#[derive(Debug, Clone)]
struct Handle {
    spec: Arc<ServiceSpec>,
    live: Arc<Mutex<Live>>,
    tx: mpsc::Sender<Msg>,
    log_file: PathBuf,
}

impl Handle {
    fn status(&self) -> ServiceStatus {
        let l = lock(&self.live);
        ServiceStatus {
            name: self.spec.name.clone(),
            kind: self.spec.kind,
            port: self.spec.port,
            pid: l.pid,
            state: l.state,
            exit_code: l.exit_code,
            exit_signal: l.exit_signal.clone(),
            restarts: l.restarts,
            uptime_secs: l
                .started_at
                .filter(|_| l.state == State::Running)
                .map(|t| t.elapsed().as_secs_f64()),
            healthy: l.healthy,
            last_error: l.last_error.clone(),
            log_file: self.log_file.clone(),
        }
    }
}

/// Supervises the services of a [`Topology`]. Creating it starts nothing; [`start_all`]
/// starts replicas, waits for them to be healthy, then starts gateways.
///
/// Dropping it without [`shutdown`] still ends every child (the actors see their command
/// channel close and stop their process).
///
/// [`start_all`]: Supervisor::start_all
/// [`shutdown`]: Supervisor::shutdown
#[derive(Debug)]
pub struct Supervisor {
    services: Vec<Handle>,
    policy: Policy,
    /// Stops the background health probes.
    cancel: CancellationToken,
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Supervisor {
    /// Spawns one actor and one health-probe task per service (on the current Tokio runtime).
    pub fn new(topology: &Topology) -> Supervisor {
        let cancel = CancellationToken::new();
        let width = topology
            .services
            .iter()
            .map(|s| s.name.len())
            .max()
            .unwrap_or(0);
        let log_dir = topology.log_dir();
        let services = topology
            .services
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let spec = Arc::new(spec.clone());
                let live = Arc::new(Mutex::new(Live {
                    state: State::Stopped,
                    pid: None,
                    exit_code: None,
                    exit_signal: None,
                    restarts: 0,
                    started_at: None,
                    healthy: false,
                    last_error: None,
                }));
                let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
                let log_file = logs::log_path(&log_dir, &spec.name);
                let actor = Actor {
                    spec: spec.clone(),
                    live: live.clone(),
                    policy: topology.policy.clone(),
                    log_file: log_file.clone(),
                    echo: topology.echo_logs.then(|| Echo::new(&spec.name, i, width)),
                    child: None,
                    restart_at: None,
                    backoff: Backoff::new(&topology.policy),
                };
                tokio::spawn(actor.run(rx));
                tokio::spawn(health_loop(
                    spec.clone(),
                    live.clone(),
                    topology.policy.clone(),
                    cancel.clone(),
                ));
                Handle {
                    spec,
                    live,
                    tx,
                    log_file,
                }
            })
            .collect();
        Supervisor {
            services,
            policy: topology.policy.clone(),
            cancel,
        }
    }

    /// Every service's status, in topology order.
    pub fn statuses(&self) -> Vec<ServiceStatus> {
        self.services.iter().map(Handle::status).collect()
    }

    /// One service's status.
    pub fn status(&self, name: &str) -> Result<ServiceStatus, ActionError> {
        self.handle(name).map(Handle::status)
    }

    /// Every service name, in topology order.
    pub fn names(&self) -> Vec<String> {
        self.services.iter().map(|h| h.spec.name.clone()).collect()
    }

    fn handle(&self, name: &str) -> Result<&Handle, ActionError> {
        self.services
            .iter()
            .find(|h| h.spec.name == name)
            .ok_or_else(|| ActionError::UnknownService {
                name: name.to_owned(),
                known: self.names(),
            })
    }

    /// Performs `action` on service `name` and returns its status afterwards. A stop waits
    /// until the process has ended (up to the stop timeout, then SIGKILL).
    pub async fn act(&self, name: &str, action: Action) -> Result<ServiceStatus, ActionError> {
        let h = self.handle(name)?;
        let (reply, rx) = oneshot::channel();
        h.tx.send(Msg::Act(action, reply))
            .await
            .map_err(|_| ActionError::ShuttingDown)?;
        rx.await.map_err(|_| ActionError::ShuttingDown)??;
        Ok(h.status())
    }

    /// Starts every service of `kind` and waits until each is healthy; `progress` is called
    /// once per service with the time it took, or `None` if it was not healthy within the
    /// start-up timeout. Returns the names of services that did not become healthy.
    pub async fn start_kind(
        &self,
        kind: ServiceKind,
        progress: &(dyn Fn(&str, Option<Duration>) + Sync),
    ) -> Vec<String> {
        let group: Vec<&Handle> = self
            .services
            .iter()
            .filter(|h| h.spec.kind == kind)
            .collect();
        let waits = group.iter().map(|h| async move {
            let began = Instant::now();
            if self.act(&h.spec.name, Action::Start).await.is_err() {
                progress(&h.spec.name, None);
                return Some(h.spec.name.clone());
            }
            let took = self.wait_healthy(h, began).await;
            progress(&h.spec.name, took);
            took.is_none().then(|| h.spec.name.clone())
        });
        futures::future::join_all(waits)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Probes `h` until it is running and healthy, or the start-up timeout has passed.
    async fn wait_healthy(&self, h: &Handle, began: Instant) -> Option<Duration> {
        let deadline = began + self.policy.startup_timeout;
        loop {
            let pid = {
                let l = lock(&h.live);
                (l.state == State::Running).then_some(l.pid).flatten()
            };
            if pid.is_some()
                && health::probe(
                    &h.spec.health,
                    h.spec.port,
                    h.spec.tls.as_ref(),
                    self.policy.health_timeout,
                )
                .await
            {
                let mut l = lock(&h.live);
                if l.pid == pid {
                    l.healthy = true;
                    return Some(began.elapsed());
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(STARTUP_POLL).await;
        }
    }

    /// Starts everything in dependency order: replicas, then (once they are all healthy)
    /// the fault proxy, then gateways, then standalone applications. Returns the services
    /// that did not become healthy (later kinds are not started if an earlier one failed).
    pub async fn start_all(
        &self,
        progress: &(dyn Fn(&str, Option<Duration>) + Sync),
    ) -> Vec<String> {
        for kind in [
            ServiceKind::Replica,
            ServiceKind::Proxy,
            ServiceKind::Gateway,
            ServiceKind::App,
        ] {
            let failed = self.start_kind(kind, progress).await;
            if !failed.is_empty() {
                return failed;
            }
        }
        Vec::new()
    }

    /// Stops every service, applications and gateways first (they stop accepting and drain
    /// while replicas still answer), then replicas; each gets SIGTERM and the stop timeout
    /// before SIGKILL. Returns once every process has ended and every actor has finished.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        for kind in [
            ServiceKind::App,
            ServiceKind::Gateway,
            ServiceKind::Proxy,
            ServiceKind::Replica,
        ] {
            let stops = self
                .services
                .iter()
                .filter(|h| h.spec.kind == kind)
                .map(|h| async move {
                    let (reply, rx) = oneshot::channel();
                    if h.tx.send(Msg::Shutdown(reply)).await.is_ok() {
                        let _ = rx.await;
                    }
                });
            futures::future::join_all(stops).await;
        }
    }
}

/// Crash-restart delays: `initial`, doubling up to `max`; a run of at least `reset_after`
/// starts the sequence over (the crash is a new incident, not a crash loop).
#[derive(Debug, Clone)]
struct Backoff {
    initial: Duration,
    max: Duration,
    reset_after: Duration,
    next: Duration,
}

impl Backoff {
    fn new(policy: &Policy) -> Backoff {
        Backoff {
            initial: policy.backoff_initial,
            max: policy.backoff_max,
            reset_after: policy.backoff_reset_after,
            next: policy.backoff_initial,
        }
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }

    /// Records how long the process that just crashed had run.
    fn ran_for(&mut self, uptime: Duration) {
        if uptime >= self.reset_after {
            self.reset();
        }
    }

    /// The delay to wait now; the following one doubles (up to `max`).
    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

/// A running child and when it started.
struct Running {
    child: Child,
    started: Instant,
}

/// Owns one service's process; the only task that spawns, signals or reaps it, so a pid is
/// never signalled after it was reaped (and possibly reused).
struct Actor {
    spec: Arc<ServiceSpec>,
    live: Arc<Mutex<Live>>,
    policy: Policy,
    log_file: PathBuf,
    echo: Option<Echo>,
    child: Option<Running>,
    /// When a crashed service is due to restart.
    restart_at: Option<Instant>,
    /// Delay before the next crash restart.
    backoff: Backoff,
}

async fn wait_opt(child: &mut Option<Running>) -> std::io::Result<ExitStatus> {
    match child {
        Some(r) => r.child.wait().await,
        None => std::future::pending().await,
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        loop {
            tokio::select! {
                status = wait_opt(&mut self.child) => self.on_exit(status),
                () = sleep_opt(self.restart_at) => {
                    self.restart_at = None;
                    lock(&self.live).restarts += 1;
                    self.spawn();
                }
                cmd = rx.recv() => match cmd {
                    Some(Msg::Act(action, reply)) => {
                        let result = self.act(action).await;
                        let _ = reply.send(result);
                    }
                    Some(Msg::Shutdown(reply)) => {
                        self.stop().await;
                        let _ = reply.send(());
                        return;
                    }
                    None => {
                        self.stop().await;
                        return;
                    }
                }
            }
        }
    }

    async fn act(&mut self, action: Action) -> Result<(), ActionError> {
        match action {
            Action::Start => {
                if self.child.is_none() {
                    self.restart_at = None;
                    self.backoff.reset();
                    self.spawn();
                }
                Ok(())
            }
            Action::Stop => {
                self.stop().await;
                Ok(())
            }
            Action::Restart => {
                self.stop().await;
                self.backoff.reset();
                self.spawn();
                Ok(())
            }
            Action::Kill(sig) => self.signal_child(sig, None),
            Action::KillPid(sig, pid) => self.signal_child(sig, Some(pid)),
        }
    }

    /// Signals the running child (only if its pid is `only_pid`, when given).
    fn signal_child(&self, sig: Signal, only_pid: Option<u32>) -> Result<(), ActionError> {
        let pid = self.child.as_ref().and_then(|r| r.child.id());
        let pid = pid
            .filter(|p| only_pid.is_none_or(|want| want == *p))
            .ok_or_else(|| ActionError::NotRunning(self.spec.name.clone()))?;
        signal(pid, sig).map_err(|source| ActionError::Signal {
            name: self.spec.name.clone(),
            source,
        })
    }

    /// Starts the process; on failure the service is `crashed` and retried after the backoff.
    fn spawn(&mut self) {
        let spec = &self.spec;
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // If the supervisor dies without stopping it, do not leave it running.
            .kill_on_drop(true)
            // Own process group: Ctrl-C in the terminal reaches only `up`, which then stops
            // gateways before replicas instead of everything dying at once.
            .process_group(0);
        match cmd.spawn() {
            Ok(mut child) => {
                if let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) {
                    tokio::spawn(logs::pump(
                        out,
                        err,
                        self.log_file.clone(),
                        self.echo.clone(),
                    ));
                }
                let now = Instant::now();
                let mut l = lock(&self.live);
                l.state = State::Running;
                l.pid = child.id();
                l.started_at = Some(now);
                l.healthy = false;
                l.last_error = None;
                l.exit_code = None;
                l.exit_signal = None;
                drop(l);
                self.child = Some(Running {
                    child,
                    started: now,
                });
            }
            Err(e) => {
                let mut l = lock(&self.live);
                l.state = State::Crashed;
                l.pid = None;
                l.healthy = false;
                let reason = format!("cannot start {}: {e}", spec.program.display());
                l.last_error = Some(reason.clone());
                drop(l);
                let delay = self.schedule_restart();
                self.note(&format!(
                    "{reason}; retrying in {:.1} s",
                    delay.as_secs_f64()
                ));
            }
        }
    }

    /// Schedules the next restart; returns the delay.
    fn schedule_restart(&mut self) -> Duration {
        let delay = self.backoff.next_delay();
        self.restart_at = Some(Instant::now() + delay);
        delay
    }

    /// Tells the terminal what the supervisor did (as compose prints "exited with code 1").
    fn note(&self, text: &str) {
        if let Some(echo) = &self.echo {
            echo.note(text);
        }
    }

    /// The process ended on its own (not through [`Actor::stop`]).
    fn on_exit(&mut self, status: std::io::Result<ExitStatus>) {
        let Some(run) = self.child.take() else { return };
        let uptime = run.started.elapsed();
        self.record_exit(status.as_ref().ok());
        let clean = matches!(&status, Ok(s) if s.code() == Some(0));
        let how = match &status {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(code), _) => format!("exited with code {code}"),
                (None, Some(sig)) => format!("killed by {}", signal_name(sig)),
                (None, None) => "ended".to_owned(),
            },
            Err(e) => format!("lost ({e})"),
        };
        let mut l = lock(&self.live);
        if clean {
            l.state = State::Exited;
            drop(l);
            self.backoff.reset();
            self.note(&format!("{how}: clean stop, not restarted"));
        } else {
            l.state = State::Restarting;
            if let Err(e) = &status {
                l.last_error = Some(format!("cannot wait for process: {e}"));
            }
            drop(l);
            self.backoff.ran_for(uptime);
            let delay = self.schedule_restart();
            self.note(&format!(
                "{how}: crashed, restarting in {:.1} s",
                delay.as_secs_f64()
            ));
        }
    }

    fn record_exit(&self, status: Option<&ExitStatus>) {
        let mut l = lock(&self.live);
        l.pid = None;
        l.healthy = false;
        l.started_at = None;
        l.exit_code = status.and_then(ExitStatus::code);
        l.exit_signal = status.and_then(ExitStatusExt::signal).map(signal_name);
    }

    /// Stops the process (SIGTERM, SIGKILL after the stop timeout) and cancels any pending
    /// restart; the service is `stopped` afterwards.
    async fn stop(&mut self) {
        self.restart_at = None;
        if let Some(mut run) = self.child.take() {
            if let Some(pid) = run.child.id() {
                let _ = signal(pid, Signal::SIGTERM);
                // A paused (SIGSTOP) process only acts on SIGTERM once it runs again.
                let _ = signal(pid, Signal::SIGCONT);
            }
            let status =
                match tokio::time::timeout(self.policy.stop_timeout, run.child.wait()).await {
                    Ok(Ok(status)) => Some(status),
                    _ => {
                        // start_kill + wait; an error means it is already gone.
                        let _ = run.child.kill().await;
                        run.child.wait().await.ok()
                    }
                };
            self.record_exit(status.as_ref());
        }
        let mut l = lock(&self.live);
        l.state = State::Stopped;
        l.pid = None;
        l.healthy = false;
    }
}

/// `9` → `SIGKILL`.
fn signal_name(sig: i32) -> String {
    Signal::try_from(sig).map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_owned())
}

fn signal(pid: u32, sig: Signal) -> nix::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| nix::Error::EINVAL)?;
    kill(Pid::from_raw(pid), sig)
}

/// Probes a service every health interval while it runs, for `ctl status`.
async fn health_loop(
    spec: Arc<ServiceSpec>,
    live: Arc<Mutex<Live>>,
    policy: Policy,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(policy.health_interval) => {}
        }
        let pid = {
            let l = lock(&live);
            (l.state == State::Running).then_some(l.pid).flatten()
        };
        let Some(pid) = pid else { continue };
        let ok = health::probe(
            &spec.health,
            spec.port,
            spec.tls.as_ref(),
            policy.health_timeout,
        )
        .await;
        let mut l = lock(&live);
        // Only if the same process is still running: a result about a previous
        // incarnation must not mark the new one healthy.
        if l.pid == Some(pid) && l.state == State::Running {
            l.healthy = ok;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets_after_a_long_run() {
        let mut b = Backoff::new(&Policy::default());
        let ms = |d: Duration| d.as_millis();
        let delays: Vec<u128> = (0..7).map(|_| ms(b.next_delay())).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 10000, 10000]);
        b.ran_for(Duration::from_secs(29));
        assert_eq!(ms(b.next_delay()), 10000);
        b.ran_for(Duration::from_secs(30));
        assert_eq!(ms(b.next_delay()), 500);
    }
}
