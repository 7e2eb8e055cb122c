//! The store: per-key replica state in an in-memory index (`crate::index`), logged to
//! fjall for durability.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bulwark_core::ae::{self, AeEntry, Digest};
use bulwark_core::{Hlc, PendingRef, Record, ReplicaState, SystemClock, Version};
use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::StorageError;
use crate::codec::{self, Committed};
use crate::durability::{Appendfsync, Durability, Ticket};
use crate::index::{self, Entry, Index, Map, PendingRec};
use crate::snapshot::{self, SnapshotInfo};

/// The format marker stored in every database this build creates. A database carrying any
/// other marker is refused at open.
pub const FORMAT_MARKER: &str = "bulwark-storage/v1";

/// Most prepared writes one key may hold (see the replica protocol).
pub const MAX_PENDING: usize = 16;

/// Longest key the store accepts. The journal stores key lengths in 16 bits and pending
/// keys add 18 bytes; request limits (1 KiB by default) are far below this.
const MAX_KEY_BYTES: usize = 60_000;

/// Key of the format marker in the meta keyspace.
const META_FORMAT: &[u8] = b"format";

/// Receives the duration of every fsync (the node feeds a histogram with it).
pub type FsyncObserver = Arc<dyn Fn(Duration) + Send + Sync>;

/// Called by the committer thread before every fsync; may block, which holds the fsync
/// (and everything waiting for it) back. For fault injection and for tests that check
/// that nothing waiting on an fsync is observed before it.
pub type SyncGate = Arc<dyn Fn() + Send + Sync>;

/// How to open a [`Store`].
#[derive(Clone)]
pub struct StoreConfig {
    /// Directory of the data (created if missing). The LSM database lives in `dir/db`.
    pub dir: PathBuf,
    /// Durability of writes that follow the policy (`put`, `set`, `del`).
    pub appendfsync: Appendfsync,
    /// Writer id stamped into versions made by this node's own clock (plain SET/DEL).
    pub writer_id: u32,
    /// Block cache size in bytes.
    pub cache_bytes: u64,
    /// Called with the duration of each fsync, if set.
    pub fsync_observer: Option<FsyncObserver>,
    /// Called before each fsync, if set (see [`SyncGate`]).
    pub sync_gate: Option<SyncGate>,
    /// Refuse writes that add data ([`StorageError::OutOfMemory`]) once the in-memory
    /// index holds more than this many bytes (estimated); `None`: no limit. Commits,
    /// aborts and deletions are always accepted, so the protocol can always finish.
    pub max_memory_bytes: Option<u64>,
}

impl StoreConfig {
    /// A configuration with a 16 MiB block cache (reads are served from the in-memory
    /// index; the cache only serves compaction), no hooks and no memory limit.
    pub fn new(dir: impl Into<PathBuf>, appendfsync: Appendfsync, writer_id: u32) -> Self {
        StoreConfig {
            dir: dir.into(),
            appendfsync,
            writer_id,
            cache_bytes: 16 << 20,
            fsync_observer: None,
            sync_gate: None,
            max_memory_bytes: None,
        }
    }
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("dir", &self.dir)
            .field("appendfsync", &self.appendfsync)
            .field("writer_id", &self.writer_id)
            .field("cache_bytes", &self.cache_bytes)
            .field("fsync_observer", &self.fsync_observer.is_some())
            .field("sync_gate", &self.sync_gate.is_some())
            .field("max_memory_bytes", &self.max_memory_bytes)
            .finish()
    }
}

/// What [`Store::open`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// The data directory was empty and a new database was created.
    pub created: bool,
    /// Keys holding a value (not a tombstone).
    pub live_keys: u64,
    /// Keys holding a tombstone.
    pub tombstones: u64,
    /// Prepared writes still pending.
    pub pending: u64,
    /// Journal files present before recovery.
    pub journals: usize,
    /// Non-zero bytes at the end of the journals that recovery cut off: a write that was
    /// torn by a crash and never acknowledged as durable. fjall truncates a torn tail
    /// silently; this figure is measured by comparing the journals before and after
    /// recovery. A torn tail that happened to be all zero bytes cannot be told apart from
    /// fjall's preallocated space and is not counted.
    pub journal_tail_discarded_bytes: u64,
}

/// Outcome of a prepare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrepareStatus {
    /// The write is now pending (or already was: a retried prepare is idempotent).
    Ok,
    /// The committed version is at least as new as the write's.
    Stale,
    /// The key already holds [`MAX_PENDING`] other prepared writes.
    Busy,
}

impl PrepareStatus {
    /// The protocol's reply word.
    pub fn as_str(self) -> &'static str {
        match self {
            PrepareStatus::Ok => "OK",
            PrepareStatus::Stale => "STALE",
            PrepareStatus::Busy => "BUSY",
        }
    }
}

/// Reply to a prepare: the outcome and the committed version at that moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrepareReply {
    /// What happened.
    pub status: PrepareStatus,
    /// The committed version, if the key was ever committed.
    pub committed: Option<Version>,
}

/// Reply to a last-write-wins put.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutReply {
    /// The write became the committed record.
    pub applied: bool,
    /// The committed version after the put.
    pub committed: Option<Version>,
}

/// When a put replaces the committed record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Overwrite {
    /// Only with a newer version (last-write-wins).
    Newer,
    /// With a newer version, or the same version and different bytes (repair).
    NewerOrDifferent,
}

/// Counters for `INFO`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreStats {
    /// Keys holding a value.
    pub live_keys: u64,
    /// Fsyncs performed since open.
    pub fsyncs: u64,
    /// Writes since the last successful snapshot.
    pub changes_since_save: u64,
    /// Unix time of the last successful snapshot (or of open, if none yet).
    pub last_save_unix: u64,
    /// A background save is running.
    pub bgsave_in_progress: bool,
    /// The last background save succeeded (true before any).
    pub last_bgsave_ok: bool,
    /// The durability policy.
    pub appendfsync: Appendfsync,
    /// Estimated bytes held by the in-memory index (keys, values, pending writes and
    /// bookkeeping): `INFO used_memory`.
    pub memory_bytes: u64,
    /// The configured limit on `memory_bytes`, if any.
    pub max_memory_bytes: Option<u64>,
}

/// The durable versioned key-value store. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .field("durability", &self.inner.dur)
            .finish_non_exhaustive()
    }
}

struct Inner {
    /// The fjall database (journal + keyspaces): the durable log behind the index.
    db: Database,
    /// key → committed record (durable copy).
    committed: Keyspace,
    /// (key, version) → pending record (durable copy).
    pending: Keyspace,
    /// Every key's state in memory; answers all reads. A shard's lock also serialises
    /// read-modify-write on its keys and is held across the fjall write, so memory and
    /// journal agree on the order of changes to each key.
    index: Index,
    /// Group committer shared with its thread.
    dur: Arc<Durability>,
    /// The committer thread, joined at close.
    committer: Mutex<Option<JoinHandle<()>>>,
    /// Clock for versions of plain SET/DEL.
    hlc: Hlc<SystemClock>,
    /// Keys holding a value (DBSIZE), maintained under the shard locks.
    live: AtomicI64,
    /// Estimated bytes held by the index (INFO `used_memory`, `maxmemory`).
    memory: AtomicI64,
    /// Refuse growing writes above this many index bytes.
    max_memory: Option<u64>,
    /// Sequence number of the last FLUSHALL: it changed every key's state, so every
    /// read waits for it to be fsynced (once; afterwards the check is one atomic load).
    floor_seq: AtomicU64,
    /// Sequence number of the last protocol change to any key (DBSIZE waits for it).
    last_proto: AtomicU64,
    /// Data directory.
    dir: PathBuf,
    /// Set by close; later writes fail with `Closed`.
    closed: AtomicBool,
    /// Writes since the last snapshot.
    dirty: AtomicU64,
    /// Unix seconds of the last snapshot.
    last_save: AtomicU64,
    /// A BGSAVE thread is running.
    bgsave_running: AtomicBool,
    /// The last BGSAVE succeeded.
    last_bgsave_ok: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropped without close(): still let the committer sync and exit.
        self.dur.stop();
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn check_key(key: &[u8]) -> Result<(), StorageError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(StorageError::InvalidArgument("key longer than 60000 bytes"));
    }
    Ok(())
}

/// The replica state of an index entry, as the protocol reports it.
fn replica_state(e: Option<&Entry>) -> ReplicaState {
    let Some(e) = e else {
        return ReplicaState::default();
    };
    ReplicaState {
        committed: e.committed.as_ref().map(|c| Record {
            version: c.version,
            value: c.value.clone(),
        }),
        pending: e
            .pending
            .iter()
            .map(|p| PendingRef {
                version: p.version,
                coordinator: p.coordinator.clone(),
            })
            .collect(),
    }
}

impl Store {
    /// Opens (or creates) the store in `config.dir`, recovering from the journal and
    /// loading every record into memory. Blocking: call it from a blocking context
    /// (`spawn_blocking`) in async code.
    pub fn open(config: StoreConfig) -> Result<(Store, OpenReport), StorageError> {
        let db_path = config.dir.join("db");
        let created = !db_path.join("version").exists();
        let before = if created {
            Vec::new()
        } else {
            inspect_journals(&db_path, true)?
        };

        let db = Database::builder(&db_path)
            .cache_size(config.cache_bytes)
            // We decide when the journal reaches the OS (per batch) and the disk (policy).
            .manual_journal_persist(true)
            .open()?;
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default)?;
        match meta.get(META_FORMAT)? {
            Some(found) if &found[..] != FORMAT_MARKER.as_bytes() => {
                return Err(StorageError::UnknownFormat {
                    path: config.dir.clone(),
                    found: String::from_utf8_lossy(&found).into_owned(),
                    expected: FORMAT_MARKER,
                });
            }
            Some(_) => {}
            None => {
                meta.insert(META_FORMAT, FORMAT_MARKER)?;
                db.persist(PersistMode::SyncAll)?;
            }
        }
        let committed = db.keyspace("committed", KeyspaceCreateOptions::default)?;
        let pending = db.keyspace("pending", KeyspaceCreateOptions::default)?;

        let after = inspect_journals(&db_path, false)?;
        let discarded = before
            .iter()
            .filter_map(|b| {
                let a = after.iter().find(|a| a.path == b.path)?;
                Some(b.last_nonzero_end.saturating_sub(a.len))
            })
            .sum();

        let mut maps: Vec<Map> = (0..index::SHARDS).map(|_| Map::default()).collect();
        let loaded = index::load(
            &committed,
            &pending,
            &mut maps.iter_mut().collect::<Vec<_>>(),
        )?;
        let report = OpenReport {
            created,
            live_keys: loaded.live_keys,
            tombstones: loaded.tombstones,
            pending: loaded.pending,
            journals: before.len(),
            journal_tail_discarded_bytes: discarded,
        };

        let dur = Arc::new(Durability::new(
            db.clone(),
            db_path.clone(),
            config.appendfsync,
            config.fsync_observer.clone(),
            config.sync_gate.clone(),
        ));
        let thread_dur = Arc::clone(&dur);
        let committer = std::thread::Builder::new()
            .name("bulwark-committer".into())
            .spawn(move || thread_dur.run_committer())
            .map_err(|source| StorageError::Io {
                op: "spawn committer thread for",
                path: config.dir.clone(),
                source,
            })?;

        let inner = Inner {
            db,
            committed,
            pending,
            index: Index::new(maps),
            dur,
            committer: Mutex::new(Some(committer)),
            hlc: Hlc::new(config.writer_id, SystemClock::default()),
            live: AtomicI64::new(i64::try_from(report.live_keys).unwrap_or(i64::MAX)),
            memory: AtomicI64::new(i64::try_from(loaded.bytes).unwrap_or(i64::MAX)),
            max_memory: config.max_memory_bytes,
            floor_seq: AtomicU64::new(0),
            last_proto: AtomicU64::new(0),
            dir: config.dir,
            closed: AtomicBool::new(false),
            dirty: AtomicU64::new(0),
            last_save: AtomicU64::new(unix_now()),
            bgsave_running: AtomicBool::new(false),
            last_bgsave_ok: AtomicBool::new(true),
        };
        if report.journal_tail_discarded_bytes > 0 {
            tracing::warn!(
                discarded_bytes = report.journal_tail_discarded_bytes,
                dir = %inner.dir.display(),
                "recovered from a torn journal tail; the unacknowledged write at the end was discarded"
            );
        }
        Ok((
            Store {
                inner: Arc::new(inner),
            },
            report,
        ))
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The durability policy.
    pub fn appendfsync(&self) -> Appendfsync {
        self.inner.dur.policy()
    }

    fn check_open(&self) -> Result<(), StorageError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(StorageError::Closed);
        }
        Ok(())
    }

    /// Refuses a write that adds data once the index is over `max_memory_bytes`.
    fn check_memory(&self) -> Result<(), StorageError> {
        if let Some(max) = self.inner.max_memory {
            let used = self.memory_bytes();
            if used > max {
                return Err(StorageError::OutOfMemory { used, max });
            }
        }
        Ok(())
    }

    fn memory_bytes(&self) -> u64 {
        u64::try_from(self.inner.memory.load(Ordering::Relaxed)).unwrap_or(0)
    }

    fn resize(&self, before: usize, after: usize) {
        let delta =
            i64::try_from(after).unwrap_or(i64::MAX) - i64::try_from(before).unwrap_or(i64::MAX);
        self.inner.memory.fetch_add(delta, Ordering::Relaxed);
    }

    /// What a read of `e` must wait for before its answer is shown: the fsync of the
    /// key's last protocol change (or of the last FLUSHALL), unless already done. Plain
    /// SET/BW.PUT/DEL never set this, so reads of their effects follow the policy.
    fn observed(&self, e: Option<&Entry>) -> Ticket {
        let seq = e
            .map_or(0, |e| e.proto_seq)
            .max(self.inner.floor_seq.load(Ordering::Acquire));
        self.inner.dur.read_ticket(seq)
    }

    fn note_protocol_change(&self, e: &mut Entry, seq: u64) {
        e.proto_seq = seq;
        self.inner.last_proto.fetch_max(seq, Ordering::AcqRel);
        self.inner.dirty.fetch_add(1, Ordering::Relaxed);
    }

    fn account_live(&self, was_live: bool, now_live: bool) {
        match (was_live, now_live) {
            (false, true) => {
                self.inner.live.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.inner.live.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// Logs a committed record to fjall and installs it in the index; the caller holds
    /// the key's shard. The record's bytes are shared by the memtable and the index.
    fn write_committed(
        &self,
        map: &mut Map,
        key: &[u8],
        version: Version,
        value: Option<&[u8]>,
    ) -> Result<(), StorageError> {
        let raw = Bytes::from(codec::encode_committed(version, value));
        self.inner.committed.insert(key, raw.clone())?;
        let c = Committed {
            version,
            value: value.map(|_| raw.slice(codec::COMMITTED_HEADER..)),
        };
        let now_live = c.value.is_some();
        let (before, after, was_live) = match map.get_mut(key) {
            Some(e) => {
                let before = e.footprint(key.len());
                let was_live = e.committed.as_ref().is_some_and(|c| c.value.is_some());
                e.committed = Some(c);
                (before, e.footprint(key.len()), was_live)
            }
            None => {
                let e = Entry {
                    committed: Some(c),
                    ..Entry::default()
                };
                let after = e.footprint(key.len());
                map.insert(Bytes::copy_from_slice(key), e);
                (0, after, false)
            }
        };
        self.resize(before, after);
        self.account_live(was_live, now_live);
        self.inner.dirty.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Waits until the writes behind `ticket` are as durable as the policy demands (or,
    /// for protocol operations and reads of their effects, fsynced). Reply to a client
    /// only after this resolves.
    pub async fn ack(&self, ticket: Ticket) -> Result<(), StorageError> {
        if ticket.is_none() {
            return Ok(());
        }
        self.inner.dur.ack(ticket).await
    }

    /// The committed value of `key` (plain GET) and the ticket to acknowledge before
    /// showing it: non-empty only if the value comes from a BW.COMMIT (or the key's
    /// state from a prepare/abort) whose fsync has not completed. A hash lookup; never
    /// blocks on I/O.
    pub fn get_deferred(&self, key: &[u8]) -> (Option<Bytes>, Ticket) {
        let map = self.inner.index.shard(key);
        let e = map.get(key);
        let value = e
            .and_then(|e| e.committed.as_ref())
            .and_then(|c| c.value.clone());
        (value, self.observed(e))
    }

    /// The committed value of `key` (plain GET); `None` if absent or deleted. Returns
    /// only once whatever protocol change produced it is durable.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Bytes>, StorageError> {
        let (value, ticket) = self.get_deferred(key);
        self.ack(ticket).await?;
        Ok(value)
    }

    /// The replica state of `key` (BW.GET) and the ticket to acknowledge before showing
    /// it (see [`Store::get_deferred`]). Committed record and pending writes are read
    /// together under the key's shard lock, so a concurrent commit is seen entirely or
    /// not at all.
    pub fn get_state_deferred(&self, key: &[u8]) -> (ReplicaState, Ticket) {
        let map = self.inner.index.shard(key);
        let e = map.get(key);
        (replica_state(e), self.observed(e))
    }

    /// The replica state of `key` (BW.GET): committed record and pending writes, once
    /// durable.
    pub async fn get_state(&self, key: &[u8]) -> Result<ReplicaState, StorageError> {
        let (state, ticket) = self.get_state_deferred(key);
        self.ack(ticket).await?;
        Ok(state)
    }

    /// Last-write-wins put (`BW.PUT`): commits `(version, value)` if `version` is newer
    /// than the committed version. Follows the `appendfsync` policy through the ticket.
    pub fn put(
        &self,
        key: &[u8],
        version: Version,
        value: Option<&[u8]>,
    ) -> Result<(PutReply, Ticket), StorageError> {
        self.put_if(key, version, value, Overwrite::Newer)
    }

    /// Anti-entropy repair (`BW.REPAIR`): like [`Store::put`], but also replaces a
    /// committed record of the *same* version whose bytes differ (a corrupt copy; versions
    /// are unique per write, so equal versions must carry equal bytes).
    pub fn repair(
        &self,
        key: &[u8],
        version: Version,
        value: Option<&[u8]>,
    ) -> Result<(PutReply, Ticket), StorageError> {
        self.put_if(key, version, value, Overwrite::NewerOrDifferent)
    }

    fn put_if(
        &self,
        key: &[u8],
        version: Version,
        value: Option<&[u8]>,
        rule: Overwrite,
    ) -> Result<(PutReply, Ticket), StorageError> {
        check_key(key)?;
        self.check_open()?;
        if value.is_some() {
            self.check_memory()?;
        }
        self.inner.hlc.observe(version);
        let mut map = self.inner.index.shard(key);
        let e = map.get(key);
        let seen = self.observed(e);
        let current = e.and_then(|e| e.committed.as_ref());
        let applies = match (current, rule) {
            (None, _) => true,
            (Some(c), Overwrite::Newer) => version > c.version,
            (Some(c), Overwrite::NewerOrDifferent) => {
                version > c.version || (version == c.version && c.value.as_deref() != value)
            }
        };
        if !applies {
            return Ok((
                PutReply {
                    applied: false,
                    committed: current.map(|c| c.version),
                },
                seen,
            ));
        }
        self.write_committed(&mut map, key, version, value)?;
        Ok((
            PutReply {
                applied: true,
                committed: Some(version),
            },
            self.inner.dur.issue(false).merge(seen),
        ))
    }

    /// This replica's anti-entropy digest of its committed records (`BW.DIGEST`), computed
    /// by scanning the index now. Each shard is locked only to copy its records' handles
    /// (reference-counted, no value copied); hashing happens outside the locks. CPU-bound:
    /// call it from a blocking context in async code.
    ///
    /// The digest may reflect a commit whose fsync is still in flight: it only steers
    /// anti-entropy, which copies values through [`Store::get_state`] (a durable read).
    pub fn digest(&self) -> Digest {
        let mut digest = Digest::default();
        for shard in 0..index::SHARDS {
            for (key, c) in self.inner.index.committed_in_shard(shard) {
                digest.add_record(&key, c.version, c.value.as_deref());
            }
        }
        digest
    }

    /// Committed records in `buckets` (`BW.BUCKETS`), as `(key, version, tombstone,
    /// record hash)`, at most `limit` of them (the caller asks for fewer buckets when the
    /// limit is hit). Same caveats as [`Store::digest`].
    pub fn bucket_entries(&self, buckets: &[u16], limit: usize) -> Vec<AeEntry> {
        let mut wanted = vec![false; bulwark_core::ae::AE_BUCKETS];
        for b in buckets {
            if let Some(w) = wanted.get_mut(usize::from(*b)) {
                *w = true;
            }
        }
        let mut out = Vec::new();
        for shard in 0..index::SHARDS {
            for (key, c) in self.inner.index.committed_in_shard(shard) {
                if !wanted[usize::from(ae::bucket(&key))] {
                    continue;
                }
                if out.len() == limit {
                    return out;
                }
                out.push(AeEntry {
                    hash: ae::record_hash(&key, c.version, c.value.as_deref()),
                    key,
                    version: c.version,
                    tombstone: c.value.is_none(),
                });
            }
        }
        out
    }

    /// Plain SET: commits `value` at a version from the node's clock, newer than whatever
    /// is committed (so it always applies).
    pub fn set(&self, key: &[u8], value: &[u8]) -> Result<Ticket, StorageError> {
        check_key(key)?;
        self.check_open()?;
        self.check_memory()?;
        let mut map = self.inner.index.shard(key);
        if let Some(c) = map.get(key).and_then(|e| e.committed.as_ref()) {
            self.inner.hlc.observe(c.version);
        }
        let version = self.inner.hlc.now();
        self.write_committed(&mut map, key, version, Some(value))?;
        Ok(self.inner.dur.issue(false))
    }

    /// Plain DEL: writes a tombstone (at a version from the node's clock) over each key
    /// that holds a value; returns how many did.
    pub fn del(&self, keys: &[Bytes]) -> Result<(u64, Ticket), StorageError> {
        self.check_open()?;
        let mut removed = 0;
        let mut ticket = Ticket::NONE;
        for key in keys {
            check_key(key)?;
            let mut map = self.inner.index.shard(key);
            let e = map.get(&key[..]);
            ticket = ticket.merge(self.observed(e));
            let Some(old) = e
                .and_then(|e| e.committed.as_ref())
                .filter(|c| c.value.is_some())
                .map(|c| c.version)
            else {
                continue;
            };
            self.inner.hlc.observe(old);
            let version = self.inner.hlc.now();
            self.write_committed(&mut map, key, version, None)?;
            removed += 1;
            ticket = ticket.merge(self.inner.dur.issue(false));
        }
        Ok((removed, ticket))
    }

    /// How many of `keys` hold a value (repeats count repeatedly, as in Redis), and the
    /// ticket to acknowledge before replying (see [`Store::get_deferred`]).
    pub fn exists_deferred(&self, keys: &[Bytes]) -> (u64, Ticket) {
        let mut n = 0;
        let mut ticket = Ticket::NONE;
        for key in keys {
            let (value, t) = self.get_deferred(key);
            n += u64::from(value.is_some());
            ticket = ticket.merge(t);
        }
        (n, ticket)
    }

    /// How many of `keys` hold a value, once durable.
    pub async fn exists(&self, keys: &[Bytes]) -> Result<u64, StorageError> {
        let (n, ticket) = self.exists_deferred(keys);
        self.ack(ticket).await?;
        Ok(n)
    }

    /// Keys holding a value. Acknowledge [`Store::fence`] before showing it to a client.
    pub fn dbsize(&self) -> u64 {
        u64::try_from(self.inner.live.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// A ticket covering every protocol change made so far, for answers that summarise
    /// all keys (DBSIZE).
    pub fn fence(&self) -> Ticket {
        let seq = self
            .inner
            .last_proto
            .load(Ordering::Acquire)
            .max(self.inner.floor_seq.load(Ordering::Acquire));
        self.inner.dur.read_ticket(seq)
    }

    /// BW.PREPARE: records a pending write if `version` is newer than the committed one
    /// and the key has fewer than [`MAX_PENDING`] pending writes. Durable before it
    /// returns (group-committed fsync), whatever the policy.
    pub async fn prepare(
        &self,
        key: &[u8],
        version: Version,
        coordinator: &str,
        value: Option<&[u8]>,
    ) -> Result<PrepareReply, StorageError> {
        let (reply, ticket) = self.prepare_deferred(key, version, coordinator, value)?;
        self.ack(ticket).await?;
        Ok(reply)
    }

    /// BW.PREPARE without waiting: the reply and the ticket to acknowledge (always an
    /// fsync) before the reply may be sent. Lets a connection run a pipelined batch of
    /// protocol commands and acknowledge them with one group commit.
    pub fn prepare_deferred(
        &self,
        key: &[u8],
        version: Version,
        coordinator: &str,
        value: Option<&[u8]>,
    ) -> Result<(PrepareReply, Ticket), StorageError> {
        check_key(key)?;
        if coordinator.len() > usize::from(u8::MAX) {
            return Err(StorageError::InvalidArgument(
                "coordinator name longer than 255 bytes",
            ));
        }
        self.check_open()?;
        self.check_memory()?;
        self.inner.hlc.observe(version);
        let mut map = self.inner.index.shard(key);
        let e = map.get(key);
        let seen = self.observed(e);
        let committed = e.and_then(|e| e.committed.as_ref()).map(|c| c.version);
        let reply = |status| PrepareReply { status, committed };
        if committed.is_some_and(|c| c >= version) {
            return Ok((reply(PrepareStatus::Stale), seen));
        }
        let retry = e.is_some_and(|e| e.find_pending(version).is_ok());
        if !retry && e.is_some_and(|e| e.pending.len() >= MAX_PENDING) {
            return Ok((reply(PrepareStatus::Busy), seen));
        }
        let raw = Bytes::from(codec::encode_pending(coordinator, value));
        self.inner
            .pending
            .insert(codec::pending_key(key, version), raw.clone())?;
        let p = codec::decode_pending(key, raw)?;
        let ticket = self.inner.dur.issue(true);
        let (e, before) = match map.get_mut(key) {
            Some(e) => {
                let before = e.footprint(key.len());
                (e, before)
            }
            None => (map.entry(Bytes::copy_from_slice(key)).or_default(), 0),
        };
        let rec = PendingRec {
            version,
            coordinator: p.coordinator,
            value: p.value,
        };
        match e.find_pending(version) {
            Ok(i) => e.pending[i] = rec,
            Err(i) => e.pending.insert(i, rec),
        }
        self.note_protocol_change(e, ticket.seq);
        let after = e.footprint(key.len());
        self.resize(before, after);
        Ok((reply(PrepareStatus::Ok), ticket))
    }

    /// BW.COMMIT: if `version` is pending on `key`, removes it and makes it the committed
    /// record if it is newer. Returns whether it was pending. Durable before it returns.
    pub async fn commit(&self, key: &[u8], version: Version) -> Result<bool, StorageError> {
        let (found, ticket) = self.commit_deferred(key, version)?;
        self.ack(ticket).await?;
        Ok(found)
    }

    /// BW.COMMIT without waiting; see [`Store::prepare_deferred`].
    pub fn commit_deferred(
        &self,
        key: &[u8],
        version: Version,
    ) -> Result<(bool, Ticket), StorageError> {
        check_key(key)?;
        self.check_open()?;
        let mut map = self.inner.index.shard(key);
        let Some(e) = map.get_mut(key) else {
            return Ok((false, self.observed(None)));
        };
        let Ok(i) = e.find_pending(version) else {
            return Ok((false, self.observed(Some(e))));
        };
        let newer = e.committed.as_ref().is_none_or(|c| c.version < version);
        let mut batch = self.inner.db.batch();
        batch.remove(&self.inner.pending, codec::pending_key(key, version));
        let installed = if newer {
            let value = e.pending[i].value.as_deref();
            let raw = Bytes::from(codec::encode_committed(version, value));
            batch.insert(&self.inner.committed, key, raw.clone());
            Some(Committed {
                version,
                value: value.map(|_| raw.slice(codec::COMMITTED_HEADER..)),
            })
        } else {
            None
        };
        batch.commit()?;
        let ticket = self.inner.dur.issue(true);
        let before = e.footprint(key.len());
        e.pending.remove(i);
        if let Some(c) = installed {
            let was_live = e.committed.as_ref().is_some_and(|c| c.value.is_some());
            self.account_live(was_live, c.value.is_some());
            e.committed = Some(c);
        }
        self.note_protocol_change(e, ticket.seq);
        let after = e.footprint(key.len());
        self.resize(before, after);
        Ok((true, ticket))
    }

    /// BW.ABORT: removes pending `version` from `key`. Returns whether it was there.
    /// Durable before it returns.
    ///
    /// An entry left with neither committed record nor pending writes stays in the index
    /// (a few dozen bytes, counted in `memory_bytes`, gone at the next open): its
    /// `proto_seq` is what makes a concurrent read wait for the abort's fsync.
    pub async fn abort(&self, key: &[u8], version: Version) -> Result<bool, StorageError> {
        let (found, ticket) = self.abort_deferred(key, version)?;
        self.ack(ticket).await?;
        Ok(found)
    }

    /// BW.ABORT without waiting; see [`Store::prepare_deferred`].
    pub fn abort_deferred(
        &self,
        key: &[u8],
        version: Version,
    ) -> Result<(bool, Ticket), StorageError> {
        check_key(key)?;
        self.check_open()?;
        let mut map = self.inner.index.shard(key);
        Ok(match map.get_mut(key) {
            None => (false, self.observed(None)),
            Some(e) => match e.find_pending(version) {
                Err(_) => (false, self.observed(Some(e))),
                Ok(i) => {
                    self.inner
                        .pending
                        .remove(codec::pending_key(key, version))?;
                    let ticket = self.inner.dur.issue(true);
                    let before = e.footprint(key.len());
                    e.pending.remove(i);
                    self.note_protocol_change(e, ticket.seq);
                    let after = e.footprint(key.len());
                    self.resize(before, after);
                    (true, ticket)
                }
            },
        })
    }

    /// Chaos data fault (`BW.DEBUG CORRUPT`): replaces the committed value of `key` with
    /// `value` *without changing its version*, as silent corruption of one replica would,
    /// so replicas disagree on what one version holds (for repair to find). Returns the
    /// version and the value replaced, or `None` if `key` has no committed value.
    pub fn debug_overwrite(
        &self,
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<(Version, Bytes)>, StorageError> {
        check_key(key)?;
        self.check_open()?;
        let mut map = self.inner.index.shard(key);
        let Some((version, old)) = map
            .get(key)
            .and_then(|e| e.committed.as_ref())
            .and_then(|c| c.value.clone().map(|v| (c.version, v)))
        else {
            return Ok(None);
        };
        self.write_committed(&mut map, key, version, Some(value))?;
        Ok(Some((version, old)))
    }

    /// Chaos data fault (`BW.DEBUG DROP`): forgets the committed record of `key` as if it
    /// had never been written here — no tombstone, so nothing newer exists to repair from
    /// this replica. Returns the record dropped (`None` value: a tombstone).
    pub fn debug_drop(&self, key: &[u8]) -> Result<Option<(Version, Option<Bytes>)>, StorageError> {
        check_key(key)?;
        self.check_open()?;
        let mut map = self.inner.index.shard(key);
        let Some(e) = map.get_mut(key) else {
            return Ok(None);
        };
        let Some(old) = e.committed.take() else {
            return Ok(None);
        };
        self.inner.committed.remove(key)?;
        let was_live = old.value.is_some();
        let before = e.footprint(key.len())
            + old.value.as_ref().map_or(0, Bytes::len)
            + codec::COMMITTED_HEADER;
        let after = e.footprint(key.len());
        if e.pending.is_empty() {
            map.remove(key);
        }
        self.resize(before, after);
        self.account_live(was_live, false);
        self.inner.dirty.fetch_add(1, Ordering::Relaxed);
        Ok(Some((old.version, old.value)))
    }

    /// FLUSHALL: removes every record, committed and pending. Durable before it returns,
    /// and no read shows the empty store before then.
    pub async fn flushall(&self) -> Result<(), StorageError> {
        let ticket = {
            self.check_open()?;
            let mut all = self.inner.index.lock_all();
            self.inner.committed.clear()?;
            self.inner.pending.clear()?;
            for m in all.iter_mut() {
                m.clear();
            }
            self.inner.live.store(0, Ordering::Relaxed);
            self.inner.memory.store(0, Ordering::Relaxed);
            self.inner.dirty.fetch_add(1, Ordering::Relaxed);
            let ticket = self.inner.dur.issue(true);
            self.inner.floor_seq.fetch_max(ticket.seq, Ordering::AcqRel);
            self.inner
                .last_proto
                .fetch_max(ticket.seq, Ordering::AcqRel);
            ticket
        };
        self.ack(ticket).await
    }

    /// Writes a consistent snapshot of every record to `path` (atomically: a temporary
    /// file renamed into place). Blocking; SAVE calls it directly, BGSAVE via
    /// [`Store::bgsave`].
    pub fn save(&self, path: &Path) -> Result<SnapshotInfo, StorageError> {
        self.check_open()?;
        let dirty_before = self.inner.dirty.load(Ordering::Relaxed);
        let snap = self.inner.db.snapshot();
        let info = snapshot::write(path, &snap, &self.inner.committed, &self.inner.pending)?;
        drop(snap);
        self.inner.dirty.fetch_sub(dirty_before, Ordering::Relaxed);
        self.inner.last_save.store(unix_now(), Ordering::Relaxed);
        Ok(info)
    }

    /// Starts [`Store::save`] on a background thread. Fails with
    /// [`StorageError::SaveInProgress`] if one is running.
    pub fn bgsave(&self, path: PathBuf) -> Result<(), StorageError> {
        self.check_open()?;
        if self.inner.bgsave_running.swap(true, Ordering::AcqRel) {
            return Err(StorageError::SaveInProgress);
        }
        let store = self.clone();
        let spawned = std::thread::Builder::new()
            .name("bulwark-bgsave".into())
            .spawn(move || {
                let result = store.save(&path);
                if let Err(e) = &result {
                    tracing::error!(error = %e, path = %path.display(), "background save failed");
                }
                store
                    .inner
                    .last_bgsave_ok
                    .store(result.is_ok(), Ordering::Relaxed);
                store.inner.bgsave_running.store(false, Ordering::Release);
            });
        if let Err(source) = spawned {
            self.inner.bgsave_running.store(false, Ordering::Release);
            return Err(StorageError::Io {
                op: "spawn bgsave thread for",
                path: self.inner.dir.clone(),
                source,
            });
        }
        Ok(())
    }

    /// Replaces every record with the snapshot's, after checking its format and checksum
    /// (nothing is changed if they are wrong), and reloads the index from it. Durable
    /// when it returns, and invisible to readers until then (all shards are held).
    /// Blocking.
    pub fn restore(&self, path: &Path) -> Result<SnapshotInfo, StorageError> {
        self.check_open()?;
        let info = snapshot::verify(path)?;
        let mut all = self.inner.index.lock_all();
        self.inner.committed.clear()?;
        self.inner.pending.clear()?;
        let mut batch = self.inner.db.batch();
        snapshot::read(path, |kind, key, value| {
            match kind {
                snapshot::Kind::Committed => {
                    codec::decode_committed(&key, value.clone())?;
                    batch.insert(&self.inner.committed, key, value);
                }
                snapshot::Kind::Pending => {
                    codec::split_pending_key(&key).ok_or(StorageError::CorruptRecord {
                        key: String::from_utf8_lossy(&key).into_owned(),
                        reason: "bad pending key in snapshot",
                    })?;
                    codec::decode_pending(&key, value.clone())?;
                    batch.insert(&self.inner.pending, key, value);
                }
            }
            if batch.len() >= 1024 {
                std::mem::replace(&mut batch, self.inner.db.batch()).commit()?;
            }
            Ok(())
        })?;
        batch.commit()?;
        let loaded = index::load(&self.inner.committed, &self.inner.pending, &mut all)?;
        self.inner.live.store(
            i64::try_from(loaded.live_keys).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
        self.inner.memory.store(
            i64::try_from(loaded.bytes).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
        self.inner.dirty.store(0, Ordering::Relaxed);
        self.inner.dur.sync_now()?;
        drop(all);
        Ok(info)
    }

    /// Counters for INFO.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            live_keys: self.dbsize(),
            fsyncs: self.inner.dur.fsyncs(),
            changes_since_save: self.inner.dirty.load(Ordering::Relaxed),
            last_save_unix: self.inner.last_save.load(Ordering::Relaxed),
            bgsave_in_progress: self.inner.bgsave_running.load(Ordering::Acquire),
            last_bgsave_ok: self.inner.last_bgsave_ok.load(Ordering::Relaxed),
            appendfsync: self.inner.dur.policy(),
            memory_bytes: self.memory_bytes(),
            max_memory_bytes: self.inner.max_memory,
        }
    }

    /// Flushes everything to disk and stops the committer. Later writes fail with
    /// [`StorageError::Closed`]; reads still work until the last clone is dropped (which
    /// releases the database's lock file). Blocking.
    pub fn close(&self) -> Result<(), StorageError> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // Wait out a running BGSAVE so its file is complete.
        while self.inner.bgsave_running.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.inner.db.persist(PersistMode::SyncAll)?;
        self.inner.dur.stop();
        let handle = self
            .inner
            .committer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
        Ok(())
    }
}

/// A journal file's size and where its last non-zero byte ends.
#[derive(Debug)]
struct JournalFile {
    path: PathBuf,
    len: u64,
    last_nonzero_end: u64,
}

/// Lists `*.jnl` files in the database directory with their sizes and, if `scan`, where
/// their data ends.
fn inspect_journals(db_path: &Path, scan: bool) -> Result<Vec<JournalFile>, StorageError> {
    let io = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| StorageError::Io { op, path, source }
    };
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(db_path) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io("list", db_path)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io("list", db_path))?;
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "jnl") {
            continue;
        }
        let len = entry.metadata().map_err(io("stat", &path))?.len();
        let last_nonzero_end = if scan {
            last_nonzero_end(&path, len).map_err(io("read", &path))?
        } else {
            len
        };
        out.push(JournalFile {
            path,
            len,
            last_nonzero_end,
        });
    }
    Ok(out)
}

/// Offset just past the last non-zero byte of the file (0 if it is all zeros), scanning
/// backwards in blocks: journals are preallocated with zeros after their data.
fn last_nonzero_end(path: &Path, len: u64) -> std::io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    const BLOCK: u64 = 64 << 10;
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; BLOCK as usize];
    let zeros = vec![0u8; BLOCK as usize];
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let n = (end - start) as usize;
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf[..n])?;
        // Whole-block comparison is a memcmp: fast even in debug builds, which matters
        // because a cleanly closed journal is 64 MiB of preallocated zeros after its data.
        if buf[..n] == zeros[..n] {
            end = start;
            continue;
        }
        if let Some(i) = buf[..n].iter().rposition(|&b| b != 0) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}
