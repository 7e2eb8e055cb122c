//! Admission of data requests (`MAX_IN_FLIGHT`): at most that many are served at once,
//! the rest are shed with 503 `OVERLOADED` at once rather than queued without bound.
//!
//! A request is admitted only once its body is in ([`admit`] collects it first), so a
//! client trickling a body holds a connection, never a slot (design invariant 8). And a
//! service that shed a request in the last second reports itself not ready
//! ([`Admission::shedding`]), so a load balancer takes it out while it is saturated.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::observe::RequestId;

/// How long after shedding a service still reports not ready.
pub const SHEDDING_WINDOW: Duration = Duration::from_secs(1);

/// The in-flight bound and when it last refused someone.
#[derive(Debug)]
pub struct Admission {
    permits: Semaphore,
    max: usize,
    epoch: Instant,
    /// Milliseconds after `epoch` of the last shed request, plus one (0: never).
    last_shed: AtomicU64,
}

impl Admission {
    /// At most `max` requests at once.
    pub fn new(max: usize) -> Admission {
        Admission {
            permits: Semaphore::new(max),
            max,
            epoch: Instant::now(),
            last_shed: AtomicU64::new(0),
        }
    }

    /// The bound.
    pub fn max(&self) -> usize {
        self.max
    }

    /// A slot, or `None` (counted and remembered as shedding).
    pub fn try_admit(&self) -> Option<SemaphorePermit<'_>> {
        match self.permits.try_acquire() {
            Ok(p) => Some(p),
            Err(_) => {
                let ms = self.epoch.elapsed().as_millis() as u64 + 1;
                self.last_shed.store(ms, Ordering::Relaxed);
                bulwark_obs::metrics::metrics()
                    .http_shed
                    .with_label_values::<&str>(&[])
                    .inc();
                None
            }
        }
    }

    /// Whether a request was shed within the last [`SHEDDING_WINDOW`], or every slot is
    /// taken now.
    pub fn shedding(&self) -> bool {
        let last = self.last_shed.load(Ordering::Relaxed);
        let recent = last > 0
            && self.epoch.elapsed().as_millis() as u64 + 1 - last
                < SHEDDING_WINDOW.as_millis() as u64;
        recent || self.permits.available_permits() == 0
    }

    /// The 503 a shed request gets.
    pub fn overloaded(&self, rid: &str) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "OVERLOADED",
            format!("more than {} requests in flight; retry later", self.max),
            rid,
        )
        .retry(1)
    }
}

/// Collects the request's body (at most `limit` bytes), then takes a slot of
/// `admission` for the rest of the request, or sheds it.
pub async fn admit(admission: &Admission, limit: usize, req: Request, next: Next) -> Response {
    let rid = req
        .extensions()
        .get::<RequestId>()
        .map_or_else(String::new, |r| r.0.clone());
    let (parts, body) = req.into_parts();
    let bytes = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                format!("the request body is larger than {limit} bytes"),
                &rid,
            )
            .with("limit", limit)
            .into_response();
        }
        Err(_) => {
            // A body that timed out is turned into 408 by the envelope.
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "the request body could not be read",
                &rid,
            )
            .into_response();
        }
    };
    let Some(_permit) = admission.try_admit() else {
        return admission.overloaded(&rid).into_response();
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn shedding_is_remembered_for_a_second() {
        let a = Admission::new(1);
        assert!(!a.shedding());
        let held = a.try_admit();
        assert!(held.is_some());
        assert!(a.shedding(), "every slot taken");
        assert!(a.try_admit().is_none());
        drop(held);
        assert!(a.shedding(), "shed just now");
        tokio::time::advance(SHEDDING_WINDOW).await;
        assert!(!a.shedding());
    }
}
