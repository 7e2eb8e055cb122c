//! Experiments in the Chaos Toolkit format (SPEC CHAOS-2): title, description, a
//! steady-state hypothesis of probes with tolerances, a method of actions and probes (with
//! pauses), and rollbacks.
//!
//! Providers: Chaos Toolkit's `http`, and Bulwark's own, `{"type": "bulwark", "func": …,
//! "arguments": {…}}`, where `func` is a fault kind (an action; `arguments` are the fault's
//! fields plus `duration`, its TTL in seconds) or one of the probes and actions of [`Call`].
//!
//! A file is parsed and validated whole — shape, fault arguments, TTLs, tolerances, and the
//! services it names against the running cluster — before anything runs; every error names
//! its line and field (invariant 6 in `docs/ARCHITECTURE.md`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::cluster::ClusterMap;
use crate::fault::{Fault, MAX_TTL};
use crate::locate::{line_of, parse_path};
use crate::tolerance::Tolerance;

/// Largest experiment file accepted.
pub const MAX_FILE_BYTES: usize = 1 << 20;
/// Default bound on waiting for the steady state to hold again after the faults.
pub const DEFAULT_RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// A Chaos Toolkit experiment, as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Format version (Chaos Toolkit uses `1.0.0`).
    #[serde(default)]
    pub version: Option<String>,
    /// What the experiment shows.
    pub title: String,
    /// Longer text.
    #[serde(default)]
    pub description: Option<String>,
    /// Free tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Chaos Toolkit's contributions map (kept, not used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contributions: Option<Value>,
    /// Settings; Bulwark reads `recovery_timeout` (seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration: Option<Map<String, Value>>,
    /// The steady state: probes that must all be within tolerance before and after.
    #[serde(rename = "steady-state-hypothesis", default)]
    pub steady_state_hypothesis: Option<Hypothesis>,
    /// What happens: actions and probes, in order.
    pub method: Vec<Activity>,
    /// Run at the end whatever happened (after the run's faults are removed).
    #[serde(default)]
    pub rollbacks: Vec<Activity>,
}

/// The steady-state hypothesis.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hypothesis {
    /// What it says.
    pub title: String,
    /// Probes with tolerances.
    pub probes: Vec<Activity>,
}

/// Action or probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActivityKind {
    /// Changes something (injects a fault).
    Action,
    /// Observes something.
    Probe,
}

/// Seconds to wait before and after an activity.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pauses {
    /// Before it starts.
    #[serde(default)]
    pub before: Option<f64>,
    /// After it ends.
    #[serde(default)]
    pub after: Option<f64>,
}

/// One activity, as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Activity {
    /// `action` or `probe`.
    #[serde(rename = "type")]
    pub kind: ActivityKind,
    /// Its name in the report.
    pub name: String,
    /// What it calls.
    pub provider: Provider,
    /// For probes: what value is acceptable (Chaos Toolkit's tolerance forms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<Value>,
    /// Waits around it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pauses: Option<Pauses>,
    /// Run it concurrently with what follows; the method waits for it at its end.
    #[serde(default)]
    pub background: bool,
}

/// Who performs an activity.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Provider {
    /// An HTTP request (Chaos Toolkit's `http` provider).
    Http(HttpProvider),
    /// Bulwark's provider: faults and cluster probes.
    Bulwark(BulwarkProvider),
}

/// Chaos Toolkit's HTTP provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProvider {
    /// The URL.
    pub url: String,
    /// Method (default GET).
    #[serde(default = "default_method")]
    pub method: String,
    /// Request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Body: a JSON value (sent as JSON) or a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<Value>,
    /// Timeout in seconds (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
}

fn default_method() -> String {
    "GET".to_owned()
}

/// Bulwark's provider, as written: a function name and its arguments.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulwarkProvider {
    /// A fault kind (`pause`, `latency`, …) or a probe/action name (`latency_percentile`).
    pub func: String,
    /// Its arguments.
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

/// What an activity does, typed and validated.
#[derive(Debug, Clone)]
pub enum Call {
    /// Inject a fault for `duration` (its TTL).
    Fault {
        /// The fault.
        fault: Fault,
        /// Its TTL.
        duration: Duration,
    },
    /// An HTTP request; its value is `{"status", "body", "latency_ms"}`.
    Http(HttpProvider),
    /// Latency of `rate` requests per second to `url` over `window`; value: the
    /// `percentile`'s latency in ms (`{"latency_ms", "requests", "errors"}`).
    LatencyPercentile {
        /// Target URL.
        url: String,
        /// Method.
        method: String,
        /// How long to measure.
        window: Duration,
        /// Requests per second.
        rate: u32,
        /// Which percentile (0 < p ≤ 100).
        percentile: f64,
    },
    /// A service's supervisor status: `{"state", "healthy", "pid", "restarts"}`.
    ServiceStatus {
        /// Service name.
        service: String,
    },
    /// Start a service that is not running (a rollback after a stop).
    StartService {
        /// Service name.
        service: String,
    },
    /// Remove every fault of this run now (otherwise they end at their TTL).
    RemoveFaults,
    /// Whether every replica holds the same record of `key` (read directly); value:
    /// `{"agree", "divergent", "replicas"}`, primary `agree`.
    ReplicasAgree {
        /// The key.
        key: String,
    },
    /// Writes at `rate` per second for `duration` (`{i}` in the URL is the request
    /// number); then every acknowledged write is read back through `verify_url`. Value:
    /// `{"sent", "ok", "refused", "lost", "http_errors", "unreadable"}`, where `lost` counts
    /// requests sent and never answered, and `unreadable` acknowledged writes whose value
    /// could not be read back.
    Load {
        /// Write URL (POST), with `{i}`.
        url: String,
        /// Read URL (GET) with `{i}`, answering `{"value": …}`.
        verify_url: Option<String>,
        /// Requests per second.
        rate: u32,
        /// How long.
        duration: Duration,
    },
}

/// One activity, validated.
#[derive(Debug, Clone)]
pub struct Step {
    /// Name.
    pub name: String,
    /// Action or probe.
    pub kind: ActivityKind,
    /// What it does.
    pub call: Call,
    /// Acceptable values (probes).
    pub tolerance: Option<Tolerance>,
    /// Wait before.
    pub pause_before: Duration,
    /// Wait after.
    pub pause_after: Duration,
    /// Concurrent with the following activities.
    pub background: bool,
}

/// An experiment ready to run: every activity typed and validated.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The experiment as written (for the report and the API).
    pub experiment: Experiment,
    /// Steady-state probes.
    pub hypothesis: Vec<Step>,
    /// The method.
    pub method: Vec<Step>,
    /// Rollbacks.
    pub rollbacks: Vec<Step>,
    /// Bound on waiting for the steady state after the faults.
    pub recovery_timeout: Duration,
}

/// A problem in an experiment file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("line {line}, field {field}: {message}")]
pub struct ExperimentError {
    /// 1-based line in the file.
    pub line: usize,
    /// Path of the field (`method[1].provider.arguments.service`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Parses and validates an experiment file against `cluster`, after replacing every
/// `${name}` with the string value of `name` in its `configuration` (as Chaos Toolkit
/// does), or in `overrides` (`bulwark chaos run --var name=value`), which win.
pub fn load(
    text: &str,
    overrides: &[(String, String)],
    cluster: &ClusterMap,
) -> Result<Plan, ExperimentError> {
    let first = parse(text)?;
    let mut vars: Vec<(String, String)> = first
        .configuration
        .iter()
        .flatten()
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
        .collect();
    vars.retain(|(k, _)| !overrides.iter().any(|(o, _)| o == k));
    vars.extend(overrides.iter().cloned());
    let mut text = text.to_owned();
    for (k, v) in &vars {
        // Inside JSON strings: escape what JSON needs escaped.
        let escaped = serde_json::to_string(v).unwrap_or_default();
        text = text.replace(&format!("${{{k}}}"), &escaped[1..escaped.len() - 1]);
    }
    let experiment = parse(&text)?;
    plan(experiment, &text, cluster)
}

/// Parses the file's JSON into an [`Experiment`] (shape only).
pub fn parse(text: &str) -> Result<Experiment, ExperimentError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(ExperimentError {
            line: 1,
            field: ".".into(),
            message: format!("the file is larger than {MAX_FILE_BYTES} bytes"),
        });
    }
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.inner();
        // Syntax errors have an exact position; data errors are placed at their field.
        let line = if inner.is_syntax() || inner.is_eof() {
            inner.line()
        } else {
            line_of(text, &parse_path(&field))
        };
        ExperimentError {
            line,
            field,
            message: strip_position(&inner.to_string()),
        }
    })
}

/// `serde_json` appends " at line L column C"; the error already says where.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

/// Types and validates every activity.
pub fn plan(
    experiment: Experiment,
    text: &str,
    cluster: &ClusterMap,
) -> Result<Plan, ExperimentError> {
    let err = |field: String, message: String| ExperimentError {
        line: line_of(text, &parse_path(&field)),
        field,
        message,
    };
    if experiment.title.trim().is_empty() {
        return Err(err("title".into(), "must not be empty".into()));
    }
    if experiment.method.is_empty() {
        return Err(err("method".into(), "needs at least one activity".into()));
    }
    let recovery_timeout = match experiment
        .configuration
        .as_ref()
        .and_then(|c| c.get("recovery_timeout"))
    {
        None => DEFAULT_RECOVERY_TIMEOUT,
        Some(v) => seconds(v).ok_or_else(|| {
            err(
                "configuration.recovery_timeout".into(),
                "expected seconds between 0 and 3600".into(),
            )
        })?,
    };
    let steps = |acts: &[Activity], base: &str| -> Result<Vec<Step>, ExperimentError> {
        acts.iter()
            .enumerate()
            .map(|(i, a)| step(a, &format!("{base}[{i}]"), cluster, &err))
            .collect()
    };
    let hypothesis = match &experiment.steady_state_hypothesis {
        Some(h) => {
            let s = steps(&h.probes, "steady-state-hypothesis.probes")?;
            for (i, st) in s.iter().enumerate() {
                let field = format!("steady-state-hypothesis.probes[{i}]");
                if st.kind != ActivityKind::Probe {
                    return Err(err(field, "the hypothesis holds probes only".into()));
                }
                if st.tolerance.is_none() {
                    return Err(err(
                        format!("{field}.tolerance"),
                        "a steady-state probe needs a tolerance".into(),
                    ));
                }
            }
            s
        }
        None => Vec::new(),
    };
    let method = steps(&experiment.method, "method")?;
    let rollbacks = steps(&experiment.rollbacks, "rollbacks")?;
    Ok(Plan {
        experiment,
        hypothesis,
        method,
        rollbacks,
        recovery_timeout,
    })
}

fn seconds(v: &Value) -> Option<Duration> {
    let s = v.as_f64()?;
    (s.is_finite() && (0.0..=3600.0).contains(&s)).then(|| Duration::from_secs_f64(s))
}

fn step(
    a: &Activity,
    field: &str,
    cluster: &ClusterMap,
    err: &dyn Fn(String, String) -> ExperimentError,
) -> Result<Step, ExperimentError> {
    if a.name.trim().is_empty() {
        return Err(err(format!("{field}.name"), "must not be empty".into()));
    }
    let pause = |which: &str, v: Option<f64>| -> Result<Duration, ExperimentError> {
        match v {
            None => Ok(Duration::ZERO),
            Some(s) => seconds(&Value::from(s)).ok_or_else(|| {
                err(
                    format!("{field}.pauses.{which}"),
                    "expected seconds between 0 and 3600".into(),
                )
            }),
        }
    };
    let pauses = a.pauses.clone().unwrap_or_default();
    let call = match &a.provider {
        Provider::Http(h) => {
            check_url(&h.url).map_err(|m| err(format!("{field}.provider.url"), m))?;
            if let Some(t) = h.timeout
                && !(t > 0.0 && t <= 60.0)
            {
                return Err(err(
                    format!("{field}.provider.timeout"),
                    "expected seconds between 0 and 60".into(),
                ));
            }
            Call::Http(h.clone())
        }
        Provider::Bulwark(b) => bulwark_call(b, &format!("{field}.provider"), cluster, err)?,
    };
    let is_action = matches!(
        call,
        Call::Fault { .. } | Call::StartService { .. } | Call::RemoveFaults
    );
    if is_action != (a.kind == ActivityKind::Action) {
        return Err(err(
            format!("{field}.type"),
            format!(
                "'{}' is {}",
                a.name,
                if is_action {
                    "an action (it changes the cluster)"
                } else {
                    "a probe (it only observes)"
                }
            ),
        ));
    }
    if a.background && is_action {
        return Err(err(
            format!("{field}.background"),
            "only probes run in the background (faults are applied in method order)".into(),
        ));
    }
    let tolerance = match &a.tolerance {
        None => None,
        Some(v) => {
            Some(Tolerance::from_value(v).map_err(|m| err(format!("{field}.tolerance"), m))?)
        }
    };
    Ok(Step {
        name: a.name.clone(),
        kind: a.kind,
        call,
        tolerance,
        pause_before: pause("before", pauses.before)?,
        pause_after: pause("after", pauses.after)?,
        background: a.background,
    })
}

fn check_url(url: &str) -> Result<(), String> {
    match reqwest::Url::parse(url) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => Ok(()),
        Ok(u) => Err(format!("scheme '{}' is not http", u.scheme())),
        Err(e) => Err(format!("not a URL: {e}")),
    }
}

/// Typed arguments of Bulwark's probes and actions.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LatencyArgs {
    url: String,
    #[serde(default = "default_method")]
    method: String,
    #[serde(default = "default_window")]
    window: f64,
    #[serde(default = "default_rate")]
    rate: u32,
    #[serde(default = "default_percentile")]
    percentile: f64,
}

fn default_window() -> f64 {
    2.0
}
fn default_rate() -> u32 {
    20
}
fn default_percentile() -> f64 {
    99.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceArgs {
    service: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadArgs {
    url: String,
    #[serde(default)]
    verify_url: Option<String>,
    #[serde(default = "default_rate")]
    rate: u32,
    duration: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyArgs {
    key: String,
}

fn typed<T: serde::de::DeserializeOwned>(
    args: &Map<String, Value>,
    field: &str,
    err: &dyn Fn(String, String) -> ExperimentError,
) -> Result<T, ExperimentError> {
    serde_path_to_error::deserialize(Value::Object(args.clone())).map_err(|e| {
        let path = e.path().to_string();
        let f = if path == "." {
            format!("{field}.arguments")
        } else {
            format!("{field}.arguments.{path}")
        };
        err(f, e.inner().to_string())
    })
}

/// The names Bulwark's provider knows besides fault kinds.
const FUNCS: &[&str] = &[
    "latency_percentile",
    "replicas_agree",
    "service_status",
    "start_service",
    "remove_faults",
    "load",
];

fn bulwark_call(
    b: &BulwarkProvider,
    field: &str,
    cluster: &ClusterMap,
    err: &dyn Fn(String, String) -> ExperimentError,
) -> Result<Call, ExperimentError> {
    let check_service = |s: &str| -> Result<(), ExperimentError> {
        if cluster.has_service(s) {
            Ok(())
        } else {
            Err(err(
                format!("{field}.arguments.service"),
                format!(
                    "unknown service '{s}' (known: {})",
                    cluster.services.join(", ")
                ),
            ))
        }
    };
    Ok(match b.func.as_str() {
        "latency_percentile" => {
            let a: LatencyArgs = typed(&b.arguments, field, err)?;
            check_url(&a.url).map_err(|m| err(format!("{field}.arguments.url"), m))?;
            if !(a.percentile > 0.0 && a.percentile <= 100.0) {
                return Err(err(
                    format!("{field}.arguments.percentile"),
                    "expected 0 < percentile ≤ 100".into(),
                ));
            }
            if !(1..=10_000).contains(&a.rate) {
                return Err(err(
                    format!("{field}.arguments.rate"),
                    "expected 1 to 10000 per second".into(),
                ));
            }
            let window = seconds(&Value::from(a.window))
                .filter(|w| !w.is_zero() && *w <= Duration::from_secs(600))
                .ok_or_else(|| {
                    err(
                        format!("{field}.arguments.window"),
                        "expected 0 < seconds ≤ 600".into(),
                    )
                })?;
            Call::LatencyPercentile {
                url: a.url,
                method: a.method,
                window,
                rate: a.rate,
                percentile: a.percentile,
            }
        }
        "service_status" => {
            let a: ServiceArgs = typed(&b.arguments, field, err)?;
            check_service(&a.service)?;
            Call::ServiceStatus { service: a.service }
        }
        "start_service" => {
            let a: ServiceArgs = typed(&b.arguments, field, err)?;
            check_service(&a.service)?;
            Call::StartService { service: a.service }
        }
        "replicas_agree" => {
            let a: KeyArgs = typed(&b.arguments, field, err)?;
            Call::ReplicasAgree { key: a.key }
        }
        "remove_faults" => {
            let _: NoArgs = typed(&b.arguments, field, err)?;
            Call::RemoveFaults
        }
        "load" => {
            let a: LoadArgs = typed(&b.arguments, field, err)?;
            check_url(&a.url).map_err(|m| err(format!("{field}.arguments.url"), m))?;
            if let Some(v) = &a.verify_url {
                check_url(v).map_err(|m| err(format!("{field}.arguments.verify_url"), m))?;
            }
            if !(1..=10_000).contains(&a.rate) {
                return Err(err(
                    format!("{field}.arguments.rate"),
                    "expected 1 to 10000 per second".into(),
                ));
            }
            let duration = seconds(&Value::from(a.duration))
                .filter(|d| !d.is_zero() && *d <= Duration::from_secs(600))
                .ok_or_else(|| {
                    err(
                        format!("{field}.arguments.duration"),
                        "expected 0 < seconds ≤ 600".into(),
                    )
                })?;
            Call::Load {
                url: a.url,
                verify_url: a.verify_url,
                rate: a.rate,
                duration,
            }
        }
        kind => {
            // A fault: its fields, plus `duration` (the TTL, in seconds).
            let mut args = b.arguments.clone();
            let duration = args.remove("duration").ok_or_else(|| {
                err(
                    format!("{field}.arguments.duration"),
                    "a fault needs a duration (seconds): it is removed then at the latest".into(),
                )
            })?;
            let duration = seconds(&duration)
                .filter(|d| !d.is_zero() && *d <= MAX_TTL)
                .ok_or_else(|| {
                    err(
                        format!("{field}.arguments.duration"),
                        "expected 0 < seconds ≤ 3600".into(),
                    )
                })?;
            args.insert("type".into(), Value::from(kind));
            let fault: Fault =
                serde_path_to_error::deserialize(Value::Object(args)).map_err(|e| {
                    let path = e.path().to_string();
                    let message = e.inner().to_string();
                    if (path == "." || path == "type") && message.contains("unknown variant") {
                        err(
                            format!("{field}.func"),
                            format!(
                                "unknown function '{kind}'; expected a fault kind or one of {}",
                                FUNCS.join(", ")
                            ),
                        )
                    } else if path == "." {
                        err(format!("{field}.arguments"), message)
                    } else {
                        err(format!("{field}.arguments.{path}"), message)
                    }
                })?;
            fault
                .validate(cluster)
                .map_err(|e| err(format!("{field}.arguments.{}", e.field), e.message))?;
            Call::Fault { fault, duration }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> ClusterMap {
        ClusterMap {
            services: vec!["db_g1".into(), "db_g2".into(), "app_ap".into()],
            ..ClusterMap::default()
        }
    }

    const GOOD: &str = r#"{
  "version": "1.0.0",
  "title": "replica pause",
  "steady-state-hypothesis": {
    "title": "AP answers",
    "probes": [
      {"type": "probe", "name": "health", "tolerance": 200,
       "provider": {"type": "http", "url": "http://127.0.0.1:5001/health"}}
    ]
  },
  "method": [
    {"type": "action", "name": "pause db_g2",
     "provider": {"type": "bulwark", "func": "pause", "arguments": {"service": "db_g2", "duration": 3}},
     "pauses": {"after": 1}},
    {"type": "probe", "name": "db_g2 status",
     "provider": {"type": "bulwark", "func": "service_status", "arguments": {"service": "db_g2"}}}
  ],
  "rollbacks": [
    {"type": "action", "name": "start db_g2",
     "provider": {"type": "bulwark", "func": "start_service", "arguments": {"service": "db_g2"}}}
  ]
}"#;

    #[test]
    fn a_good_file_types_every_activity() {
        let plan = load(GOOD, &[], &cluster()).expect("valid");
        assert_eq!(plan.hypothesis.len(), 1);
        assert!(matches!(
            &plan.method[0].call,
            Call::Fault { fault: Fault::Pause { service }, duration } if service == "db_g2" && *duration == Duration::from_secs(3)
        ));
        assert_eq!(plan.method[0].pause_after, Duration::from_secs(1));
        assert!(matches!(plan.rollbacks[0].call, Call::StartService { .. }));
        assert_eq!(plan.recovery_timeout, DEFAULT_RECOVERY_TIMEOUT);
    }

    #[test]
    fn configuration_values_fill_placeholders_and_vars_override_them() {
        let text = GOOD.replace("http://127.0.0.1:5001", "${ap}").replace(
            r#""title": "replica pause","#,
            r#""title": "replica pause", "configuration": {"ap": "http://127.0.0.1:5001"},"#,
        );
        let plan = load(&text, &[], &cluster()).expect("valid");
        assert!(
            matches!(&plan.hypothesis[0].call, Call::Http(h) if h.url == "http://127.0.0.1:5001/health")
        );
        let plan = load(
            &text,
            &[("ap".into(), "http://127.0.0.1:25001".into())],
            &cluster(),
        )
        .expect("valid");
        assert!(
            matches!(&plan.hypothesis[0].call, Call::Http(h) if h.url == "http://127.0.0.1:25001/health")
        );
    }

    fn error(text: &str) -> ExperimentError {
        load(text, &[], &cluster()).expect_err("invalid")
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        let e = error(&GOOD.replace(
            r#""service": "db_g2", "duration": 3"#,
            r#""service": "db_g9", "duration": 3"#,
        ));
        assert_eq!(
            (e.line, e.field.as_str()),
            (13, "method[0].provider.arguments.service"),
            "{e}"
        );
        assert!(e.message.contains("db_g9"), "{e}");

        let e = error(&GOOD.replace(r#", "duration": 3"#, ""));
        assert_eq!(e.field, "method[0].provider.arguments.duration", "{e}");
        assert_eq!(e.line, 13);

        let e = error(&GOOD.replace(r#""func": "pause""#, r#""func": "melt""#));
        assert_eq!(e.field, "method[0].provider.func", "{e}");

        let e = error(&GOOD.replace(
            r#""pauses": {"after": 1}"#,
            r#""pauses": {"after": "soon"}"#,
        ));
        assert_eq!(
            (e.line, e.field.as_str()),
            (14, "method[0].pauses.after"),
            "{e}"
        );

        let e = error(&GOOD.replace(r#""tolerance": 200,"#, ""));
        assert_eq!(
            e.field, "steady-state-hypothesis.probes[0].tolerance",
            "{e}"
        );

        let e = error(&GOOD.replace(
            r#""type": "probe", "name": "db_g2 status""#,
            r#""type": "action", "name": "db_g2 status""#,
        ));
        assert_eq!(e.field, "method[1].type", "{e}");

        let e = error(&GOOD.replace(
            r#""title": "replica pause","#,
            r#""title": "replica pause", "methd": [],"#,
        ));
        assert_eq!((e.line, e.field.as_str()), (3, "methd"), "{e}");

        // A syntax error: the exact position.
        let e = error(&GOOD.replace(r#""version": "1.0.0","#, r#""version": "1.0.0""#));
        assert_eq!(e.line, 3, "{e}");

        let e = error(&GOOD.replace("http://127.0.0.1:5001/health", "ftp://x"));
        assert_eq!(
            e.field, "steady-state-hypothesis.probes[0].provider.url",
            "{e}"
        );
    }
}
