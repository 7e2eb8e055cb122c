//! When writes reach the disk: the `appendfsync` policy and the group committer.
//!
//! Every write to the journal takes a [`Ticket`]: its position in the order of writes.
//! A sync that *starts* after a write finished covers that write (the journal is one
//! sequential file), so the committer only has to remember the highest ticket issued when
//! it began an fsync. Writers that need durability register their ticket and wait on a
//! watch channel; one fsync then releases every writer that arrived before it (group
//! commit). Under `everysec` the same thread also syncs once a second.
//!
//! The fsync itself runs *outside* fjall's journal lock: `Database::persist(SyncData)`
//! holds that lock for the whole fsync, which stopped every writer (and, since writers run
//! on the runtime's threads, the whole node) for each fsync, so a group commit covered only
//! the few batches that arrived while it was starting. Instead the committer moves the
//! journal buffer to the OS under the lock (`PersistMode::Buffer`, a `write`), then
//! `fdatasync`s the active journal file through its own descriptor while writers carry
//! on. This is safe across journal rotation: fjall fsyncs a journal (`SyncAll`) before it
//! rotates to the next, so if the file we sync is already the next one, our data was in
//! the previous one and is durable already.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use fjall::{Database, PersistMode};
use tokio::sync::watch;

use crate::StorageError;
use crate::store::{FsyncObserver, SyncGate};

/// When acknowledged writes are fsynced, with Redis's names and meanings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Appendfsync {
    /// Acknowledge a write only after it is on disk (group-committed fsync).
    Always,
    /// Write to the OS before acknowledging; fsync in the background once a second, so a
    /// power loss loses at most about a second of acknowledged writes.
    Everysec,
    /// Write to the OS before acknowledging and let the OS decide when to flush.
    No,
}

impl Appendfsync {
    /// The Redis configuration value (`always`, `everysec`, `no`).
    pub fn as_str(self) -> &'static str {
        match self {
            Appendfsync::Always => "always",
            Appendfsync::Everysec => "everysec",
            Appendfsync::No => "no",
        }
    }
}

impl fmt::Display for Appendfsync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not an `appendfsync` policy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid appendfsync policy {0:?}: expected always, everysec or no")]
pub struct AppendfsyncParseError(pub String);

impl FromStr for Appendfsync {
    type Err = AppendfsyncParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "always" => Ok(Appendfsync::Always),
            "everysec" => Ok(Appendfsync::Everysec),
            "no" => Ok(Appendfsync::No),
            _ => Err(AppendfsyncParseError(s.chars().take(40).collect())),
        }
    }
}

/// A write's place in the journal, to be acknowledged with [`crate::Store::ack`] before
/// the write is reported to a client. Tickets merge, so a pipeline of writes needs one
/// acknowledgement (one fsync under `always`) for the whole batch.
///
/// Reads hand out tickets too: a read that observed protocol state (a prepare, commit or
/// abort) not yet fsynced carries a ticket whose `durable` part makes the reply wait for
/// that fsync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[must_use = "a write must be acknowledged with Store::ack before replying"]
pub struct Ticket {
    /// Sequence number of the latest write covered, acknowledged as the policy says
    /// (0: none).
    pub(crate) seq: u64,
    /// Sequence number that must be fsynced whatever the policy (protocol operations and
    /// reads of their effects); 0: none.
    pub(crate) durable: u64,
}

impl Ticket {
    /// The ticket of an operation that wrote nothing and observed nothing undurable.
    pub const NONE: Ticket = Ticket { seq: 0, durable: 0 };

    /// One ticket covering both.
    pub fn merge(self, other: Ticket) -> Ticket {
        Ticket {
            seq: self.seq.max(other.seq),
            durable: self.durable.max(other.durable),
        }
    }

    /// Whether acknowledging this ticket has nothing to wait for.
    pub fn is_none(&self) -> bool {
        self.seq == 0 && self.durable == 0
    }

    /// Whether acknowledging this ticket waits for an fsync whatever the policy.
    pub fn needs_fsync(&self) -> bool {
        self.durable != 0
    }
}

/// What the committer thread is asked to do.
#[derive(Debug, Default)]
struct SyncRequest {
    /// Highest ticket a writer is waiting to see fsynced.
    requested: u64,
    /// Set by close: sync everything once more and exit.
    stop: bool,
}

/// The shared state of the group committer.
pub(crate) struct Durability {
    /// The database whose journal is synced.
    db: Database,
    /// The configured policy for writes that do not insist on a sync.
    policy: Appendfsync,
    /// Tickets issued so far (the last one handed out).
    written: AtomicU64,
    /// Highest ticket known to be in OS buffers (flushed out of the journal's buffer);
    /// writers under `everysec`/`no` wait on it.
    os_flushed: watch::Sender<u64>,
    /// A writer is moving the journal buffer to the OS right now (the round's leader).
    os_flushing: AtomicBool,
    /// Pending sync requests; the committer sleeps on `wake` until there is one.
    request: Mutex<SyncRequest>,
    /// Wakes the committer thread.
    wake: Condvar,
    /// Highest ticket known durable; writers wait on it. `u64::MAX` after a failure.
    durable: watch::Sender<u64>,
    /// Highest ticket fsynced successfully: the same as `durable` without the failure
    /// sentinel, as an atomic so readers can check it without touching the watch lock.
    synced: AtomicU64,
    /// Called by the committer before each fsync (fault-injection and tests).
    gate: Option<SyncGate>,
    /// Set once if an fsync fails: from then on nothing is acknowledged as durable.
    failed: OnceLock<String>,
    /// Called with the duration of every fsync (the node records a histogram).
    observer: Option<FsyncObserver>,
    /// The database directory, where the journal files (`<id>.jnl`) live.
    journal_dir: PathBuf,
    /// The active journal file as last seen, by id, opened for `fdatasync`.
    journal: Mutex<Option<(u64, File)>>,
    /// Number of fsyncs done.
    fsyncs: AtomicU64,
}

impl fmt::Debug for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Durability")
            .field("policy", &self.policy)
            .field("written", &self.written)
            .field("durable", &*self.durable.borrow())
            .finish_non_exhaustive()
    }
}

impl Durability {
    pub(crate) fn new(
        db: Database,
        journal_dir: PathBuf,
        policy: Appendfsync,
        observer: Option<FsyncObserver>,
        gate: Option<SyncGate>,
    ) -> Self {
        Durability {
            db,
            policy,
            written: AtomicU64::new(0),
            os_flushed: watch::Sender::new(0),
            os_flushing: AtomicBool::new(false),
            request: Mutex::new(SyncRequest::default()),
            wake: Condvar::new(),
            durable: watch::Sender::new(0),
            synced: AtomicU64::new(0),
            gate,
            failed: OnceLock::new(),
            observer,
            journal_dir,
            journal: Mutex::new(None),
            fsyncs: AtomicU64::new(0),
        }
    }

    pub(crate) fn policy(&self) -> Appendfsync {
        self.policy
    }

    pub(crate) fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    /// A ticket for a write that has just reached the journal. Must be called *after* the
    /// write, so that any sync starting later covers it.
    pub(crate) fn issue(&self, sync: bool) -> Ticket {
        let seq = self.written.fetch_add(1, Ordering::AcqRel) + 1;
        Ticket {
            seq,
            durable: if sync { seq } else { 0 },
        }
    }

    /// The ticket a read must acknowledge after observing state last changed by a
    /// protocol write with sequence number `seq`: nothing if that write is already
    /// fsynced (the common case: one atomic load), else a wait for its fsync.
    pub(crate) fn read_ticket(&self, seq: u64) -> Ticket {
        if seq == 0 || seq <= self.synced.load(Ordering::Acquire) {
            Ticket::NONE
        } else {
            Ticket {
                seq: 0,
                durable: seq,
            }
        }
    }

    /// Waits until the write behind `ticket` is as durable as the policy (or the ticket)
    /// demands.
    pub(crate) async fn ack(&self, ticket: Ticket) -> Result<(), StorageError> {
        let durable = if self.policy == Appendfsync::Always {
            ticket.durable.max(ticket.seq)
        } else {
            ticket.durable
        };
        if durable > 0 {
            self.wait_durable(durable).await?;
        }
        if ticket.seq > durable {
            self.flush_os(ticket.seq).await?;
        }
        Ok(())
    }

    /// Waits until everything up to `seq` has moved from the journal's user-space buffer
    /// into the OS, so a crash of this process (not of the machine) loses nothing
    /// acknowledged.
    ///
    /// Leader-based group write, on the caller's thread: the first writer to find no
    /// flush in progress does the `write` for everyone (it covers every write finished
    /// before it started); the others wait for it and return if it covered them. No
    /// thread hand-off (which cost more than the `write` at one pipelined batch per
    /// request), and one system call per round rather than one per connection.
    pub(crate) async fn flush_os(&self, seq: u64) -> Result<(), StorageError> {
        loop {
            let mut rx = self.os_flushed.subscribe();
            if *rx.borrow_and_update() >= seq {
                break;
            }
            if !self.os_flushing.swap(true, Ordering::AcqRel) {
                let result = self.write_now();
                self.os_flushing.store(false, Ordering::Release);
                result?;
                continue;
            }
            // Someone else is writing. We subscribed before looking, so its completion
            // cannot be missed; after it, loop: covered, or lead the next round.
            rx.changed().await.map_err(|_| StorageError::Closed)?;
        }
        match self.failed.get() {
            Some(e) => Err(StorageError::SyncFailed(e.clone())),
            None => Ok(()),
        }
    }

    async fn wait_durable(&self, seq: u64) -> Result<(), StorageError> {
        let mut rx = self.durable.subscribe();
        if *rx.borrow() < seq {
            {
                let mut req = self
                    .request
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if req.stop {
                    return Err(StorageError::Closed);
                }
                if req.requested < seq {
                    req.requested = seq;
                    self.wake.notify_one();
                }
            }
            rx.wait_for(|d| *d >= seq)
                .await
                .map_err(|_| StorageError::Closed)?;
        }
        match self.failed.get() {
            Some(e) => Err(StorageError::SyncFailed(e.clone())),
            None => Ok(()),
        }
    }

    /// Moves the journal's buffer into the OS now.
    fn write_now(&self) -> Result<(), StorageError> {
        let target = self.written.load(Ordering::Acquire);
        match self.db.persist(PersistMode::Buffer) {
            Ok(()) => {
                self.os_flushed.send_modify(|d| *d = (*d).max(target));
                Ok(())
            }
            Err(e) => Err(self.fail(e.to_string())),
        }
    }

    fn fail(&self, msg: String) -> StorageError {
        tracing::error!(error = %msg, "storage journal write failed; writes are no longer acknowledged");
        let _ = self.failed.set(msg.clone());
        self.durable.send_replace(u64::MAX);
        self.os_flushed.send_replace(u64::MAX);
        StorageError::SyncFailed(msg)
    }

    /// Syncs now (committer thread, close, restore).
    pub(crate) fn sync_now(&self) -> Result<(), StorageError> {
        let target = self.written.load(Ordering::Acquire);
        if let Some(gate) = &self.gate {
            gate();
        }
        let start = Instant::now();
        let synced = self
            .db
            .persist(PersistMode::Buffer)
            .map_err(|e| e.to_string())
            .and_then(|()| self.fdatasync_journal());
        match synced {
            Ok(()) => {
                self.fsyncs.fetch_add(1, Ordering::Relaxed);
                self.synced.fetch_max(target, Ordering::AcqRel);
                if let Some(observe) = &self.observer {
                    observe(start.elapsed());
                }
                self.os_flushed.send_modify(|d| *d = (*d).max(target));
                self.durable.send_modify(|d| *d = (*d).max(target));
                Ok(())
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// `fdatasync`s the newest journal file (see the module docs for why that is enough).
    fn fdatasync_journal(&self) -> Result<(), String> {
        let id = newest_journal_id(&self.journal_dir)
            .map_err(|e| format!("list journals in {}: {e}", self.journal_dir.display()))?
            .ok_or_else(|| format!("no journal file in {}", self.journal_dir.display()))?;
        let mut cached = self
            .journal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if cached
            .as_ref()
            .is_none_or(|(cached_id, _)| *cached_id != id)
        {
            let path = self.journal_dir.join(format!("{id}.jnl"));
            let file = File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
            *cached = Some((id, file));
        }
        match cached.as_ref() {
            Some((_, file)) => file
                .sync_data()
                .map_err(|e| format!("fdatasync journal {id}.jnl: {e}")),
            None => Err("journal file vanished".to_owned()),
        }
    }

    /// Asks the committer thread to sync once more and exit.
    pub(crate) fn stop(&self) {
        let mut req = self
            .request
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        req.stop = true;
        self.wake.notify_all();
    }

    /// The committer thread's body. It sleeps until a writer asks for a sync (or, under
    /// `everysec`, until the next second), syncs everything written so far, and wakes the
    /// writers it covered.
    pub(crate) fn run_committer(self: Arc<Self>) {
        const EVERY: Duration = Duration::from_secs(1);
        let mut next_tick = Instant::now() + EVERY;
        loop {
            let mut req = self
                .request
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            loop {
                let durable = *self.durable.borrow();
                if req.requested > durable {
                    break;
                }
                if req.stop {
                    drop(req);
                    if self.written.load(Ordering::Acquire) > *self.durable.borrow() {
                        let _ = self.sync_now();
                    }
                    return;
                }
                if self.policy == Appendfsync::Everysec {
                    let now = Instant::now();
                    if now >= next_tick {
                        next_tick = now + EVERY;
                        if self.written.load(Ordering::Acquire) > durable {
                            break;
                        }
                        continue;
                    }
                    req = self
                        .wake
                        .wait_timeout(req, next_tick - now)
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .0;
                } else {
                    req = self
                        .wake
                        .wait(req)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
            }
            drop(req);
            if self.sync_now().is_err() {
                // Waiters were released with the failure; nothing more can be made durable.
                return;
            }
        }
    }
}

/// The highest `<id>.jnl` in `dir`: fjall's active journal.
fn newest_journal_id(dir: &Path) -> std::io::Result<Option<u64>> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let id = name
            .to_str()
            .and_then(|n| n.strip_suffix(".jnl"))
            .and_then(|n| n.parse::<u64>().ok());
        newest = newest.max(id);
    }
    Ok(newest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_like_redis() {
        assert_eq!("always".parse(), Ok(Appendfsync::Always));
        assert_eq!("EverySec".parse(), Ok(Appendfsync::Everysec));
        assert_eq!("no".parse(), Ok(Appendfsync::No));
        assert!("sometimes".parse::<Appendfsync>().is_err());
        assert_eq!(Appendfsync::Everysec.to_string(), "everysec");
    }

    #[test]
    fn tickets_merge_to_the_latest_and_strictest() {
        let a = Ticket { seq: 3, durable: 3 };
        let b = Ticket { seq: 5, durable: 0 };
        assert_eq!(a.merge(b), Ticket { seq: 5, durable: 3 });
        assert!(a.merge(b).needs_fsync() && !b.needs_fsync());
        assert!(Ticket::NONE.is_none());
        assert_eq!(Ticket::NONE.merge(b), b);
    }
}
