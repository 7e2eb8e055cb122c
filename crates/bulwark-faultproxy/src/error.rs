//! The API's one error type and its mapping to Toxiproxy's error body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An API error: Toxiproxy's body `{"error": "<message>", "status": <code>}` with the same
/// status on the response. Messages start with Toxiproxy's own wording where it has one
/// (`proxy not found`, `bad request body: …`), so clients that match on them keep working.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// What went wrong, naming the field or attribute.
    pub message: String,
    /// The HTTP status.
    pub status: StatusCode,
}

impl ApiError {
    /// An error with `status`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            message: message.into(),
            status,
        }
    }

    /// 400 `bad request body: <detail>`.
    pub fn bad_body(detail: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("bad request body: {detail}"),
        )
    }

    /// 400 `missing required field: <field>`.
    pub fn missing(field: &str) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("missing required field: {field}"),
        )
    }

    /// 404 `proxy not found`.
    pub fn proxy_not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "proxy not found")
    }

    /// 409 `proxy already exists`.
    pub fn proxy_exists() -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "proxy already exists")
    }

    /// 404 `toxic not found`.
    pub fn toxic_not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "toxic not found")
    }

    /// 409 `toxic already exists`.
    pub fn toxic_exists() -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "toxic already exists")
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": self.message, "status": self.status.as_u16()})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}
