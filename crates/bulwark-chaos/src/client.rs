//! HTTP client of the chaos routes of the control API (used by `bulwark chaos …` and by
//! runners outside `up`).

use std::time::Duration;

use bulwark_http::client::ClientIdentity;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::controller::ActiveFault;
use crate::fault::FaultRequest;

/// Bound on one call. Removing a fault may retry an unresponsive target for up to 30 s.
const TIMEOUT: Duration = Duration::from_secs(40);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers: `bulwark up` is not running there.
    #[error("bulwark up is not running (no control API at {0})")]
    Unreachable(String),
    /// The API refused the request.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        /// HTTP status.
        status: u16,
        /// Error code (`CHAOS_DISABLED`).
        code: String,
        /// Message.
        message: String,
    },
    /// The answer was not what the API sends.
    #[error("unexpected answer from the control API: {0}")]
    BadResponse(String),
}

/// `GET /api/v1/chaos/status`.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct Status {
    /// The safety switch.
    pub enabled: bool,
    /// Faults in effect.
    pub active: Vec<ActiveFault>,
}

/// A client of one control API.
#[derive(Debug, Clone)]
pub struct ChaosClient {
    base: String,
    http: reqwest::Client,
    /// Trust for the URLs an experiment's probes call (no key is sent to those).
    identity: ClientIdentity,
}

impl ChaosClient {
    /// A client for the control API at `base` (`http://127.0.0.1:7070`), sending
    /// `identity`'s key and trusting its CA.
    pub fn new(base: &str, identity: &ClientIdentity) -> ChaosClient {
        ChaosClient {
            base: base.trim_end_matches('/').to_owned(),
            http: identity.http_client(TIMEOUT, Duration::from_secs(2)),
            identity: identity.clone(),
        }
    }

    /// The trust (CA, never the key) for other URLs of the cluster.
    pub fn identity(&self) -> &ClientIdentity {
        &self.identity
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /api/v1/chaos/status`.
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.call(reqwest::Method::GET, "/api/v1/chaos/status", None)
            .await
    }

    /// `POST /api/v1/chaos/enable`.
    pub async fn enable(&self) -> Result<Value, ClientError> {
        self.call(reqwest::Method::POST, "/api/v1/chaos/enable", None)
            .await
    }

    /// `POST /api/v1/chaos/disable`.
    pub async fn disable(&self) -> Result<Value, ClientError> {
        self.call(reqwest::Method::POST, "/api/v1/chaos/disable", None)
            .await
    }

    /// `POST /api/v1/chaos/faults`.
    pub async fn inject(&self, req: &FaultRequest) -> Result<ActiveFault, ClientError> {
        let body =
            serde_json::to_value(req).map_err(|e| ClientError::BadResponse(e.to_string()))?;
        self.call(reqwest::Method::POST, "/api/v1/chaos/faults", Some(body))
            .await
    }

    /// `DELETE /api/v1/chaos/faults/{id}`.
    pub async fn remove(&self, id: &str) -> Result<ActiveFault, ClientError> {
        self.call(
            reqwest::Method::DELETE,
            &format!("/api/v1/chaos/faults/{}", encode(id)),
            None,
        )
        .await
    }

    /// `DELETE /api/v1/chaos/faults?run=…`: removes a run's faults; returns how many.
    pub async fn remove_run(&self, run: &str) -> Result<u64, ClientError> {
        let v: Value = self
            .call(
                reqwest::Method::DELETE,
                &format!("/api/v1/chaos/faults?run={}", encode(run)),
                None,
            )
            .await?;
        Ok(v["removed"].as_u64().unwrap_or(0))
    }

    /// Any call: JSON in, JSON out, structured errors turned into [`ClientError::Api`].
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, ClientError> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() {
                ClientError::Unreachable(self.base.clone())
            } else {
                ClientError::BadResponse(e.to_string())
            }
        })?;
        let status = resp.status();
        let value: Value = resp
            .json()
            .await
            .map_err(|e| ClientError::BadResponse(e.to_string()))?;
        if !status.is_success() {
            let err = &value["error"];
            return Err(ClientError::Api {
                status: status.as_u16(),
                code: err["code"].as_str().unwrap_or("UNKNOWN").to_owned(),
                message: err["message"]
                    .as_str()
                    .map_or_else(|| value.to_string(), str::to_owned),
            });
        }
        serde_json::from_value(value).map_err(|e| ClientError::BadResponse(e.to_string()))
    }
}

/// Percent-encodes a path segment or query value (ids and run names are plain, but a
/// user may type anything).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
