//! The chaos routes of the control API (SPEC CTRL-1), served by `bulwark up` on :7070 next to
//! its service routes.
//!
//! | request | effect |
//! |---|---|
//! | `GET /api/v1/chaos/status` | `{"enabled", "active": [fault…]}` |
//! | `POST /api/v1/chaos/enable`, `/disable` | the safety switch; disable removes every active fault |
//! | `GET /api/v1/chaos/faults` | active faults |
//! | `POST /api/v1/chaos/faults` | inject `{"fault":{…},"ttl_ms":…,"run":…}` → 201 |
//! | `DELETE /api/v1/chaos/faults/{id}` | remove one; `DELETE /api/v1/chaos/faults?run=R` removes a run's |
//! | `GET /api/v1/chaos/cluster` | what the controller may target (services, links) |
//! | `POST /api/v1/chaos/experiments` | store an experiment (validated; 400 names line and field) → 201 `{"id"}` |
//! | `GET /api/v1/chaos/experiments` | stored experiments |
//! | `GET /api/v1/chaos/experiments/{id}` | the experiment and its runs' reports |
//! | `POST /api/v1/chaos/experiments/{id}/run` | run it in `up` → 202 `{"run_id"}`; poll `GET …/{id}` |
//! | `POST /api/v1/chaos/reports` | record the report of a `bulwark chaos run` (for the metrics) |
//! | `GET /api/v1/chaos/replicas/{key}` | each replica's committed record of `key`, read directly, and whether they agree |
//! | `GET /api/v1/chaos/metrics` | experiments total/succeeded/failed, mean recovery time, services recovered, faults active (JSON; Prometheus text with `?format=prometheus`) |
//!
//! Errors are `{"error":{"code","message","request_id"}}`: 400 `INVALID_REQUEST` /
//! `INVALID_FAULT` (with `field`), 403 `CHAOS_DISABLED`, 404 `NOT_FOUND`, 409
//! `APPLY_FAILED`, 503 `SHUTTING_DOWN`, 500 `JOURNAL`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use bulwark_http::client::ClientIdentity;
use bulwark_obs::events::{ChaosExperiment, Emit};

use crate::client::ChaosClient;
use crate::controller::{ChaosError, Controller, now_ms};
use crate::experiment::{self, Experiment};
use crate::fault::FaultRequest;
use crate::report::{Report, RunStatus};
use crate::runner;

/// Largest request body (an experiment file is a few kilobytes).
pub const MAX_BODY: usize = 1 << 20;

/// Experiments kept by one `up` (the oldest is dropped beyond it).
const MAX_EXPERIMENTS: usize = 1000;
/// Reports kept per experiment.
const MAX_RUNS: usize = 100;

/// State of the chaos routes.
#[derive(Debug, Clone)]
pub struct ApiState {
    controller: Controller,
    /// Base URL of this control API: runs started through the API reach the controller
    /// the same way `bulwark chaos run` does.
    control_base: String,
    /// The key and CA those runs use.
    identity: ClientIdentity,
    book: Arc<Mutex<Book>>,
}

/// Stored experiments and finished runs.
#[derive(Debug, Default)]
struct Book {
    experiments: BTreeMap<String, Stored>,
    /// Every finished run (API and CLI), for the metrics.
    finished: Vec<RunSummary>,
}

#[derive(Debug)]
struct Stored {
    experiment: Experiment,
    text: String,
    created_at_ms: u64,
    runs: Vec<Report>,
}

#[derive(Debug, Clone)]
struct RunSummary {
    status: RunStatus,
    recovery_ms: Option<u64>,
    impacted: usize,
}

fn book(state: &ApiState) -> MutexGuard<'_, Book> {
    state.book.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The chaos routes over `controller`; `control_base` is this API's own base URL and
/// `identity` what runs started through the API call it with.
pub fn router(controller: Controller, control_base: &str, identity: ClientIdentity) -> Router {
    let state = ApiState {
        controller,
        control_base: control_base.to_owned(),
        identity,
        book: Arc::default(),
    };
    Router::new()
        .route("/api/v1/chaos/status", get(status))
        .route("/api/v1/chaos/enable", post(enable))
        .route("/api/v1/chaos/disable", post(disable))
        .route("/api/v1/chaos/cluster", get(cluster))
        .route(
            "/api/v1/chaos/faults",
            get(faults).post(inject).delete(remove_run),
        )
        .route("/api/v1/chaos/faults/{id}", delete(remove))
        .route(
            "/api/v1/chaos/experiments",
            get(list_experiments).post(create_experiment),
        )
        .route("/api/v1/chaos/experiments/{id}", get(get_experiment))
        .route("/api/v1/chaos/experiments/{id}/run", post(run_experiment))
        .route("/api/v1/chaos/reports", post(record_report))
        .route("/api/v1/chaos/metrics", get(metrics))
        .route("/api/v1/chaos/replicas/{key}", get(replicas))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// A structured error, `{"error":{"code","message","request_id",…}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: Value,
}

impl ApiError {
    /// An error with `status`, machine-readable `code` and a human `message`.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: json!({"error": {
                "code": code,
                "message": message.into(),
                "request_id": format!("{:016x}", rand::random::<u64>()),
            }}),
        }
    }

    /// Adds a field to the error object (`field`, `line`).
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> ApiError {
        self.body["error"][key] = value.into();
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

/// The one place controller errors become HTTP statuses.
impl From<ChaosError> for ApiError {
    fn from(e: ChaosError) -> ApiError {
        let message = e.to_string();
        match e {
            ChaosError::Disabled => ApiError::new(StatusCode::FORBIDDEN, "CHAOS_DISABLED", message),
            ChaosError::Invalid(f) => {
                ApiError::new(StatusCode::BAD_REQUEST, "INVALID_FAULT", message)
                    .with("field", f.field)
            }
            ChaosError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", message),
            ChaosError::Apply { .. } => {
                ApiError::new(StatusCode::CONFLICT, "APPLY_FAILED", message)
            }
            ChaosError::Journal(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "JOURNAL", message)
            }
            ChaosError::ShuttingDown => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "SHUTTING_DOWN", message)
            }
        }
    }
}

/// Parses a JSON body, naming the line, column and field of the first problem.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.inner();
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            format!("line {}, field {field}: {inner}", inner.line()),
        )
        .with("line", inner.line())
        .with("field", field)
    })
}

async fn status(State(s): State<ApiState>) -> Json<Value> {
    let c = &s.controller;
    Json(json!({"enabled": c.enabled(), "active": c.active()}))
}

async fn cluster(State(s): State<ApiState>) -> Json<Value> {
    Json(json!(s.controller.cluster()))
}

async fn enable(State(s): State<ApiState>) -> Json<Value> {
    s.controller.enable();
    Json(json!({"enabled": true}))
}

async fn disable(State(s): State<ApiState>) -> Json<Value> {
    let removed = s.controller.disable().await;
    Json(json!({"enabled": false, "removed": removed}))
}

async fn faults(State(s): State<ApiState>) -> Json<Value> {
    Json(json!(s.controller.active()))
}

async fn inject(State(s): State<ApiState>, body: Bytes) -> Result<Response, ApiError> {
    let req: FaultRequest = parse_json(&body)?;
    let fault = s.controller.inject(req).await?;
    Ok((StatusCode::CREATED, Json(fault)).into_response())
}

async fn remove(State(s): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let fault = s.controller.remove(&id, "rollback").await?;
    Ok(Json(fault).into_response())
}

#[derive(Debug, Deserialize)]
struct RunQuery {
    run: Option<String>,
}

async fn remove_run(
    State(s): State<ApiState>,
    Query(q): Query<RunQuery>,
) -> Result<Json<Value>, ApiError> {
    let Some(run) = q.run else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "DELETE /api/v1/chaos/faults needs ?run=<run id> (or DELETE /api/v1/chaos/faults/{id})",
        ));
    };
    let removed = s.controller.remove_run(&run, "rollback").await;
    Ok(Json(json!({"run": run, "removed": removed})))
}

async fn create_experiment(State(s): State<ApiState>, body: Bytes) -> Result<Response, ApiError> {
    let text = std::str::from_utf8(&body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_EXPERIMENT",
            "the body is not UTF-8",
        )
    })?;
    let plan = experiment::load(text, &[], s.controller.cluster()).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "INVALID_EXPERIMENT", e.to_string())
            .with("line", e.line)
            .with("field", e.field)
    })?;
    let id = format!("exp-{:08x}", rand::random::<u32>());
    let title = plan.experiment.title.clone();
    let mut b = book(&s);
    if b.experiments.len() >= MAX_EXPERIMENTS
        && let Some(oldest) = b
            .experiments
            .iter()
            .min_by_key(|(_, e)| e.created_at_ms)
            .map(|(k, _)| k.clone())
    {
        b.experiments.remove(&oldest);
    }
    b.experiments.insert(
        id.clone(),
        Stored {
            experiment: plan.experiment,
            text: text.to_owned(),
            created_at_ms: now_ms(),
            runs: Vec::new(),
        },
    );
    Ok((StatusCode::CREATED, Json(json!({"id": id, "title": title}))).into_response())
}

async fn list_experiments(State(s): State<ApiState>) -> Json<Value> {
    let b = book(&s);
    let list: Vec<Value> = b
        .experiments
        .iter()
        .map(|(id, e)| {
            json!({
                "id": id,
                "title": e.experiment.title,
                "created_at_ms": e.created_at_ms,
                "runs": e.runs.len(),
                "last_status": e.runs.last().map(|r| r.status),
            })
        })
        .collect();
    Json(json!(list))
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        format!("no experiment '{id}'"),
    )
}

async fn get_experiment(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let b = book(&s);
    let e = b.experiments.get(&id).ok_or_else(|| not_found(&id))?;
    Ok(Json(json!({
        "id": id,
        "title": e.experiment.title,
        "created_at_ms": e.created_at_ms,
        "experiment": e.experiment,
        "runs": e.runs,
    })))
}

async fn run_experiment(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if !s.controller.enabled() {
        return Err(ChaosError::Disabled.into());
    }
    let text = {
        let b = book(&s);
        b.experiments
            .get(&id)
            .ok_or_else(|| not_found(&id))?
            .text
            .clone()
    };
    // Validated again: the cluster is the same, but the check is cheap and keeps one path.
    let plan = experiment::load(&text, &[], s.controller.cluster())
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "INVALID_EXPERIMENT", e.to_string()))?;
    let run_id = runner::new_run_id();
    let placeholder = Report {
        run_id: run_id.clone(),
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
    };
    push_run(&mut book(&s), &id, placeholder);
    let state = s.clone();
    let (exp_id, rid) = (id.clone(), run_id.clone());
    tokio::spawn(async move {
        let client = ChaosClient::new(&state.control_base, &state.identity);
        let report =
            runner::run(&plan, &client, &rid, std::future::pending(), &runner::Quiet).await;
        record(&state, &report);
        let mut b = book(&state);
        if let Some(e) = b.experiments.get_mut(&exp_id)
            && let Some(slot) = e.runs.iter_mut().find(|r| r.run_id == rid)
        {
            *slot = report;
        }
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": id, "run_id": run_id, "status": "running"})),
    )
        .into_response())
}

fn push_run(b: &mut Book, id: &str, report: Report) {
    if let Some(e) = b.experiments.get_mut(id) {
        if e.runs.len() >= MAX_RUNS {
            e.runs.remove(0);
        }
        e.runs.push(report);
    }
}

/// Counts a finished run in the metrics (and emits `CHAOS_EXPERIMENT`).
fn record(s: &ApiState, report: &Report) {
    if report.status == RunStatus::Running {
        return;
    }
    ChaosExperiment {
        run_id: &report.run_id,
        title: &report.title,
        outcome: report.status.as_str(),
        recovery: report
            .time_to_recover_ms
            .map(std::time::Duration::from_millis),
    }
    .emit();
    let mut b = book(s);
    if b.finished.len() >= MAX_EXPERIMENTS * MAX_RUNS {
        b.finished.remove(0);
    }
    b.finished.push(RunSummary {
        status: report.status,
        recovery_ms: report.time_to_recover_ms,
        impacted: report.impacted_services.len(),
    });
}

async fn record_report(State(s): State<ApiState>, body: Bytes) -> Result<Response, ApiError> {
    let report: Report = parse_json(&body)?;
    if report.status == RunStatus::Running {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "only finished runs are recorded",
        ));
    }
    record(&s, &report);
    Ok((StatusCode::CREATED, Json(json!({"run_id": report.run_id}))).into_response())
}

#[derive(Debug, Deserialize)]
struct MetricsQuery {
    format: Option<String>,
}

async fn metrics(State(s): State<ApiState>, Query(q): Query<MetricsQuery>) -> Response {
    if q.format.as_deref() == Some("prometheus") {
        return (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            bulwark_obs::metrics::render(),
        )
            .into_response();
    }
    let b = book(&s);
    let count = |st: RunStatus| b.finished.iter().filter(|r| r.status == st).count();
    let recoveries: Vec<u64> = b.finished.iter().filter_map(|r| r.recovery_ms).collect();
    let mean = (!recoveries.is_empty())
        .then(|| recoveries.iter().sum::<u64>() as f64 / recoveries.len() as f64);
    let recovered: usize = b
        .finished
        .iter()
        .filter(|r| r.recovery_ms.is_some())
        .map(|r| r.impacted)
        .sum();
    Json(json!({
        "enabled": s.controller.enabled(),
        "total_experiments": b.finished.len(),
        "successful_experiments": count(RunStatus::Succeeded),
        "failed_experiments": count(RunStatus::Failed),
        "aborted_experiments": count(RunStatus::Aborted),
        "mean_recovery_time_ms": mean,
        "services_recovered": recovered,
        "faults_active": s.controller.active().len(),
        "experiments_stored": b.experiments.len(),
    }))
    .into_response()
}

/// Each replica's record of `key`, read directly over RESP, and whether they all hold the
/// same version and bytes (a data fault shows as `"agree": false`).
async fn replicas(State(s): State<ApiState>, Path(key): Path<String>) -> Json<Value> {
    let reads = s.controller.read_replicas(&key).await;
    let mut out = serde_json::Map::new();
    let mut seen = Vec::new();
    let mut unreachable = Vec::new();
    for (name, r) in reads {
        match r {
            Ok(rec) => {
                let v = rec.as_ref().map(|r| (r.version.clone(), r.value.clone()));
                out.insert(
                    name.clone(),
                    json!({
                        "version": rec.as_ref().map(|r| r.version.clone()),
                        "value": rec.as_ref().and_then(|r| r.value.as_ref()).map(|b| String::from_utf8_lossy(b).into_owned()),
                    }),
                );
                seen.push((name, v));
            }
            Err(e) => {
                out.insert(name.clone(), json!({"error": e}));
                unreachable.push(name);
            }
        }
    }
    // The majority record; the others diverge from it.
    let majority = seen
        .iter()
        .max_by_key(|(_, v)| seen.iter().filter(|(_, w)| w == v).count())
        .map(|(_, v)| v.clone());
    let divergent: Vec<&String> = seen
        .iter()
        .filter(|(_, v)| Some(v) != majority.as_ref())
        .map(|(n, _)| n)
        .collect();
    Json(json!({
        "key": key,
        "agree": divergent.is_empty() && unreachable.is_empty(),
        "divergent": divergent,
        "unreachable": unreachable,
        "replicas": out,
    }))
}
