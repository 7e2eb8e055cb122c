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
//!
//! Errors are `{"error":{"code","message","request_id"}}`: 400 `INVALID_REQUEST` /
//! `INVALID_FAULT` (with `field`), 403 `CHAOS_DISABLED`, 404 `NOT_FOUND`, 409
//! `APPLY_FAILED`, 503 `SHUTTING_DOWN`, 500 `JOURNAL`.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::controller::{ChaosError, Controller};
use crate::fault::FaultRequest;

/// Largest request body (an experiment file is a few kilobytes).
pub const MAX_BODY: usize = 1 << 20;

/// The chaos routes over `controller`.
pub fn router(controller: Controller) -> Router {
    Router::new()
        .route("/api/v1/chaos/status", get(status))
        .route("/api/v1/chaos/enable", post(enable))
        .route("/api/v1/chaos/disable", post(disable))
        .route(
            "/api/v1/chaos/faults",
            get(faults).post(inject).delete(remove_run),
        )
        .route("/api/v1/chaos/faults/{id}", delete(remove))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(controller)
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

async fn status(State(c): State<Controller>) -> Json<Value> {
    Json(json!({"enabled": c.enabled(), "active": c.active()}))
}

async fn enable(State(c): State<Controller>) -> Json<Value> {
    c.enable();
    Json(json!({"enabled": true}))
}

async fn disable(State(c): State<Controller>) -> Json<Value> {
    let removed = c.disable().await;
    Json(json!({"enabled": false, "removed": removed}))
}

async fn faults(State(c): State<Controller>) -> Json<Value> {
    Json(json!(c.active()))
}

async fn inject(State(c): State<Controller>, body: Bytes) -> Result<Response, ApiError> {
    let req: FaultRequest = parse_json(&body)?;
    let fault = c.inject(req).await?;
    Ok((StatusCode::CREATED, Json(fault)).into_response())
}

async fn remove(State(c): State<Controller>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let fault = c.remove(&id, "rollback").await?;
    Ok(Json(fault).into_response())
}

#[derive(Debug, Deserialize)]
struct RunQuery {
    run: Option<String>,
}

async fn remove_run(
    State(c): State<Controller>,
    Query(q): Query<RunQuery>,
) -> Result<Json<Value>, ApiError> {
    let Some(run) = q.run else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "DELETE /api/v1/chaos/faults needs ?run=<run id> (or DELETE /api/v1/chaos/faults/{id})",
        ));
    };
    let removed = c.remove_run(&run, "rollback").await;
    Ok(Json(json!({"run": run, "removed": removed})))
}
