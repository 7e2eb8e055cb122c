//! The structured error response.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// An error response: `status` with the body `{"error":{"code","message","request_id",
/// …extra}}` and, when set, a `Retry-After` header.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code (`CP_ABORTED`, `SOLD_OUT`, …).
    pub code: &'static str,
    /// Human-readable explanation; never contains values or secrets.
    pub message: String,
    /// Correlation id of the request.
    pub request_id: String,
    /// Extra fields inside the `error` object (`limit`, `outcome`, `order_id`, …).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_body_has_the_fields_and_the_header() {
        let r = ApiError::new(StatusCode::CONFLICT, "SOLD_OUT", "gone", "r1")
            .with("available", 0)
            .retry(2)
            .into_response();
        assert_eq!(r.status(), StatusCode::CONFLICT);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        let body = axum::body::to_bytes(r.into_body(), 1 << 16)
            .await
            .expect("body");
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            v,
            json!({"error": {"code": "SOLD_OUT", "message": "gone", "request_id": "r1", "available": 0}})
        );
    }
}
