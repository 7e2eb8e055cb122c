//! What every Bulwark HTTP service shares (the CAP gateways, the commerce service, the
//! control API of `bulwark up`, the fault proxy's API): one stack of layers, one server
//! loop and one lifecycle, set up from the same settings (docs/design/security.md).
//!
//! In request order:
//!
//! * [`serve`]: the accept loop (connection caps, TLS, the connection guard, hyper's
//!   HTTP/1.1) and [`serve_until_shutdown`], the lifecycle (drain, `SHUTDOWN_EVENT`);
//! * [`guard`]: request heads checked before hyper sees them, head and body timeouts;
//! * [`observe`]: the request id and `REQUEST_COMPLETED` (with the route template);
//! * [`envelope`]: every error answer as `{"error":{"code","message","request_id"}}`;
//! * [`security`]: authentication ([`auth`]), roles ([`route`]), rate limits, the audit log;
//! * [`admission`]: `MAX_IN_FLIGHT`, after the body is in;
//! * [`HttpConfig`]: the settings, resolved and checked, and [`HttpConfig::stack`].
//!
//! Each service keeps its own mapping from its errors to [`ApiError`]s. Beside the stack:
//! [`openapi`] (the stack's answers, added to each service's OpenAPI document) and
//! [`input`] (JSON integers as JSON Schema counts them).

#![forbid(unsafe_code)]

pub mod admission;
pub mod auth;
pub mod cli;
pub mod client;
mod config;
mod envelope;
mod error;
pub mod guard;
pub mod input;
mod observe;
pub mod openapi;
pub mod route;
pub mod security;
mod serve;

pub use config::{
    DEFAULT_AUDIT_LOG, DEFAULT_MAX_CONNECTIONS_PER_IP, DEFAULT_RATE_LIMIT, HttpConfig, Listen,
    RateLimits,
};
pub use error::ApiError;
pub use observe::{Observed, RequestId, observe};
pub use serve::{ServeOptions, describe, serve, serve_until_shutdown, shutdown_completed};
