//! The report of one experiment run: pass or fail per probe, the faults and the services
//! they impacted, time to recover; as a table for people and JSON for scripts.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Still running (API runs only).
    Running,
    /// The steady state held before, during (method probes) and after.
    Succeeded,
    /// The system deviated: a probe was out of tolerance, or the steady state did not hold
    /// again within the recovery timeout.
    Failed,
    /// The run did not get to judge the system: steady state not met before, a fault
    /// could not be injected, chaos disabled, or interrupted (Ctrl-C).
    Aborted,
}

impl RunStatus {
    /// Lower-case name (`succeeded`).
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Aborted => "aborted",
        }
    }
}

/// One activity's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActivityResult {
    /// `before`, `method`, `after` or `rollback`.
    pub phase: String,
    /// Its name.
    pub name: String,
    /// `action` or `probe`.
    pub kind: String,
    /// `pass` / `fail` for probes with a tolerance, `done` / `error` otherwise.
    pub result: String,
    /// The probe's primary value, or the fault id of an action.
    pub value: Value,
    /// Everything it observed.
    pub output: Value,
    /// Milliseconds from the start of the run.
    pub at_ms: u64,
    /// How long it took.
    pub duration_ms: u64,
}

impl ActivityResult {
    /// Whether it counts against the run.
    pub fn failed(&self) -> bool {
        self.result == "fail" || self.result == "error"
    }
}

/// A fault the run injected.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultRecord {
    /// Controller id.
    pub id: String,
    /// Kind.
    pub kind: String,
    /// Target.
    pub target: String,
    /// Milliseconds from the start of the run.
    pub applied_at_ms: u64,
    /// Its TTL.
    pub ttl_ms: u64,
}

/// One run's report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The run's id.
    pub run_id: String,
    /// The experiment's title.
    pub title: String,
    /// How it ended.
    pub status: RunStatus,
    /// Whether the system deviated from its steady state (Chaos Toolkit's `deviated`).
    pub deviated: bool,
    /// Why it was aborted, if it was.
    pub error: Option<String>,
    /// Wall-clock start (Unix ms).
    pub started_at_ms: u64,
    /// Total duration.
    pub duration_ms: u64,
    /// Every activity, in order.
    pub activities: Vec<ActivityResult>,
    /// Faults injected.
    pub faults: Vec<FaultRecord>,
    /// Services the faults targeted.
    pub impacted_services: Vec<String>,
    /// Milliseconds from the last fault removed to the steady state holding again.
    pub time_to_recover_ms: Option<u64>,
}

impl Report {
    /// The table `bulwark chaos run` prints.
    pub fn table(&self) -> String {
        let mut out = format!(
            "experiment: {}\nrun {}: {} in {:.1} s{}\n\n",
            self.title,
            self.run_id,
            self.status.as_str().to_ascii_uppercase(),
            self.duration_ms as f64 / 1000.0,
            if self.deviated { " (deviated)" } else { "" },
        );
        let header = ["PHASE", "ACTIVITY", "TYPE", "RESULT", "VALUE", "AT"];
        let rows: Vec<[String; 6]> = self
            .activities
            .iter()
            .map(|a| {
                let mut v = match &a.value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                if v.chars().count() > 40 {
                    v = v.chars().take(39).collect::<String>() + "…";
                }
                [
                    a.phase.clone(),
                    a.name.clone(),
                    a.kind.clone(),
                    a.result.clone(),
                    v,
                    format!("{:.1}s", a.at_ms as f64 / 1000.0),
                ]
            })
            .collect();
        let mut widths = header.map(|h| h.chars().count());
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut line = |cells: Vec<&str>| {
            let text: Vec<String> = cells
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out.push_str(text.join("  ").trim_end());
            out.push('\n');
        };
        line(header.to_vec());
        for r in &rows {
            line(r.iter().map(String::as_str).collect());
        }
        out.push('\n');
        for f in &self.faults {
            out.push_str(&format!(
                "fault {}: {} on {}, applied at {:.1}s for {:.1}s\n",
                f.id,
                f.kind,
                f.target,
                f.applied_at_ms as f64 / 1000.0,
                f.ttl_ms as f64 / 1000.0
            ));
        }
        out.push_str(&format!(
            "impacted services: {}\n",
            if self.impacted_services.is_empty() {
                "-".to_owned()
            } else {
                self.impacted_services.join(", ")
            }
        ));
        out.push_str(&format!(
            "time to recover: {}\n",
            self.time_to_recover_ms.map_or_else(
                || "-".to_owned(),
                |ms| format!("{:.2} s", ms as f64 / 1000.0)
            )
        ));
        if let Some(e) = &self.error {
            out.push_str(&format!("error: {e}\n"));
        }
        out
    }
}
