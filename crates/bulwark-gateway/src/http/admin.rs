//! The chaos admin endpoint (SPEC CHAOS-1, clock skew on a writer): skews this gateway's
//! HLC clock source by an offset, without root and without touching the system clock.
//!
//! | request | effect |
//! |---|---|
//! | `GET /admin/chaos/clock` | `{"offset_ms"}` |
//! | `PUT /admin/chaos/clock` `{"offset_ms": N}` | sets the skew; answers the previous one too |
//! | `DELETE /admin/chaos/clock` | back to 0 |
//!
//! Guarded: refused (403 `CHAOS_DISABLED`) unless fault injection is enabled for this
//! gateway by the setting `CHAOS_TOKEN`, and then only to requests carrying the token in
//! `X-Chaos-Token: <CHAOS_TOKEN>` (401 otherwise). On a gateway without credentials
//! `Authorization: Bearer <CHAOS_TOKEN>` is accepted too; with credentials that header
//! carries the caller's admin key, which the security layer checks first. `bulwark up`
//! gives each run's gateways a fresh random token that only its chaos controller knows.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bulwark_obs::events::{ClockSkew, Emit};
use serde_json::json;

use super::{ApiError, AppState, RequestId};

/// The largest skew accepted: one day either way.
pub const MAX_OFFSET_MS: i64 = 86_400_000;

fn guard(state: &AppState, headers: &HeaderMap, rid: &str) -> Result<(), ApiError> {
    let Some(token) = &state.engine.config.chaos_token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "CHAOS_DISABLED",
            "fault injection is not enabled for this gateway (setting CHAOS_TOKEN)",
            rid,
        ));
    };
    let given = match headers.get("x-chaos-token") {
        Some(v) => v.to_str().unwrap_or(""),
        None => headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or(""),
    };
    if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "a valid X-Chaos-Token: <CHAOS_TOKEN> header is required",
            rid,
        ));
    }
    Ok(())
}

/// Compares without an early exit, so timing does not reveal the token's prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn offset_now(state: &AppState) -> i64 {
    state.engine.hlc.clock().offset_ms()
}

/// `GET /admin/chaos/clock`.
pub(super) async fn get_clock(
    State(state): State<Arc<AppState>>,
    axum::Extension(rid): axum::Extension<RequestId>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    guard(&state, &headers, &rid.0)?;
    Ok(Json(json!({"offset_ms": offset_now(&state)})).into_response())
}

/// `PUT /admin/chaos/clock`.
pub(super) async fn set_clock(
    State(state): State<Arc<AppState>>,
    axum::Extension(rid): axum::Extension<RequestId>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    guard(&state, &headers, &rid.0)?;
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "INVALID_BODY", m, &rid.0);
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| bad(format!("expected {{\"offset_ms\": N}}: {e}")))?;
    let offset = bulwark_http::input::as_integer(&v["offset_ms"])
        .filter(|o| o.abs() <= MAX_OFFSET_MS)
        .ok_or_else(|| {
            bad(format!(
                "offset_ms must be an integer within ±{MAX_OFFSET_MS}"
            ))
        })?;
    let previous = offset_now(&state);
    state.engine.hlc.clock().set_offset_ms(offset);
    ClockSkew {
        service: &state.engine.config.name,
        offset_ms: offset,
        previous_offset_ms: previous,
    }
    .emit();
    Ok(Json(json!({"offset_ms": offset, "previous_offset_ms": previous})).into_response())
}

/// `DELETE /admin/chaos/clock`.
pub(super) async fn reset_clock(
    State(state): State<Arc<AppState>>,
    axum::Extension(rid): axum::Extension<RequestId>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    guard(&state, &headers, &rid.0)?;
    let previous = offset_now(&state);
    state.engine.hlc.clock().set_offset_ms(0);
    ClockSkew {
        service: &state.engine.config.name,
        offset_ms: 0,
        previous_offset_ms: previous,
    }
    .emit();
    Ok(Json(json!({"offset_ms": 0, "previous_offset_ms": previous})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
