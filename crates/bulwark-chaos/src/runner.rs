//! Runs an experiment [`Plan`]: steady state before, the method, wait for the faults to end,
//! steady state after (timing the recovery), rollbacks. The same code runs in `bulwark chaos
//! run` and inside `up` (`POST /api/v1/chaos/experiments/{id}/run`); both reach the
//! controller through the control API, so a runner never applies a fault itself and a
//! runner that dies leaves its faults to the controller's TTLs.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::client::ChaosClient;
use crate::controller::now_ms;
use crate::experiment::{ActivityKind, Call, Plan, Step};
use crate::fault::FaultRequest;
use crate::probes::{self, Output};
use crate::report::{ActivityResult, FaultRecord, Report, RunStatus};

/// How often the runner looks whether its faults are gone and the steady state is back.
const POLL: Duration = Duration::from_millis(100);
/// How long the steady state may take to hold before the method starts.
const STEADY_BEFORE_WAIT: Duration = Duration::from_secs(10);
/// Slack over the longest TTL when waiting for the controller to remove the faults.
const TTL_SLACK: Duration = Duration::from_secs(10);

/// Where the runner reports progress (an indicatif spinner for the CLI, nothing in `up`).
pub trait Progress: Send + Sync {
    /// A new step started.
    fn step(&self, text: &str);
}

/// No progress output.
#[derive(Debug)]
pub struct Quiet;

impl Progress for Quiet {
    fn step(&self, _text: &str) {}
}

/// A new run id: `r-` and 12 hex digits.
pub fn new_run_id() -> String {
    format!("r-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// Runs `plan` against the controller behind `client` until it ends or `interrupt`
/// resolves (then the run's faults are removed and its rollbacks run before returning).
pub async fn run(
    plan: &Plan,
    client: &ChaosClient,
    run_id: &str,
    interrupt: impl Future<Output = ()>,
    progress: &dyn Progress,
) -> Report {
    let mut r = Run {
        client: client.clone(),
        // Probes set their own timeouts; this bound only catches a probe without one.
        http: client
            .identity()
            .anonymous_client(Duration::from_secs(300), Duration::from_secs(5)),
        run_id: run_id.to_owned(),
        began: Instant::now(),
        report: Report {
            run_id: run_id.to_owned(),
            title: plan.experiment.title.clone(),
            status: RunStatus::Running,
            deviated: false,
            error: None,
            started_at_ms: now_ms(),
            duration_ms: 0,
            activities: Vec::new(),
            faults: Vec::new(),
            impacted_services: Vec::new(),
            time_to_recover_ms: None,
        },
        impacted: BTreeSet::new(),
        longest_ttl: Duration::ZERO,
    };
    let mut interrupt = std::pin::pin!(interrupt.fuse());
    let main = r.main(plan, progress);
    let outcome = {
        let mut main = std::pin::pin!(main);
        tokio::select! {
            o = &mut main => o,
            () = &mut interrupt => Err((RunStatus::Aborted, "interrupted: faults removed, rollbacks run".to_owned())),
        }
    };
    // Whatever happened: the run's faults go, then the rollbacks run.
    progress.step("rollback: removing this run's faults");
    let removed = r.client.remove_run(&r.run_id).await;
    if let Err(e) = removed {
        r.report
            .error
            .get_or_insert(format!("removing the run's faults: {e}"));
    }
    for (i, s) in plan.rollbacks.iter().enumerate() {
        progress.step(&format!(
            "rollback {}/{}: {}",
            i + 1,
            plan.rollbacks.len(),
            s.name
        ));
        let a = r.activity("rollback", s).await;
        r.report.activities.push(a);
    }
    match outcome {
        Ok(()) => {
            let failed = r
                .report
                .activities
                .iter()
                .any(|a| a.phase != "rollback" && a.failed());
            r.report.deviated = failed;
            r.report.status = if failed {
                RunStatus::Failed
            } else {
                RunStatus::Succeeded
            };
        }
        Err((status, why)) => {
            r.report.status = status;
            r.report.deviated = status == RunStatus::Failed;
            r.report.error = Some(why);
        }
    }
    r.report.impacted_services = r.impacted.into_iter().collect();
    r.report.duration_ms = r.began.elapsed().as_millis() as u64;
    r.report
}

struct Run {
    client: ChaosClient,
    http: reqwest::Client,
    run_id: String,
    began: Instant,
    report: Report,
    impacted: BTreeSet<String>,
    longest_ttl: Duration,
}

type Outcome = Result<(), (RunStatus, String)>;

impl Run {
    fn at_ms(&self) -> u64 {
        self.began.elapsed().as_millis() as u64
    }

    async fn main(&mut self, plan: &Plan, progress: &dyn Progress) -> Outcome {
        let status = self
            .client
            .status()
            .await
            .map_err(|e| (RunStatus::Aborted, e.to_string()))?;
        if !status.enabled {
            return Err((
                RunStatus::Aborted,
                "chaos is disabled: run `bulwark chaos enable` first".into(),
            ));
        }
        // 1. The steady state must hold before anything is broken. It is polled for a
        //    short while (a cluster still settling after the previous experiment, a
        //    health flag a loaded machine has not refreshed yet); only the last attempt
        //    is reported.
        progress.step("steady state before");
        let deadline = Instant::now() + STEADY_BEFORE_WAIT;
        loop {
            let mut results = Vec::new();
            for s in &plan.hypothesis {
                results.push(self.activity("before", s).await);
            }
            let failed = results.iter().find(|a| a.failed()).map(|a| a.name.clone());
            if failed.is_none() || Instant::now() >= deadline {
                self.report.activities.extend(results);
                if let Some(name) = failed {
                    return Err((
                        RunStatus::Aborted,
                        format!(
                            "steady state not met before the method ('{name}'): nothing injected"
                        ),
                    ));
                }
                break;
            }
            tokio::time::sleep(POLL * 5).await;
        }
        // 2. The method; background activities run alongside and are joined at its end.
        let mut background: Vec<BoxFuture<'static, ActivityResult>> = Vec::new();
        for (i, s) in plan.method.iter().enumerate() {
            progress.step(&format!(
                "method {}/{}: {}",
                i + 1,
                plan.method.len(),
                s.name
            ));
            tokio::time::sleep(s.pause_before).await;
            if s.background {
                background.push(self.detached(s));
            } else {
                let a = self.activity("method", s).await;
                let aborted = a.kind == "action" && a.failed();
                let error = a.output["error"].as_str().map(str::to_owned);
                self.report.activities.push(a);
                if aborted {
                    return Err((
                        RunStatus::Aborted,
                        format!("action '{}' failed: {}", s.name, error.unwrap_or_default()),
                    ));
                }
            }
            tokio::time::sleep(s.pause_after).await;
        }
        if !background.is_empty() {
            progress.step("waiting for background activities");
            for a in futures::future::join_all(background).await {
                self.report.activities.push(a);
            }
        }
        // 3. The faults end at their TTL (or now, if the method removed them).
        if !self.report.faults.is_empty() {
            progress.step("waiting for the faults to end (their TTL)");
            let deadline = Instant::now() + self.longest_ttl + TTL_SLACK;
            loop {
                let mine = self.client.status().await.map(|s| {
                    s.active
                        .iter()
                        .any(|f| f.run.as_deref() == Some(self.run_id.as_str()))
                });
                match mine {
                    Ok(false) => break,
                    _ if Instant::now() >= deadline => {
                        return Err((
                            RunStatus::Aborted,
                            "the controller did not remove the faults at their TTL".into(),
                        ));
                    }
                    _ => tokio::time::sleep(POLL).await,
                }
            }
        }
        let cleared = Instant::now();
        // 4. The steady state must hold again: time to recover.
        if plan.hypothesis.is_empty() {
            return Ok(());
        }
        progress.step("steady state after (recovering)");
        let deadline = cleared + plan.recovery_timeout;
        loop {
            let mut results = Vec::new();
            for s in &plan.hypothesis {
                results.push(self.activity("after", s).await);
            }
            let holds = !results.iter().any(ActivityResult::failed);
            if holds || Instant::now() >= deadline {
                self.report.activities.extend(results);
                if holds {
                    self.report.time_to_recover_ms = Some(cleared.elapsed().as_millis() as u64);
                    return Ok(());
                }
                return Err((
                    RunStatus::Failed,
                    format!(
                        "the steady state did not hold again within {} s of the faults ending",
                        plan.recovery_timeout.as_secs_f64()
                    ),
                ));
            }
            tokio::time::sleep(POLL * 5).await;
        }
    }

    /// A background activity: probes only (actions in the background would race the
    /// journal order of the method); validated when the plan was built.
    fn detached(&mut self, s: &Step) -> BoxFuture<'static, ActivityResult> {
        let http = self.http.clone();
        let client = self.client.clone();
        let step = s.clone();
        let at = self.at_ms();
        async move {
            let began = Instant::now();
            let out = probe(&http, &client, &step.call).await;
            result("method", &step, out, at, began.elapsed())
        }
        .boxed()
    }

    async fn activity(&mut self, phase: &str, s: &Step) -> ActivityResult {
        let at = self.at_ms();
        let began = Instant::now();
        let out = match &s.call {
            Call::Fault { fault, duration } => {
                let req = FaultRequest {
                    fault: fault.clone(),
                    ttl_ms: duration.as_millis() as u64,
                    run: Some(self.run_id.clone()),
                };
                match self.client.inject(&req).await {
                    Ok(f) => {
                        self.impacted.extend(f.services.iter().cloned());
                        self.longest_ttl = self.longest_ttl.max(*duration);
                        self.report.faults.push(FaultRecord {
                            id: f.id.clone(),
                            kind: f.kind.clone(),
                            target: f.target.clone(),
                            applied_at_ms: at,
                            ttl_ms: req.ttl_ms,
                        });
                        Ok(json!({"fault": f.id, "expires_at_ms": f.expires_at_ms}))
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            Call::StartService { service } => self
                .client
                .call::<Value>(
                    reqwest::Method::POST,
                    &format!("/api/v1/services/{service}/start"),
                    None,
                )
                .await
                .map(|v| json!({"state": v["state"]}))
                .map_err(|e| e.to_string()),
            Call::RemoveFaults => self
                .client
                .remove_run(&self.run_id)
                .await
                .map(|n| json!({"removed": n}))
                .map_err(|e| e.to_string()),
            probe_call => {
                let o = probe(&self.http, &self.client, probe_call).await;
                return result(phase, s, o, at, began.elapsed());
            }
        };
        let (result_text, value, output) = match out {
            Ok(v) => (
                "done",
                v.get("fault").cloned().unwrap_or_else(|| v.clone()),
                v,
            ),
            Err(e) => ("error", Value::Null, json!({"error": e})),
        };
        ActivityResult {
            phase: phase.to_owned(),
            name: s.name.clone(),
            kind: "action".into(),
            result: result_text.into(),
            value,
            output,
            at_ms: at,
            duration_ms: began.elapsed().as_millis() as u64,
        }
    }
}

async fn probe(http: &reqwest::Client, client: &ChaosClient, call: &Call) -> Output {
    match call {
        Call::Http(p) => probes::http(http, p).await,
        Call::LatencyPercentile {
            url,
            method,
            window,
            rate,
            percentile,
        } => probes::latency_percentile(http, url, method, *window, *rate, *percentile).await,
        Call::ServiceStatus { service } => probes::service_status(client, service).await,
        Call::ReplicasAgree { key } => probes::replicas_agree(client, key).await,
        Call::Load {
            url,
            verify_url,
            rate,
            duration,
        } => {
            let fresh = client
                .identity()
                .anonymous_builder(Duration::from_secs(300), Duration::from_secs(5))
                .pool_max_idle_per_host(0)
                .build()
                .unwrap_or_else(|_| http.clone());
            probes::load(http, &fresh, url, verify_url.as_deref(), *rate, *duration).await
        }
        // Actions never reach here (validated as actions).
        Call::Fault { .. } | Call::StartService { .. } | Call::RemoveFaults => Output {
            primary: Value::Null,
            detail: json!({"error": "not a probe"}),
        },
    }
}

fn result(phase: &str, s: &Step, o: Output, at_ms: u64, took: Duration) -> ActivityResult {
    let http = matches!(s.call, Call::Http(_));
    let result = match &s.tolerance {
        Some(t) if t.accepts(&o.primary, &o.detail, http) => "pass",
        Some(_) => "fail",
        None if o.detail.get("error").is_some() => "error",
        None => "done",
    };
    ActivityResult {
        phase: phase.to_owned(),
        name: s.name.clone(),
        kind: match s.kind {
            ActivityKind::Action => "action",
            ActivityKind::Probe => "probe",
        }
        .into(),
        result: result.into(),
        value: o.primary,
        output: o.detail,
        at_ms,
        duration_ms: took.as_millis() as u64,
    }
}
