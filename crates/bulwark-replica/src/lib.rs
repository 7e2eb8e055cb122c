//! The client the gateway uses to talk to ONE replica, over either dialect of the
//! replica protocol (`docs/ARCHITECTURE.md`, "The replica protocol"):
//!
//! * [`Dialect::Bulwark`]: a `bulwark node`, native `BW.GET`/`BW.PUT`/`BW.PREPARE`/
//!   `BW.COMMIT`/`BW.ABORT` commands;
//! * [`Dialect::Redis`]: a real Redis >= 7 running the `bulwark` function library
//!   (`lua/bulwark.lua`, loaded by this client on every new connection), called with
//!   `FCALL bw_<op> 1 <key> …`. Redis cannot be told to fsync one call, so a Redis
//!   replica used for CP/quorum writes must run `appendonly yes`, `appendfsync always`
//!   for PREPARE/COMMIT/ABORT to be durable when acknowledged.
//!
//! Both dialects return the same reply shapes, parsed once in `reply`. One
//! [`ReplicaClient`] holds one multiplexed (pipelined) connection, opened lazily and
//! reopened after failures with at most one connect in flight; every call, connect
//! included, is bounded by the client's timeout. A replica that hangs or answers garbage
//! yields a [`ReplicaError`], never a panic.

#![forbid(unsafe_code)]

mod client;
mod error;
mod reply;
mod spec;

pub use client::{LUA_FORMAT, LUA_LIBRARY, PrepareReply, PutReply, ReplicaClient, redis_client};
pub use error::ReplicaError;
pub use spec::{Dialect, ReplicaSpec, ReplicaTls, SpecError};
