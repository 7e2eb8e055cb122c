//! TLS for Bulwark (SPEC OPS-4), on rustls with the `ring` provider.
//!
//! * [`ServerTls`]: what an HTTP or RESP listener accepts with. Built from a certificate
//!   chain and key (PEM) and, for mutual TLS, a CA whose certificates clients must
//!   present. The files are watched (every two seconds, and at once on SIGHUP) and a
//!   changed set is loaded for the next handshakes; a set that fails to load leaves the
//!   current one in force and logs `RELOAD_FAILED`.
//! * [`client_config`]: what a client (a gateway to its replicas, `bulwark ctl`, the
//!   supervisor's probes) connects with: the CA it trusts and, optionally, its own
//!   certificate.
//! * [`MaybeTls`]: a server-side stream that is TLS or plain.
//! * [`ca`]: the local CA and per-service certificates `bulwark up --tls` creates.
//!
//! Errors at start-up name the file and what is wrong with it, as configuration errors
//! do, so a bad certificate stops a service before it binds.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod ca;
mod files;
mod server;
mod stream;

pub use files::{TlsFiles, client_config, load_certs, load_key, server_name};
pub use server::ServerTls;
pub use stream::MaybeTls;

/// The crypto provider every configuration uses.
pub(crate) fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    install_default_provider();
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes `ring` the process's default rustls provider (for libraries that build their
/// own configurations, as reqwest does even for plain HTTP). Idempotent.
pub fn install_default_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
