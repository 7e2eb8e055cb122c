//! `--scenario replica-down`: the orchestration around a measurement, kept apart from it.
//!
//! 1. `POST {control}/api/v1/services/{replica}/stop` on the supervisor;
//! 2. for each gateway, poll `GET /circuit-breaker` until the replica's breaker is OPEN,
//!    sending a few writes between polls (a breaker only opens on failed calls);
//! 3. measure;
//! 4. `POST …/{replica}/start`, also when 2 or 3 failed or the user pressed Ctrl-C.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Uri};
use tokio::time::Instant;

use crate::args::Target;
use crate::measure::{HttpClient, Outcome, send, send_read};
use crate::workload::Workload;

/// Timeout of each control-plane and breaker-status call.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between breaker polls.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Writes sent per poll to make the gateway notice the stopped replica.
const TRIGGER_WRITES: usize = 3;
/// Most bytes of an answer we keep (breaker status, error bodies).
const BODY_LIMIT: usize = 64 * 1024;

/// Why the replica-down orchestration failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaDownError {
    /// The supervisor did not accept a stop/start.
    #[error("supervisor {action} of {replica} at {url} failed: {detail}")]
    Control {
        /// `stop` or `start`.
        action: &'static str,
        /// Replica name.
        replica: String,
        /// URL called.
        url: String,
        /// Status and body, or the transport failure.
        detail: String,
    },
    /// The breaker did not report OPEN before the deadline.
    #[error("{target}: breaker of {replica} not OPEN after {waited:?} (last seen: {last})")]
    BreakerNotOpen {
        /// Target label.
        target: String,
        /// Replica name.
        replica: String,
        /// How long we polled.
        waited: Duration,
        /// The last state or error seen.
        last: String,
    },
    /// A URL could not be built.
    #[error("invalid URL {0:?}")]
    BadUrl(String),
    /// The user pressed Ctrl-C.
    #[error("interrupted")]
    Interrupted,
}

/// The supervisor-side handle of one stopped replica.
#[derive(Debug)]
pub(crate) struct ReplicaDown {
    client: HttpClient,
    /// Supervisor base URL, no trailing slash.
    control: String,
    replica: String,
    /// Deadline for each gateway's breaker to open.
    breaker_wait: Duration,
}

impl ReplicaDown {
    pub(crate) fn new(
        client: HttpClient,
        control: &str,
        replica: &str,
        breaker_wait: Duration,
    ) -> Self {
        ReplicaDown {
            client,
            control: control.trim_end_matches('/').to_owned(),
            replica: replica.to_owned(),
            breaker_wait,
        }
    }

    /// Stops the replica, runs `body`, and starts the replica again whatever happened
    /// (error or Ctrl-C). `body` receives `self` to wait for breakers.
    pub(crate) async fn around<T, E, F>(&self, body: F) -> anyhow::Result<T>
    where
        F: Future<Output = Result<T, E>>,
        E: Into<anyhow::Error>,
    {
        self.control_call("stop").await?;
        let outcome = tokio::select! {
            r = body => r.map_err(Into::into),
            _ = tokio::signal::ctrl_c() => Err(ReplicaDownError::Interrupted.into()),
        };
        let restarted = self.control_call("start").await;
        match (outcome, restarted) {
            (Ok(v), Ok(())) => Ok(v),
            (Ok(_), Err(e)) => Err(e.into()),
            (Err(e), Ok(())) => Err(e),
            (Err(e), Err(start)) => Err(e.context(format!("and restarting failed too: {start}"))),
        }
    }

    /// `POST {control}/api/v1/services/{replica}/{action}`; any 2xx is success.
    async fn control_call(&self, action: &'static str) -> Result<(), ReplicaDownError> {
        let url = format!(
            "{}/api/v1/services/{}/{}",
            self.control, self.replica, action
        );
        let uri: Uri = url
            .parse()
            .map_err(|_| ReplicaDownError::BadUrl(url.clone()))?;
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri;
        let fail = |detail: String| ReplicaDownError::Control {
            action,
            replica: self.replica.clone(),
            url: url.clone(),
            detail,
        };
        match send_read(&self.client, req, CONTROL_TIMEOUT, BODY_LIMIT).await {
            Ok((status, _)) if (200..300).contains(&status) => Ok(()),
            Ok((status, body)) => Err(fail(format!("HTTP {status}: {}", body.trim()))),
            Err(outcome) => Err(fail(format!("{outcome:?}"))),
        }
    }

    /// Polls `target`'s `/circuit-breaker` until the replica shows `"OPEN"`, sending a few
    /// writes from `workload` between polls.
    pub(crate) async fn wait_open(
        &self,
        target: &Target,
        workload: &Workload,
    ) -> Result<(), ReplicaDownError> {
        let url = format!("{}/circuit-breaker", target.url);
        let uri: Uri = url
            .parse()
            .map_err(|_| ReplicaDownError::BadUrl(url.clone()))?;
        let started = Instant::now();
        let deadline = started + self.breaker_wait;
        let mut key = 0usize;
        loop {
            let mut req = Request::new(Full::new(Bytes::new()));
            *req.uri_mut() = uri.clone();
            let last = match send_read(&self.client, req, CONTROL_TIMEOUT, BODY_LIMIT).await {
                Ok((200, body)) => match breaker_state(&body, &self.replica) {
                    Some(state) if state == "OPEN" => return Ok(()),
                    Some(state) => state,
                    None => format!("no state for {} in {}", self.replica, body.trim()),
                },
                Ok((status, _)) => format!("HTTP {status}"),
                Err(outcome) => format!("{outcome:?}"),
            };
            if Instant::now() >= deadline {
                return Err(ReplicaDownError::BreakerNotOpen {
                    target: target.label.clone(),
                    replica: self.replica.clone(),
                    waited: started.elapsed(),
                    last,
                });
            }
            for _ in 0..TRIGGER_WRITES {
                let req = workload.write_request(key % workload.keys().max(1) as usize);
                key += 1;
                let outcome: Outcome = send(&self.client, req, CONTROL_TIMEOUT).await;
                let _ = outcome; // Failures are the point: they feed the breaker.
            }
            tokio::time::sleep_until((Instant::now() + POLL_INTERVAL).min(deadline)).await;
        }
    }
}

/// The `state` of `replica` in a `/circuit-breaker` answer
/// (`{"db_g2":{"state":"OPEN","failures":3,…},…}`, SPEC CAP-5).
pub(crate) fn breaker_state(body: &str, replica: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v.get(replica)?.get("state")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_breaker_state() {
        let body =
            r#"{"db_g1":{"state":"CLOSED","failures":0},"db_g2":{"state":"OPEN","failures":3}}"#;
        assert_eq!(breaker_state(body, "db_g2").as_deref(), Some("OPEN"));
        assert_eq!(breaker_state(body, "db_g1").as_deref(), Some("CLOSED"));
        assert_eq!(breaker_state(body, "db_g3"), None);
        assert_eq!(breaker_state("not json", "db_g2"), None);
        assert_eq!(breaker_state(r#"{"db_g2":{"state":2}}"#, "db_g2"), None);
    }
}
