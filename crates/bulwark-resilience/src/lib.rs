//! Resilience policies for calls to replicas, one concern per module (in the order a
//! request meets them in the gateway):
//!
//! * [`breaker`]: a per-replica circuit breaker that fails fast while a replica is known to
//!   be down (SPEC CAP-5), and emits a `CIRCUIT_BREAKER` event on every transition;
//! * [`retry`]: retry with capped exponential backoff and full jitter, for operations the
//!   caller declares idempotent;
//! * [`rate`]: keyed GCRA rate limits with a bounded table (per client address, per API
//!   key; SPEC OPS-4);
//! * [`timeout`]: a deadline on a future, with a typed [`timeout::Elapsed`] error, as a
//!   function and as a tower `Layer`.
//!
//! Every policy reads time from `tokio::time`, so tests run with paused time.

#![forbid(unsafe_code)]

pub mod breaker;
pub mod rate;
pub mod retry;
pub mod timeout;
