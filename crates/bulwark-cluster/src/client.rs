//! HTTP client of the control API (used by `bulwark ctl` and by tests).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
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
    client: Client<HttpConnector, Full<Bytes>>,
}

impl ControlClient {
    /// A client for the API at `base` (`http://127.0.0.1:7070`).
    pub fn new(base: &str) -> ControlClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        ControlClient {
            base: base.trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build(connector),
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
        let uri: Uri = format!("{}{path}", self.base)
            .parse()
            .map_err(|_| ClientError::BadUrl(self.base.clone()))?;
        if uri.scheme_str() != Some("http") {
            return Err(ClientError::BadUrl(self.base.clone()));
        }
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::BadResponse(e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|_| ClientError::Unreachable(self.base.clone()))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| ClientError::BadResponse(e.to_string()))?
                .to_bytes();
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
