//! The seed's endpoints, with the seed's field names: `POST /write/{key}/{value}` and
//! `GET /read/{key}`, in the gateway's own consistency mode unless the request asks for
//! another (as on `/v1/kv`, and refused the same way when ambiguous).

use std::sync::Arc;

use axum::Extension;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Map, Value};

use super::{
    ApiError, AppState, RequestId, limit_error, read_error, read_fields, requested_mode, session,
    value_fields, write_response,
};

/// A path that is not valid UTF-8 after percent-decoding, or otherwise unusable.
pub(super) fn bad_path(e: PathRejection, rid: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "INVALID_KEY",
        format!("invalid path: {e}"),
        rid,
    )
}

/// `POST /write/{key}/{value}`.
pub async fn write(
    State(state): State<Arc<AppState>>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    let rid = rid.0;
    let (key, value) = match path {
        Ok(Path(p)) => p,
        Err(e) => return bad_path(e, &rid).into_response(),
    };
    let limits = state.engine.config.limits;
    if let Err(e) = limits
        .check_key(key.as_bytes())
        .and(limits.check_value(value.as_bytes()))
    {
        return limit_error(e, &rid).into_response();
    }
    // A value in the path is limited to what always fits in a URI (the documented
    // maxLength), so a client learns the bound from the document, not by probing.
    let max_chars = super::openapi::path_value_chars(
        limits.max_key_bytes,
        limits.max_value_bytes,
        state.engine.config.http.serve.guard.max_uri,
    );
    if value.chars().count() > max_chars {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "VALUE_TOO_LARGE",
            format!("a value in the path is at most {max_chars} characters; send longer ones with PUT /v1/kv/{{key}}"),
            &rid,
        )
        .with("limit", max_chars)
        .into_response();
    }
    let mode = match requested_mode(&state, query.as_deref(), &headers, &rid) {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    let outcome = state
        .engine
        .write(key.as_bytes(), Some(Bytes::from(value)), mode, None, &rid)
        .await;
    write_response(&state, &headers, &key, mode, outcome, None, &rid)
}

/// `GET /read/{key}`: the value, per-replica staleness and read-your-writes status.
pub async fn read(
    State(state): State<Arc<AppState>>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let rid = rid.0;
    let key = match path {
        Ok(Path(k)) => k,
        Err(e) => return bad_path(e, &rid).into_response(),
    };
    if let Err(e) = state.engine.config.limits.check_key(key.as_bytes()) {
        return limit_error(e, &rid).into_response();
    }
    let mode = match requested_mode(&state, query.as_deref(), &headers, &rid) {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    let required = session(&state, &headers).required(&key);
    let result = match state
        .engine
        .read(key.as_bytes(), mode, None, required, &rid)
        .await
    {
        Ok(r) => r,
        Err(e) => return read_error(e, &rid).into_response(),
    };
    let mut body = Map::new();
    body.insert("key".into(), key.clone().into());
    match result
        .record
        .as_ref()
        .and_then(|r| r.value.as_ref().map(|v| (r.version, v)))
    {
        Some((version, value)) => {
            value_fields(value, &mut body);
            body.insert("version".into(), version.to_string().into());
        }
        None => {
            body.insert("value".into(), Value::Null);
            body.insert("found".into(), false.into());
        }
    }
    body.insert("mode".into(), mode.as_str().into());
    body.insert("source".into(), result.source.clone().into());
    read_fields(&result, &mut body);
    let status = if result.record.as_ref().is_some_and(|r| r.value.is_some()) {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    (status, axum::Json(Value::Object(body))).into_response()
}
