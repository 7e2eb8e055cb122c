//! The rollback journal: an append-only file of JSON lines, fsynced at every record.
//!
//! ```text
//! {"format":1}
//! {"op":"apply","id":"f-…","fault":{…},"undo":[…],"run":null,"applied_at_ms":…,"expires_at_ms":…}
//! {"op":"remove","id":"f-…","reason":"ttl","at_ms":…}
//! ```
//!
//! An `apply` record is durable before its fault takes effect, and a `remove` record is
//! written only after the fault's undo steps succeeded, so at any moment every fault that
//! may be in effect is an `apply` without a `remove` (invariants 1 and 2 in
//! `docs/ARCHITECTURE.md`). Opening the journal returns those entries and rewrites the
//! file with only them (compaction).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fault::{Fault, Undo};

/// Version of the journal's format, the first line of the file.
pub const FORMAT: u32 = 1;
/// The journal's file name inside the chaos directory.
pub const FILE_NAME: &str = "journal.jsonl";

/// A fault as journaled when it was applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Unique id (`f-` and 16 hex digits).
    pub id: String,
    /// The fault.
    pub fault: Fault,
    /// How to remove it, planned before it was applied.
    pub undo: Vec<Undo>,
    /// The experiment run that asked for it.
    pub run: Option<String>,
    /// When it was applied (Unix ms).
    pub applied_at_ms: u64,
    /// When it expires (Unix ms).
    pub expires_at_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Record {
    Apply(Entry),
    Remove {
        id: String,
        reason: String,
        at_ms: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: u32,
}

/// Why the journal could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading or writing the file failed.
    #[error("chaos journal {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A record other than a torn last line is not valid: refuse to guess which faults are
    /// in effect.
    #[error(
        "chaos journal {path}, line {line}: {message}; inspect it, undo the faults it lists by hand, and remove it"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// The open journal.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, returns the faults it lists as still in
    /// effect (in the order they were applied), and compacts the file to just those.
    pub fn open(dir: &Path) -> Result<(Journal, Vec<Entry>), JournalError> {
        let path = dir.join(FILE_NAME);
        let io = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let active = match File::open(&path) {
            Ok(f) => read_active(&path, f)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(e)),
        };
        // Compact: write the survivors to a temporary file, fsync, rename over the journal,
        // fsync the directory. A crash at any point leaves either file complete.
        let tmp = dir.join(format!("{FILE_NAME}.tmp"));
        {
            let mut f = File::create(&tmp).map_err(io)?;
            let mut text = line(&Header { format: FORMAT });
            for e in &active {
                text.push_str(&line(&Record::Apply(e.clone())));
            }
            f.write_all(text.as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &path).map_err(io)?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        let file = OpenOptions::new().append(true).open(&path).map_err(io)?;
        Ok((Journal { path, file }, active))
    }

    /// Where the journal lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Durably records that `entry` is about to be applied.
    pub fn applied(&mut self, entry: &Entry) -> Result<(), JournalError> {
        self.append(&Record::Apply(entry.clone()))
    }

    /// Durably records that fault `id` was removed.
    pub fn removed(&mut self, id: &str, reason: &str, at_ms: u64) -> Result<(), JournalError> {
        self.append(&Record::Remove {
            id: id.to_owned(),
            reason: reason.to_owned(),
            at_ms,
        })
    }

    fn append(&mut self, record: &Record) -> Result<(), JournalError> {
        let text = line(record);
        self.file
            .write_all(text.as_bytes())
            .and_then(|()| self.file.sync_data())
            .map_err(|source| JournalError::Io {
                path: self.path.clone(),
                source,
            })
    }
}

fn line<T: Serialize>(value: &T) -> String {
    // Serializing these plain structs cannot fail.
    let mut s = serde_json::to_string(value).unwrap_or_default();
    s.push('\n');
    s
}

fn read_active(path: &Path, f: File) -> Result<Vec<Entry>, JournalError> {
    let lines: Vec<String> = BufReader::new(f)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(|source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let corrupt = |line: usize, message: String| JournalError::Corrupt {
        path: path.to_path_buf(),
        line,
        message,
    };
    let mut active: BTreeMap<String, (usize, Entry)> = BTreeMap::new();
    for (i, text) in lines.iter().enumerate() {
        if text.trim().is_empty() {
            continue;
        }
        if i == 0 {
            let h: Header = serde_json::from_str(text)
                .map_err(|e| corrupt(1, format!("not a journal header: {e}")))?;
            if h.format != FORMAT {
                return Err(corrupt(
                    1,
                    format!(
                        "format {} is not supported (this build reads {FORMAT})",
                        h.format
                    ),
                ));
            }
            continue;
        }
        match serde_json::from_str::<Record>(text) {
            Ok(Record::Apply(e)) => {
                active.insert(e.id.clone(), (i, e));
            }
            Ok(Record::Remove { id, .. }) => {
                active.remove(&id);
            }
            // A crash while appending leaves at most the last line torn: that record was
            // never acknowledged, and an `apply` is written before its fault takes effect,
            // so a torn `apply` is a fault that was never applied.
            Err(_) if i + 1 == lines.len() => {}
            Err(e) => return Err(corrupt(i + 1, e.to_string())),
        }
    }
    let mut entries: Vec<(usize, Entry)> = active.into_values().collect();
    entries.sort_by_key(|(i, _)| *i);
    Ok(entries.into_iter().map(|(_, e)| e).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> Entry {
        Entry {
            id: id.to_owned(),
            fault: Fault::Pause {
                service: "db_g2".into(),
            },
            undo: vec![Undo::Start {
                service: "db_g2".into(),
            }],
            run: Some("r-1".into()),
            applied_at_ms: 1,
            expires_at_ms: 2,
        }
    }

    #[test]
    fn reopening_lists_applied_but_not_removed_faults_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, active) = Journal::open(dir.path()).unwrap();
        assert!(active.is_empty());
        for id in ["f-b", "f-a", "f-c"] {
            j.applied(&entry(id)).unwrap();
        }
        j.removed("f-a", "ttl", 3).unwrap();
        drop(j);
        let (mut j, active) = Journal::open(dir.path()).unwrap();
        let ids: Vec<_> = active.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["f-b", "f-c"]);
        assert_eq!(active[0], entry("f-b"));
        j.removed("f-b", "rollback", 4).unwrap();
        j.removed("f-c", "rollback", 4).unwrap();
        drop(j);
        let (_, active) = Journal::open(dir.path()).unwrap();
        assert!(active.is_empty());
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert_eq!(text, "{\"format\":1}\n", "compacted to the header");
    }

    #[test]
    fn a_torn_last_line_is_ignored_but_a_corrupt_middle_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        j.applied(&entry("f-1")).unwrap();
        drop(j);
        let path = dir.path().join(FILE_NAME);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"op\":\"apply\",\"id\":\"f-2\",\"fau");
        std::fs::write(&path, &text).unwrap();
        let (_, active) = Journal::open(dir.path()).unwrap();
        assert_eq!(active.len(), 1, "the torn apply never took effect");

        std::fs::write(&path, "{\"format\":1}\ngarbage\n{\"op\":\"remove\",\"id\":\"x\",\"reason\":\"ttl\",\"at_ms\":1}\n").unwrap();
        let e = Journal::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        std::fs::write(&path, "{\"format\":9}\n").unwrap();
        let e = Journal::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("format 9"), "{e}");
    }
}
