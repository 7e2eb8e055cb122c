//! Consistency modes and the quorum sizes they imply (SPEC CAP-3, CAP-4, HARD-1).

use std::fmt;
use std::str::FromStr;

/// How a request trades consistency for availability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Availability first: a write succeeds when one replica acknowledged it; the others
    /// catch up through hinted handoff. Reads answer from the preferred reachable replica.
    Ap,
    /// Consistency first: a write succeeds only when every replica prepared it durably
    /// and its coordinator committed it (two-phase commit); otherwise it is aborted (503)
    /// and guaranteed invisible. Reads are linearizable for keys written this way.
    Cp,
    /// Majority quorums: W = R = ⌊N/2⌋ + 1, so W + R > N; tolerates a minority of
    /// replicas being down for both reads and writes.
    Quorum,
}

impl Mode {
    /// Upper-case name used in responses, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Ap => "AP",
            Mode::Cp => "CP",
            Mode::Quorum => "QUORUM",
        }
    }

    /// The seed's port for a gateway of this mode.
    pub fn default_port(self) -> u16 {
        match self {
            Mode::Ap => 5001,
            Mode::Cp => 5002,
            Mode::Quorum => 5003,
        }
    }

    /// Replica acknowledgements a write needs with `n` replicas.
    pub fn write_quorum(self, n: usize) -> usize {
        match self {
            Mode::Ap => 1,
            Mode::Cp => n,
            Mode::Quorum => n / 2 + 1,
        }
    }

    /// Replica answers a read needs with `n` replicas. CP needs one because every
    /// committed write is prepared on all replicas; pending records are resolved.
    pub fn read_quorum(self, n: usize) -> usize {
        match self {
            Mode::Ap | Mode::Cp => 1,
            Mode::Quorum => n / 2 + 1,
        }
    }
}

/// A read or write quorum one request asks for (`?r=` / `?w=` on `/v1/kv`, SPEC HARD-1):
/// a number of the key's replicas, or a level relative to its N.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuorumSize {
    /// Exactly this many replicas (1 ≤ k ≤ N, checked against N by the caller).
    Count(usize),
    /// One replica.
    One,
    /// A majority: ⌊N/2⌋ + 1.
    Majority,
    /// Every replica of the key.
    All,
}

impl QuorumSize {
    /// The number of replicas it means among `n`, or `None` when a count exceeds `n`.
    pub fn of(self, n: usize) -> Option<usize> {
        match self {
            QuorumSize::Count(k) => (1..=n).contains(&k).then_some(k),
            QuorumSize::One => Some(1),
            QuorumSize::Majority => Some(n / 2 + 1),
            QuorumSize::All => Some(n),
        }
    }
}

impl FromStr for QuorumSize {
    type Err = String;

    /// Exactly `one`, `quorum`, `all` or a count in digits: nothing is trimmed or folded
    /// (ambiguous input is refused).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "one" => Ok(QuorumSize::One),
            "quorum" => Ok(QuorumSize::Majority),
            "all" => Ok(QuorumSize::All),
            digits
                if (1..=4).contains(&digits.len())
                    && digits.bytes().all(|b| b.is_ascii_digit())
                    && !digits.starts_with('0') =>
            {
                digits
                    .parse::<usize>()
                    .map(QuorumSize::Count)
                    .map_err(|e| e.to_string())
            }
            _ => Err("expected a count of replicas (1, 2, …), or one, quorum or all".into()),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "ap" => Ok(Mode::Ap),
            "cp" => Ok(Mode::Cp),
            "quorum" => Ok(Mode::Quorum),
            _ => Err("expected one of: ap, cp, quorum".to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorums_overlap_for_strong_modes() {
        for n in 1..=9 {
            for m in [Mode::Cp, Mode::Quorum] {
                assert!(m.write_quorum(n) + m.read_quorum(n) > n, "{m} n={n}");
            }
        }
        assert_eq!(Mode::Quorum.write_quorum(3), 2);
        assert_eq!(Mode::Cp.write_quorum(3), 3);
        assert_eq!(Mode::Ap.write_quorum(3), 1);
    }

    #[test]
    fn quorum_sizes_parse_and_resolve_against_n() {
        assert_eq!("2".parse::<QuorumSize>(), Ok(QuorumSize::Count(2)));
        assert_eq!("all".parse::<QuorumSize>(), Ok(QuorumSize::All));
        assert_eq!("quorum".parse::<QuorumSize>(), Ok(QuorumSize::Majority));
        for bad in [
            "0", "", "-1", "2.0", " 2", "most", "99999", "ALL", "01", "2 ",
        ] {
            assert!(bad.parse::<QuorumSize>().is_err(), "{bad:?}");
        }
        assert_eq!(QuorumSize::Count(3).of(3), Some(3));
        assert_eq!(QuorumSize::Count(4).of(3), None);
        assert_eq!(QuorumSize::Majority.of(5), Some(3));
        assert_eq!(QuorumSize::All.of(5), Some(5));
        assert_eq!(QuorumSize::One.of(5), Some(1));
    }

    #[test]
    fn parses_case_insensitively() {
        assert_eq!("CP".parse::<Mode>(), Ok(Mode::Cp));
        assert!("strong".parse::<Mode>().is_err());
    }
}
