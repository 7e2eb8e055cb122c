//! [`ServerTls`]: the acceptor of a TLS listener, reloaded when its files change.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use bulwark_config::ConfigError;
use bulwark_obs::events::{Emit, ReloadFailed, Reloaded};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::files::{TlsFiles, load_certs, load_key, load_roots};

/// How often the files are checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// A listener's TLS: cheap to clone (all clones share the current acceptor).
#[derive(Clone, Debug)]
pub struct ServerTls {
    inner: Arc<Inner>,
}

struct Inner {
    files: TlsFiles,
    /// ALPN protocols offered (`http/1.1` for HTTP listeners, none for RESP).
    alpn: Vec<Vec<u8>>,
    current: RwLock<TlsAcceptor>,
    /// Modification times and lengths of the files when last loaded.
    stamp: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the files (an error names the file) into an acceptor offering `alpn`.
    pub fn load(files: &TlsFiles, alpn: &[&[u8]]) -> Result<ServerTls, ConfigError> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = build(files, &alpn)?;
        Ok(ServerTls {
            inner: Arc::new(Inner {
                stamp: Mutex::new(stamps(files)),
                files: files.clone(),
                alpn,
                current: RwLock::new(acceptor),
            }),
        })
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_certs(&self) -> bool {
        self.inner.files.client_ca.is_some()
    }

    /// The TLS handshake on an accepted connection, with the current files.
    pub async fn accept(&self, stream: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        let acceptor = self
            .inner
            .current
            .read()
            .map_err(|_| std::io::Error::other("TLS configuration lock poisoned"))?
            .clone();
        acceptor.accept(stream).await
    }

    /// Reloads the files if they changed since last loaded (always when `force`). A set
    /// that fails to load leaves the current one in force.
    pub fn reload(&self, force: bool) {
        reload(&self.inner, force);
    }

    /// Watches the files until every clone is dropped.
    pub fn spawn_watcher(&self) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(WATCH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let force = tokio::select! {
                    _ = tick.tick() => false,
                    Some(()) = async {
                        match hup.as_mut() {
                            Some(h) => h.recv().await,
                            None => std::future::pending().await,
                        }
                    } => true,
                };
                let Some(inner) = weak.upgrade() else { return };
                reload(&inner, force);
            }
        });
    }
}

fn reload(inner: &Inner, force: bool) {
    let now = stamps(&inner.files);
    {
        let Ok(mut last) = inner.stamp.lock() else {
            return;
        };
        if !force && now == *last {
            return;
        }
        *last = now;
    }
    let file = inner.files.cert.display().to_string();
    match build(&inner.files, &inner.alpn) {
        Ok(acceptor) => {
            if let Ok(mut current) = inner.current.write() {
                *current = acceptor;
            }
            Reloaded {
                what: "tls_certificate",
                file: &file,
                detail: "new handshakes use the new certificate",
            }
            .emit();
        }
        Err(e) => ReloadFailed {
            what: "tls_certificate",
            file: &file,
            error: &e.to_string(),
        }
        .emit(),
    }
}

fn stamps(files: &TlsFiles) -> Vec<Option<(SystemTime, u64)>> {
    let stamp = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    let mut v = vec![stamp(&files.cert), stamp(&files.key)];
    if let Some(ca) = &files.client_ca {
        v.push(stamp(ca));
    }
    v
}

fn build(files: &TlsFiles, alpn: &[Vec<u8>]) -> Result<TlsAcceptor, ConfigError> {
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let builder = rustls::ServerConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::File {
            path: files.cert.clone(),
            reason: e.to_string(),
        })?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(load_roots(ca)?),
                crate::provider(),
            )
            .build()
            .map_err(|e| ConfigError::File {
                path: ca.clone(),
                reason: format!("not a usable client CA: {e}"),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| ConfigError::File {
            path: files.key.clone(),
            reason: format!("does not match {}: {e}", files.cert.display()),
        })?;
    config.alpn_protocols = alpn.to_vec();
    Ok(TlsAcceptor::from(Arc::new(config)))
}
