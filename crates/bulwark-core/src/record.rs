//! What a replica holds for one key, and the size limits on keys and values.

use bytes::Bytes;

use crate::Version;

/// A committed write: a value or a deletion (tombstone), at a version.
///
/// Deletions are versioned tombstones rather than absent keys so that last-write-wins
/// ordering also covers deletes (a delayed older write must not resurrect a deleted key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The version of the write that produced this record.
    pub version: Version,
    /// The value, or `None` for a tombstone.
    pub value: Option<Bytes>,
}

/// A prepared, not yet decided write (two-phase commit, see `docs/ARCHITECTURE.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingRef {
    /// The version the write will have if it commits.
    pub version: Version,
    /// Name of the replica that holds the decision for this write (its coordinator).
    /// The write is committed if and only if the coordinator has committed it.
    pub coordinator: String,
}

/// One replica's answer for one key: its committed record and undecided writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaState {
    /// The latest committed record, if the key was ever written.
    pub committed: Option<Record>,
    /// Prepared writes on this key not yet committed or aborted here, oldest first.
    pub pending: Vec<PendingRef>,
}

impl ReplicaState {
    /// The committed version, or [`Version::ZERO`] for a key never written.
    pub fn committed_version(&self) -> Version {
        self.committed.as_ref().map_or(Version::ZERO, |r| r.version)
    }
}

/// Size limits enforced on every request before it reaches a replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest key in bytes (default 1 KiB).
    pub max_key_bytes: usize,
    /// Largest value in bytes (default 1 MiB).
    pub max_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 1024,
            max_value_bytes: 1024 * 1024,
        }
    }
}

/// Why a key or value was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// The key is empty.
    #[error("key must not be empty")]
    EmptyKey,
    /// The key is longer than the limit.
    #[error("key is {len} bytes; the limit is {limit} bytes")]
    KeyTooLarge {
        /// Actual length.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The value is longer than the limit.
    #[error("value is {len} bytes; the limit is {limit} bytes")]
    ValueTooLarge {
        /// Actual length.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
}

impl Limits {
    /// Checks a key against the limits.
    pub fn check_key(&self, key: &[u8]) -> Result<(), LimitError> {
        if key.is_empty() {
            return Err(LimitError::EmptyKey);
        }
        if key.len() > self.max_key_bytes {
            return Err(LimitError::KeyTooLarge {
                len: key.len(),
                limit: self.max_key_bytes,
            });
        }
        Ok(())
    }

    /// Checks a value against the limits.
    pub fn check_value(&self, value: &[u8]) -> Result<(), LimitError> {
        if value.len() > self.max_value_bytes {
            return Err(LimitError::ValueTooLarge {
                len: value.len(),
                limit: self.max_value_bytes,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_refuse_empty_and_oversized_input() {
        let l = Limits::default();
        assert_eq!(l.check_key(b""), Err(LimitError::EmptyKey));
        assert!(l.check_key(&[b'k'; 1024]).is_ok());
        assert_eq!(
            l.check_key(&[b'k'; 1025]),
            Err(LimitError::KeyTooLarge {
                len: 1025,
                limit: 1024
            })
        );
        assert!(l.check_value(&vec![0; 1 << 20]).is_ok());
        assert!(l.check_value(&vec![0; (1 << 20) + 1]).is_err());
    }

    #[test]
    fn committed_version_of_a_missing_key_is_zero() {
        assert_eq!(ReplicaState::default().committed_version(), Version::ZERO);
    }
}
