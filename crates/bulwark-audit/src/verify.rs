//! Re-computing a chain: `bulwark audit verify FILE`.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};

use crate::chain::ChainFiles;
use crate::record::{FORMAT, GENESIS, hash_hex, split_hash};

/// What a verified chain holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// The files read, oldest first.
    pub files: Vec<PathBuf>,
    /// Lines checked.
    pub lines: u64,
    /// `seq` of the first line (1 unless older rotated files were removed).
    pub first_seq: Option<u64>,
    /// `seq` of the last line.
    pub last_seq: Option<u64>,
    /// The last line's hash: record it elsewhere to detect a later truncation.
    pub last_hash: Option<String>,
}

/// The first line that breaks the chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[error("{}:{line}: {reason}", file.display())]
pub struct VerifyError {
    /// The file.
    pub file: PathBuf,
    /// The line number in that file (1-based; 0 when the file cannot be read).
    pub line: u64,
    /// What is wrong.
    pub reason: String,
}

/// Verifies the chain `path` belongs to, from its oldest file through `path`: every
/// line's own hash, `prev` against the line before (across files), `seq` one more than
/// the line before. The first chain need not begin at `seq` 1 (older files may have been
/// removed by retention), but if it does its `prev` must be the genesis.
pub fn verify(path: &Path) -> Result<Summary, VerifyError> {
    let files = ChainFiles::of(path);
    let cannot = |file: &Path, e: std::io::Error| VerifyError {
        file: file.to_path_buf(),
        line: 0,
        reason: format!("cannot read: {e}"),
    };
    let numbers = files.rotated_numbers().map_err(|e| cannot(path, e))?;
    let mut chain: Vec<PathBuf> = match files.number_of(path) {
        Some(upto) => numbers
            .iter()
            .filter(|n| **n <= upto)
            .map(|n| files.rotated(*n))
            .collect(),
        None => numbers.iter().map(|n| files.rotated(*n)).collect(),
    };
    if files.number_of(path).is_none() {
        chain.push(path.to_path_buf());
    }
    let mut summary = Summary {
        files: chain.clone(),
        lines: 0,
        first_seq: None,
        last_seq: None,
        last_hash: None,
    };
    let mut prev: Option<(u64, String)> = None;
    for file in &chain {
        let f = std::fs::File::open(file).map_err(|e| cannot(file, e))?;
        for (i, line) in std::io::BufReader::new(f).split(b'\n').enumerate() {
            let line = line.map_err(|e| cannot(file, e))?;
            let bad = |reason: String| VerifyError {
                file: file.clone(),
                line: i as u64 + 1,
                reason,
            };
            let text = std::str::from_utf8(&line).map_err(|_| bad("not UTF-8".into()))?;
            let (seq, hash) = check_line(text, prev.as_ref()).map_err(bad)?;
            summary.lines += 1;
            summary.first_seq.get_or_insert(seq);
            summary.last_seq = Some(seq);
            prev = Some((seq, hash));
        }
    }
    summary.last_hash = prev.map(|(_, h)| h);
    Ok(summary)
}

/// Checks one line against the one before it; returns its `(seq, hash)`.
fn check_line(text: &str, prev: Option<&(u64, String)>) -> Result<(u64, String), String> {
    let (body, hash) = split_hash(text)
        .ok_or_else(|| "not an audit record (no trailing \"hash\" field)".to_string())?;
    if hash_hex(body.as_bytes()) != hash {
        return Err("edited: the line does not match its own hash".into());
    }
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    if v["v"].as_u64() != Some(u64::from(FORMAT)) {
        return Err(format!(
            "unknown format version {} (expected {FORMAT})",
            v["v"]
        ));
    }
    let seq = v["seq"]
        .as_u64()
        .ok_or_else(|| "no \"seq\" number".to_string())?;
    let claimed_prev = v["prev"]
        .as_str()
        .ok_or_else(|| "no \"prev\" hash".to_string())?;
    match prev {
        None if seq == 1 && claimed_prev != GENESIS => {
            Err("the chain's first line does not start from the genesis hash".into())
        }
        None => Ok((seq, hash.to_owned())),
        Some((prev_seq, prev_hash)) => {
            if claimed_prev != prev_hash {
                Err(format!(
                    "chain broken: \"prev\" is not the hash of the line before (seq {prev_seq}): a line was removed, inserted or reordered here"
                ))
            } else if seq != prev_seq + 1 {
                Err(format!("seq {seq} follows seq {prev_seq}"))
            } else {
                Ok((seq, hash.to_owned()))
            }
        }
    }
}
