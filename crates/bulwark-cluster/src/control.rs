//! The control API of `bulwark up` (HTTP on 127.0.0.1), which `bulwark ctl` calls.
//!
//! | request | effect |
//! |---|---|
//! | `GET /api/v1/health` | `{"status":"ok"}` while `up` runs |
//! | `GET /api/v1/services` | every service's [`ServiceStatus`] |
//! | `GET /api/v1/services/{name}` | one service's status |
//! | `POST /api/v1/services/{name}/{stop,start,restart}` | the action; replies with the new status |
//! | `POST /api/v1/services/{name}/kill?signal=TERM` | sends the signal (default KILL) |
//!
//! Every route but `/api/v1/health` needs the `admin` role (it kills processes). Errors
//! are `{"error":{"code","message","request_id"}}`: 404 `UNKNOWN_SERVICE` (with
//! `"known": [names]`), 400 `INVALID_REQUEST` (bad action or signal), 409 `CONFLICT` (not
//! running, shutting down), 500 `SIGNAL_FAILED`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bulwark_http::route::{Role, Route};
use bulwark_http::{ApiError, Observed, RequestId};
use serde::Deserialize;
use serde_json::json;

use crate::args::parse_signal;
use crate::supervisor::{Action, ActionError, Supervisor};

/// Requests handled at once (beyond it 503 `OVERLOADED`); the API is for a person at a
/// terminal and a few scripts.
pub const MAX_IN_FLIGHT: usize = 64;

/// The control API's routes over `supervisor`.
pub fn router(supervisor: Arc<Supervisor>) -> Router {
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/api/v1/services", get(list))
        .route("/api/v1/services/{name}", get(one))
        .route("/api/v1/services/{name}/{action}", post(act))
        .with_state(supervisor)
}

/// What `REQUEST_COMPLETED` and the security layer need to know of the control API
/// (and of the chaos routes served beside it).
pub fn observed() -> Observed {
    Observed {
        mode: "CONTROL",
        classify,
        routine: |op, _| op == "health",
    }
}

/// `/api/v1/health` is open; everything else needs `admin`.
pub fn classify(_method: &Method, route: Option<&str>) -> Route {
    match route {
        Some("/api/v1/health") => Route::open("health"),
        Some(r) if r.starts_with("/api/v1/chaos/") => Route::needs("chaos", Role::Admin),
        Some(r) if r.starts_with("/api/v1/services") => Route::needs("services", Role::Admin),
        Some(r) if r.starts_with("/api/v1/sharding/") => Route::needs("sharding", Role::Admin),
        _ => Route::needs("other", Role::Admin),
    }
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn list(State(sup): State<Arc<Supervisor>>) -> Response {
    Json(sup.statuses()).into_response()
}

async fn one(
    State(sup): State<Arc<Supervisor>>,
    Extension(rid): Extension<RequestId>,
    Path(name): Path<String>,
) -> Response {
    match sup.status(&name) {
        Ok(s) => Json(s).into_response(),
        Err(e) => error_response(&e, &rid.0),
    }
}

#[derive(Debug, Deserialize)]
struct KillQuery {
    signal: Option<String>,
}

async fn act(
    State(sup): State<Arc<Supervisor>>,
    Extension(rid): Extension<RequestId>,
    Path((name, action)): Path<(String, String)>,
    Query(q): Query<KillQuery>,
) -> Response {
    let rid = rid.0;
    let action = match action.as_str() {
        "start" => Action::Start,
        "stop" => Action::Stop,
        "restart" => Action::Restart,
        "kill" => {
            let name = q.signal.as_deref().unwrap_or("KILL");
            match parse_signal(name) {
                Some(sig) => Action::Kill(sig),
                None => return bad_request(format!("unknown signal '{name}'"), &rid),
            }
        }
        other => {
            return bad_request(
                format!("unknown action '{other}' (start, stop, restart, kill)"),
                &rid,
            );
        }
    };
    match sup.act(&name, action).await {
        Ok(s) => Json(s).into_response(),
        Err(e) => error_response(&e, &rid),
    }
}

fn bad_request(message: String, rid: &str) -> Response {
    ApiError::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", message, rid).into_response()
}

/// The one place supervisor errors become HTTP statuses.
fn error_response(e: &ActionError, rid: &str) -> Response {
    let message = e.to_string();
    match e {
        ActionError::UnknownService { known, .. } => {
            ApiError::new(StatusCode::NOT_FOUND, "UNKNOWN_SERVICE", message, rid)
                .with("known", json!(known))
        }
        ActionError::NotRunning(_) | ActionError::ShuttingDown => {
            ApiError::new(StatusCode::CONFLICT, "CONFLICT", message, rid)
        }
        ActionError::Signal { .. } => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "SIGNAL_FAILED",
            message,
            rid,
        ),
    }
    .into_response()
}
