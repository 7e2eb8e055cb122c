//! The request middleware every service puts outermost: a correlation id for each
//! request, and the `REQUEST_COMPLETED` event (log line + request metrics) when it ends.

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use bulwark_obs::events::{Emit, RequestCompleted};

use crate::guard::REFUSED_PATH;
use crate::route::Classify;

/// The correlation id of a request: the client's `X-Request-Id` when it is sane (1–128
/// visible ASCII characters), else a fresh one. Handlers read it as an extension; the
/// response echoes it.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// What [`observe`] needs to know about the service it observes.
#[derive(Clone, Copy, Debug)]
pub struct Observed {
    /// The `mode` of `REQUEST_COMPLETED` (`AP`, `CP`, `QUORUM`, `SHOP`).
    pub mode: &'static str,
    /// The service's routes (the metric label of a request).
    pub classify: Classify,
    /// Whether a finished request is routine (logged at DEBUG, not INFO), from its
    /// operation and status.
    pub routine: fn(&'static str, u16) -> bool,
}

/// The middleware (`axum::middleware::from_fn_with_state(observed, observe)`).
pub async fn observe(State(o): State<Observed>, mut req: Request, next: Next) -> Response {
    let started = tokio::time::Instant::now();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
    let method = req.method().clone();
    // MatchedPath is an `Arc<str>`: cloning it costs no allocation.
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let refused = req.uri().path() == REFUSED_PATH;
    let (operation, route) = match &matched {
        Some(template) => (
            (o.classify)(&method, Some(template.as_str())).operation,
            template.as_str(),
        ),
        None if refused => ("refused", "<refused>"),
        None => ((o.classify)(&method, None).operation, "<unmatched>"),
    };
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let mut response = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    let status = response.status().as_u16();
    RequestCompleted {
        request_id: &request_id,
        mode: o.mode,
        operation,
        method: method.as_str(),
        route,
        status,
        latency: started.elapsed(),
        routine: (o.routine)(operation, status),
    }
    .emit();
    response
}
