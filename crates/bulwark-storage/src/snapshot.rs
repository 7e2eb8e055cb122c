//! Snapshot files (SAVE, BGSAVE, backup and restore).
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! magic "BWSNAP\r\n" | format: u32 = 1
//! record*: kind: u8 (1 committed, 2 pending) | key_len: u32 | key | value_len: u32 | value
//! trailer: kind 0 | record_count: u64 | crc32 of every byte before the crc: u32
//! ```
//!
//! Keys and values are the store's own encodings, so each record also carries the record
//! format byte. The file is written to `<path>.tmp`, fsynced, and renamed over `path`, so a
//! crash during a save never leaves a half-written snapshot under the real name.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use fjall::{Keyspace, Readable, Snapshot};

use crate::StorageError;

const MAGIC: &[u8; 8] = b"BWSNAP\r\n";
const FORMAT: u32 = 1;

/// What a snapshot holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The snapshot file.
    pub path: PathBuf,
    /// Records in it (committed and pending).
    pub records: u64,
    /// Its size in bytes.
    pub bytes: u64,
}

/// Which keyspace a record belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Committed = 1,
    Pending = 2,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StorageError {
    let path = path.to_path_buf();
    move |source| StorageError::Io { op, path, source }
}

fn bad(path: &Path, reason: impl Into<String>) -> StorageError {
    StorageError::BadSnapshot {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A writer that checksums everything it writes.
struct CrcWriter<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
    written: u64,
}

impl<W: Write> CrcWriter<W> {
    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.crc.update(b);
        self.written += b.len() as u64;
        self.inner.write_all(b)
    }
}

pub(crate) fn write(
    path: &Path,
    snap: &Snapshot,
    committed: &Keyspace,
    pending: &Keyspace,
) -> Result<SnapshotInfo, StorageError> {
    let tmp = path.with_extension("tmp");
    let file = File::create(&tmp).map_err(io_err("create", &tmp))?;
    let mut w = CrcWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        crc: crc32fast::Hasher::new(),
        written: 0,
    };
    let records = write_records(&mut w, snap, committed, pending, &tmp)?;
    let crc = w.crc.clone().finalize();
    w.inner
        .write_all(&crc.to_be_bytes())
        .map_err(io_err("write", &tmp))?;
    let bytes = w.written + 4;
    let file = w
        .inner
        .into_inner()
        .map_err(|e| io_err("flush", &tmp)(e.into_error()))?;
    file.sync_all().map_err(io_err("fsync", &tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io_err("rename into place", path))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Make the rename itself durable.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync directory", dir))?;
    }
    Ok(SnapshotInfo {
        path: path.to_path_buf(),
        records,
        bytes,
    })
}

/// Writes header, records and the record count (everything the checksum covers).
fn write_records<W: Write>(
    w: &mut CrcWriter<W>,
    snap: &Snapshot,
    committed: &Keyspace,
    pending: &Keyspace,
    tmp: &Path,
) -> Result<u64, StorageError> {
    let mut records: u64 = 0;
    let put = |w: &mut CrcWriter<W>, b: &[u8]| w.put(b).map_err(io_err("write", tmp));
    put(w, MAGIC)?;
    put(w, &FORMAT.to_be_bytes())?;
    for (kind, ks) in [(Kind::Committed, committed), (Kind::Pending, pending)] {
        for kv in snap.iter(ks) {
            let (k, v) = kv.into_inner()?;
            put(w, &[kind as u8])?;
            put(w, &(k.len() as u32).to_be_bytes())?;
            put(w, &k)?;
            put(w, &(v.len() as u32).to_be_bytes())?;
            put(w, &v)?;
            records += 1;
        }
    }
    put(w, &[0])?;
    put(w, &records.to_be_bytes())?;
    Ok(records)
}

/// A reader that checksums everything it reads.
struct CrcReader<R: Read> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> CrcReader<R> {
    fn take(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_exact(buf)?;
        self.crc.update(buf);
        Ok(())
    }

    fn u32(&mut self) -> std::io::Result<u32> {
        let mut b = [0; 4];
        self.take(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    fn bytes(&mut self, limit: u64) -> std::io::Result<Option<Bytes>> {
        let len = self.u32()?;
        if u64::from(len) > limit {
            return Ok(None);
        }
        let mut v = vec![0; len as usize];
        self.take(&mut v)?;
        Ok(Some(Bytes::from(v)))
    }
}

/// Walks the snapshot, handing each record to `each`, then checks count and checksum.
/// Lengths are checked against the file size, so a corrupt length cannot make us
/// allocate more than the file holds.
fn walk(
    path: &Path,
    mut each: impl FnMut(Kind, Bytes, Bytes) -> Result<(), StorageError>,
) -> Result<SnapshotInfo, StorageError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let size = file.metadata().map_err(io_err("stat", path))?.len();
    let mut r = CrcReader {
        inner: BufReader::with_capacity(1 << 20, file),
        crc: crc32fast::Hasher::new(),
    };
    let truncated = |_e: std::io::Error| bad(path, "truncated");
    let mut magic = [0; 8];
    r.take(&mut magic).map_err(truncated)?;
    if &magic != MAGIC {
        return Err(bad(path, "not a bulwark snapshot (bad magic)"));
    }
    let format = r.u32().map_err(truncated)?;
    if format != FORMAT {
        return Err(bad(
            path,
            format!("snapshot format {format} is not supported (this build reads {FORMAT})"),
        ));
    }
    let mut records = 0u64;
    loop {
        let mut kind = [0; 1];
        r.take(&mut kind).map_err(truncated)?;
        let kind = match kind[0] {
            0 => break,
            1 => Kind::Committed,
            2 => Kind::Pending,
            other => return Err(bad(path, format!("unknown record kind {other}"))),
        };
        let key = r
            .bytes(size)
            .map_err(truncated)?
            .ok_or_else(|| bad(path, "key length beyond end of file"))?;
        let value = r
            .bytes(size)
            .map_err(truncated)?
            .ok_or_else(|| bad(path, "value length beyond end of file"))?;
        each(kind, key, value)?;
        records += 1;
    }
    let mut count = [0; 8];
    r.take(&mut count).map_err(truncated)?;
    if u64::from_be_bytes(count) != records {
        return Err(bad(path, "record count does not match"));
    }
    let expected = r.crc.clone().finalize();
    let mut crc = [0; 4];
    r.inner.read_exact(&mut crc).map_err(truncated)?;
    if u32::from_be_bytes(crc) != expected {
        return Err(bad(path, "checksum mismatch"));
    }
    let mut extra = [0; 1];
    if r.inner.read(&mut extra).map_err(truncated)? != 0 {
        return Err(bad(path, "trailing bytes after the checksum"));
    }
    Ok(SnapshotInfo {
        path: path.to_path_buf(),
        records,
        bytes: size,
    })
}

/// Checks a snapshot's format, structure and checksum without applying it.
pub(crate) fn verify(path: &Path) -> Result<SnapshotInfo, StorageError> {
    walk(path, |_, _, _| Ok(()))
}

/// Hands every record of a (verified) snapshot to `each`.
pub(crate) fn read(
    path: &Path,
    each: impl FnMut(Kind, Bytes, Bytes) -> Result<(), StorageError>,
) -> Result<SnapshotInfo, StorageError> {
    walk(path, each)
}
