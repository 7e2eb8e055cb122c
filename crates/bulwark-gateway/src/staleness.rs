//! Bounded staleness (SPEC CAP-6), as a pure function of what a read observed.
//!
//! A replica's staleness for a key is 0 when it holds the newest committed version;
//! otherwise it is the time since the oldest committed version it has not applied. That
//! version is the oldest write the gateway knows the replica missed (its hints) that is
//! newer than what the replica holds, or else the newest committed version itself. This is
//! stricter than the seed's lab, which measured the age of the value.

use bulwark_core::Version;

/// What a read learned about one replica.
#[derive(Clone, Debug, Default)]
pub struct Observation {
    /// The committed version the replica returned, `None` if it did not answer.
    pub held: Option<Version>,
    /// Versions of this key the gateway knows the replica missed (queued hints).
    pub missed: Vec<Version>,
}

/// Staleness of one replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Staleness {
    /// Whether the replica answered this read.
    pub reachable: bool,
    /// Milliseconds behind, when known (always known for reachable replicas).
    pub ms: Option<u64>,
}

/// Status string when every replica is known to be within the bound.
pub const CONSISTENT: &str = "CONSISTENT";
/// Status string when a replica is behind by more than the bound (seed wording).
pub const STALE: &str = "INCONSISTENT/STALE (EXCEEDS_STALENESS_BOUND)";
/// Status string when a replica is unreachable and how far behind it is is unknown.
pub const UNKNOWN: &str = "UNKNOWN (REPLICA_UNREACHABLE)";

/// The newest committed version among replica answers and known missed writes.
pub fn newest(observations: &[Observation]) -> Version {
    observations
        .iter()
        .flat_map(|o| o.held.into_iter().chain(o.missed.iter().copied()))
        .max()
        .unwrap_or(Version::ZERO)
}

/// Staleness of every replica at `now_ms`.
pub fn compute(observations: &[Observation], now_ms: u64) -> Vec<Staleness> {
    let newest = newest(observations);
    observations
        .iter()
        .map(|o| {
            let held = o.held.unwrap_or(Version::ZERO);
            let oldest_missed = o.missed.iter().copied().filter(|v| *v > held).min();
            match o.held {
                Some(h) if h >= newest => Staleness {
                    reachable: true,
                    ms: Some(0),
                },
                Some(_) => Staleness {
                    reachable: true,
                    ms: Some(oldest_missed.unwrap_or(newest).age_ms(now_ms)),
                },
                None => Staleness {
                    reachable: false,
                    ms: oldest_missed.map(|v| v.age_ms(now_ms)),
                },
            }
        })
        .collect()
}

/// The `Consistency_Status` of a read.
pub fn status(staleness: &[Staleness], bound_ms: u64) -> &'static str {
    if staleness
        .iter()
        .any(|s| s.ms.is_some_and(|ms| ms > bound_ms))
    {
        STALE
    } else if staleness.iter().any(|s| s.ms.is_none()) {
        UNKNOWN
    } else {
        CONSISTENT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(ms: u64) -> Version {
        Version {
            physical_ms: ms,
            logical: 0,
            writer: 1,
        }
    }

    #[test]
    fn replicas_holding_the_newest_version_are_fresh() {
        let obs = [
            Observation {
                held: Some(v(100)),
                missed: vec![],
            },
            Observation {
                held: Some(v(100)),
                missed: vec![],
            },
        ];
        let s = compute(&obs, 10_000);
        assert!(s.iter().all(|s| s.ms == Some(0)));
        assert_eq!(status(&s, 500), CONSISTENT);
    }

    #[test]
    fn lagging_replica_is_as_stale_as_its_oldest_missed_write() {
        // g2 holds v(100); it missed v(200) and v(300); g1 holds v(300).
        let obs = [
            Observation {
                held: Some(v(300)),
                missed: vec![],
            },
            Observation {
                held: Some(v(100)),
                missed: vec![v(300), v(200)],
            },
        ];
        let s = compute(&obs, 1_000);
        assert_eq!(s[0].ms, Some(0));
        assert_eq!(s[1].ms, Some(800), "age of v(200), not of the value");
        assert_eq!(status(&s, 500), STALE);
        assert_eq!(status(&s, 900), CONSISTENT);
    }

    #[test]
    fn without_hints_the_newest_version_bounds_staleness() {
        let obs = [
            Observation {
                held: Some(v(900)),
                missed: vec![],
            },
            Observation {
                held: Some(v(100)),
                missed: vec![],
            },
        ];
        assert_eq!(compute(&obs, 1_000)[1].ms, Some(100));
    }

    #[test]
    fn unreachable_replica_reports_known_staleness_or_unknown() {
        let obs = [
            Observation {
                held: Some(v(1_000)),
                missed: vec![],
            },
            Observation {
                held: None,
                missed: vec![v(1_000)],
            },
        ];
        let s = compute(&obs, 2_100);
        assert_eq!(
            s[1],
            Staleness {
                reachable: false,
                ms: Some(1_100)
            }
        );
        assert_eq!(status(&s, 500), STALE);
        let obs = [
            Observation {
                held: Some(v(1_000)),
                missed: vec![],
            },
            Observation {
                held: None,
                missed: vec![],
            },
        ];
        let s = compute(&obs, 1_100);
        assert_eq!(
            s[1],
            Staleness {
                reachable: false,
                ms: None
            }
        );
        assert_eq!(status(&s, 500), UNKNOWN);
    }

    #[test]
    fn missed_writes_older_than_what_is_held_do_not_count() {
        let obs = [
            Observation {
                held: Some(v(500)),
                missed: vec![],
            },
            Observation {
                held: Some(v(500)),
                missed: vec![v(100)],
            },
        ];
        assert_eq!(compute(&obs, 9_000)[1].ms, Some(0));
    }
}
