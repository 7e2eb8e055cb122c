//! HTTP client of the control API (used by `bulwark ctl` and by tests).

use std::time::Duration;

use bulwark_http::client::ClientIdentity;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::supervisor::ServiceStatus;

/// Timeout of a read-only request.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of an action: a stop may wait 10 s for SIGTERM to work, then SIGKILL; a restart
/// adds a start.
const ACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response body accepted (the status list of a few services is far smaller).
const MAX_BODY: usize = 1 << 20;

/// Why a control API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers at the address: `up` is not running there.
    #[error("bulwark up is not running (no control API at {0})")]
    Unreachable(String),
    /// The URL given with `--control` is not an `http://host:port` URL.
    #[error("bad control API URL '{0}'")]
    BadUrl(String),
    /// No answer in time.
    #[error("the control API at {url} did not answer within {timeout:?}")]
    Timeout {
        /// Base URL.
        url: String,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// The service name is not in the cluster.
    #[error("{message}")]
    UnknownService {
        /// The API's message, which names the known services.
        message: String,
        /// Every service name.
        known: Vec<String>,
    },
    /// The API refused the request.
    #[error("{message} (HTTP {status})")]
    Api {
        /// HTTP status.
        status: u16,
        /// The API's error message.
        message: String,
    },
    /// The answer was not what the API sends.
    #[error("unexpected answer from the control API: {0}")]
    BadResponse(String),
}

/// A client for one `bulwark up` control API.
#[derive(Debug, Clone)]
pub struct ControlClient {
    base: String,
    client: reqwest::Client,
}

impl ControlClient {
    /// A client for the API at `base` (`http://127.0.0.1:7070`), sending `identity`'s
    /// key and trusting its CA.
    pub fn new(base: &str, identity: &ClientIdentity) -> ControlClient {
        ControlClient {
            base: base.trim_end_matches('/').to_owned(),
            client: identity.http_client(ACTION_TIMEOUT, Duration::from_secs(2)),
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /api/v1/services`.
    pub async fn services(&self) -> Result<Vec<ServiceStatus>, ClientError> {
        self.call(Method::GET, "/api/v1/services", QUERY_TIMEOUT)
            .await
    }

    /// `GET /api/v1/services/{name}`.
    pub async fn service(&self, name: &str) -> Result<ServiceStatus, ClientError> {
        let name = encode(name);
        self.call(
            Method::GET,
            &format!("/api/v1/services/{name}"),
            QUERY_TIMEOUT,
        )
        .await
    }

    /// `GET /api/v1/sharding/layout`.
    pub async fn layout(&self) -> Result<bulwark_placement::Layout, ClientError> {
        self.call(Method::GET, "/api/v1/sharding/layout", QUERY_TIMEOUT)
            .await
    }

    /// `POST /api/v1/services/{name}/{action}` (`start`, `stop`, `restart`, `kill`), with
    /// `?signal=` for `kill`.
    pub async fn act(
        &self,
        name: &str,
        action: &str,
        signal: Option<&str>,
    ) -> Result<ServiceStatus, ClientError> {
        let mut path = format!("/api/v1/services/{}/{}", encode(name), encode(action));
        if let Some(sig) = signal {
            path.push_str("?signal=");
            path.push_str(&encode(sig));
        }
        self.call(Method::POST, &path, ACTION_TIMEOUT).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        if !(url.starts_with("http://") || url.starts_with("https://"))
            || reqwest::Url::parse(&url).is_err()
        {
            return Err(ClientError::BadUrl(self.base.clone()));
        }
        let exchange = async {
            let response = self
                .client
                .request(method, &url)
                .send()
                .await
                .map_err(|e| {
                    if e.is_connect() {
                        ClientError::Unreachable(self.base.clone())
                    } else {
                        ClientError::BadResponse(e.to_string())
                    }
                })?;
            let status = response.status();
            let body = response
                .bytes()
                .await
                .map_err(|e| ClientError::BadResponse(e.to_string()))?;
            if body.len() > MAX_BODY {
                return Err(ClientError::BadResponse(format!(
                    "an answer of {} bytes (at most {MAX_BODY})",
                    body.len()
                )));
            }
            Ok::<_, ClientError>((status, body))
        };
        let (status, body) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                url: self.base.clone(),
                timeout,
            })??;
        if status.is_success() {
            return serde_json::from_slice(&body)
                .map_err(|e| ClientError::BadResponse(e.to_string()));
        }
        let body_json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let err = &body_json["error"];
        let message = err["message"].as_str().map_or_else(
            || String::from_utf8_lossy(&body).into_owned(),
            str::to_owned,
        );
        if status == StatusCode::NOT_FOUND
            && let Some(known) = err.get("known").and_then(|k| k.as_array())
        {
            return Err(ClientError::UnknownService {
                message,
                known: known
                    .iter()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect(),
            });
        }
        Err(ClientError::Api {
            status: status.as_u16(),
            message,
        })
    }
}

/// Percent-encodes everything but `[A-Za-z0-9_-]`: names come from the command line and
/// must not change the request's path or query.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
