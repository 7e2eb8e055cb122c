//! The one place that maps gateway errors to HTTP statuses and error codes; the body,
//! `{"error":{"code","message","request_id",…}}`, is `bulwark_http::ApiError`'s.

use axum::http::StatusCode;
use bulwark_core::LimitError;

use crate::engine::{ReadError, WriteOutcome};

pub use bulwark_http::ApiError;

/// A bad key or value: 400 for malformed, 413 for too large (with the limit).
pub fn limit_error(e: LimitError, request_id: &str) -> ApiError {
    match e {
        LimitError::EmptyKey => ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_KEY",
            e.to_string(),
            request_id,
        ),
        LimitError::KeyTooLarge { limit, .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "KEY_TOO_LARGE",
            e.to_string(),
            request_id,
        )
        .with("limit", limit),
        LimitError::ValueTooLarge { limit, .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "VALUE_TOO_LARGE",
            e.to_string(),
            request_id,
        )
        .with("limit", limit),
    }
}

/// The error for a write that did not commit, or `None` if it did.
pub fn write_error(outcome: &WriteOutcome, request_id: &str) -> Option<ApiError> {
    match outcome {
        WriteOutcome::Committed { .. } => None,
        WriteOutcome::Aborted {
            version,
            acked,
            required,
            reason,
        } => Some(
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "CP_ABORTED",
                format!("write aborted and not applied: {reason}"),
                request_id,
            )
            .with("outcome", "not_applied")
            .with("version", version.to_string())
            .with("acked", *acked)
            .with("required", *required)
            .retry(1),
        ),
        WriteOutcome::Unavailable { reason } => Some(
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                format!("write not applied: {reason}"),
                request_id,
            )
            .with("outcome", "not_applied")
            .retry(1),
        ),
        WriteOutcome::Unknown { version, reason } => Some(
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "OUTCOME_UNKNOWN",
                format!("the write may or may not have been applied: {reason}"),
                request_id,
            )
            .with("outcome", "unknown")
            .with("version", version.to_string()),
        ),
    }
}

/// A read that could not be answered.
pub fn read_error(e: ReadError, request_id: &str) -> ApiError {
    match e {
        ReadError::Unavailable(reason) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "READ_UNAVAILABLE",
            reason,
            request_id,
        )
        .retry(1),
    }
}
