//! The durable, versioned key-value store behind `bulwark node`.
//!
//! It keeps, per key, the state of the replica protocol (`docs/ARCHITECTURE.md`, "The
//! replica protocol"): a committed record (version + value or tombstone) and up to
//! [`MAX_PENDING`] prepared writes. It never touches the network.
//!
//! * [`Store`]: the operations (`get_state`, `put`, `prepare`, `commit`, `abort`, and the
//!   plain `get`/`set`/`del`/`exists`/`dbsize` behind the Redis-compatible commands).
//! * [`Appendfsync`]: when writes reach the disk, as in Redis. Protocol operations
//!   (`prepare`, `commit`, `abort`) are durable before they return whatever the policy;
//!   `put`, `set` and `del` hand back a [`Ticket`] that the caller acknowledges with
//!   [`Store::ack`] before replying, which waits for the fsync under `always`.
//! * Group commit: one committer thread fsyncs for every writer waiting at that moment,
//!   so `always` costs one fsync per *batch* of concurrent writes, not per write.
//! * Snapshots ([`Store::save`], [`Store::restore`]): a versioned, checksummed file of
//!   every record, for `SAVE`/`BGSAVE` and backup/restore.
//!
//! Persisted bytes carry format versions: a marker in the database ([`FORMAT_MARKER`]),
//! one byte in front of every record, and a header in every snapshot.
//!
//! Concurrency: read-modify-write on one key (compare versions, then write) runs under a
//! striped mutex chosen by the key's hash. The mutex is std's, held for the few
//! microseconds of an in-memory LSM read and write, and never across an `.await`.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod codec;
mod durability;
mod error;
mod snapshot;
mod store;

pub use durability::{Appendfsync, AppendfsyncParseError, Ticket};
pub use error::StorageError;
pub use snapshot::SnapshotInfo;
pub use store::{
    FORMAT_MARKER, FsyncObserver, MAX_PENDING, OpenReport, PrepareReply, PrepareStatus, PutReply,
    Store, StoreConfig, StoreStats,
};
