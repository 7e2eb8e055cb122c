//! Toxics as values: their types, attributes, validation and JSON shape.
//!
//! The names, attributes and units are Toxiproxy's (`latency` in ms, `bandwidth` in KB/s of
//! 1000 bytes, `slicer.delay` in µs, …), so a Toxiproxy client's requests mean the same
//! thing here. Two types are Bulwark extensions: `down` (a partition of the whole proxy)
//! and `http_fault` (HTTP-aware faults, see [`crate::http`]).
//!
//! Attributes are validated strictly: an unknown attribute name, a negative or fractional
//! number where a whole number is expected, or a value outside its range is refused with a
//! message naming the attribute. (Toxiproxy silently ignores unknown attributes; refusing
//! them catches typos such as `latancy` before a test silently runs without its fault.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value, json};

/// Which way the bytes a toxic affects travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Client → server (requests). Listed first, as Toxiproxy lists toxics.
    Upstream,
    /// Server → client (responses). Toxiproxy's default stream.
    Downstream,
}

impl Direction {
    /// The API's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Upstream => "upstream",
            Direction::Downstream => "downstream",
        }
    }

    /// Parses the API's name.
    pub fn parse(s: &str) -> Option<Direction> {
        match s {
            "upstream" => Some(Direction::Upstream),
            "downstream" => Some(Direction::Downstream),
            _ => None,
        }
    }
}

/// What a toxic does, with its attributes (Toxiproxy's units).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToxicKind {
    /// Delays every chunk by `latency` ± `jitter` ms (uniform), counted from when the chunk
    /// was read; chunks keep their order.
    Latency {
        /// Milliseconds.
        latency: u64,
        /// Milliseconds; the delay is uniform in `[latency - jitter, latency + jitter)`.
        jitter: u64,
    },
    /// Passes at most `rate` KB/s (1 KB = 1000 bytes, as Toxiproxy).
    Bandwidth {
        /// KB/s, at least 1.
        rate: u64,
    },
    /// Delays the end of the stream (the FIN) by `delay` ms; data is not delayed.
    SlowClose {
        /// Milliseconds.
        delay: u64,
    },
    /// Drops every byte, and closes the connection `timeout` ms after the toxic took
    /// effect on it (0: never; the bytes are dropped until the toxic is removed, and
    /// removing it closes the connection, whose stream has lost bytes).
    Timeout {
        /// Milliseconds.
        timeout: u64,
    },
    /// Resets the connection (TCP RST) `timeout` ms after the first data it sees.
    ResetPeer {
        /// Milliseconds.
        timeout: u64,
    },
    /// Cuts data into pieces of `average_size` ± `size_variation` bytes, `delay` µs apart.
    Slicer {
        /// Bytes, at least 1.
        average_size: u64,
        /// Bytes, smaller than `average_size`.
        size_variation: u64,
        /// Microseconds between pieces.
        delay: u64,
    },
    /// Passes `bytes` bytes in this direction, then closes the connection.
    LimitData {
        /// Bytes.
        bytes: u64,
    },
    /// Bulwark extension: a partition of the whole proxy. Connections it takes effect on
    /// are reset, new ones are accepted and reset at once. Its `stream` does not matter.
    Down,
    /// Bulwark extension: HTTP/1.1-aware faults on the requests of the upstream stream.
    HttpFault(HttpFault),
}

/// The attributes of an `http_fault` toxic.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct HttpFault {
    /// Answer matching requests with this status instead of forwarding them (0: forward).
    pub status: u16,
    /// Hold matching requests this many ms before forwarding (or answering) them.
    pub delay_ms: u64,
    /// Affect only the first N matching requests after the toxic was added or updated,
    /// counted over all connections (0: every matching request).
    pub first_n: u64,
    /// Match requests whose path (the request target) starts with this ("": all).
    pub path_prefix: String,
    /// Match requests with this method, case-insensitive ("": any).
    pub method: String,
    /// Body of the injected answer ("": a Bulwark JSON error body naming the toxic).
    pub body: String,
}

/// The toxic types this proxy knows, in the order the error message lists them.
pub const TYPES: &[&str] = &[
    "latency",
    "bandwidth",
    "slow_close",
    "timeout",
    "reset_peer",
    "slicer",
    "limit_data",
    "down",
    "http_fault",
];

/// Largest number attribute, so durations cannot overflow `Instant` arithmetic
/// (about 31 years in milliseconds).
const MAX_NUMBER: u64 = 1 << 40;
/// Longest string attribute of an `http_fault` (body, path prefix, method).
const MAX_STRING: usize = 64 * 1024;

impl ToxicKind {
    /// The API's type name.
    pub fn type_name(&self) -> &'static str {
        match self {
            ToxicKind::Latency { .. } => "latency",
            ToxicKind::Bandwidth { .. } => "bandwidth",
            ToxicKind::SlowClose { .. } => "slow_close",
            ToxicKind::Timeout { .. } => "timeout",
            ToxicKind::ResetPeer { .. } => "reset_peer",
            ToxicKind::Slicer { .. } => "slicer",
            ToxicKind::LimitData { .. } => "limit_data",
            ToxicKind::Down => "down",
            ToxicKind::HttpFault(_) => "http_fault",
        }
    }

    /// The defaults of `type_name` (every attribute 0 or empty, as Toxiproxy's zero values;
    /// those that must not be 0 are checked by [`ToxicKind::validate`]), or `None` for an
    /// unknown type.
    pub fn defaults(type_name: &str) -> Option<ToxicKind> {
        Some(match type_name {
            "latency" => ToxicKind::Latency {
                latency: 0,
                jitter: 0,
            },
            "bandwidth" => ToxicKind::Bandwidth { rate: 0 },
            "slow_close" => ToxicKind::SlowClose { delay: 0 },
            "timeout" => ToxicKind::Timeout { timeout: 0 },
            "reset_peer" => ToxicKind::ResetPeer { timeout: 0 },
            "slicer" => ToxicKind::Slicer {
                average_size: 0,
                size_variation: 0,
                delay: 0,
            },
            "limit_data" => ToxicKind::LimitData { bytes: 0 },
            "down" => ToxicKind::Down,
            "http_fault" => ToxicKind::HttpFault(HttpFault::default()),
            _ => return None,
        })
    }

    /// Sets the attributes in `attrs` on top of `self` (defaults on create, the current
    /// values on update), then validates the result.
    pub fn with_attributes(mut self, attrs: &Map<String, Value>) -> Result<ToxicKind, String> {
        for (name, value) in attrs {
            self.set(name, value)?;
        }
        self.validate()?;
        Ok(self)
    }

    fn set(&mut self, name: &str, value: &Value) -> Result<(), String> {
        let ty = self.type_name();
        let unknown = |known: &str| {
            Err(format!(
                "unknown attribute '{name}' for toxic type {ty} (attributes: {known})"
            ))
        };
        match (self, name) {
            (ToxicKind::Latency { latency, .. }, "latency") => *latency = number(name, value)?,
            (ToxicKind::Latency { jitter, .. }, "jitter") => *jitter = number(name, value)?,
            (ToxicKind::Latency { .. }, _) => return unknown("latency, jitter"),
            (ToxicKind::Bandwidth { rate }, "rate") => *rate = number(name, value)?,
            (ToxicKind::Bandwidth { .. }, _) => return unknown("rate"),
            (ToxicKind::SlowClose { delay }, "delay") => *delay = number(name, value)?,
            (ToxicKind::SlowClose { .. }, _) => return unknown("delay"),
            (ToxicKind::Timeout { timeout }, "timeout") => *timeout = number(name, value)?,
            (ToxicKind::Timeout { .. }, _) => return unknown("timeout"),
            (ToxicKind::ResetPeer { timeout }, "timeout") => *timeout = number(name, value)?,
            (ToxicKind::ResetPeer { .. }, _) => return unknown("timeout"),
            (ToxicKind::Slicer { average_size, .. }, "average_size") => {
                *average_size = number(name, value)?
            }
            (ToxicKind::Slicer { size_variation, .. }, "size_variation") => {
                *size_variation = number(name, value)?
            }
            (ToxicKind::Slicer { delay, .. }, "delay") => *delay = number(name, value)?,
            (ToxicKind::Slicer { .. }, _) => return unknown("average_size, size_variation, delay"),
            (ToxicKind::LimitData { bytes }, "bytes") => *bytes = number(name, value)?,
            (ToxicKind::LimitData { .. }, _) => return unknown("bytes"),
            (ToxicKind::Down, _) => return unknown("none"),
            (ToxicKind::HttpFault(f), "status") => {
                let status = number(name, value)?;
                f.status = u16::try_from(status)
                    .ok()
                    .filter(|s| *s == 0 || (100..=599).contains(s))
                    .ok_or_else(|| {
                        format!(
                            "attribute status must be 0 or an HTTP status 100-599, got {status}"
                        )
                    })?;
            }
            (ToxicKind::HttpFault(f), "delay_ms") => f.delay_ms = number(name, value)?,
            (ToxicKind::HttpFault(f), "first_n") => f.first_n = number(name, value)?,
            (ToxicKind::HttpFault(f), "path_prefix") => f.path_prefix = string(name, value)?,
            (ToxicKind::HttpFault(f), "method") => f.method = string(name, value)?,
            (ToxicKind::HttpFault(f), "body") => f.body = string(name, value)?,
            (ToxicKind::HttpFault(_), _) => {
                return unknown("status, delay_ms, first_n, path_prefix, method, body");
            }
        }
        Ok(())
    }

    /// Checks the attributes that cannot be zero or must relate to each other.
    fn validate(&self) -> Result<(), String> {
        match self {
            ToxicKind::Bandwidth { rate: 0 } => {
                Err("attribute rate must be at least 1 (KB/s)".to_string())
            }
            ToxicKind::Slicer {
                average_size,
                size_variation,
                ..
            } => {
                if *average_size == 0 {
                    Err("attribute average_size must be at least 1 (bytes)".to_string())
                } else if size_variation >= average_size {
                    Err(format!(
                        "attribute size_variation ({size_variation}) must be smaller than average_size ({average_size})"
                    ))
                } else {
                    Ok(())
                }
            }
            ToxicKind::HttpFault(f) => {
                if f.status == 0 && f.delay_ms == 0 {
                    Err(
                        "an http_fault needs a status (abort) or a delay_ms (delay), or both"
                            .to_string(),
                    )
                } else if !f.method.bytes().all(|b| b.is_ascii_alphabetic()) {
                    Err(format!(
                        "attribute method must be an HTTP method, got {:?}",
                        f.method
                    ))
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// The attributes as the API shows them (every attribute, defaults included).
    pub fn attributes(&self) -> Value {
        match self {
            ToxicKind::Latency { latency, jitter } => json!({"latency": latency, "jitter": jitter}),
            ToxicKind::Bandwidth { rate } => json!({ "rate": rate }),
            ToxicKind::SlowClose { delay } => json!({ "delay": delay }),
            ToxicKind::Timeout { timeout } | ToxicKind::ResetPeer { timeout } => {
                json!({ "timeout": timeout })
            }
            ToxicKind::Slicer {
                average_size,
                size_variation,
                delay,
            } => json!({
                "average_size": average_size,
                "size_variation": size_variation,
                "delay": delay,
            }),
            ToxicKind::LimitData { bytes } => json!({ "bytes": bytes }),
            ToxicKind::Down => json!({}),
            ToxicKind::HttpFault(f) => json!({
                "status": f.status,
                "delay_ms": f.delay_ms,
                "first_n": f.first_n,
                "path_prefix": f.path_prefix,
                "method": f.method,
                "body": f.body,
            }),
        }
    }
}

fn number(name: &str, value: &Value) -> Result<u64, String> {
    value.as_u64().filter(|n| *n <= MAX_NUMBER).ok_or_else(|| {
        format!("attribute {name} must be a whole number from 0 to 2^40, got {value}")
    })
}

fn string(name: &str, value: &Value) -> Result<String, String> {
    match value.as_str() {
        Some(s) if s.len() <= MAX_STRING => Ok(s.to_string()),
        Some(_) => Err(format!(
            "attribute {name} is longer than {MAX_STRING} bytes"
        )),
        None => Err(format!("attribute {name} must be a string, got {value}")),
    }
}

/// One toxic on one proxy: what the API shows, plus the identity connections use to tell
/// a new toxic from an updated one.
#[derive(Clone, Debug)]
pub struct Toxic {
    /// Unique among all toxics this process ever created; kept across updates.
    pub id: u64,
    /// Bumped by every update, so a connection knows to rebuild the toxic's stage.
    pub version: u64,
    /// Unique within the proxy.
    pub name: String,
    /// What it does.
    pub kind: ToxicKind,
    /// Which direction it affects.
    pub stream: Direction,
    /// Probability, decided once per connection (and again when the toxic is updated),
    /// that the toxic affects that connection.
    pub toxicity: f32,
    /// State shared by every connection for this version of the toxic (the `first_n`
    /// counter of an `http_fault`).
    pub shared: Arc<SharedState>,
}

/// Per-toxic state shared by all connections.
#[derive(Debug, Default)]
pub struct SharedState {
    /// Matching requests an `http_fault` has affected so far.
    affected: AtomicU64,
}

impl SharedState {
    /// Claims one of the first `first_n` slots (always succeeds when `first_n` is 0).
    pub fn claim(&self, first_n: u64) -> bool {
        first_n == 0 || self.affected.fetch_add(1, Ordering::Relaxed) < first_n
    }
}

impl Toxic {
    /// The API's JSON shape: `{"attributes":{…},"name","type","stream","toxicity"}`.
    pub fn to_json(&self) -> Value {
        json!({
            "attributes": self.kind.attributes(),
            "name": self.name,
            "type": self.kind.type_name(),
            "stream": self.stream.as_str(),
            "toxicity": self.toxicity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn attributes_are_set_on_top_of_defaults_and_shown_in_full() {
        let kind = ToxicKind::defaults("latency")
            .and_then(|k| k.with_attributes(&attrs(json!({"latency": 100}))).ok());
        assert_eq!(
            kind,
            Some(ToxicKind::Latency {
                latency: 100,
                jitter: 0
            })
        );
        let shown = kind.map(|k| k.attributes());
        assert_eq!(shown, Some(json!({"latency": 100, "jitter": 0})));
    }

    #[test]
    fn bad_attributes_are_refused_with_their_name() {
        let latency = ToxicKind::defaults("latency").unwrap_or(ToxicKind::Down);
        let cases = [
            (json!({"latancy": 5}), "unknown attribute 'latancy'"),
            (
                json!({"latency": -5}),
                "attribute latency must be a whole number",
            ),
            (
                json!({"latency": 1.5}),
                "attribute latency must be a whole number",
            ),
            (
                json!({"latency": "100"}),
                "attribute latency must be a whole number",
            ),
        ];
        for (input, expected) in cases {
            let err = latency.clone().with_attributes(&attrs(input.clone()));
            assert!(
                err.as_ref().is_err_and(|e| e.contains(expected)),
                "{input}: {err:?}"
            );
        }
        let slicer = ToxicKind::defaults("slicer").unwrap_or(ToxicKind::Down);
        assert!(
            slicer
                .with_attributes(&attrs(json!({"average_size": 10, "size_variation": 10})))
                .is_err_and(|e| e.contains("size_variation (10) must be smaller"))
        );
        let bw = ToxicKind::defaults("bandwidth").unwrap_or(ToxicKind::Down);
        assert!(
            bw.with_attributes(&Map::new())
                .is_err_and(|e| e.contains("rate"))
        );
        let http = ToxicKind::defaults("http_fault").unwrap_or(ToxicKind::Down);
        assert!(
            http.clone()
                .with_attributes(&attrs(json!({"status": 700})))
                .is_err_and(|e| e.contains("status"))
        );
        assert!(
            http.with_attributes(&attrs(json!({"path_prefix": "/x"})))
                .is_err_and(|e| e.contains("needs a status"))
        );
        assert_eq!(ToxicKind::defaults("nope"), None);
    }

    #[test]
    fn first_n_counts_over_all_claims() {
        let shared = SharedState::default();
        let claimed: Vec<bool> = (0..4).map(|_| shared.claim(2)).collect();
        assert_eq!(claimed, [true, true, false, false]);
        assert!(SharedState::default().claim(0));
    }
}
