//! The versioned JSON API: `/v1/kv/{key}` with GET, PUT and DELETE, binary-safe values,
//! per-request consistency (`?consistency=ap|cp|quorum` or `X-Consistency`) and
//! per-request quorums (`?r=` on reads, `?w=` on writes: `1..N`, `one`, `quorum`, `all`;
//! SPEC HARD-1). Every answer says N, the quorum used and whether it is strong: whether
//! it overlaps every quorum of the other kind the mode uses by default (`W + R > N`).

use std::sync::Arc;

use axum::Extension;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::mode::{Mode, QuorumSize};

use super::seed::bad_path;
use super::{
    ApiError, AppState, RequestId, limit_error, query_values, read_error, read_fields,
    requested_mode, session, value_fields, version_header, write_response,
};

/// JSON body of `PUT /v1/kv/{key}`: exactly one of `value` (text) or `value_base64`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutBody {
    /// The value as UTF-8 text.
    pub value: Option<String>,
    /// The value as standard base64, for binary data.
    pub value_base64: Option<String>,
}

/// Which side of a request a quorum parameter is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Read,
    Write,
}

impl Side {
    fn param(self) -> &'static str {
        match self {
            Side::Read => "r",
            Side::Write => "w",
        }
    }
}

/// The quorum a `/v1/kv` request asks for on `side` (`None`: the mode's), resolved against
/// N; refuses a repeated or empty parameter, a count above N, the other side's parameter,
/// and `w` below N with CP (which writes every replica of the key by definition).
fn requested_quorum(
    state: &AppState,
    query: Option<&str>,
    side: Side,
    mode: Mode,
    rid: &str,
) -> Result<Option<usize>, ApiError> {
    let bad = |status: StatusCode, msg: String| ApiError::new(status, "INVALID_QUORUM", msg, rid);
    let values = |name: &str| query_values(query, name);
    let other = match side {
        Side::Read => Side::Write,
        Side::Write => Side::Read,
    };
    if !values(other.param()).is_empty() {
        return Err(bad(
            StatusCode::BAD_REQUEST,
            match side {
                Side::Read => "w applies to writes; a read takes r".to_owned(),
                Side::Write => "r applies to reads; a write takes w".to_owned(),
            },
        ));
    }
    let name = side.param();
    let raw = match values(name).as_slice() {
        [] => return Ok(None),
        [one] => one.clone(),
        _ => {
            return Err(bad(
                StatusCode::BAD_REQUEST,
                format!("{name} is given more than once"),
            ));
        }
    };
    let n = state.engine.routing.replication_factor();
    let size: QuorumSize = raw
        .parse()
        .map_err(|e: String| bad(StatusCode::BAD_REQUEST, format!("{name}={raw:?}: {e}")))?;
    let count = size.of(n).ok_or_else(|| {
        bad(
            StatusCode::BAD_REQUEST,
            format!("{name}={raw}: keys have N = {n} replicas; use 1 to {n}, one, quorum or all"),
        )
    })?;
    if side == Side::Write && mode == Mode::Cp && count != n {
        return Err(bad(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "w={raw}: consistency=cp writes every replica of the key (w=all, {n}); for fewer use consistency=quorum or ap"
            ),
        ));
    }
    Ok(Some(count))
}

/// `{"n", "r"|"w", "strong"}`: the quorum a request used, and whether it overlaps the
/// mode's default quorum of the other kind.
fn quorum_field(state: &AppState, side: Side, mode: Mode, used: Option<usize>) -> Value {
    let n = state.engine.routing.replication_factor();
    let (size, other) = match side {
        Side::Read => (
            used.unwrap_or_else(|| mode.read_quorum(n)),
            mode.write_quorum(n),
        ),
        Side::Write => (
            used.unwrap_or_else(|| mode.write_quorum(n)),
            mode.read_quorum(n),
        ),
    };
    let mut q = Map::new();
    q.insert("n".into(), n.into());
    q.insert(side.param().into(), size.into());
    q.insert("strong".into(), (size + other > n).into());
    Value::Object(q)
}

/// The key (validated) and the consistency mode a `/v1/kv/{key}` request is about.
fn target(
    state: &AppState,
    path: Result<Path<String>, PathRejection>,
    query: Option<&str>,
    headers: &HeaderMap,
    rid: &str,
) -> Result<(String, Mode), ApiError> {
    let key = checked_key(state, path, rid)?;
    Ok((key, requested_mode(state, query, headers, rid)?))
}

fn checked_key(
    state: &AppState,
    path: Result<Path<String>, PathRejection>,
    rid: &str,
) -> Result<String, ApiError> {
    let Path(key) = path.map_err(|e| bad_path(e, rid))?;
    state
        .engine
        .config
        .limits
        .check_key(key.as_bytes())
        .map_err(|e| limit_error(e, rid))?;
    Ok(key)
}

/// `/v1/kv/` with no key.
pub async fn empty_key(Extension(rid): Extension<RequestId>) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "INVALID_KEY",
        "key must not be empty",
        &rid.0,
    )
}

/// Read a key.
pub async fn get(
    State(state): State<Arc<AppState>>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let rid = rid.0;
    let (key, mode) = match target(&state, path, query.as_deref(), &headers, &rid) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let r = match requested_quorum(&state, query.as_deref(), Side::Read, mode, &rid) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let required = session(&state, &headers).required(&key);
    let result = match state
        .engine
        .read(key.as_bytes(), mode, r, required, &rid)
        .await
    {
        Ok(r) => r,
        Err(e) => return read_error(e, &rid).into_response(),
    };
    let Some((version, value)) = result
        .record
        .as_ref()
        .and_then(|r| r.value.clone().map(|v| (r.version, v)))
    else {
        return ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such key", &rid)
            .with("consistency_status", result.status)
            .into_response();
    };
    let wants_raw = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/octet-stream"));
    if wants_raw {
        return (
            [
                (
                    header::CONTENT_TYPE,
                    "application/octet-stream".parse().expect("static header"),
                ),
                (
                    header::HeaderName::from_static("x-bulwark-version"),
                    version_header(version),
                ),
            ],
            value,
        )
            .into_response();
    }
    let mut body = Map::new();
    body.insert("key".into(), key.into());
    value_fields(&value, &mut body);
    body.insert("version".into(), version.to_string().into());
    body.insert("consistency".into(), mode.as_str().into());
    body.insert("source".into(), result.source.clone().into());
    body.insert("quorum".into(), quorum_field(&state, Side::Read, mode, r));
    read_fields(&result, &mut body);
    axum::Json(Value::Object(body)).into_response()
}

/// Write a key.
pub async fn put(
    State(state): State<Arc<AppState>>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let rid = rid.0;
    let (key, mode) = match target(&state, path, query.as_deref(), &headers, &rid) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let w = match requested_quorum(&state, query.as_deref(), Side::Write, mode, &rid) {
        Ok(w) => w,
        Err(e) => return e.into_response(),
    };
    let limits = state.engine.config.limits;
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            return ApiError::new(e.status(), "BODY_REJECTED", e.body_text(), &rid)
                .with("limit", limits.max_value_bytes)
                .into_response();
        }
    };
    let content_type = headers.get(header::CONTENT_TYPE);
    if body.is_empty() && content_type.is_none() {
        // No body and no type: a forgotten body, not an empty value (send one as
        // {"value":""} or with a Content-Type).
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_BODY",
            "the request has no body: send {\"value\": …}, {\"value_base64\": …} or a raw value with its Content-Type",
            &rid,
        )
        .into_response();
    }
    let is_json = content_type
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    let value = if is_json {
        match decode_json_value(&body) {
            Ok(v) => v,
            Err(msg) => {
                return ApiError::new(StatusCode::BAD_REQUEST, "INVALID_BODY", msg, &rid)
                    .into_response();
            }
        }
    } else {
        body
    };
    if let Err(e) = limits.check_value(&value) {
        return limit_error(e, &rid).into_response();
    }
    let outcome = state
        .engine
        .write(key.as_bytes(), Some(value), mode, w, &rid)
        .await;
    let quorum = quorum_field(&state, Side::Write, mode, w);
    write_response(&state, &headers, &key, mode, outcome, Some(quorum), &rid)
}

/// Standard base64 with padding; the unused bits of the last symbol may be set (RFC 4648
/// lets decoders accept them), so any text matching the documented pattern decodes.
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

fn decode_json_value(body: &[u8]) -> Result<Bytes, String> {
    let parsed: PutBody =
        serde_json::from_slice(body).map_err(|e| format!("malformed JSON body: {e}"))?;
    match (parsed.value, parsed.value_base64) {
        (Some(text), None) => Ok(Bytes::from(text)),
        (None, Some(b64)) => BASE64
            .decode(b64)
            .map(Bytes::from)
            .map_err(|e| format!("value_base64 is not valid base64: {e}")),
        _ => Err("the body must have exactly one of \"value\" or \"value_base64\"".into()),
    }
}

/// Delete a key (a versioned tombstone, so a delayed older write cannot resurrect it).
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let rid = rid.0;
    let (key, mode) = match target(&state, path, query.as_deref(), &headers, &rid) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let w = match requested_quorum(&state, query.as_deref(), Side::Write, mode, &rid) {
        Ok(w) => w,
        Err(e) => return e.into_response(),
    };
    let outcome = state
        .engine
        .write(key.as_bytes(), None, mode, w, &rid)
        .await;
    let quorum = quorum_field(&state, Side::Write, mode, w);
    write_response(&state, &headers, &key, mode, outcome, Some(quorum), &rid)
}
