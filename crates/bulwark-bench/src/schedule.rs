//! The open-loop send schedule (wrk2 style), as pure arithmetic.
//!
//! Request `i` of a phase is *intended* to be sent at `start + i / rate`. Requests are dealt
//! round-robin to `W` workers (worker `w` owns `i ≡ w mod W`), each of which sleeps until
//! its next intended time, or sends at once when it is already late. Latency is measured
//! from the intended time, so when the server stalls, the requests that *should* have been
//! sent during the stall are charged for the wait (no coordinated omission).

use std::time::Duration;

/// Fixed-rate schedule of one phase.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    /// Requests per second, finite and positive.
    rate: f64,
    /// Requests whose intended time falls inside the phase.
    total: u64,
}

impl Schedule {
    /// The schedule for `rate` requests/s over `duration`.
    pub(crate) fn new(rate: f64, duration: Duration) -> Self {
        Schedule {
            rate,
            total: scheduled_count(rate, duration),
        }
    }

    /// Requests the phase must send.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Offset of request `i`'s intended send time from the phase start.
    pub(crate) fn offset(&self, i: u64) -> Duration {
        // Nanosecond arithmetic in f64 is exact enough: 2^53 ns is 104 days.
        Duration::from_nanos((i as f64 * 1e9 / self.rate).round() as u64)
    }
}

/// Number of indices `i ≥ 0` with `i / rate < duration`, i.e. `ceil(rate × duration)`.
pub(crate) fn scheduled_count(rate: f64, duration: Duration) -> u64 {
    let n = rate * duration.as_secs_f64();
    // Guard against `3.0000000001`-style float noise turning an exact product into n + 1.
    let rounded = n.round();
    if (n - rounded).abs() < 1e-9 {
        rounded as u64
    } else {
        n.ceil() as u64
    }
}

/// How many of the indices `from, from + step, from + 2·step, …` are below `total`.
/// Used to count the requests a worker never got to send.
pub(crate) fn remaining(from: u64, step: u64, total: u64) -> u64 {
    if from >= total || step == 0 {
        0
    } else {
        (total - from).div_ceil(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_is_rate_times_duration() {
        assert_eq!(scheduled_count(1000.0, Duration::from_secs(2)), 2000);
        assert_eq!(scheduled_count(3.0, Duration::from_millis(1000)), 3);
        assert_eq!(scheduled_count(0.1, Duration::from_secs(30)), 3);
        // i = 0, 1 at 0 s and 0.4 s, and i = 2 at 0.8 s < 1 s: three requests.
        assert_eq!(scheduled_count(2.5, Duration::from_secs(1)), 3);
        assert_eq!(scheduled_count(1.0, Duration::from_millis(1)), 1);
        assert_eq!(scheduled_count(1.0, Duration::ZERO), 0);
    }

    #[test]
    fn offsets_are_evenly_spaced() {
        let s = Schedule::new(4.0, Duration::from_secs(1));
        assert_eq!(s.total(), 4);
        assert_eq!(s.offset(0), Duration::ZERO);
        assert_eq!(s.offset(1), Duration::from_millis(250));
        assert_eq!(s.offset(3), Duration::from_millis(750));
        let s = Schedule::new(3.0, Duration::from_secs(1));
        assert_eq!(s.offset(1), Duration::from_nanos(333_333_333));
        // Offsets do not accumulate rounding error.
        assert_eq!(s.offset(3_000_000), Duration::from_secs(1_000_000));
    }

    #[test]
    fn every_offset_is_inside_the_phase() {
        let d = Duration::from_millis(1234);
        let s = Schedule::new(777.0, d);
        assert!(s.offset(s.total() - 1) < d);
        assert!(s.offset(s.total()) >= d);
    }

    #[test]
    fn round_robin_covers_every_index_once() {
        let (total, workers) = (103, 8);
        let sum: u64 = (0..workers).map(|w| remaining(w, workers, total)).sum();
        assert_eq!(sum, total);
        assert_eq!(remaining(5, 8, 5), 0);
        assert_eq!(remaining(4, 8, 5), 1);
        assert_eq!(remaining(0, 1, 10), 10);
        assert_eq!(remaining(0, 0, 10), 0);
    }
}
