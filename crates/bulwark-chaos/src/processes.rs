//! How the controller reaches the processes of a cluster: a trait, implemented by the
//! supervisor of `bulwark up` (`bulwark-cluster`), so this crate links no supervisor and the
//! dependency points from the cluster to the chaos crate.

use futures::future::BoxFuture;
use nix::sys::signal::Signal;

/// Why a process action failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProcessError {
    /// No supervised service has this name.
    #[error("unknown service '{0}'")]
    Unknown(String),
    /// The service has no running process to signal.
    #[error("service '{0}' is not running")]
    NotRunning(String),
    /// The supervisor refused or failed.
    #[error("{0}")]
    Failed(String),
}

/// The processes of a cluster, as the supervisor runs them.
///
/// Every method acts on the service's *current* process, through the supervisor's actor
/// that owns it, so a pid is never signalled after the supervisor reaped it.
pub trait Processes: Send + Sync + std::fmt::Debug {
    /// The pid of the service's running process, if any.
    fn pid(&self, service: &str) -> Result<Option<u32>, ProcessError>;

    /// Sends `signal` to the service's running process and returns its pid; with
    /// `only_pid`, only if that is still the running process (otherwise `NotRunning`).
    fn signal<'a>(
        &'a self,
        service: &'a str,
        signal: Signal,
        only_pid: Option<u32>,
    ) -> BoxFuture<'a, Result<u32, ProcessError>>;

    /// Starts the service if it is not running (after a stop fault).
    fn start<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Result<(), ProcessError>>;

    /// Stops the service gracefully and starts it again.
    fn restart<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Result<(), ProcessError>>;
}

/// Identifies one process across pid reuse: its pid and its start time in clock ticks since
/// boot (field 22 of `/proc/<pid>/stat`). `None` if the process does not exist.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: skip past it.
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields from 3 on; starttime is field 22, so index 19 here.
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ticks_identify_a_live_process_only() {
        let me = std::process::id();
        let t = start_ticks(me);
        assert!(t.is_some());
        assert_eq!(start_ticks(me), t, "stable for one process");
        assert_eq!(start_ticks(u32::MAX), None);
    }
}
