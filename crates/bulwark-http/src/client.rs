//! How Bulwark's own clients (`bulwark ctl`, `bulwark chaos`, the chaos controller inside
//! `up`) reach Bulwark services: the API key they send and the CA they trust.
//!
//! The key is `BULWARK_API_KEY`, else `<data-dir>/secrets/admin.key` (what
//! `bulwark up --auth` writes); the CA is `BULWARK_CA_FILE`, else `<data-dir>/tls/ca.pem`
//! (what `bulwark up --tls` writes). Neither is required: without them the client speaks
//! plain HTTP with no credentials, as to a cluster in protected mode.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bulwark_config::ConfigError;

/// Where `bulwark up --auth` keeps the keys it made, under the data directory.
pub const SECRETS_DIR: &str = "secrets";
/// Where `bulwark up --tls` keeps its CA and certificates, under the data directory.
pub const TLS_DIR: &str = "tls";
/// The file `bulwark up` writes with its control API's base URL, under the data
/// directory, so `bulwark ctl` finds it (`https://…` under `--tls`).
pub const CONTROL_URL_FILE: &str = "control.url";

/// The credential and trust a client uses.
#[derive(Clone, Default)]
pub struct ClientIdentity {
    /// Sent as `Authorization: Bearer …`.
    pub api_key: Option<String>,
    /// Trusted CA for `https://` (none: the platform's roots are not used either, so
    /// only plain `http://` works).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The CA file `tls` was read from (to show in messages).
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl ClientIdentity {
    /// `BULWARK_API_KEY` / `<data-dir>/secrets/admin.key` and `BULWARK_CA_FILE` /
    /// `<data-dir>/tls/ca.pem`, when present. A file that exists but cannot be used is an
    /// error naming it.
    pub fn discover(data_dir: &Path) -> Result<ClientIdentity, ConfigError> {
        let api_key = match std::env::var("BULWARK_API_KEY") {
            Ok(k) if !k.trim().is_empty() => Some(k.trim().to_owned()),
            _ => read_optional(&data_dir.join(SECRETS_DIR).join("admin.key"))?,
        };
        let ca_file = match std::env::var_os("BULWARK_CA_FILE") {
            Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
            _ => Some(data_dir.join(TLS_DIR).join("ca.pem")).filter(|p| p.exists()),
        };
        let tls = match &ca_file {
            Some(ca) => Some(bulwark_tls::client_config(ca, None)?),
            None => None,
        };
        Ok(ClientIdentity {
            api_key,
            tls,
            ca_file,
        })
    }

    /// The base URL `bulwark up` recorded in `data_dir`, if it did.
    pub fn recorded_control_url(data_dir: &Path) -> Option<String> {
        std::fs::read_to_string(data_dir.join(CONTROL_URL_FILE))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }

    /// An HTTP client that sends the key (to every request it makes: give it only URLs of
    /// the cluster) and trusts the CA.
    pub fn http_client(&self, timeout: Duration, connect_timeout: Duration) -> reqwest::Client {
        let mut builder = self.anonymous_builder(timeout, connect_timeout);
        if let Some(key) = &self.api_key
            && let Ok(mut v) = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
        {
            v.set_sensitive(true);
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::AUTHORIZATION, v);
            builder = builder.default_headers(headers);
        }
        builder.build().unwrap_or_default()
    }

    /// An HTTP client that trusts the CA but sends no key (for URLs a user wrote, such as
    /// an experiment's probes).
    pub fn anonymous_client(
        &self,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> reqwest::Client {
        self.anonymous_builder(timeout, connect_timeout)
            .build()
            .unwrap_or_default()
    }

    /// A client builder that trusts the CA and sends no key, for callers that tune it.
    pub fn anonymous_builder(
        &self,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> reqwest::ClientBuilder {
        bulwark_tls::install_default_provider();
        let builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(connect_timeout);
        match &self.tls {
            Some(tls) => builder.use_preconfigured_tls(tls.as_ref().clone()),
            None => builder,
        }
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().to_owned()).filter(|k| !k.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConfigError::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}
