//! The fault model: every fault is a typed value, injected with a time to live.
//!
//! A fault is validated against the [`ClusterMap`] before anything is journaled, and
//! planned into [`Undo`] steps (what removing it takes) before it is applied; see
//! `docs/ARCHITECTURE.md`, "Journal and TTL invariants".

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cluster::ClusterMap;

/// The longest a fault may live: a forgotten fault must not outlast a game day.
pub const MAX_TTL: Duration = Duration::from_secs(3600);
/// The shortest crash-loop interval (faster would only test the supervisor's backoff).
pub const MIN_CRASH_INTERVAL_MS: u64 = 100;

/// One fault. The JSON form is tagged by `type`: `{"type":"pause","service":"db_g2"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// SIGKILL the service's process: a crash, which the supervisor restarts (with its
    /// backoff). Nothing to undo; the fault stays listed until its TTL.
    Kill {
        /// Service name.
        service: String,
    },
    /// SIGTERM: a clean stop, which the supervisor does not restart; the service is started
    /// again when the fault ends.
    Stop {
        /// Service name.
        service: String,
    },
    /// SIGSTOP until the fault ends, then SIGCONT: a hung process that keeps its sockets.
    Pause {
        /// Service name.
        service: String,
    },
    /// A graceful restart (SIGTERM, wait, start), once.
    Restart {
        /// Service name.
        service: String,
    },
    /// SIGKILL the service every `interval_ms` until the fault ends; the supervisor keeps
    /// restarting it with a growing backoff.
    CrashLoop {
        /// Service name.
        service: String,
        /// Time between kills (at least 100 ms).
        #[serde(default = "default_crash_interval")]
        interval_ms: u64,
    },
}

fn default_crash_interval() -> u64 {
    1000
}

/// A fault as a client asks for it: the fault, its time to live and the run it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRequest {
    /// What to break.
    pub fault: Fault,
    /// How long it lasts, in milliseconds (1 ms to one hour).
    pub ttl_ms: u64,
    /// The experiment run that asked for it; a run's rollback removes all of them.
    #[serde(default)]
    pub run: Option<String>,
}

/// A fault that does not fit the cluster or the limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FaultError {
    /// The offending field (`service`, `ttl_ms`, …).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl FaultError {
    fn new(field: &str, message: impl Into<String>) -> FaultError {
        FaultError {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

impl Fault {
    /// The kind, as in metrics and logs (`pause`, `crash_loop`).
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Kill { .. } => "kill",
            Fault::Stop { .. } => "stop",
            Fault::Pause { .. } => "pause",
            Fault::Restart { .. } => "restart",
            Fault::CrashLoop { .. } => "crash_loop",
        }
    }

    /// What it targets, for people (`db_g2`).
    pub fn target(&self) -> String {
        match self {
            Fault::Kill { service }
            | Fault::Stop { service }
            | Fault::Pause { service }
            | Fault::Restart { service }
            | Fault::CrashLoop { service, .. } => service.clone(),
        }
    }

    /// The services this fault impacts directly (for the experiment report).
    pub fn services(&self) -> Vec<String> {
        vec![self.target()]
    }

    /// Checks the fault against the cluster: its targets exist and its arguments are in
    /// range. Nothing is journaled or applied before this passes.
    pub fn validate(&self, cluster: &ClusterMap) -> Result<(), FaultError> {
        match self {
            Fault::Kill { service }
            | Fault::Stop { service }
            | Fault::Pause { service }
            | Fault::Restart { service } => check_service(cluster, service),
            Fault::CrashLoop {
                service,
                interval_ms,
            } => {
                check_service(cluster, service)?;
                if *interval_ms < MIN_CRASH_INTERVAL_MS {
                    return Err(FaultError::new(
                        "interval_ms",
                        format!("must be at least {MIN_CRASH_INTERVAL_MS}"),
                    ));
                }
                Ok(())
            }
        }
    }
}

fn check_service(cluster: &ClusterMap, service: &str) -> Result<(), FaultError> {
    if cluster.has_service(service) {
        Ok(())
    } else {
        Err(FaultError::new(
            "service",
            format!(
                "unknown service '{service}' (known: {})",
                cluster.services.join(", ")
            ),
        ))
    }
}

impl FaultRequest {
    /// Validates the fault and the TTL.
    pub fn validate(&self, cluster: &ClusterMap) -> Result<(), FaultError> {
        if self.ttl_ms == 0 || self.ttl_ms > MAX_TTL.as_millis() as u64 {
            return Err(FaultError::new(
                "ttl_ms",
                format!(
                    "must be between 1 and {} (one hour); got {}",
                    MAX_TTL.as_millis(),
                    self.ttl_ms
                ),
            ));
        }
        if let Some(run) = &self.run
            && (run.is_empty() || run.len() > 128)
        {
            return Err(FaultError::new("run", "must be 1 to 128 characters"));
        }
        self.fault.validate(cluster)
    }
}

/// One step of removing a fault. Steps are idempotent: undoing what is already gone is a
/// success, so a step may run again after a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Undo {
    /// Send `signal` to `pid`, only if it is still the process that started at
    /// `start_ticks` (pids are reused).
    Signal {
        /// Service the process belongs (belonged) to.
        service: String,
        /// Its pid.
        pid: u32,
        /// Its start time, from `/proc/<pid>/stat`.
        start_ticks: u64,
        /// Signal name (`SIGCONT`).
        signal: String,
    },
    /// Start the service through the supervisor if it is not running.
    Start {
        /// Service name.
        service: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> ClusterMap {
        ClusterMap {
            services: vec!["db_g1".into(), "app_ap".into()],
            ..ClusterMap::default()
        }
    }

    #[test]
    fn json_form_is_tagged_by_type() {
        let f: Fault = serde_json::from_str(r#"{"type":"pause","service":"db_g1"}"#).unwrap();
        assert_eq!(
            f,
            Fault::Pause {
                service: "db_g1".into()
            }
        );
        let f: Fault = serde_json::from_str(r#"{"type":"crash_loop","service":"db_g1"}"#).unwrap();
        assert_eq!(f.kind(), "crash_loop");
        assert!(serde_json::from_str::<Fault>(r#"{"type":"melt","service":"db_g1"}"#).is_err());
        assert!(
            serde_json::from_str::<Fault>(r#"{"type":"pause","service":"db_g1","x":1}"#).is_err(),
            "unknown fields are refused"
        );
    }

    #[test]
    fn validation_names_the_field() {
        let c = cluster();
        let req = |fault, ttl_ms| FaultRequest {
            fault,
            ttl_ms,
            run: None,
        };
        let pause = Fault::Pause {
            service: "db_g1".into(),
        };
        assert!(req(pause.clone(), 1000).validate(&c).is_ok());
        assert_eq!(
            req(pause.clone(), 0).validate(&c).unwrap_err().field,
            "ttl_ms"
        );
        assert_eq!(
            req(pause, 3_600_001).validate(&c).unwrap_err().field,
            "ttl_ms"
        );
        let e = req(
            Fault::Kill {
                service: "db_g9".into(),
            },
            1000,
        )
        .validate(&c)
        .unwrap_err();
        assert_eq!(e.field, "service");
        assert!(e.message.contains("db_g1, app_ap"), "{e}");
        let e = req(
            Fault::CrashLoop {
                service: "db_g1".into(),
                interval_ms: 5,
            },
            1000,
        )
        .validate(&c)
        .unwrap_err();
        assert_eq!(e.field, "interval_ms");
    }
}
