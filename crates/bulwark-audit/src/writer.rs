//! [`AuditLog`]: queue records from async code; one thread appends them in batches.
//!
//! A batch is appended under an exclusive lock on `<file>.lock` (`flock`), after reading
//! the chain's last line under that lock, so processes sharing the file extend one chain.
//! Lines are written with one `write` per batch (so a process crash never tears a line of
//! another process's batch) and fsynced at most every `fsync_interval` and at close.

use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::chain::{ChainFiles, tail};
use crate::record::{GENESIS, Record, split_hash};

/// Records queued before writers wait (backpressure, never a dropped record).
const QUEUE: usize = 16_384;
/// Most records appended in one batch.
const BATCH: usize = 1024;
/// After the first record of a batch, how long the writer waits for more before it takes
/// the lock and writes: under load one wake-up, lock and write per few milliseconds
/// instead of per request (the lines are not on any request's path; a crash loses at most
/// what the fsync interval already allows).
const COALESCE: Duration = Duration::from_millis(10);

/// Where and how the log is written.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// The current file (`<data-dir>/logs/audit.jsonl`).
    pub path: PathBuf,
    /// Size at which the file is rotated.
    pub max_bytes: u64,
    /// Longest time an appended line waits for its fsync.
    pub fsync_interval: Duration,
}

/// Why the log cannot be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A file operation failed.
    #[error("audit log {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The writer's handle: cheap to clone; the thread stops when every clone is dropped
/// or [`AuditLog::close`] is called, after appending what was queued.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Record>,
    stop: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    done: std::sync::Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl AuditLog {
    /// Opens (creating its directory) and checks the file can be appended to, then starts
    /// the writer thread. An error names the file.
    pub fn open(config: AuditConfig) -> Result<AuditLog, AuditError> {
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let mut writer = Writer::open(config)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx, stopped))
            .map_err(|e| AuditError::Io {
                path: PathBuf::from("audit-writer thread"),
                source: e,
            })?;
        Ok(AuditLog {
            tx,
            stop: std::sync::Arc::new(stop),
            done: std::sync::Arc::new(std::sync::Mutex::new(Some(thread))),
        })
    }

    /// Queues a record; waits while the queue is full (the writer is behind), so a
    /// record is never dropped.
    pub async fn append(&self, record: Record) {
        if self.tx.send(record).await.is_err() {
            tracing::error!(
                event = "AUDIT_WRITE_FAILED",
                message = "the audit writer has stopped; record not written"
            );
        }
    }

    /// Waits until the records queued so far are appended and fsynced, and stops the
    /// writer (for every clone: records appended later are reported, not written).
    pub async fn close(self) {
        let _ = self.stop.send(true);
        let handle = self.done.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

/// The thread's state: its open file, the lock file, the chain's names.
struct Writer {
    config: AuditConfig,
    files: ChainFiles,
    lock: File,
    file: File,
    last_fsync: Instant,
    unsynced: bool,
    /// The batch's lines, kept between batches so their memory is reused.
    buf: Vec<u8>,
    /// Where our last batch left the chain, while the file is still ours and still that
    /// long (no other process appended since): the next batch need not read its tail.
    known: Option<KnownTail>,
}

/// The chain's end as of our last write to the current file.
struct KnownTail {
    len: u64,
    seq: u64,
    prev: String,
}

impl Writer {
    fn open(config: AuditConfig) -> Result<Writer, AuditError> {
        let files = ChainFiles::of(&config.path);
        let lock_path = files.lock();
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        let file = open_append(&config.path)?;
        Ok(Writer {
            config,
            files,
            lock,
            file,
            last_fsync: Instant::now(),
            unsynced: false,
            buf: Vec::new(),
            known: None,
        })
    }

    fn run(
        &mut self,
        mut rx: mpsc::Receiver<Record>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        // A runtime of its own, only to wait on the queue with a timeout (the pending
        // fsync's deadline); every file operation is plain blocking I/O on this thread.
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        else {
            tracing::error!(
                event = "AUDIT_WRITE_FAILED",
                message = "cannot start the audit writer"
            );
            return;
        };
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let wait = self.unsynced.then(|| {
                self.config
                    .fsync_interval
                    .saturating_sub(self.last_fsync.elapsed())
            });
            let received = rt.block_on(async {
                let next = async {
                    match wait {
                        Some(w) => tokio::time::timeout(w, rx.recv_many(&mut batch, BATCH))
                            .await
                            .unwrap_or(usize::MAX),
                        None => rx.recv_many(&mut batch, BATCH).await,
                    }
                };
                tokio::select! {
                    n = next => Some(n),
                    _ = stop.wait_for(|s| *s) => None,
                }
            });
            let received = match received {
                Some(n) => n,
                None => {
                    // Closing: what is queued now is appended, then the thread ends.
                    rx.close();
                    while let Ok(r) = rx.try_recv() {
                        batch.push(r);
                    }
                    usize::MAX
                }
            };
            if received == 0 {
                break; // every sender is gone and the queue is empty
            }
            let closing = *stop.borrow();
            if !closing && received < BATCH {
                std::thread::sleep(COALESCE);
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
            }
            if !batch.is_empty() {
                if let Err(e) = self.append(&batch) {
                    tracing::error!(event = "AUDIT_WRITE_FAILED", records = batch.len(), error = %e);
                }
                batch.clear();
            }
            if self.unsynced && self.last_fsync.elapsed() >= self.config.fsync_interval {
                self.sync();
            }
            if closing {
                break;
            }
        }
        if self.unsynced {
            self.sync();
        }
    }

    fn sync(&mut self) {
        if let Err(e) = self.file.sync_data() {
            tracing::error!(event = "AUDIT_WRITE_FAILED", error = %e, message = "fsync failed");
        }
        self.unsynced = false;
        self.last_fsync = Instant::now();
    }

    /// Appends `records` as one write, under the chain's lock.
    fn append(&mut self, records: &[Record]) -> Result<(), AuditError> {
        let path = self.config.path.clone();
        self.lock.lock().map_err(io_err(&self.files.lock()))?;
        let result = self.append_locked(records, &path);
        let _ = self.lock.unlock();
        result
    }

    fn append_locked(&mut self, records: &[Record], path: &Path) -> Result<(), AuditError> {
        self.follow_rotation()?;
        let mut len = self.file.metadata().map_err(io_err(path))?.len();
        if len >= self.config.max_bytes {
            self.rotate()?;
            len = 0;
        }
        let (mut seq, mut prev) = match self.known.take() {
            Some(k) if k.len == len => (k.seq, k.prev),
            _ => self.chain_tail(len)?,
        };
        let mut out = std::mem::take(&mut self.buf);
        out.clear();
        for r in records {
            seq += 1;
            let start = out.len();
            prev = r.write_line(seq, &prev, &mut out);
            out.push(b'\n');
            if start > 0 && len + out.len() as u64 > self.config.max_bytes {
                // Rotate inside the batch too, so no file grows far past the limit.
                self.file.write_all(&out[..start]).map_err(io_err(path))?;
                self.unsynced = true;
                out.drain(..start);
                self.rotate()?;
                len = 0;
            }
        }
        self.file.write_all(&out).map_err(io_err(path))?;
        self.unsynced = true;
        self.known = Some(KnownTail {
            len: len + out.len() as u64,
            seq,
            prev,
        });
        self.buf = out;
        Ok(())
    }

    /// Reopens the current file if another process rotated it since we opened ours.
    fn follow_rotation(&mut self) -> Result<(), AuditError> {
        let path = self.config.path.clone();
        let ours = self.file.metadata().map_err(io_err(&path))?;
        let same = match std::fs::metadata(&path) {
            Ok(now) => now.ino() == ours.ino() && now.dev() == ours.dev(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(io_err(&path)(e)),
        };
        if !same {
            if self.unsynced {
                self.sync();
            }
            self.file = open_append(&path)?;
            self.known = None;
        }
        Ok(())
    }

    /// Renames the current file to the next rotated number and starts a new one.
    fn rotate(&mut self) -> Result<(), AuditError> {
        let path = self.config.path.clone();
        if self.unsynced {
            self.sync();
        }
        let next = self
            .files
            .rotated_numbers()
            .map_err(io_err(&path))?
            .last()
            .map_or(1, |n| n + 1);
        let target = self.files.rotated(next);
        std::fs::rename(&path, &target).map_err(io_err(&target))?;
        self.file = open_append(&path)?;
        self.known = None;
        Ok(())
    }

    /// The `(seq, hash)` the next line follows: the current file's last line, else the
    /// newest rotated file's, else the genesis. A torn tail (bytes after the last newline,
    /// left by a crash mid-write) is cut off first, so the chain stays readable.
    fn chain_tail(&mut self, len: u64) -> Result<(u64, String), AuditError> {
        let path = self.config.path.clone();
        if len > 0 {
            let end =
                tail(&mut File::open(&path).map_err(io_err(&path))?).map_err(io_err(&path))?;
            if end.complete_len < len {
                tracing::warn!(
                    event = "AUDIT_TORN_TAIL",
                    file = %path.display(),
                    bytes = len - end.complete_len,
                    message = "bytes after the last complete line were cut off"
                );
                self.file.set_len(end.complete_len).map_err(io_err(&path))?;
            }
            if let Some(line) = end.line {
                return Ok(tail_of(&line));
            }
        }
        if let Some(n) = self.files.rotated_numbers().map_err(io_err(&path))?.last() {
            let rotated = self.files.rotated(*n);
            let end = tail(&mut File::open(&rotated).map_err(io_err(&rotated))?)
                .map_err(io_err(&rotated))?;
            if let Some(line) = end.line {
                return Ok(tail_of(&line));
            }
        }
        Ok((0, GENESIS.to_owned()))
    }
}

/// `(seq, hash)` of a line; a line that is not a record (the verifier will name it)
/// continues the chain from its own bytes, so later lines still chain.
fn tail_of(line: &str) -> (u64, String) {
    let seq = serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v["seq"].as_u64())
        .unwrap_or(0);
    match split_hash(line) {
        Some((_, hash)) => (seq, hash.to_owned()),
        None => (seq, crate::record::hash_hex(line.as_bytes())),
    }
}

fn open_append(path: &Path) -> Result<File, AuditError> {
    File::options()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err(path))
}
