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
//! Errors are `{"error": "…"}` with 404 (unknown service, plus `"known": [names]`), 400
//! (bad action or signal) or 409 (not running, shutting down).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::args::parse_signal;
use crate::supervisor::{Action, ActionError, Supervisor};

/// Requests handled at once; the API is for a person at a terminal and a few scripts.
const MAX_IN_FLIGHT: usize = 64;

/// The control API's routes over `supervisor`.
pub fn router(supervisor: Arc<Supervisor>) -> Router {
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/api/v1/services", get(list))
        .route("/api/v1/services/{name}", get(one))
        .route("/api/v1/services/{name}/{action}", post(act))
        .layer(tower::limit::ConcurrencyLimitLayer::new(MAX_IN_FLIGHT))
        .with_state(supervisor)
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn list(State(sup): State<Arc<Supervisor>>) -> Response {
    Json(sup.statuses()).into_response()
}

async fn one(State(sup): State<Arc<Supervisor>>, Path(name): Path<String>) -> Response {
    match sup.status(&name) {
        Ok(s) => Json(s).into_response(),
        Err(e) => error_response(&e),
    }
}

#[derive(Debug, Deserialize)]
struct KillQuery {
    signal: Option<String>,
}

async fn act(
    State(sup): State<Arc<Supervisor>>,
    Path((name, action)): Path<(String, String)>,
    Query(q): Query<KillQuery>,
) -> Response {
    let action = match action.as_str() {
        "start" => Action::Start,
        "stop" => Action::Stop,
        "restart" => Action::Restart,
        "kill" => {
            let name = q.signal.as_deref().unwrap_or("KILL");
            match parse_signal(name) {
                Some(sig) => Action::Kill(sig),
                None => return bad_request(format!("unknown signal '{name}'")),
            }
        }
        other => {
            return bad_request(format!(
                "unknown action '{other}' (start, stop, restart, kill)"
            ));
        }
    };
    match sup.act(&name, action).await {
        Ok(s) => Json(s).into_response(),
        Err(e) => error_response(&e),
    }
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": message}))).into_response()
}

/// The one place supervisor errors become HTTP statuses.
fn error_response(e: &ActionError) -> Response {
    let message = e.to_string();
    match e {
        ActionError::UnknownService { known, .. } => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": message, "known": known})),
        )
            .into_response(),
        ActionError::NotRunning(_) | ActionError::ShuttingDown => {
            (StatusCode::CONFLICT, Json(json!({"error": message}))).into_response()
        }
        ActionError::Signal { .. } => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": message})),
        )
            .into_response(),
    }
}
