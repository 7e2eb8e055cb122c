//! Observability for every Bulwark service.
//!
//! * [`logging`]: one JSON object per line on stdout (`timestamp`, `level`, `event`,
//!   `service`, fields), level from `LOG_LEVEL`.
//! * [`metrics`]: the process-wide Prometheus registry with every metric Bulwark exports
//!   (SPEC CAP-11), rendered in the text format by [`metrics::render`].
//! * [`events`]: one struct per internal event (SPEC CAP-8). Emitting an event writes its
//!   log line *and* updates its metrics, so each event name exists in exactly one place.

#![forbid(unsafe_code)]

pub mod events;
pub mod logging;
pub mod metrics;
