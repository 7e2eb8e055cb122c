//! Deadlines on futures: [`with_timeout`] for one call, [`TimeoutLayer`] for a tower
//! service stack. Both read `tokio::time`, so tests drive them with paused time.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// The deadline passed before the future completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {0:?}")]
pub struct Elapsed(pub Duration);

/// Runs `fut` for at most `d`; the future is dropped (cancelled) if the deadline passes.
pub async fn with_timeout<F: Future>(d: Duration, fut: F) -> Result<F::Output, Elapsed> {
    tokio::time::timeout(d, fut).await.map_err(|_| Elapsed(d))
}

/// A service call's error: the deadline, or the inner service's own error.
#[derive(Debug, thiserror::Error)]
pub enum TimeoutError<E> {
    /// The deadline passed.
    #[error(transparent)]
    Elapsed(#[from] Elapsed),
    /// The inner service failed in time.
    #[error(transparent)]
    Inner(E),
}

/// A tower layer putting a deadline on every call of the service it wraps.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    timeout: Duration,
}

impl TimeoutLayer {
    /// Calls through this layer fail with [`Elapsed`] after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        TimeoutLayer { timeout }
    }
}

impl<S> tower::Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            timeout: self.timeout,
        }
    }
}

/// A service with a deadline on every call (built by [`TimeoutLayer`]).
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S, R> tower::Service<R> for Timeout<S>
where
    S: tower::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = TimeoutError<S::Error>;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(TimeoutError::Inner)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let fut = self.inner.call(req);
        let d = self.timeout;
        Box::pin(async move {
            match with_timeout(d, fut).await {
                Ok(r) => r.map_err(TimeoutError::Inner),
                Err(e) => Err(TimeoutError::Elapsed(e)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use tower::{Layer, ServiceExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn with_timeout_passes_fast_futures_and_cuts_slow_ones() {
        assert_eq!(
            with_timeout(Duration::from_millis(10), async { 5 }).await,
            Ok(5)
        );
        let slow = tokio::time::sleep(Duration::from_millis(11));
        assert_eq!(
            with_timeout(Duration::from_millis(10), slow).await,
            Err(Elapsed(Duration::from_millis(10)))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn layer_maps_deadline_and_inner_errors() {
        let svc = TimeoutLayer::new(Duration::from_secs(1)).layer(tower::service_fn(
            |ms: u64| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                if ms == 0 { Err("inner") } else { Ok(ms) }
            },
        ));
        assert_eq!(svc.clone().oneshot(5).await.ok(), Some(5));
        assert!(matches!(
            svc.clone().oneshot(0).await,
            Err(TimeoutError::Inner("inner"))
        ));
        assert!(matches!(
            svc.oneshot(2000).await,
            Err(TimeoutError::Elapsed(_))
        ));
    }
}
