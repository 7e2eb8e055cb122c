//! Every error answer carries the JSON envelope `{"error":{"code","message","request_id"}}`.
//!
//! Three sources of errors do not come from a service's own handlers: the connection
//! guard's refusals (a synthetic request, see [`crate::guard`]), a request body that timed
//! out, and axum's own answers (extractor rejections in plain text, an empty 405). This
//! middleware, inside [`crate::observe`] so the answers are logged and counted like any,
//! turns all three into the envelope.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::guard::{ConnMeta, GuardLimits, REFUSAL_HEADER, REFUSED_PATH, Refusal, TOKEN};
use crate::observe::RequestId;

/// Longest plain-text error body taken over as the message.
const MAX_MESSAGE: usize = 1024;

/// The middleware (`from_fn_with_state(limits, envelope)`): `limits` are the guard's,
/// for the messages of its refusals.
pub async fn envelope(State(limits): State<GuardLimits>, mut req: Request, next: Next) -> Response {
    let rid = req
        .extensions()
        .get::<RequestId>()
        .map_or_else(String::new, |r| r.0.clone());
    if let Some(value) = req.headers().get(REFUSAL_HEADER) {
        let refusal = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(token, _)| *token == TOKEN.as_str() && req.uri().path() == REFUSED_PATH)
            .and_then(|(_, code)| Refusal::from_code(code));
        match refusal {
            Some(r) => return refusal_error(r, &limits, &rid),
            // A client's forgery: the header means nothing from outside.
            None => {
                req.headers_mut().remove(REFUSAL_HEADER);
            }
        }
    }
    let meta = req.extensions().get::<Arc<ConnMeta>>().cloned();
    let mut response = next.run(req).await;
    if response.status().as_u16() < 400 {
        return response;
    }
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        // The rest of the body is not read: the connection cannot carry another request,
        // and a client must not try (hyper would close it without saying so).
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if meta.is_some_and(|m| m.body_timed_out()) {
        let mut r = ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "REQUEST_TIMEOUT",
            format!(
                "the request body was not received within {} s",
                limits.body_timeout.as_secs_f64()
            ),
            &rid,
        )
        .into_response();
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    if is_json {
        return response;
    }
    rewrite(response, &rid).await
}

/// Headers an error answer keeps when it is rewritten into the envelope.
const KEPT: [header::HeaderName; 4] = [
    header::ALLOW,
    header::RETRY_AFTER,
    header::WWW_AUTHENTICATE,
    header::CONNECTION,
];

/// A plain-text or empty error answer as the envelope, keeping its status and the
/// headers that matter to clients ([`KEPT`]).
async fn rewrite(response: Response, rid: &str) -> Response {
    let (parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, MAX_MESSAGE * 4).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_owned(),
        Err(_) => String::new(),
    };
    let mut message: String = text.chars().take(MAX_MESSAGE).collect();
    if message.is_empty() {
        message = parts
            .status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase();
    }
    let mut out = ApiError::new(parts.status, code_for(parts.status), message, rid).into_response();
    for name in KEPT {
        if let Some(v) = parts.headers.get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out
}

/// The error code of a status no handler gave a code of its own.
fn code_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "BAD_REQUEST",
        401 => "UNAUTHENTICATED",
        403 => "FORBIDDEN",
        404 => "NOT_FOUND",
        405 => "METHOD_NOT_ALLOWED",
        406 => "NOT_ACCEPTABLE",
        408 => "REQUEST_TIMEOUT",
        409 => "CONFLICT",
        411 => "LENGTH_REQUIRED",
        413 => "PAYLOAD_TOO_LARGE",
        414 => "URI_TOO_LONG",
        415 => "UNSUPPORTED_MEDIA_TYPE",
        422 => "UNPROCESSABLE",
        429 => "RATE_LIMITED",
        431 => "HEADERS_TOO_LARGE",
        500 => "INTERNAL",
        503 => "UNAVAILABLE",
        504 => "TIMEOUT",
        s if s < 500 => "BAD_REQUEST",
        _ => "INTERNAL",
    }
}

fn refusal_error(r: Refusal, limits: &GuardLimits, rid: &str) -> Response {
    let message = match r {
        Refusal::UriTooLong => format!(
            "the request target is longer than {} bytes (send large values in a PUT body)",
            limits.max_uri
        ),
        Refusal::HeadTooLarge => format!(
            "the request head is larger than {} bytes or has more than {} header fields",
            limits.max_head,
            crate::guard::MAX_HEADERS
        ),
        Refusal::Malformed => "the request head is not valid HTTP/1.1".to_owned(),
        Refusal::BadContentLength => {
            "Content-Length must be one decimal number (repeated ones must agree)".to_owned()
        }
        Refusal::BadTransferEncoding => {
            "Transfer-Encoding must be exactly \"chunked\" (HTTP/1.1), and never beside Content-Length"
                .to_owned()
        }
        Refusal::Connect => "CONNECT is not supported".to_owned(),
        Refusal::HeadTimeout => format!(
            "the request head was not received within {} s",
            limits.head_timeout.as_secs_f64()
        ),
        Refusal::TooManyConnectionsFromClient => {
            "too many connections from this client address; reuse or close some".to_owned()
        }
        Refusal::TooManyConnections => {
            "the service has too many connections open; retry later".to_owned()
        }
    };
    bulwark_obs::metrics::metrics()
        .http_connections_refused
        .with_label_values(&[r.code()])
        .inc();
    let status = StatusCode::from_u16(r.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut e = ApiError::new(status, r.code(), message, rid);
    if matches!(
        r,
        Refusal::TooManyConnectionsFromClient | Refusal::TooManyConnections
    ) {
        e = e.retry(1);
    }
    let mut response = e.into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    if r == Refusal::Connect {
        response.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, PUT, POST, DELETE"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(status: StatusCode, text: &'static str) -> Response {
        (status, axum::body::Body::from(text)).into_response()
    }

    #[tokio::test]
    async fn plain_errors_become_the_envelope() {
        let r = rewrite(plain(StatusCode::BAD_REQUEST, "Invalid URL: bad %FF"), "r1").await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(r.into_body(), 1 << 16)
            .await
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(v["error"]["code"], "BAD_REQUEST");
        assert_eq!(v["error"]["message"], "Invalid URL: bad %FF");
        assert_eq!(v["error"]["request_id"], "r1");
        let r = rewrite(plain(StatusCode::METHOD_NOT_ALLOWED, ""), "r2").await;
        let body = axum::body::to_bytes(r.into_body(), 1 << 16)
            .await
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(v["error"]["code"], "METHOD_NOT_ALLOWED");
        assert_eq!(v["error"]["message"], "method not allowed");
    }
}
