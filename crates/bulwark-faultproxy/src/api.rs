//! The Toxiproxy-compatible HTTP API (default port 8474).
//!
//! | request | success | errors |
//! |---|---|---|
//! | `GET /proxies` | 200 `{name: proxy}` | |
//! | `POST /proxies` | 201 proxy | 400 missing/bad field, 409 proxy exists, 409 port in use |
//! | `POST /populate` | 201 `{"proxies": [proxy]}` | 400, 409 (nothing applied) |
//! | `GET /proxies/{proxy}` | 200 proxy | 404 |
//! | `POST`/`PATCH /proxies/{proxy}` | 200 proxy | 400, 404, 409 port in use |
//! | `DELETE /proxies/{proxy}` | 204 | 404 |
//! | `GET /proxies/{proxy}/toxics` | 200 `[toxic]` | 404 |
//! | `POST /proxies/{proxy}/toxics` | 200 toxic | 400 bad stream/type/attribute, 404, 409 toxic exists |
//! | `GET /proxies/{proxy}/toxics/{toxic}` | 200 toxic | 404 |
//! | `POST`/`PATCH /proxies/{proxy}/toxics/{toxic}` | 200 toxic | 400, 404 |
//! | `DELETE /proxies/{proxy}/toxics/{toxic}` | 204 | 404 |
//! | `POST /reset` | 204 | 409 a disabled proxy's port is taken |
//! | `GET /version` | 200 `{"version": …}` | |
//! | `GET /metrics` | 200 Prometheus text | |
//!
//! A proxy is `{"name","listen","upstream","enabled","toxics":[toxic]}`; a toxic is
//! `{"attributes":{…},"name","type","stream","toxicity"}`. Every error is
//! `{"error": "<message>", "status": <code>}`, as Toxiproxy's; an unknown path is 404 and
//! a wrong method 405 with the same body. Requests from browsers (a `User-Agent` starting
//! with `Mozilla/`) are refused with 403, as Toxiproxy does, so a web page cannot reach the
//! API through the user's browser.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::collection::{Proxies, ProxyInput, ToxicInput, parse};
use crate::error::ApiError;

/// Largest request body (a `/populate` of a few thousand proxies fits).
const MAX_BODY: usize = 1 << 20;

type Shared = State<Arc<Proxies>>;

/// What `REQUEST_COMPLETED` and the security layer need to know of the API.
pub(crate) fn observed() -> bulwark_http::Observed {
    bulwark_http::Observed {
        mode: "PROXY",
        classify,
        routine: |op, _| op == "version",
    }
}

/// `/version` is open (it is the health check); everything else needs `admin` when
/// credentials are configured (in protected mode every loopback client may call it,
/// as Toxiproxy's clients expect).
fn classify(_method: &axum::http::Method, route: Option<&str>) -> bulwark_http::route::Route {
    use bulwark_http::route::{Role, Route};
    match route {
        Some("/version") => Route::open("version"),
        Some("/metrics") => Route::needs("metrics", Role::Read),
        Some(r) if r.starts_with("/proxies") || r == "/populate" || r == "/reset" => {
            Route::needs("proxies", Role::Admin)
        }
        _ => Route::needs("other", Role::Admin),
    }
}

/// The API's routes over `proxies`.
pub(crate) fn router(proxies: Arc<Proxies>) -> Router {
    Router::new()
        .route("/proxies", get(list).post(create))
        .route("/populate", post(populate))
        .route(
            "/proxies/{proxy}",
            get(show).post(update).patch(update).delete(delete),
        )
        .route("/proxies/{proxy}/toxics", get(toxics).post(add_toxic))
        .route(
            "/proxies/{proxy}/toxics/{toxic}",
            get(toxic)
                .post(update_toxic)
                .patch(update_toxic)
                .delete(remove_toxic),
        )
        .route("/reset", post(reset))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(refuse_browsers))
        .with_state(proxies)
}

async fn refuse_browsers(request: Request, next: Next) -> Response {
    let browser = request
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.starts_with("Mozilla/"));
    if browser {
        return ApiError::new(StatusCode::FORBIDDEN, "User agent not allowed").into_response();
    }
    next.run(request).await
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not found")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

/// The body, or the error for one that is too large or unreadable.
fn body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| ApiError::new(r.status(), format!("bad request body: {}", r.body_text())))
}

fn reply(result: Result<serde_json::Value, ApiError>, status: StatusCode) -> Response {
    match result {
        Ok(v) => (status, Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

fn no_content(result: Result<(), ApiError>) -> Response {
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn list(State(p): Shared) -> Response {
    Json(p.list().await).into_response()
}

async fn create(State(p): Shared, b: Result<Bytes, BytesRejection>) -> Response {
    let result = async {
        let input: ProxyInput = parse(&body(b)?)?;
        p.create(input).await
    };
    reply(result.await, StatusCode::CREATED)
}

async fn populate(State(p): Shared, b: Result<Bytes, BytesRejection>) -> Response {
    let result = async {
        let input: Vec<ProxyInput> = parse(&body(b)?)?;
        p.populate(input).await
    };
    match result.await {
        Ok(v) => (StatusCode::CREATED, Json(v)).into_response(),
        // Toxiproxy's populate error also lists the proxies it created; ours is atomic, so
        // that list is always empty.
        Err(e) => {
            let mut v = e.body();
            v["proxies"] = json!([]);
            (e.status, Json(v)).into_response()
        }
    }
}

async fn show(State(p): Shared, Path(name): Path<String>) -> Response {
    reply(p.get(&name).await, StatusCode::OK)
}

async fn update(
    State(p): Shared,
    Path(name): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let input: ProxyInput = parse(&body(b)?)?;
        p.update(&name, input).await
    };
    reply(result.await, StatusCode::OK)
}

async fn delete(State(p): Shared, Path(name): Path<String>) -> Response {
    no_content(p.delete(&name).await)
}

async fn toxics(State(p): Shared, Path(name): Path<String>) -> Response {
    reply(p.toxics(&name).await, StatusCode::OK)
}

async fn add_toxic(
    State(p): Shared,
    Path(name): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let body = body(b)?;
        // The proxy is looked up before the body is read, as Toxiproxy does: a toxic for
        // a missing proxy is 404 whatever its body.
        p.get(&name).await?;
        let input: ToxicInput = parse(&body)?;
        p.add_toxic(&name, input).await
    };
    reply(result.await, StatusCode::OK)
}

async fn toxic(State(p): Shared, Path((name, toxic)): Path<(String, String)>) -> Response {
    reply(p.toxic(&name, &toxic).await, StatusCode::OK)
}

async fn update_toxic(
    State(p): Shared,
    Path((name, toxic)): Path<(String, String)>,
    b: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let body = body(b)?;
        p.toxic(&name, &toxic).await?;
        let input: ToxicInput = parse(&body)?;
        p.update_toxic(&name, &toxic, input).await
    };
    reply(result.await, StatusCode::OK)
}

async fn remove_toxic(State(p): Shared, Path((name, toxic)): Path<(String, String)>) -> Response {
    no_content(p.remove_toxic(&name, &toxic).await)
}

async fn reset(State(p): Shared) -> Response {
    no_content(p.reset().await)
}

async fn version() -> Response {
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "server": "bulwark-faultproxy",
        "api": "toxiproxy/2",
    }))
    .into_response()
}

async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        bulwark_obs::metrics::render(),
    )
        .into_response()
}
