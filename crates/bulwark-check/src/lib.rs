//! Checks, instead of assuming, that a key-value service behaves like a linearizable
//! read/write register per key (SPEC CAP-3: "CP reads are linearizable for single keys —
//! checked, not assumed").
//!
//! * [`History`] and [`Op`]: what clients did and were told, with invoke and completion
//!   times; serializable so a failing run can be saved and re-checked.
//! * [`Recorder`]: a cheap thread-safe log that tests fill while they run clients.
//! * [`check`]: the Wing–Gong / Lowe search (as in Knossos and Porcupine), with memoization
//!   of (linearized set, register state), run independently per key
//!   (P-compositionality). It returns a [`CounterExample`] when no linearization exists,
//!   and a typed error, never a hang, when the history is too large to search.
//!
//! The crate depends on nothing else in the workspace: it models histories, not Bulwark.

#![forbid(unsafe_code)]

mod checker;
mod history;
mod recorder;

pub use checker::{CheckError, CounterExample, KeyOutcome, KeyReport, Limits, Report, check};
pub use history::{History, Op, OpKind, Outcome};
pub use recorder::{Call, Completion, OpId, Recorder};
