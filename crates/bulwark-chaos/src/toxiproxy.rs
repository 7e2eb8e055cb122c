//! A small client of the Toxiproxy HTTP API (Shopify/toxiproxy's, which `bulwark chaos proxy`
//! implements): the contract between the controller and the fault proxy. Only what the
//! controller needs: list and populate proxies, add and delete toxics.

use std::time::Duration;

use bulwark_http::client::ClientIdentity;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Bound on one API call (the proxy answers from memory).
const TIMEOUT: Duration = Duration::from_secs(5);

/// A proxy as the API describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxySpec {
    /// Unique name.
    pub name: String,
    /// `host:port` it listens on.
    pub listen: String,
    /// `host:port` it forwards to.
    pub upstream: String,
    /// Whether it accepts connections.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// A toxic to add.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Toxic {
    /// Unique name on its proxy.
    pub name: String,
    /// Toxiproxy type (`latency`, `timeout`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// `upstream` (client → server) or `downstream`.
    pub stream: String,
    /// Probability that the toxic applies to a connection (0 to 1).
    pub toxicity: f64,
    /// Type-specific attributes.
    pub attributes: Map<String, Value>,
}

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ToxiproxyError {
    /// The API does not answer (the proxy is down or restarting).
    #[error("fault proxy API at {0} does not answer")]
    Unreachable(String),
    /// The API refused the request.
    #[error("fault proxy API: {message} (HTTP {status})")]
    Api {
        /// HTTP status.
        status: u16,
        /// Its error message.
        message: String,
    },
}

/// A client for one API (`http://127.0.0.1:8474`).
#[derive(Debug, Clone)]
pub struct Toxiproxy {
    base: String,
    http: reqwest::Client,
}

impl Toxiproxy {
    /// A client for the API at `base`, with `identity`'s key and CA (both absent for a
    /// fault proxy in protected mode, as Toxiproxy's clients expect).
    pub fn new(base: &str, identity: &ClientIdentity) -> Toxiproxy {
        Toxiproxy {
            base: base.trim_end_matches('/').to_owned(),
            http: identity.http_client(TIMEOUT, Duration::from_secs(1)),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), ToxiproxyError> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|_| ToxiproxyError::Unreachable(self.base.clone()))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status >= 400 {
            return Err(ToxiproxyError::Api {
                status,
                message: value["error"].as_str().map_or(text.clone(), str::to_owned),
            });
        }
        Ok((status, value))
    }

    /// `GET /proxies`: the names of the proxies that exist.
    pub async fn proxy_names(&self) -> Result<Vec<String>, ToxiproxyError> {
        let (_, v) = self.send(reqwest::Method::GET, "/proxies", None).await?;
        Ok(v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default())
    }

    /// `POST /populate`: creates the proxies (all or nothing).
    pub async fn populate(&self, proxies: &[ProxySpec]) -> Result<(), ToxiproxyError> {
        self.send(reqwest::Method::POST, "/populate", Some(json!(proxies)))
            .await
            .map(drop)
    }

    /// `POST /proxies/{proxy}/toxics`. A toxic that already exists (409) is left as it is:
    /// re-adding after a proxy restart is idempotent.
    pub async fn add_toxic(&self, proxy: &str, toxic: &Toxic) -> Result<(), ToxiproxyError> {
        match self
            .send(
                reqwest::Method::POST,
                &format!("/proxies/{proxy}/toxics"),
                Some(json!(toxic)),
            )
            .await
        {
            Ok(_) | Err(ToxiproxyError::Api { status: 409, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `DELETE /proxies/{proxy}/toxics/{toxic}`; a toxic (or proxy) that is gone is a
    /// success: undo steps are idempotent.
    pub async fn delete_toxic(&self, proxy: &str, toxic: &str) -> Result<(), ToxiproxyError> {
        match self
            .send(
                reqwest::Method::DELETE,
                &format!("/proxies/{proxy}/toxics/{toxic}"),
                None,
            )
            .await
        {
            Ok(_) | Err(ToxiproxyError::Api { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
