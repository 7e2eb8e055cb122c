//! The HTTP surface (SPEC CAP-1): the seed's endpoints, the `/v1/kv` JSON API, health,
//! breaker state, metrics and the OpenAPI document.
//!
//! The middleware stack, in request order: the shared stack of `bulwark-http` (request
//! id and `REQUEST_COMPLETED`, the JSON error envelope, authentication, roles, rate
//! limits and the audit log; see [`classify`] for each route's access), then load
//! shedding: a data request's body is read first (at most the body limit, from
//! `MAX_VALUE_BYTES`), then it takes one of `MAX_IN_FLIGHT` slots or gets 503 `OVERLOADED`
//! with `Retry-After` at once (health, metrics and breaker state are exempt, so a
//! saturated gateway can still be observed; readiness reports it not ready).

mod admin;
mod error;
mod openapi;
mod seed;
mod v1;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bulwark_core::Version;
use bulwark_http::Observed;
use bulwark_http::admission::{Admission, admit};
use bulwark_http::route::{Role, Route};
use serde_json::{Map, Value, json};

pub use error::{ApiError, limit_error, read_error, write_error};

use crate::engine::{Engine, ReadResult, WriteOutcome};
use crate::mode::Mode;
use crate::session::{Session, SessionCodec};

/// Shared state of the HTTP handlers.
#[derive(Debug)]
pub struct AppState {
    /// The replicated engine.
    pub engine: Engine,
    /// Signs and verifies read-your-writes cookies.
    pub sessions: SessionCodec,
    /// Data requests in flight (`MAX_IN_FLIGHT`), admitted once their body is in.
    pub admission: Admission,
}

pub use bulwark_http::RequestId;

/// The body limit: room for JSON framing and base64's 4/3 expansion of the largest value.
fn body_limit(state: &AppState) -> usize {
    state.engine.config.limits.max_value_bytes / 3 * 4 + 64 * 1024
}

/// Builds the router (the shared stack is added by `HttpConfig::stack`).
pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = body_limit(&state);
    Router::new()
        .route("/write/{key}/{value}", post(seed::write))
        .route("/read/{key}", get(seed::read))
        .route("/v1/kv/{key}", get(v1::get).put(v1::put).delete(v1::delete))
        .route(
            "/v1/kv/",
            get(v1::empty_key).put(v1::empty_key).delete(v1::empty_key),
        )
        .route("/health", get(health))
        .route("/health/live", get(health))
        .route("/health/ready", get(ready))
        .route("/circuit-breaker", get(circuit_breaker))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::document))
        .route("/v1/admin/anti-entropy", post(anti_entropy))
        .route(
            "/admin/chaos/clock",
            get(admin::get_clock)
                .put(admin::set_clock)
                .delete(admin::reset_clock),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), shed))
        .with_state(state)
}

/// What `REQUEST_COMPLETED` and the security layer need to know of the gateway.
pub fn observed(mode: Mode) -> Observed {
    Observed {
        mode: mode.as_str(),
        classify,
        // Health checks arrive every few seconds from supervisors and load balancers;
        // they would drown the request log.
        routine: |op, _| op == "health",
    }
}

/// Sheds data requests beyond `MAX_IN_FLIGHT` instead of queueing them; a request is
/// admitted only once its body is in.
async fn shed(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let exempt = matches!(
        req.uri().path(),
        "/health"
            | "/health/live"
            | "/health/ready"
            | "/metrics"
            | "/circuit-breaker"
            | "/admin/chaos/clock"
    );
    if exempt {
        return next.run(req).await;
    }
    admit(&state.admission, body_limit(&state), req, next).await
}

/// Each route's metric label and who may call it.
pub fn classify(method: &Method, route: Option<&str>) -> Route {
    match (route, method) {
        (Some("/write/{key}/{value}"), _) => Route::needs("write", Role::Write),
        (Some("/read/{key}"), _) => Route::needs("read", Role::Read),
        (Some("/v1/kv/{key}" | "/v1/kv/"), &Method::PUT) => Route::needs("write", Role::Write),
        (Some("/v1/kv/{key}" | "/v1/kv/"), &Method::DELETE) => Route::needs("delete", Role::Write),
        (Some("/v1/kv/{key}" | "/v1/kv/"), _) => Route::needs("read", Role::Read),
        (Some("/health" | "/health/live" | "/health/ready"), _) => Route::open("health"),
        (Some("/openapi.json"), _) => Route::open("openapi"),
        (Some("/circuit-breaker"), _) => Route::needs("circuit_breaker", Role::Read),
        (Some("/metrics"), _) => Route::needs("metrics", Role::Read),
        (Some("/v1/admin/anti-entropy"), _) => Route::needs("anti_entropy", Role::Admin),
        (Some("/admin/chaos/clock"), _) => Route::needs("admin", Role::Admin),
        _ => Route::needs("other", Role::Read),
    }
}

async fn not_found(axum::Extension(rid): axum::Extension<RequestId>) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "no such endpoint",
        &rid.0,
    )
}

/// Liveness: the process serves HTTP.
async fn health(State(state): State<Arc<AppState>>) -> Response {
    let c = &state.engine.config;
    axum::Json(json!({"status": "healthy", "service": c.name, "mode": c.mode.as_str()}))
        .into_response()
}

/// Readiness (SPEC CAP-10): can this gateway serve writes in its mode right now?
async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let e = &state.engine;
    let replicas: Map<String, Value> = e
        .set
        .replicas
        .iter()
        .map(|r| {
            (
                r.name().to_string(),
                json!({"reachable": r.reachable(), "breaker": r.breaker.snapshot().state}),
            )
        })
        .collect();
    let shedding = state.admission.shedding();
    let ready = e.ready() && !shedding;
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "shedding": shedding,
        "mode": e.config.mode.as_str(),
        "write_quorum": e.config.mode.write_quorum(e.routing.replication_factor()),
        "replication_factor": e.routing.replication_factor(),
        "layout_version": e.config.layout_version,
        "replicas": replicas,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// Breaker state per replica, as in the seed: `{"db_g2":{"state":"CLOSED","failures":0,…}}`.
async fn circuit_breaker(State(state): State<Arc<AppState>>) -> Response {
    let body: Map<String, Value> = state
        .engine
        .set
        .replicas
        .iter()
        .map(|r| {
            (
                r.name().to_string(),
                serde_json::to_value(r.breaker.snapshot()).unwrap_or(Value::Null),
            )
        })
        .collect();
    axum::Json(body).into_response()
}

/// Runs an anti-entropy round now and returns its summary (HARD-6). The round is
/// bounded like the periodic ones (`ANTI_ENTROPY_MAX_BUCKETS`, `ANTI_ENTROPY_MAX_KEYS`,
/// `ANTI_ENTROPY_TIMEOUT_SEC` per call); `"result":"incomplete"` means call again.
pub(crate) async fn anti_entropy(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(state.engine.anti_entropy_round().await).into_response()
}

async fn metrics() -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        bulwark_obs::metrics::render(),
    )
        .into_response()
}

/// The consistency a request asks for: `?consistency=` or `X-Consistency`, else the
/// gateway's mode. Ambiguous input is refused (400), never defaulted: the parameter
/// repeated or empty, the header repeated or empty, or both given with different values.
fn requested_mode(
    state: &AppState,
    query: Option<&str>,
    headers: &HeaderMap,
    rid: &str,
) -> Result<Mode, ApiError> {
    let bad = |msg: String| ApiError::new(StatusCode::BAD_REQUEST, "INVALID_CONSISTENCY", msg, rid);
    let from_query = query_values(query, "consistency");
    let from_header: Vec<&str> = headers
        .get_all("x-consistency")
        .iter()
        .map(|v| v.to_str().unwrap_or("\u{fffd}"))
        .collect();
    if from_query.len() > 1 {
        return Err(bad(
            "consistency is given more than once in the query".into()
        ));
    }
    if from_header.len() > 1 {
        return Err(bad("X-Consistency is given more than once".into()));
    }
    let q = from_query.first().map(String::as_str);
    let h = from_header.first().copied();
    if q.is_some_and(str::is_empty) || h.is_some_and(str::is_empty) {
        return Err(bad("consistency is empty (ap, cp or quorum)".into()));
    }
    // Exactly `ap`, `cp` or `quorum` in any case: no whitespace is trimmed.
    let raw = match (q, h) {
        (Some(a), Some(b)) if !a.eq_ignore_ascii_case(b) => {
            return Err(bad(format!(
                "the query asks for consistency {a:?} and X-Consistency for {b:?}"
            )));
        }
        (Some(a), _) => Some(a),
        (None, b) => b,
    };
    match raw {
        None => Ok(state.engine.config.mode),
        Some(m) => m
            .parse()
            .map_err(|e: String| bad(format!("consistency {m:?}: {e}"))),
    }
}

/// Every value of query parameter `name`, in order (so a repeated one can be refused).
fn query_values(query: Option<&str>, name: &str) -> Vec<String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .collect()
}

/// The session in the request's cookie, if any (invalid signatures count as none).
fn session(state: &AppState, headers: &HeaderMap) -> Session {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .find_map(|h| state.sessions.from_cookie_header(h))
        .unwrap_or_default()
}

/// Turns a write outcome into a response, recording the write in the session cookie;
/// `quorum` (the `/v1` API's) is added to a success.
fn write_response(
    state: &AppState,
    headers: &HeaderMap,
    key: &str,
    mode: Mode,
    outcome: WriteOutcome,
    quorum: Option<Value>,
    rid: &str,
) -> Response {
    if let Some(err) = write_error(&outcome, rid) {
        return err.into_response();
    }
    let WriteOutcome::Committed {
        version,
        acked,
        behind,
        pending,
        coordinator,
    } = outcome
    else {
        return ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "unexpected outcome",
            rid,
        )
        .into_response();
    };
    let mut session = session(state, headers);
    session.record(key, version);
    let mut body = json!({
        "status": "success",
        "mode": mode.as_str(),
        "key": key,
        "version": version.to_string(),
        "acked_by": acked,
        "behind": behind,
    });
    if let Some(c) = coordinator {
        body["coordinator"] = c.into();
    }
    if let Some(q) = quorum {
        body["quorum"] = q;
    }
    if !pending.is_empty() {
        body["pending"] = pending.into();
    }
    if !behind.is_empty() {
        body["warning"] = format!(
            "AP_STALE_RISK: {} missed this write; queued for hinted handoff",
            behind.join(", ")
        )
        .into();
    }
    let mut response = axum::Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&state.sessions.set_cookie(&session)) {
        response
            .headers_mut()
            .insert(axum::http::header::SET_COOKIE, v);
    }
    response
}

/// Per-replica details and seed-style staleness fields of a read.
fn read_fields(result: &ReadResult, body: &mut Map<String, Value>) {
    for r in &result.replicas {
        body.insert(
            format!("G{}_Staleness_ms", r.index + 1),
            r.staleness_ms.map_or(Value::Null, Value::from),
        );
    }
    body.insert("Consistency_Status".into(), result.status.into());
    body.insert("RYW_Consistent".into(), result.ryw_consistent.into());
    if !result.ryw_consistent {
        body.insert("RYW_Status".into(), "RYW_VIOLATION".into());
    }
    let replicas: Map<String, Value> = result
        .replicas
        .iter()
        .map(|r| {
            let mut v = json!({
                "reachable": r.reachable,
                "version": r.version.map(|v| v.to_string()),
                "staleness_ms": r.staleness_ms,
            });
            if let Some(e) = &r.error {
                v["error"] = e.clone().into();
            }
            (r.name.clone(), v)
        })
        .collect();
    body.insert("replicas".into(), replicas.into());
}

/// Inserts `value` (UTF-8 text) or `value_base64` (binary) into a response body.
fn value_fields(value: &[u8], body: &mut Map<String, Value>) {
    use base64::Engine as _;
    match std::str::from_utf8(value) {
        Ok(text) => {
            body.insert("value".into(), text.into());
        }
        Err(_) => {
            body.insert("value".into(), Value::Null);
            body.insert(
                "value_base64".into(),
                base64::engine::general_purpose::STANDARD
                    .encode(value)
                    .into(),
            );
        }
    }
}

/// Version header value for raw responses.
fn version_header(v: Version) -> HeaderValue {
    HeaderValue::from_str(&v.to_string()).unwrap_or(HeaderValue::from_static("0"))
}
