//! The storage crate's error type.

use std::path::PathBuf;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The LSM engine failed (I/O error, corruption it detected, poisoned after a failed
    /// fsync). The store should be considered unusable; restart to recover.
    #[error("storage engine error: {0}")]
    Engine(#[from] fjall::Error),
    /// A file operation outside the engine failed (snapshot, journal inspection).
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The data directory was written by an unknown (newer?) version of bulwark-storage.
    #[error(
        "data directory {path} has storage format {found:?}; this build reads only {expected:?} \
         (refusing to open it rather than misread it)"
    )]
    UnknownFormat {
        /// The data directory.
        path: PathBuf,
        /// The marker found.
        found: String,
        /// The marker this build writes.
        expected: &'static str,
    },
    /// A stored record does not decode (unknown record format byte, or truncated).
    #[error("corrupt or unknown record for key {key:?}: {reason}")]
    CorruptRecord {
        /// The key, lossily printed.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A snapshot file is not one we can restore.
    #[error("snapshot {path}: {reason}")]
    BadSnapshot {
        /// The snapshot file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An argument the store cannot hold (oversized key or coordinator name).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The in-memory index is over the configured `max_memory_bytes`; writes that add
    /// data are refused (Redis's `noeviction`). Commits, aborts and deletions still work.
    #[error("used memory {used} bytes exceeds maxmemory {max} bytes")]
    OutOfMemory {
        /// Estimated bytes in use.
        used: u64,
        /// The configured limit.
        max: u64,
    },
    /// A background save is already running.
    #[error("background save already in progress")]
    SaveInProgress,
    /// An earlier fsync failed; durable writes can no longer be acknowledged.
    #[error("fsync failed; refusing to acknowledge writes: {0}")]
    SyncFailed(String),
    /// The store is closing or closed.
    #[error("store is closed")]
    Closed,
}
