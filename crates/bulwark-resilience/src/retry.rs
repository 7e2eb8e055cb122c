//! Retry with capped exponential backoff and full jitter.
//!
//! The delay before retry `n` (0-based) is drawn uniformly from `[0, min(max, base * 2^n)]`
//! ("full jitter", as in the AWS architecture blog's *Exponential Backoff and Jitter*):
//! spreading retries over the whole window is what keeps many gateways that failed at the
//! same moment from retrying at the same moment too.
//!
//! Only retry operations that are safe to repeat; the caller says which errors are worth
//! retrying (a timeout on a non-idempotent write is not).

use std::future::Future;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How the random part of a delay is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Jitter {
    /// Uniform in `[0, cap]` (the default; best at de-synchronising clients).
    Full,
    /// Exactly `cap` (deterministic; for tests and for callers that jitter elsewhere).
    None,
}

/// A retry policy: how many attempts, and how long to wait between them.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (1 = no retry; 0 is treated as 1).
    pub max_attempts: u32,
    /// Cap of the first retry's delay; doubles on each further retry.
    pub base: Duration,
    /// Largest cap any retry's delay can have.
    pub max: Duration,
    /// How the delay is drawn within its cap.
    pub jitter: Jitter,
    /// Seed for the jitter's random numbers; `None` seeds from the OS. Set it in tests
    /// for reproducible delays.
    pub seed: Option<u64>,
}

impl RetryPolicy {
    /// A policy with full jitter and an OS-seeded random source.
    pub fn new(max_attempts: u32, base: Duration, max: Duration) -> Self {
        RetryPolicy {
            max_attempts,
            base,
            max,
            jitter: Jitter::Full,
            seed: None,
        }
    }

    /// The same policy, with a fixed seed (deterministic delays).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The delays this policy waits before each retry, in order (`max_attempts - 1` of
    /// them).
    pub fn delays(&self) -> impl Iterator<Item = Duration> + '_ {
        let mut rng = match self.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        (0..self.max_attempts.saturating_sub(1))
            .map(move |retry| backoff_delay(self, retry, rng.random::<f64>()))
    }
}

/// The cap of retry `retry`'s delay: `min(max, base * 2^retry)`, without overflow.
pub fn backoff_cap(policy: &RetryPolicy, retry: u32) -> Duration {
    let factor = 1u32.checked_shl(retry).unwrap_or(u32::MAX);
    policy
        .base
        .checked_mul(factor)
        .unwrap_or(Duration::MAX)
        .min(policy.max)
}

/// The delay before retry `retry` given a uniform random draw `unit` in `[0, 1)`.
/// Pure, so tests can check the bounds without randomness.
pub fn backoff_delay(policy: &RetryPolicy, retry: u32, unit: f64) -> Duration {
    let cap = backoff_cap(policy, retry);
    match policy.jitter {
        Jitter::None => cap,
        Jitter::Full => cap.mul_f64(unit.clamp(0.0, 1.0)),
    }
}

/// Runs `op` until it succeeds, fails with an error `is_retryable` refuses, or the
/// policy's attempts are used up; returns the last result. Sleeps with `tokio::time`.
pub async fn retry<F, Fut, T, E>(
    policy: &RetryPolicy,
    is_retryable: impl Fn(&E) -> bool,
    mut op: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delays = policy.delays();
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if !is_retryable(&e) => return Err(e),
            Err(e) => match delays.next() {
                Some(d) => tokio::time::sleep(d).await,
                None => return Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::new(6, Duration::from_millis(10), Duration::from_millis(50)).with_seed(7)
    }

    #[test]
    fn caps_double_then_saturate() {
        let p = policy();
        let caps: Vec<u128> = (0..5).map(|r| backoff_cap(&p, r).as_millis()).collect();
        assert_eq!(caps, [10, 20, 40, 50, 50]);
        assert_eq!(
            backoff_cap(&p, 200),
            Duration::from_millis(50),
            "no overflow"
        );
    }

    #[test]
    fn delays_are_bounded_jittered_and_reproducible() {
        let p = policy();
        let a: Vec<Duration> = p.delays().collect();
        assert_eq!(a.len(), 5);
        for (r, d) in a.iter().enumerate() {
            assert!(*d <= backoff_cap(&p, r as u32), "retry {r}: {d:?}");
        }
        assert_eq!(a, p.delays().collect::<Vec<_>>(), "same seed, same delays");
        let other: Vec<Duration> = p.clone().with_seed(8).delays().collect();
        assert_ne!(a, other, "jitter must vary with the seed");
        assert_eq!(backoff_delay(&p, 1, 0.5), Duration::from_millis(10));
        let fixed = RetryPolicy {
            jitter: Jitter::None,
            ..p
        };
        assert_eq!(backoff_delay(&fixed, 1, 0.5), Duration::from_millis(20));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_retryable_errors_until_success() {
        let calls = AtomicU32::new(0);
        let r: Result<u32, &str> = retry(
            &policy(),
            |_| true,
            || async {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if n < 3 { Err("transient") } else { Ok(n) }
            },
        )
        .await;
        assert_eq!(r, Ok(3));
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_max_attempts_and_on_non_retryable_errors() {
        let calls = AtomicU32::new(0);
        let r: Result<(), &str> = retry(
            &policy(),
            |_| true,
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("down")
            },
        )
        .await;
        assert_eq!((r, calls.load(Ordering::SeqCst)), (Err("down"), 6));

        calls.store(0, Ordering::SeqCst);
        let r: Result<(), &str> = retry(
            &policy(),
            |e| *e != "fatal",
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("fatal")
            },
        )
        .await;
        assert_eq!((r, calls.load(Ordering::SeqCst)), (Err("fatal"), 1));
    }
}
