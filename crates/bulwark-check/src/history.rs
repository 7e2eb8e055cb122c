//! The history model: operations on single-key registers, as clients saw them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What an operation asked for and, for reads, what it observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum OpKind {
    /// Set the register to `value`.
    Write {
        /// The value written. Tests use a unique value per write, so a read names the
        /// write it observed; the checker does not require it.
        value: String,
    },
    /// Read the register.
    Read {
        /// What the read returned (`None`: the key was absent). Meaningful only for an
        /// [`Outcome::Ok`] read.
        value: Option<String>,
    },
}

/// What the client was told about an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It took effect between its invoke and its completion.
    Ok,
    /// It definitely did not take effect (HTTP 503 `CP_ABORTED`, or a refused read). The
    /// checker treats it as if it had never been issued.
    Fail,
    /// Unknown (HTTP 504 `outcome: unknown`, timeout, connection lost): it may have taken
    /// effect at any point after its invoke, arbitrarily late, or never.
    Info,
}

/// One operation by one client on one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Unique within the history; names the operation in counter-examples.
    pub id: u64,
    /// The client (process) that issued it; a client issues one operation at a time.
    pub client: u64,
    /// The register it acts on. Keys are independent registers.
    pub key: String,
    /// Write or read (with the observed value).
    pub kind: OpKind,
    /// What the client was told.
    pub outcome: Outcome,
    /// When the client sent it (ns since the recorder's start).
    pub invoke_ns: u64,
    /// When the client got its answer (`None`: never, e.g. the client gave up or crashed).
    /// Ignored for [`Outcome::Info`], whose effect is not bounded by anything the client
    /// saw.
    pub complete_ns: Option<u64>,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let outcome = match self.outcome {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Info => "info",
        };
        write!(f, "#{} client {} ", self.id, self.client)?;
        match &self.kind {
            OpKind::Write { value } => write!(f, "write({}, {value:?}) {outcome}", self.key)?,
            OpKind::Read { value } if self.outcome == Outcome::Ok => write!(
                f,
                "read({}) -> {} {outcome}",
                self.key,
                show(value.as_deref())
            )?,
            OpKind::Read { .. } => write!(f, "read({}) {outcome}", self.key)?,
        }
        let secs = |ns: u64| ns as f64 / 1e9;
        match self.complete_ns {
            Some(c) if self.outcome != Outcome::Info => {
                write!(f, " [{:.6}s, {:.6}s]", secs(self.invoke_ns), secs(c))
            }
            _ => write!(f, " [{:.6}s, ∞)", secs(self.invoke_ns)),
        }
    }
}

/// A register value for humans: the value quoted, or `absent`.
pub(crate) fn show(value: Option<&str>) -> String {
    value.map_or_else(|| "absent".to_string(), |v| format!("{v:?}"))
}

/// Everything the clients of a test did, in any order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// The operations.
    pub ops: Vec<Op>,
}

impl History {
    /// Counts of operations by outcome: `(ok, fail, info)`.
    pub fn outcome_counts(&self) -> (usize, usize, usize) {
        let count = |o: Outcome| self.ops.iter().filter(|op| op.outcome == o).count();
        (
            count(Outcome::Ok),
            count(Outcome::Fail),
            count(Outcome::Info),
        )
    }
}
