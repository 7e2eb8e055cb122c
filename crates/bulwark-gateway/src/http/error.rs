//! The one place that maps gateway errors to HTTP statuses and the structured body
//! `{"error":{"code","message","request_id",…}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bulwark_core::LimitError;
use serde_json::{Map, Value, json};

use crate::engine::{ReadError, WriteOutcome};

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code (`CP_ABORTED`, `KEY_TOO_LARGE`, …).
    pub code: &'static str,
    /// Human-readable explanation; never contains values or secrets.
    pub message: String,
    /// Correlation id of the request.
    pub request_id: String,
    /// Extra fields inside the `error` object (`limit`, `outcome`, `version`, …).
    pub extra: Vec<(&'static str, Value)>,
    /// Seconds after which a retry may succeed (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with no extra fields.
    pub fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
        request_id: &str,
    ) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            request_id: request_id.to_string(),
            extra: Vec::new(),
            retry_after: None,
        }
    }

    /// Adds a field to the `error` object.
    pub fn with(mut self, field: &'static str, value: impl Into<Value>) -> Self {
        self.extra.push((field, value.into()));
        self
    }

    /// A bad key or value: 400 for malformed, 413 for too large (with the limit).
    pub fn limit(e: LimitError, request_id: &str) -> Self {
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
    pub fn from_write(outcome: &WriteOutcome, request_id: &str) -> Option<Self> {
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
    pub fn from_read(e: ReadError, request_id: &str) -> Self {
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

    /// Adds `Retry-After: secs`.
    pub fn retry(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = Map::new();
        error.insert("code".into(), self.code.into());
        error.insert("message".into(), self.message.into());
        error.insert("request_id".into(), self.request_id.into());
        error.extend(self.extra.into_iter().map(|(k, v)| (k.to_string(), v)));
        let mut response = (self.status, axum::Json(json!({ "error": error }))).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
