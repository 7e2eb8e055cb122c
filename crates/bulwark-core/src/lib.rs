//! The vocabulary every other Bulwark crate speaks.
//!
//! This crate is the bottom of the layering: it knows nothing about the network, disks,
//! HTTP or RESP. It defines
//!
//! * [`Version`] and [`Hlc`]: hybrid-logical-clock versions that order every write
//!   (SPEC CAP-6), with an injectable [`ClockSource`] so clock skew can be injected
//!   without touching the system clock;
//! * [`Record`], [`PendingRef`] and [`ReplicaState`]: what a replica holds for one key
//!   (the committed value and any prepared-but-undecided writes);
//! * [`Limits`]: the key and value size limits enforced at every entry point;
//! * [`ae`]: the anti-entropy digest that replicas compute and gateways compare
//!   (SPEC HARD-6).

#![forbid(unsafe_code)]

pub mod ae;
mod hlc;
mod record;

pub use hlc::{ClockSource, Hlc, ManualClock, SystemClock, Version, VersionParseError};
pub use record::{LimitError, Limits, PendingRef, Record, ReplicaState};
