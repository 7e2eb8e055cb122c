//! Hybrid logical clocks (Kulkarni et al., 2014).
//!
//! A [`Version`] is `(physical_ms, logical, writer)`. The physical part tracks wall-clock
//! milliseconds so that staleness can be expressed in milliseconds (SPEC CAP-6); the
//! logical counter orders events inside one millisecond and after observing a clock that
//! is ahead; the writer id breaks ties between gateways so two versions are never equal
//! unless they name the same write.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Largest physical time a version can carry: 48 bits of milliseconds (year 10889).
const MAX_PHYSICAL_MS: u64 = (1 << 48) - 1;

/// The version of one write: totally ordered, unique per write.
///
/// The wire form (RESP, Redis functions, cookies, JSON) is 24 lowercase hex digits:
/// 12 for `physical_ms`, 4 for `logical`, 8 for `writer`. Fixed width makes the
/// lexicographic order of the text equal to the numeric order, which the Redis function
/// library relies on (Lua compares strings, not 64-bit integers).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Version {
    /// Wall-clock milliseconds since the Unix epoch, as seen by the writer's HLC.
    pub physical_ms: u64,
    /// Orders writes that share a physical millisecond.
    pub logical: u16,
    /// Identifies the writer (gateway instance or storage node) that made the version.
    pub writer: u32,
}

/// Length of a version's wire form.
pub const VERSION_WIRE_LEN: usize = 24;

impl Version {
    /// The smallest version; nothing written is ever at `ZERO`.
    pub const ZERO: Version = Version {
        physical_ms: 0,
        logical: 0,
        writer: 0,
    };

    /// Milliseconds from this version's physical time to `now_ms`, never negative.
    pub fn age_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.physical_ms)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:012x}{:04x}{:08x}",
            self.physical_ms, self.logical, self.writer
        )
    }
}

/// A string that is not a version's wire form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid version {0:?}: expected 24 lowercase hex digits")]
pub struct VersionParseError(pub String);

impl FromStr for Version {
    type Err = VersionParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || VersionParseError(s.chars().take(40).collect());
        if s.len() != VERSION_WIRE_LEN
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad());
        }
        let physical_ms = u64::from_str_radix(&s[0..12], 16).map_err(|_| bad())?;
        let logical = u16::from_str_radix(&s[12..16], 16).map_err(|_| bad())?;
        let writer = u32::from_str_radix(&s[16..24], 16).map_err(|_| bad())?;
        Ok(Version {
            physical_ms,
            logical,
            writer,
        })
    }
}

impl TryFrom<&[u8]> for Version {
    type Error = VersionParseError;

    fn try_from(b: &[u8]) -> Result<Self, Self::Error> {
        std::str::from_utf8(b)
            .map_err(|_| VersionParseError(String::from_utf8_lossy(b).into_owned()))?
            .parse()
    }
}

impl serde::Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where an [`Hlc`] reads physical time from.
///
/// Production uses [`SystemClock`]; tests use [`ManualClock`]; the chaos control plane
/// skews a gateway's clock through [`SystemClock::set_offset_ms`] without root and
/// without touching the system clock.
pub trait ClockSource: Send + Sync + fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock plus an injectable offset (clock-skew fault).
#[derive(Debug, Default)]
pub struct SystemClock {
    /// Added to the system time; zero unless a clock-skew fault is active.
    offset_ms: AtomicI64,
}

impl SystemClock {
    /// Sets the skew added to every reading.
    pub fn set_offset_ms(&self, offset_ms: i64) {
        self.offset_ms.store(offset_ms, Ordering::Relaxed);
    }

    /// The skew currently added to every reading.
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }
}

impl ClockSource for SystemClock {
    fn now_ms(&self) -> u64 {
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        real.saturating_add_signed(self.offset_ms())
    }
}

/// A clock that only moves when told to; for deterministic tests.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicU64,
}

impl ManualClock {
    /// A clock reading `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        ManualClock {
            now_ms: AtomicU64::new(now_ms),
        }
    }

    /// Moves the clock to `now_ms` (backwards too, to model a skewed or stepped clock).
    pub fn set(&self, now_ms: u64) {
        self.now_ms.store(now_ms, Ordering::Relaxed);
    }
}

impl ClockSource for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::Relaxed)
    }
}

/// A hybrid logical clock owned by one writer.
///
/// Invariants: versions returned by [`Hlc::now`] strictly increase, and after
/// [`Hlc::observe`]`(v)` every later version is greater than `v`.
#[derive(Debug)]
pub struct Hlc<C: ClockSource = SystemClock> {
    /// This writer's id, stamped into every version.
    writer: u32,
    /// Physical time source.
    clock: C,
    /// Last `(physical_ms, logical)` issued or observed. A plain mutex: held for a few
    /// instructions, never across an await.
    last: Mutex<(u64, u16)>,
}

impl<C: ClockSource> Hlc<C> {
    /// A clock for `writer` reading physical time from `clock`.
    pub fn new(writer: u32, clock: C) -> Self {
        Hlc {
            writer,
            clock,
            last: Mutex::new((0, 0)),
        }
    }

    /// This clock's writer id.
    pub fn writer(&self) -> u32 {
        self.writer
    }

    /// The physical clock (for reading the time, or skewing it).
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// Physical milliseconds now, as this clock's source reports them.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// A new version, greater than every version issued or observed before.
    pub fn now(&self) -> Version {
        let pt = self.clock.now_ms().min(MAX_PHYSICAL_MS);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let (lp, ll) = *last;
        let next = if pt > lp {
            (pt, 0)
        } else if ll < u16::MAX {
            (lp, ll + 1)
        } else {
            // The logical counter is exhausted within one millisecond: borrow the next
            // millisecond rather than wrap (keeps versions strictly increasing).
            (lp + 1, 0)
        };
        *last = next;
        Version {
            physical_ms: next.0,
            logical: next.1,
            writer: self.writer,
        }
    }

    /// Merges a version seen from elsewhere (a replica's reply), so that every later
    /// [`Hlc::now`] is greater than it.
    pub fn observe(&self, seen: Version) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if (seen.physical_ms, seen.logical) > *last {
            *last = (seen.physical_ms, seen.logical);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_round_trips_and_orders_like_numbers() {
        let a = Version {
            physical_ms: 1_700_000_000_000,
            logical: 3,
            writer: 0xdead_beef,
        };
        let s = a.to_string();
        assert_eq!(s.len(), VERSION_WIRE_LEN);
        assert_eq!(s.parse::<Version>(), Ok(a));
        let b = Version {
            logical: 4,
            writer: 0,
            ..a
        };
        assert!(a < b);
        assert!(
            a.to_string() < b.to_string(),
            "text order must match numeric order"
        );
    }

    #[test]
    fn rejects_malformed_versions() {
        for bad in [
            "",
            "xyz",
            "00000000000000000000000G",
            "0000000000000000000000000",
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?} parsed");
        }
        assert!("0000000000000000000000AA".parse::<Version>().is_err());
    }

    #[test]
    fn versions_increase_when_the_clock_stalls_or_steps_back() {
        let hlc = Hlc::new(7, ManualClock::new(1000));
        let v1 = hlc.now();
        let v2 = hlc.now();
        assert!(v2 > v1);
        assert_eq!((v2.physical_ms, v2.logical), (1000, 1));
        hlc.clock().set(500); // clock stepped back
        let v3 = hlc.now();
        assert!(v3 > v2);
        assert_eq!(v3.physical_ms, 1000);
        hlc.clock().set(2000);
        assert_eq!(hlc.now().physical_ms, 2000);
    }

    #[test]
    fn observe_pushes_the_clock_past_a_remote_version() {
        let hlc = Hlc::new(1, ManualClock::new(1000));
        let remote = Version {
            physical_ms: 5000,
            logical: 9,
            writer: 2,
        };
        hlc.observe(remote);
        let v = hlc.now();
        assert!(v > remote);
        assert_eq!((v.physical_ms, v.logical), (5000, 10));
    }

    #[test]
    fn logical_overflow_borrows_the_next_millisecond() {
        let hlc = Hlc::new(1, ManualClock::new(10));
        hlc.observe(Version {
            physical_ms: 10,
            logical: u16::MAX,
            writer: 0,
        });
        let v = hlc.now();
        assert_eq!((v.physical_ms, v.logical), (11, 0));
    }

    #[test]
    fn skew_offset_moves_system_clock_readings() {
        let c = SystemClock::default();
        let before = c.now_ms();
        c.set_offset_ms(60_000);
        assert!(c.now_ms() >= before + 60_000);
    }
}
