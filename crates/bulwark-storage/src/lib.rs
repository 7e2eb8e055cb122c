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
//! * In memory: every record lives in a sharded hash map (as Redis keeps its data set in
//!   memory), loaded from fjall at open; reads never touch the LSM tree. fjall is the
//!   durable log. `StoreStats::memory_bytes` estimates the footprint; `max_memory_bytes`
//!   bounds it.
//! * Durable reads: a read never shows the effect of a prepare/commit/abort before its
//!   fsync. Each key remembers the sequence number of its last protocol change; a read
//!   (`get_deferred`, `get_state_deferred`) hands back a [`Ticket`] to acknowledge before
//!   replying, empty unless that change is still in flight. Effects of `put`/`set`/`del`
//!   follow the policy and never make reads wait.
//!
//! Persisted bytes carry format versions: a marker in the database ([`FORMAT_MARKER`]),
//! one byte in front of every record, and a header in every snapshot.
//!
//! Concurrency: read-modify-write on one key (compare versions, then write) runs under the
//! mutex of the key's index shard, held across the fjall write so that memory and journal
//! order each key's changes alike. The mutex is std's, held for the few microseconds of a
//! hash lookup and a journal append, and never across an `.await`.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod codec;
mod durability;
mod error;
mod index;
mod snapshot;
mod store;

pub use durability::{Appendfsync, AppendfsyncParseError, Ticket};
pub use error::StorageError;
pub use snapshot::SnapshotInfo;
pub use store::{
    FORMAT_MARKER, FsyncObserver, MAX_PENDING, OpenReport, PrepareReply, PrepareStatus, PutReply,
    Store, StoreConfig, StoreStats, SyncGate,
};
