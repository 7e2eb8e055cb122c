//! Circuit breaker, one per replica (SPEC CAP-5).
//!
//! States (electrical metaphor, see [`BreakerState`]):
//!
//! * **CLOSED**: calls pass; consecutive failures are counted, a success resets the count;
//!   `failure_threshold` consecutive failures open the breaker.
//! * **OPEN**: [`CircuitBreaker::try_acquire`] fails fast with [`BreakerOpen`] (no network)
//!   until `open_timeout` has elapsed; the next acquire then moves to HALF_OPEN.
//! * **HALF_OPEN**: at most `half_open_max_probes` calls (probes) are in flight at once; a
//!   probe success closes the breaker, a probe failure reopens it for another
//!   `open_timeout`.
//!
//! A caller reports each call's outcome through its [`Permit`]. Dropping a permit without
//! reporting is *neutral*: the call was cancelled (a client went away, a quorum was reached
//! without it) and says nothing about the replica; it only frees a probe slot.
//!
//! Outcomes are attributed to the breaker *epoch* in which the permit was issued: a slow
//! call started while CLOSED that fails after the breaker already opened counts in the
//! totals but cannot reopen or close the breaker again.

use std::sync::Mutex;
use std::time::Duration;

pub use bulwark_obs::events::BreakerState;
use bulwark_obs::events::{CircuitBreakerTransition, Emit};
use tokio::time::Instant;

/// When a breaker opens and how it probes its way back.
#[derive(Clone, Copy, Debug)]
pub struct BreakerConfig {
    /// Consecutive failures (while CLOSED) that open the breaker.
    pub failure_threshold: u32,
    /// How long the breaker stays OPEN before letting probes through.
    pub open_timeout: Duration,
    /// Probes allowed in flight at once while HALF_OPEN.
    pub half_open_max_probes: u32,
}

/// The breaker of one replica. Shared by reference (or `Arc`) between all callers.
#[derive(Debug)]
pub struct CircuitBreaker {
    /// Replica name, used in events and metrics labels.
    name: String,
    /// Thresholds and timeouts.
    config: BreakerConfig,
    /// Mutable state. A std mutex: held for a few instructions, never across an await.
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    /// Consecutive failures while CLOSED (the count that opened the breaker while OPEN).
    failures: u32,
    /// When the breaker last opened; `None` while it never did.
    opened_at: Option<Instant>,
    /// Probes handed out and not yet reported or dropped (HALF_OPEN only).
    probes_in_flight: u32,
    /// Incremented on every transition; a permit's outcome only drives transitions when
    /// its epoch is still current.
    epoch: u64,
    /// Failures reported since creation.
    total_failures: u64,
    /// Calls refused without touching the network since creation.
    total_rejected: u64,
}

/// The breaker refused a call: the replica is considered down.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("circuit breaker is OPEN (retry after {retry_after:?})")]
pub struct BreakerOpen {
    /// Time until the breaker lets a probe through (zero when it is HALF_OPEN and all
    /// probe slots are taken).
    pub retry_after: Duration,
}

/// A point-in-time view of a breaker, as served by `GET /circuit-breaker`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BreakerSnapshot {
    /// `CLOSED`, `HALF_OPEN` or `OPEN`.
    pub state: &'static str,
    /// Consecutive failures counted.
    pub failures: u32,
    /// Configured failure threshold.
    pub failure_threshold: u32,
    /// Configured open timeout, in seconds.
    pub open_timeout_sec: f64,
    /// Milliseconds since the breaker last opened, if it ever did.
    pub opened_ago_ms: Option<u64>,
    /// Failures reported since start.
    pub total_failures: u64,
    /// Calls refused while OPEN since start.
    pub total_rejected: u64,
}

/// Permission to make one call. Report its outcome with [`Permit::success`] or
/// [`Permit::failure`]; dropping it unreported is neutral (a cancelled call).
#[must_use = "report the call's outcome with success() or failure()"]
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    /// The breaker epoch the permit was issued in.
    epoch: u64,
    /// Whether this permit holds one of the HALF_OPEN probe slots.
    probe: bool,
    /// Set once the outcome was reported, so `Drop` does nothing more.
    reported: bool,
}

impl CircuitBreaker {
    /// A CLOSED breaker for replica `name`; registers its state gauge.
    pub fn new(name: impl Into<String>, config: BreakerConfig) -> Self {
        let name = name.into();
        bulwark_obs::events::register_breaker(&name);
        CircuitBreaker {
            name,
            config,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                failures: 0,
                opened_at: None,
                probes_in_flight: 0,
                epoch: 0,
                total_failures: 0,
                total_rejected: 0,
            }),
        }
    }

    /// The replica name this breaker guards.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current state (moving OPEN to HALF_OPEN is done by [`Self::try_acquire`]).
    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    /// Whether a call would be refused right now without touching the network: OPEN and
    /// the open timeout has not elapsed (after it, the next call is the HALF_OPEN probe).
    /// Lets a caller that needs several replicas fail fast before calling any of them.
    pub fn is_rejecting(&self) -> bool {
        let g = self.lock();
        g.state == BreakerState::Open
            && g.opened_at
                .is_some_and(|t| Instant::now() - t < self.config.open_timeout)
    }

    /// Asks to make one call. Fails fast while OPEN; after `open_timeout` moves to
    /// HALF_OPEN and hands out at most `half_open_max_probes` concurrent probe permits.
    pub fn try_acquire(&self) -> Result<Permit<'_>, BreakerOpen> {
        let now = Instant::now();
        let mut transition = None;
        let result = {
            let mut g = self.lock();
            if g.state == BreakerState::Open {
                let elapsed = g.opened_at.map_or(Duration::MAX, |t| now - t);
                if elapsed >= self.config.open_timeout {
                    transition = Some(g.enter(BreakerState::HalfOpen, now));
                } else {
                    g.total_rejected += 1;
                    return Err(BreakerOpen {
                        retry_after: self.config.open_timeout - elapsed,
                    });
                }
            }
            match g.state {
                BreakerState::Closed => Ok(self.permit(g.epoch, false)),
                BreakerState::HalfOpen if g.probes_in_flight < self.config.half_open_max_probes => {
                    g.probes_in_flight += 1;
                    Ok(self.permit(g.epoch, true))
                }
                _ => {
                    g.total_rejected += 1;
                    Err(BreakerOpen {
                        retry_after: Duration::ZERO,
                    })
                }
            }
        };
        if let Some((from, failures)) = transition {
            self.emit(from, BreakerState::HalfOpen, failures);
        }
        result
    }

    /// The breaker's state and counters now.
    pub fn snapshot(&self) -> BreakerSnapshot {
        let now = Instant::now();
        let g = self.lock();
        BreakerSnapshot {
            state: g.state.as_str(),
            failures: g.failures,
            failure_threshold: self.config.failure_threshold,
            open_timeout_sec: self.config.open_timeout.as_secs_f64(),
            opened_ago_ms: g
                .opened_at
                .map(|t| u64::try_from((now - t).as_millis()).unwrap_or(u64::MAX)),
            total_failures: g.total_failures,
            total_rejected: g.total_rejected,
        }
    }

    fn permit(&self, epoch: u64, probe: bool) -> Permit<'_> {
        Permit {
            breaker: self,
            epoch,
            probe,
            reported: false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the counters inconsistent enough
        // to matter; keep serving rather than poison every caller.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies one permit's outcome (`Some(true)` success, `Some(false)` failure, `None`
    /// dropped), then emits any transition outside the lock.
    fn settle(&self, epoch: u64, probe: bool, outcome: Option<bool>) {
        let now = Instant::now();
        let mut transition = None;
        {
            let mut g = self.lock();
            if outcome == Some(false) {
                g.total_failures += 1;
            }
            if epoch != g.epoch {
                return; // The breaker moved on since this permit was issued.
            }
            if probe {
                g.probes_in_flight = g.probes_in_flight.saturating_sub(1);
            }
            match (g.state, outcome) {
                (BreakerState::Closed, Some(true)) => g.failures = 0,
                (BreakerState::Closed, Some(false)) => {
                    g.failures += 1;
                    if g.failures >= self.config.failure_threshold {
                        transition = Some((g.enter(BreakerState::Open, now), BreakerState::Open));
                    }
                }
                (BreakerState::HalfOpen, Some(true)) if probe => {
                    transition = Some((g.enter(BreakerState::Closed, now), BreakerState::Closed));
                }
                (BreakerState::HalfOpen, Some(false)) if probe => {
                    transition = Some((g.enter(BreakerState::Open, now), BreakerState::Open));
                }
                _ => {}
            }
        }
        if let Some(((from, failures), to)) = transition {
            self.emit(from, to, failures);
        }
    }

    fn emit(&self, from: BreakerState, to: BreakerState, failures: u32) {
        CircuitBreakerTransition {
            node: &self.name,
            from,
            to,
            failures,
        }
        .emit();
    }
}

impl Inner {
    /// Moves to `to`, starting a new epoch; returns `(from, failures)` for the event.
    fn enter(&mut self, to: BreakerState, now: Instant) -> (BreakerState, u32) {
        let from = self.state;
        let failures = self.failures;
        self.state = to;
        self.epoch += 1;
        self.probes_in_flight = 0;
        match to {
            BreakerState::Open => self.opened_at = Some(now),
            BreakerState::Closed => self.failures = 0,
            BreakerState::HalfOpen => {}
        }
        (from, failures)
    }
}

impl Permit<'_> {
    /// The call succeeded: resets the failure count, or closes a HALF_OPEN breaker.
    pub fn success(mut self) {
        self.reported = true;
        self.breaker.settle(self.epoch, self.probe, Some(true));
    }

    /// The call failed: counts toward opening, or reopens a HALF_OPEN breaker.
    pub fn failure(mut self) {
        self.reported = true;
        self.breaker.settle(self.epoch, self.probe, Some(false));
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker.settle(self.epoch, self.probe, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32, probes: u32) -> CircuitBreaker {
        CircuitBreaker::new(
            "test_node",
            BreakerConfig {
                failure_threshold: threshold,
                open_timeout: Duration::from_secs(10),
                half_open_max_probes: probes,
            },
        )
    }

    fn fail_n(b: &CircuitBreaker, n: u32) {
        for _ in 0..n {
            b.try_acquire().expect("closed").failure();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rejects_only_while_open_and_within_the_timeout() {
        let b = breaker(3, 1);
        assert!(!b.is_rejecting());
        fail_n(&b, 3);
        assert!(b.is_rejecting(), "OPEN within the timeout");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(
            !b.is_rejecting(),
            "the next call would be the half-open probe"
        );
        assert_eq!(
            b.state(),
            BreakerState::Open,
            "asking does not change the state"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_consecutive_failures() {
        let b = breaker(3, 1);
        fail_n(&b, 2);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.snapshot().failures, 2);
        fail_n(&b, 1);
        assert_eq!(b.state(), BreakerState::Open);
        let s = b.snapshot();
        assert_eq!((s.state, s.failures, s.total_failures), ("OPEN", 3, 3));
        assert_eq!(s.opened_ago_ms, Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn success_resets_the_consecutive_count() {
        let b = breaker(3, 1);
        fail_n(&b, 2);
        b.try_acquire().expect("closed").success();
        fail_n(&b, 2);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.snapshot().total_failures, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn open_fails_fast_until_timeout_then_limits_probes() {
        let b = breaker(1, 2);
        fail_n(&b, 1);
        tokio::time::advance(Duration::from_secs(4)).await;
        let err = b.try_acquire().expect_err("open");
        assert_eq!(err.retry_after, Duration::from_secs(6));
        assert_eq!(b.snapshot().total_rejected, 1);

        tokio::time::advance(Duration::from_secs(6)).await;
        let p1 = b.try_acquire().expect("first probe");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let p2 = b.try_acquire().expect("second probe");
        let err = b.try_acquire().expect_err("probe slots full");
        assert_eq!(err.retry_after, Duration::ZERO);
        drop(p1); // neutral: frees a slot, no transition
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let p3 = b.try_acquire().expect("freed slot");
        p2.success();
        assert_eq!(b.state(), BreakerState::Closed);
        // p3 was issued in the HALF_OPEN epoch: its late failure must not reopen.
        p3.failure();
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.snapshot().failures, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn probe_failure_reopens_for_a_full_timeout() {
        let b = breaker(1, 1);
        fail_n(&b, 1);
        tokio::time::advance(Duration::from_secs(10)).await;
        b.try_acquire().expect("probe").failure();
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(
            b.try_acquire().expect_err("reopened").retry_after,
            Duration::from_secs(1)
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        b.try_acquire().expect("probe again").success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn stale_permit_from_closed_epoch_does_not_drive_transitions() {
        let b = breaker(1, 1);
        let slow = b.try_acquire().expect("closed");
        fail_n(&b, 1);
        assert_eq!(b.state(), BreakerState::Open);
        slow.success(); // started before the breaker opened: must not close it
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn transitions_emit_events_that_move_the_state_gauge() {
        let m = bulwark_obs::metrics::metrics();
        let name = "breaker_gauge_test";
        let b = CircuitBreaker::new(
            name,
            BreakerConfig {
                failure_threshold: 1,
                open_timeout: Duration::from_secs(1),
                half_open_max_probes: 1,
            },
        );
        let gauge = || m.circuit_breaker_state.with_label_values(&[name]).get();
        let opened = || {
            m.circuit_breaker_transitions
                .with_label_values(&[name, "OPEN"])
                .get()
        };
        assert_eq!((gauge(), opened()), (0, 0));
        fail_n(&b, 1);
        assert_eq!((gauge(), opened()), (2, 1));
        tokio::time::advance(Duration::from_secs(1)).await;
        let probe = b.try_acquire().expect("probe");
        assert_eq!(gauge(), 1);
        probe.success();
        assert_eq!(gauge(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_permit_while_closed_is_neutral() {
        let b = breaker(2, 1);
        fail_n(&b, 1);
        drop(b.try_acquire().expect("closed"));
        assert_eq!(b.snapshot().failures, 1);
        fail_n(&b, 1);
        assert_eq!(b.state(), BreakerState::Open);
    }
}
