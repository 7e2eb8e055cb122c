//! Read-your-writes sessions (SPEC CAP-7).
//!
//! The session is a cookie holding, for the keys this client wrote most recently, the
//! version of its write, signed with HMAC-SHA256 under `SECRET_KEY`. Nothing is kept in
//! the gateway, so any gateway instance sharing the secret honours the session (no sticky
//! load balancing needed, SPEC OPS-5).

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bulwark_core::Version;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Cookie name.
pub const COOKIE: &str = "bulwark_session";

/// Keys remembered per session; the oldest writes are forgotten first. Keeps the cookie
/// under browsers' 4 KiB limit for typical keys.
pub const MAX_KEYS: usize = 32;

/// The versions this session wrote, by key.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Session {
    /// Key → version of the session's latest write to it.
    #[serde(rename = "w")]
    pub writes: BTreeMap<String, Version>,
}

impl Session {
    /// The version a read of `key` must reach for read-your-writes, if any.
    pub fn required(&self, key: &str) -> Option<Version> {
        self.writes.get(key).copied()
    }

    /// Records a write, forgetting the oldest writes beyond [`MAX_KEYS`].
    pub fn record(&mut self, key: &str, version: Version) {
        let entry = self.writes.entry(key.to_string()).or_insert(version);
        *entry = (*entry).max(version);
        while self.writes.len() > MAX_KEYS {
            let oldest = self
                .writes
                .iter()
                .min_by_key(|(_, v)| **v)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.writes.remove(&k),
                None => break,
            };
        }
    }
}

/// Signs and verifies session cookies.
#[derive(Clone)]
pub struct SessionCodec {
    /// The HMAC key (`SECRET_KEY`). Never logged.
    key: Vec<u8>,
}

impl std::fmt::Debug for SessionCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionCodec(<secret>)")
    }
}

impl SessionCodec {
    /// A codec signing with `key`.
    pub fn new(key: &[u8]) -> Self {
        SessionCodec { key: key.to_vec() }
    }

    fn mac(&self, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC accepts any key length");
        mac.update(payload);
        mac
    }

    /// The cookie value for `session`: `base64(json).base64(hmac)`.
    pub fn encode(&self, session: &Session) -> String {
        let json = serde_json::to_vec(session).unwrap_or_default();
        let payload = URL_SAFE_NO_PAD.encode(&json);
        let sig = URL_SAFE_NO_PAD.encode(self.mac(payload.as_bytes()).finalize().into_bytes());
        format!("{payload}.{sig}")
    }

    /// The session in a cookie value, or `None` if it is malformed or its signature does
    /// not verify (a forged or foreign cookie is treated as no session, never trusted).
    pub fn decode(&self, value: &str) -> Option<Session> {
        let (payload, sig) = value.split_once('.')?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        self.mac(payload.as_bytes()).verify_slice(&sig).ok()?;
        let json = URL_SAFE_NO_PAD.decode(payload).ok()?;
        serde_json::from_slice(&json).ok()
    }

    /// Finds and decodes our cookie in a `Cookie` request header.
    pub fn from_cookie_header(&self, header: &str) -> Option<Session> {
        header
            .split(';')
            .filter_map(|c| c.trim().split_once('='))
            .filter(|(name, _)| *name == COOKIE)
            .find_map(|(_, value)| self.decode(value))
    }

    /// A `Set-Cookie` header value carrying `session`.
    pub fn set_cookie(&self, session: &Session) -> String {
        format!(
            "{COOKIE}={}; Path=/; HttpOnly; SameSite=Lax",
            self.encode(session)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(ms: u64) -> Version {
        Version {
            physical_ms: ms,
            logical: 0,
            writer: 9,
        }
    }

    #[test]
    fn round_trips_and_works_across_instances_sharing_the_secret() {
        let a = SessionCodec::new(b"secret");
        let b = SessionCodec::new(b"secret");
        let mut s = Session::default();
        s.record("SESSION_DATA", v(10));
        let cookie = a.set_cookie(&s);
        let header = format!("other=1; {}", cookie.split(';').next().unwrap());
        assert_eq!(b.from_cookie_header(&header), Some(s));
    }

    #[test]
    fn forged_or_foreign_cookies_are_ignored() {
        let mut s = Session::default();
        s.record("k", v(1));
        let value = SessionCodec::new(b"secret").encode(&s);
        assert_eq!(SessionCodec::new(b"other").decode(&value), None);
        let (payload, sig) = value.split_once('.').unwrap();
        let mut forged = Session::default();
        forged.record("k", v(999));
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert_ne!(payload, forged_payload);
        let codec = SessionCodec::new(b"secret");
        assert_eq!(codec.decode(&format!("{forged_payload}.{sig}")), None);
        assert_eq!(codec.decode("garbage"), None);
        assert_eq!(codec.decode("a.b.c"), None);
    }

    #[test]
    fn keeps_the_newest_writes_within_the_bound() {
        let mut s = Session::default();
        for i in 0..(MAX_KEYS as u64 + 10) {
            s.record(&format!("k{i}"), v(i + 1));
        }
        assert_eq!(s.writes.len(), MAX_KEYS);
        assert!(s.required("k0").is_none());
        assert_eq!(
            s.required(&format!("k{}", MAX_KEYS + 9)),
            Some(v(MAX_KEYS as u64 + 10))
        );
        s.record("k40", v(1));
        assert_eq!(
            s.required("k40"),
            Some(v(41)),
            "an older version never lowers the bar"
        );
    }
}
