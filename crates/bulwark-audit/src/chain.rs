//! The files of one chain: `audit.jsonl` (current) and its rotated predecessors
//! `audit.000001.jsonl`, `audit.000002.jsonl`, … (oldest first), and reading a file's last
//! line.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The parts of a chain's file names.
#[derive(Debug, Clone)]
pub(crate) struct ChainFiles {
    /// The directory.
    dir: PathBuf,
    /// `audit` of `audit.jsonl`.
    stem: String,
    /// `jsonl` of `audit.jsonl` (empty when the name has no extension).
    ext: String,
}

impl ChainFiles {
    /// The chain whose current file is `current`, or, when `path` is a rotated file, the
    /// chain it belongs to.
    pub(crate) fn of(path: &Path) -> ChainFiles {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (mut stem, ext) = match name.rsplit_once('.') {
            Some((s, e)) => (s.to_owned(), e.to_owned()),
            None => (name.clone(), String::new()),
        };
        if let Some((base, n)) = stem.rsplit_once('.')
            && n.len() == 6
            && n.bytes().all(|b| b.is_ascii_digit())
        {
            stem = base.to_owned();
        }
        ChainFiles { dir, stem, ext }
    }

    /// The current file.
    pub(crate) fn current(&self) -> PathBuf {
        self.dir.join(self.name(None))
    }

    /// Rotated file number `n`.
    pub(crate) fn rotated(&self, n: u32) -> PathBuf {
        self.dir.join(self.name(Some(n)))
    }

    fn name(&self, n: Option<u32>) -> String {
        let mut s = self.stem.clone();
        if let Some(n) = n {
            s.push_str(&format!(".{n:06}"));
        }
        if !self.ext.is_empty() {
            s.push('.');
            s.push_str(&self.ext);
        }
        s
    }

    /// The number of rotated file `path`, if it is one of this chain's.
    pub(crate) fn number_of(&self, path: &Path) -> Option<u32> {
        let name = path.file_name()?.to_str()?;
        let rest = name.strip_prefix(&self.stem)?.strip_prefix('.')?;
        let digits = if self.ext.is_empty() {
            rest
        } else {
            rest.strip_suffix(&self.ext)?.strip_suffix('.')?
        };
        (digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse().ok())
            .flatten()
    }

    /// The rotated files' numbers, oldest first.
    pub(crate) fn rotated_numbers(&self) -> std::io::Result<Vec<u32>> {
        let mut numbers = Vec::new();
        match std::fs::read_dir(&self.dir) {
            Ok(entries) => {
                for entry in entries {
                    if let Some(n) = self.number_of(&entry?.path()) {
                        numbers.push(n);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        numbers.sort_unstable();
        Ok(numbers)
    }

    /// The lock file every writer of the chain takes.
    pub(crate) fn lock(&self) -> PathBuf {
        let mut p = self.current().into_os_string();
        p.push(".lock");
        PathBuf::from(p)
    }
}

/// The end of a file's complete lines.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Tail {
    /// The last complete line (without its newline), if there is one.
    pub(crate) line: Option<String>,
    /// The offset just after the last newline: bytes beyond it (a write cut short by a
    /// crash) are not a line.
    pub(crate) complete_len: u64,
}

/// The last complete line of `file`, reading backwards from its end.
pub(crate) fn tail(file: &mut File) -> std::io::Result<Tail> {
    let len = file.seek(SeekFrom::End(0))?;
    let mut window: u64 = 4096;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::with_capacity((len - start) as usize);
        file.by_ref().take(len - start).read_to_end(&mut buf)?;
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
            if start == 0 {
                return Ok(Tail {
                    line: None,
                    complete_len: 0,
                });
            }
            window *= 4;
            continue;
        };
        let begin = match buf[..end].iter().rposition(|&b| b == b'\n') {
            Some(b) => b + 1,
            None if start == 0 => 0,
            None => {
                window *= 4;
                continue;
            }
        };
        return Ok(Tail {
            line: Some(String::from_utf8_lossy(&buf[begin..end]).into_owned()),
            complete_len: start + end as u64 + 1,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn names_of_a_chain() {
        let c = ChainFiles::of(Path::new("/l/audit.jsonl"));
        assert_eq!(c.current(), Path::new("/l/audit.jsonl"));
        assert_eq!(c.rotated(3), Path::new("/l/audit.000003.jsonl"));
        assert_eq!(c.number_of(Path::new("/l/audit.000003.jsonl")), Some(3));
        assert_eq!(c.number_of(Path::new("/l/audit.jsonl")), None);
        assert_eq!(c.number_of(Path::new("/l/other.000003.jsonl")), None);
        let r = ChainFiles::of(Path::new("/l/audit.000002.jsonl"));
        assert_eq!(r.current(), Path::new("/l/audit.jsonl"));
        assert_eq!(c.lock(), Path::new("/l/audit.jsonl.lock"));
        let bare = ChainFiles::of(Path::new("audit"));
        assert_eq!(bare.rotated(1), Path::new("./audit.000001"));
    }

    #[test]
    fn the_last_line_ignores_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = File::options()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .unwrap();
        let t = tail(&mut f).unwrap();
        assert_eq!((t.line, t.complete_len), (None, 0));
        f.write_all(b"one\n").unwrap();
        let t = tail(&mut f).unwrap();
        assert_eq!((t.line.as_deref(), t.complete_len), (Some("one"), 4));
        let long = "x".repeat(10_000);
        writeln!(f, "{long}").unwrap();
        f.write_all(b"torn").unwrap();
        let t = tail(&mut f).unwrap();
        assert_eq!((t.line, t.complete_len), (Some(long), 10_005));
    }
}
