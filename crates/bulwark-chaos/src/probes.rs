//! What probes and non-fault actions do. Each probe returns its output (a JSON object) and
//! its primary value (what a plain tolerance compares; see [`crate::tolerance`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::client::ChaosClient;
use crate::experiment::HttpProvider;

/// Requests of a `load` or `latency_percentile` probe in flight at once.
const MAX_IN_FLIGHT: usize = 256;
/// Bound on one request of a `load` probe.
const LOAD_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a `load` probe keeps trying to read back acknowledged writes.
const VERIFY_FOR: Duration = Duration::from_secs(15);

/// A probe's result.
#[derive(Debug, Clone)]
pub struct Output {
    /// What plain tolerances compare.
    pub primary: Value,
    /// Everything it observed.
    pub detail: Value,
}

/// Chaos Toolkit's HTTP provider.
pub async fn http(http: &reqwest::Client, p: &HttpProvider) -> Output {
    let method = reqwest::Method::from_bytes(p.method.to_ascii_uppercase().as_bytes())
        .unwrap_or(reqwest::Method::GET);
    let mut req = http
        .request(method, &p.url)
        .timeout(Duration::from_secs_f64(p.timeout.unwrap_or(3.0)));
    for (k, v) in &p.headers {
        req = req.header(k, v);
    }
    match &p.arguments {
        Some(Value::String(s)) => req = req.body(s.clone()),
        Some(v) => req = req.json(v),
        None => {}
    }
    let began = Instant::now();
    match req.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            let body = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
            Output {
                primary: json!(status),
                detail: json!({"status": status, "body": body, "latency_ms": ms(began.elapsed())}),
            }
        }
        Err(e) => Output {
            primary: Value::Null,
            detail: json!({"error": e.to_string(), "latency_ms": ms(began.elapsed())}),
        },
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Sends `rate` requests per second for `window` and reports the `percentile` latency of
/// the ones answered with a 2xx (nearest rank). Requests are scheduled at fixed times, not
/// after each other, so a slow answer does not hide the latency of the ones behind it.
pub async fn latency_percentile(
    http: &reqwest::Client,
    url: &str,
    method: &str,
    window: Duration,
    rate: u32,
    percentile: f64,
) -> Output {
    let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .unwrap_or(reqwest::Method::GET);
    let total = ((window.as_secs_f64() * f64::from(rate)).ceil() as u64).max(1);
    let every = Duration::from_secs_f64(1.0 / f64::from(rate));
    let gate = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..total {
        tokio::time::sleep_until(start + every * i as u32).await;
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        let req = http
            .request(method.clone(), url)
            .timeout(LOAD_REQUEST_TIMEOUT);
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let began = Instant::now();
            match req.send().await {
                Ok(r) if r.status().is_success() => {
                    let _ = r.bytes().await;
                    Some(began.elapsed())
                }
                _ => None,
            }
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0u64;
    for t in tasks {
        match t.await.ok().flatten() {
            Some(d) => latencies.push(d),
            None => errors += 1,
        }
    }
    latencies.sort();
    let value = if latencies.is_empty() {
        Value::Null
    } else {
        let rank = ((percentile / 100.0) * latencies.len() as f64).ceil() as usize;
        json!(ms(latencies[rank.clamp(1, latencies.len()) - 1]))
    };
    Output {
        primary: value.clone(),
        detail: json!({
            "latency_ms": value,
            "percentile": percentile,
            "requests": total,
            "errors": errors,
        }),
    }
}

/// A service's status from the control API; primary: `healthy`.
pub async fn service_status(client: &ChaosClient, service: &str) -> Output {
    match client
        .call::<Value>(
            reqwest::Method::GET,
            &format!("/api/v1/services/{service}"),
            None,
        )
        .await
    {
        Ok(v) => Output {
            primary: v["healthy"].clone(),
            detail: v,
        },
        Err(e) => Output {
            primary: Value::Null,
            detail: json!({"error": e.to_string()}),
        },
    }
}

/// Whether every replica holds the same record of `key`; primary: `agree`.
pub async fn replicas_agree(client: &ChaosClient, key: &str) -> Output {
    let path = format!(
        "/api/v1/chaos/replicas/{}",
        key.bytes()
            .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            })
            .collect::<String>()
    );
    match client
        .call::<Value>(reqwest::Method::GET, &path, None)
        .await
    {
        Ok(v) => Output {
            primary: v["agree"].clone(),
            detail: v,
        },
        Err(e) => Output {
            primary: Value::Null,
            detail: json!({"error": e.to_string()}),
        },
    }
}

/// Writes at `rate` per second for `duration`, then reads back every acknowledged write.
/// Primary: `lost` (requests sent and never answered) plus `unreadable` (acknowledged but
/// not readable): the number a "no request lost" tolerance wants at 0. Writes go through
/// `fresh`, a client that opens a connection per request: a request sent on an idle
/// keep-alive connection that the server is closing at that moment would fail without
/// having been read, and be miscounted as lost.
pub async fn load(
    http: &reqwest::Client,
    fresh: &reqwest::Client,
    url: &str,
    verify_url: Option<&str>,
    rate: u32,
    duration: Duration,
) -> Output {
    let total = ((duration.as_secs_f64() * f64::from(rate)).ceil() as u64).max(1);
    let every = Duration::from_secs_f64(1.0 / f64::from(rate));
    let gate = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..total {
        tokio::time::sleep_until(start + every * i as u32).await;
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        let req = fresh
            .post(url.replace("{i}", &i.to_string()))
            .timeout(LOAD_REQUEST_TIMEOUT);
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            match req.send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    // A body cut off mid-way is a lost answer like any other.
                    match r.bytes().await {
                        Ok(_) => Answer::Status(status),
                        Err(_) => Answer::Lost,
                    }
                }
                Err(e) if e.is_connect() => Answer::Refused,
                Err(_) => Answer::Lost,
            }
        }));
    }
    let mut acked = Vec::new();
    let (mut refused, mut lost) = (0u64, 0u64);
    let mut http_errors: BTreeMap<String, u64> = BTreeMap::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap_or(Answer::Lost) {
            Answer::Status(200) => acked.push(i),
            Answer::Status(s) => *http_errors.entry(s.to_string()).or_default() += 1,
            Answer::Refused => refused += 1,
            Answer::Lost => lost += 1,
        }
    }
    let mut unreadable = 0u64;
    if let Some(verify) = verify_url {
        let deadline = Instant::now() + VERIFY_FOR;
        for i in &acked {
            let url = verify.replace("{i}", &i.to_string());
            loop {
                let ok = matches!(
                    http.get(&url).timeout(LOAD_REQUEST_TIMEOUT).send().await,
                    Ok(r) if r.status().as_u16() == 200
                );
                if ok {
                    break;
                }
                if Instant::now() >= deadline {
                    unreadable += 1;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Output {
        primary: json!(lost + unreadable),
        detail: json!({
            "sent": total,
            "ok": acked.len(),
            "refused": refused,
            "lost": lost,
            "http_errors": http_errors,
            "unreadable": unreadable,
            "verified": verify_url.is_some(),
        }),
    }
}

enum Answer {
    Status(u16),
    Refused,
    Lost,
}
