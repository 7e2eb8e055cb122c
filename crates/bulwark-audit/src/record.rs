//! One audit record and its line: fields in a fixed order, `prev` and `hash` last.

use std::io::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// `prev` of the first line of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The format version, the first field of every line.
pub(crate) const FORMAT: u32 = 1;

/// What the line's hash covers ends right before this.
pub(crate) const HASH_FIELD: &str = ",\"hash\":\"";

/// Bytes after the hashed part: `,"hash":"` + 64 hex digits + `"}`.
pub(crate) const HASH_SUFFIX_LEN: usize = HASH_FIELD.len() + 64 + 2;

/// One audited action. Every field is a name or a number, never a value or a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// When it finished, as milliseconds since the Unix epoch (written as RFC 3339).
    pub at_ms: u64,
    /// The service that served it (`app_cp`, `app_shop`, `up`).
    pub service: Arc<str>,
    /// The credential's id (`writer`, `jwt:alice`), `anonymous` in protected mode, or
    /// `-` when authentication failed.
    pub key_id: Arc<str>,
    /// `read`, `write`, `admin`, or `-`.
    pub role: &'static str,
    /// The client's IP address.
    pub client: IpAddr,
    /// HTTP method.
    pub method: String,
    /// The route template (`/v1/kv/{key}`), never the raw path.
    pub route: String,
    /// The resource named by the path (`key=a`, `id=o_…`), without values.
    pub resource: String,
    /// HTTP status of the answer.
    pub status: u16,
    /// `success`, `refused` (401/403/429) or `failed`.
    pub outcome: &'static str,
    /// The request's correlation id.
    pub request_id: String,
}

impl Record {
    /// The current time in the form [`Record::at_ms`] takes.
    pub fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    /// The outcome word for an HTTP status.
    pub fn outcome_of(status: u16) -> &'static str {
        match status {
            401 | 403 | 429 => "refused",
            s if s < 400 => "success",
            _ => "failed",
        }
    }

    /// Appends the line (without its newline) for this record at `seq`, after the line
    /// whose hash is `prev`, to `out`; returns its own hash. Written straight into the
    /// batch's buffer: the writer thread shares the service's cores.
    pub(crate) fn write_line(&self, seq: u64, prev: &str, out: &mut Vec<u8>) -> String {
        let start = out.len();
        // Writing to a Vec cannot fail: the results below are always Ok.
        let _ = write!(out, "{{\"v\":{FORMAT},\"seq\":{seq},\"ts\":\"");
        write_rfc3339_ms(out, self.at_ms);
        out.push(b'"');
        let text = |out: &mut Vec<u8>, name: &str, value: &str| {
            let _ = write!(out, ",\"{name}\":");
            let _ = serde_json::to_writer(&mut *out, value);
        };
        text(out, "service", &self.service);
        text(out, "key_id", &self.key_id);
        text(out, "role", self.role);
        // An address needs no JSON escaping.
        let _ = write!(out, ",\"client\":\"{}\"", self.client);
        text(out, "method", &self.method);
        text(out, "route", &self.route);
        text(out, "resource", &self.resource);
        let _ = write!(out, ",\"status\":{}", self.status);
        text(out, "outcome", self.outcome);
        text(out, "request_id", &self.request_id);
        let _ = write!(out, ",\"prev\":\"{prev}\"");
        let hash = hash_hex(&out[start..]);
        out.extend_from_slice(HASH_FIELD.as_bytes());
        out.extend_from_slice(hash.as_bytes());
        out.extend_from_slice(b"\"}");
        hash
    }
}

/// SHA-256 of `bytes` as 64 lower-case hex digits.
pub(crate) fn hash_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Splits a line into the part its hash covers and the hash it claims, if it has the
/// shape `…,"hash":"<64 hex>"}`.
pub(crate) fn split_hash(line: &str) -> Option<(&str, &str)> {
    let cut = line.len().checked_sub(HASH_SUFFIX_LEN)?;
    let (body, suffix) = (line.get(..cut)?, line.get(cut..)?);
    let hash = suffix.strip_prefix(HASH_FIELD)?.strip_suffix("\"}")?;
    (hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then_some((body, hash))
}

/// `ms` since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC), from the civil-date
/// algorithm of Howard Hinnant's `chrono`-compatible date library.
fn write_rfc3339_ms(out: &mut Vec<u8>, ms: u64) {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn record(n: u16) -> Record {
        Record {
            at_ms: 1_796_644_800_123,
            service: "app_cp".into(),
            key_id: "writer".into(),
            role: "write",
            client: std::net::Ipv4Addr::LOCALHOST.into(),
            method: "PUT".into(),
            route: "/v1/kv/{key}".into(),
            resource: "key=\"quoted\"".into(),
            status: 200 + n,
            outcome: "success",
            request_id: "r1".into(),
        }
    }

    #[test]
    fn timestamps_are_utc_rfc3339() {
        let ts = |ms| {
            let mut out = Vec::new();
            write_rfc3339_ms(&mut out, ms);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(ts(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(ts(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(ts(1_796_644_800_123), "2026-12-07T12:00:00.123Z");
    }

    #[test]
    fn a_line_is_json_and_carries_its_own_hash() {
        let mut out = b"earlier line\n".to_vec();
        let hash = record(0).write_line(3, GENESIS, &mut out);
        let line = std::str::from_utf8(&out)
            .unwrap()
            .strip_prefix("earlier line\n")
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["seq"], 3);
        assert_eq!(v["resource"], "key=\"quoted\"");
        assert_eq!(v["prev"], GENESIS);
        assert_eq!(v["hash"], hash.as_str());
        let (body, claimed) = split_hash(line).unwrap();
        assert_eq!(claimed, hash);
        assert_eq!(hash_hex(body.as_bytes()), hash);
        assert!(split_hash("{\"hash\":\"short\"}").is_none());
    }
}
