//! The tamper-evident audit log (SPEC OPS-4).
//!
//! One JSON object per line, appended by every service that shares the file (the
//! gateways, the shop, the control API of `bulwark up`):
//!
//! ```text
//! {"v":1,"seq":7,"ts":"2026-12-07T10:00:00.123Z","service":"app_cp","key_id":"writer","role":"write","client":"127.0.0.1","method":"PUT","route":"/v1/kv/{key}","resource":"key=a","status":200,"outcome":"success","request_id":"…","prev":"<64 hex>","hash":"<64 hex>"}
//! ```
//!
//! * `hash` is the SHA-256 of the line's bytes before `,"hash":` (so an edited line no
//!   longer matches its own hash), and `prev` is the `hash` of the line before it (so a
//!   removed, inserted or reordered line breaks the chain). The first line of a chain has
//!   `seq` 1 and `prev` of 64 zeros.
//! * Processes append under an exclusive lock on `<file>.lock` and read the chain's last
//!   line under it, so lines from several processes form one chain.
//! * At `max_bytes` the file is renamed to `<stem>.<NNNNNN>.<ext>` (numbered from 1, oldest
//!   first) and a new one begins; its first line's `prev` is the last line of the renamed
//!   one, so the chain continues across files.
//! * Values, API keys and secrets are never fields: a record names who (key id and role,
//!   client address), what (method, route template, resource name) and how it ended.
//!
//! [`AuditLog`] is the writer (a thread that group-commits queued records); [`verify`]
//! re-computes a chain and names the first bad line.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod chain;
pub mod cli;
mod record;
mod verify;
mod writer;

pub use record::{GENESIS, Record};
pub use verify::{Summary, VerifyError, verify};
pub use writer::{AuditConfig, AuditLog};
