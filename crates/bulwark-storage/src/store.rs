//! The store: per-key replica state on fjall, with striped locks for read-modify-write.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bulwark_core::{Hlc, PendingRef, Record, ReplicaState, SystemClock, Version};
use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::StorageError;
use crate::codec::{self, Committed};
use crate::durability::{Appendfsync, Durability, Ticket};
use crate::snapshot::{self, SnapshotInfo};

/// The format marker stored in every database this build creates. A database carrying any
/// other marker is refused at open.
pub const FORMAT_MARKER: &str = "bulwark-storage/v1";

/// Most prepared writes one key may hold (see the replica protocol).
pub const MAX_PENDING: usize = 16;

/// Longest key the store accepts. The journal stores key lengths in 16 bits and pending
/// keys add 18 bytes; request limits (1 KiB by default) are far below this.
const MAX_KEY_BYTES: usize = 60_000;

/// Number of lock stripes. A power of two well above the core count, so that unrelated
/// keys rarely share a stripe.
const STRIPES: usize = 1024;

/// Key of the format marker in the meta keyspace.
const META_FORMAT: &[u8] = b"format";

/// Receives the duration of every fsync (the node feeds a histogram with it).
pub type FsyncObserver = Arc<dyn Fn(Duration) + Send + Sync>;

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
}

impl StoreConfig {
    /// A configuration with a 64 MiB block cache and no fsync observer.
    pub fn new(dir: impl Into<PathBuf>, appendfsync: Appendfsync, writer_id: u32) -> Self {
        StoreConfig {
            dir: dir.into(),
            appendfsync,
            writer_id,
            cache_bytes: 64 << 20,
            fsync_observer: None,
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
    /// The fjall database (journal + keyspaces).
    db: Database,
    /// key → committed record.
    committed: Keyspace,
    /// (key, version) → pending record.
    pending: Keyspace,
    /// Group committer shared with its thread.
    dur: Arc<Durability>,
    /// The committer thread, joined at close.
    committer: Mutex<Option<JoinHandle<()>>>,
    /// Striped locks serialising read-modify-write per key.
    locks: Box<[Mutex<()>]>,
    /// Clock for versions of plain SET/DEL.
    hlc: Hlc<SystemClock>,
    /// Keys holding a value (DBSIZE), maintained under the stripe locks.
    live: AtomicI64,
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

fn fnv1a(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn check_key(key: &[u8]) -> Result<(), StorageError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(StorageError::InvalidArgument("key longer than 60000 bytes"));
    }
    Ok(())
}

impl Store {
    /// Opens (or creates) the store in `config.dir`, recovering from the journal. Blocking:
    /// call it from a blocking context (`spawn_blocking`) in async code.
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

        let mut report = OpenReport {
            created,
            journals: before.len(),
            journal_tail_discarded_bytes: discarded,
            ..OpenReport::default()
        };
        for kv in committed.iter() {
            let (k, v) = kv.into_inner()?;
            match codec::decode_committed(&k, Bytes::from(v))?.value {
                Some(_) => report.live_keys += 1,
                None => report.tombstones += 1,
            }
        }
        for kv in pending.iter() {
            let _ = kv.key()?;
            report.pending += 1;
        }

        let dur = Arc::new(Durability::new(
            db.clone(),
            config.appendfsync,
            config.fsync_observer.clone(),
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
            dur,
            committer: Mutex::new(Some(committer)),
            locks: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            hlc: Hlc::new(config.writer_id, SystemClock::default()),
            live: AtomicI64::new(i64::try_from(report.live_keys).unwrap_or(i64::MAX)),
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

    fn lock(&self, key: &[u8]) -> MutexGuard<'_, ()> {
        let i = (fnv1a(key) as usize) & (STRIPES - 1);
        self.inner.locks[i]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn check_open(&self) -> Result<(), StorageError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(StorageError::Closed);
        }
        Ok(())
    }

    fn read_committed(&self, key: &[u8]) -> Result<Option<Committed>, StorageError> {
        match self.inner.committed.get(key)? {
            Some(raw) => codec::decode_committed(key, Bytes::from(raw)).map(Some),
            None => Ok(None),
        }
    }

    /// Writes a committed record and keeps the live-key count; caller holds the stripe.
    fn write_committed(
        &self,
        key: &[u8],
        old: Option<&Committed>,
        version: Version,
        value: Option<&[u8]>,
    ) -> Result<(), StorageError> {
        self.inner
            .committed
            .insert(key, codec::encode_committed(version, value))?;
        self.account(old, value.is_some());
        Ok(())
    }

    fn account(&self, old: Option<&Committed>, now_live: bool) {
        let was_live = old.is_some_and(|c| c.value.is_some());
        match (was_live, now_live) {
            (false, true) => {
                self.inner.live.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.inner.live.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        self.inner.dirty.fetch_add(1, Ordering::Relaxed);
    }

    /// Waits until the writes behind `ticket` are as durable as the policy demands (or,
    /// for protocol operations, fsynced). Reply to a client only after this resolves.
    pub async fn ack(&self, ticket: Ticket) -> Result<(), StorageError> {
        self.inner.dur.ack(ticket).await
    }

    /// The committed value of `key` (plain GET); `None` if absent or deleted.
    pub fn get(&self, key: &[u8]) -> Result<Option<Bytes>, StorageError> {
        Ok(self.read_committed(key)?.and_then(|c| c.value))
    }

    /// The replica state of `key` (BW.GET): committed record and pending writes, read
    /// together under the key's lock so a concurrent commit is seen entirely or not at all.
    pub fn get_state(&self, key: &[u8]) -> Result<ReplicaState, StorageError> {
        let _guard = self.lock(key);
        let committed = self.read_committed(key)?.map(|c| Record {
            version: c.version,
            value: c.value,
        });
        let mut pending = Vec::new();
        for kv in self.inner.pending.prefix(codec::pending_prefix(key)) {
            let (k, v) = kv.into_inner()?;
            let Some((_, version)) = codec::split_pending_key(&k) else {
                continue;
            };
            let p = codec::decode_pending(key, Bytes::from(v))?;
            pending.push(PendingRef {
                version,
                coordinator: p.coordinator,
            });
        }
        Ok(ReplicaState { committed, pending })
    }

    /// Last-write-wins (BW.PUT): makes `(version, value)` the committed record if
    /// `version` is newer than the committed one. `value` `None` is a tombstone.
    pub fn put(
        &self,
        key: &[u8],
        version: Version,
        value: Option<&[u8]>,
    ) -> Result<(PutReply, Ticket), StorageError> {
        check_key(key)?;
        self.check_open()?;
        self.inner.hlc.observe(version);
        let _guard = self.lock(key);
        let old = self.read_committed(key)?;
        let current = old.as_ref().map(|c| c.version);
        if current.is_some_and(|c| c >= version) {
            return Ok((
                PutReply {
                    applied: false,
                    committed: current,
                },
                Ticket::NONE,
            ));
        }
        self.write_committed(key, old.as_ref(), version, value)?;
        Ok((
            PutReply {
                applied: true,
                committed: Some(version),
            },
            self.inner.dur.issue(false),
        ))
    }

    /// Plain SET: commits `value` at a version from the node's clock, newer than whatever
    /// is committed (so it always applies).
    pub fn set(&self, key: &[u8], value: &[u8]) -> Result<Ticket, StorageError> {
        check_key(key)?;
        self.check_open()?;
        let _guard = self.lock(key);
        let old = self.read_committed(key)?;
        if let Some(c) = &old {
            self.inner.hlc.observe(c.version);
        }
        let version = self.inner.hlc.now();
        self.write_committed(key, old.as_ref(), version, Some(value))?;
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
            let _guard = self.lock(key);
            let old = self.read_committed(key)?;
            let Some(c) = old.as_ref().filter(|c| c.value.is_some()) else {
                continue;
            };
            self.inner.hlc.observe(c.version);
            let version = self.inner.hlc.now();
            self.write_committed(key, old.as_ref(), version, None)?;
            removed += 1;
            ticket = ticket.merge(self.inner.dur.issue(false));
        }
        Ok((removed, ticket))
    }

    /// How many of `keys` hold a value (repeats count repeatedly, as in Redis).
    pub fn exists(&self, keys: &[Bytes]) -> Result<u64, StorageError> {
        let mut n = 0;
        for key in keys {
            if self.get(key)?.is_some() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Keys holding a value.
    pub fn dbsize(&self) -> u64 {
        u64::try_from(self.inner.live.load(Ordering::Relaxed)).unwrap_or(0)
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

    fn prepare_deferred(
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
        self.inner.hlc.observe(version);
        let _guard = self.lock(key);
        let committed = self.read_committed(key)?.map(|c| c.version);
        let reply = |status| PrepareReply { status, committed };
        if committed.is_some_and(|c| c >= version) {
            return Ok((reply(PrepareStatus::Stale), Ticket::NONE));
        }
        let pk = codec::pending_key(key, version);
        if self.inner.pending.get(&pk)?.is_none() {
            let count = self
                .inner
                .pending
                .prefix(codec::pending_prefix(key))
                .take(MAX_PENDING)
                .count();
            if count >= MAX_PENDING {
                return Ok((reply(PrepareStatus::Busy), Ticket::NONE));
            }
        }
        self.inner
            .pending
            .insert(pk, codec::encode_pending(coordinator, value))?;
        self.inner.dirty.fetch_add(1, Ordering::Relaxed);
        Ok((reply(PrepareStatus::Ok), self.inner.dur.issue(true)))
    }

    /// BW.COMMIT: if `version` is pending on `key`, removes it and makes it the committed
    /// record if it is newer. Returns whether it was pending. Durable before it returns.
    pub async fn commit(&self, key: &[u8], version: Version) -> Result<bool, StorageError> {
        let (found, ticket) = self.commit_deferred(key, version)?;
        self.ack(ticket).await?;
        Ok(found)
    }

    fn commit_deferred(
        &self,
        key: &[u8],
        version: Version,
    ) -> Result<(bool, Ticket), StorageError> {
        check_key(key)?;
        self.check_open()?;
        let _guard = self.lock(key);
        let pk = codec::pending_key(key, version);
        let Some(raw) = self.inner.pending.get(&pk)? else {
            return Ok((false, Ticket::NONE));
        };
        let p = codec::decode_pending(key, Bytes::from(raw))?;
        let old = self.read_committed(key)?;
        let mut batch = self.inner.db.batch();
        batch.remove(&self.inner.pending, pk);
        if old.as_ref().is_none_or(|c| c.version < version) {
            batch.insert(
                &self.inner.committed,
                key,
                codec::encode_committed(version, p.value.as_deref()),
            );
            self.account(old.as_ref(), p.value.is_some());
        }
        batch.commit()?;
        Ok((true, self.inner.dur.issue(true)))
    }

    /// BW.ABORT: removes pending `version` from `key`. Returns whether it was there.
    /// Durable before it returns.
    pub async fn abort(&self, key: &[u8], version: Version) -> Result<bool, StorageError> {
        let ticket = {
            check_key(key)?;
            self.check_open()?;
            let _guard = self.lock(key);
            let pk = codec::pending_key(key, version);
            if self.inner.pending.get(&pk)?.is_none() {
                return Ok(false);
            }
            self.inner.pending.remove(pk)?;
            self.inner.dirty.fetch_add(1, Ordering::Relaxed);
            self.inner.dur.issue(true)
        };
        self.ack(ticket).await?;
        Ok(true)
    }

    /// FLUSHALL: removes every record, committed and pending. Durable before it returns.
    pub async fn flushall(&self) -> Result<(), StorageError> {
        let ticket = {
            self.check_open()?;
            let _all = self.lock_all();
            self.inner.committed.clear()?;
            self.inner.pending.clear()?;
            self.inner.live.store(0, Ordering::Relaxed);
            self.inner.dirty.fetch_add(1, Ordering::Relaxed);
            self.inner.dur.issue(true)
        };
        self.ack(ticket).await
    }

    /// Every stripe, in order (no deadlock with single-stripe holders).
    fn lock_all(&self) -> Vec<MutexGuard<'_, ()>> {
        self.inner
            .locks
            .iter()
            .map(|m| m.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
            .collect()
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
    /// (nothing is changed if they are wrong). Durable when it returns. Blocking.
    pub fn restore(&self, path: &Path) -> Result<SnapshotInfo, StorageError> {
        self.check_open()?;
        let info = snapshot::verify(path)?;
        let _all = self.lock_all();
        self.inner.committed.clear()?;
        self.inner.pending.clear()?;
        let mut live = 0i64;
        let mut batch = self.inner.db.batch();
        snapshot::read(path, |kind, key, value| {
            match kind {
                snapshot::Kind::Committed => {
                    if codec::decode_committed(&key, value.clone())?
                        .value
                        .is_some()
                    {
                        live += 1;
                    }
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
        self.inner.live.store(live, Ordering::Relaxed);
        self.inner.dirty.store(0, Ordering::Relaxed);
        self.inner.dur.sync_now()?;
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
