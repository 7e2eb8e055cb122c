//! Authentication: API keys from a keys file (hashed, reloaded without a restart) and,
//! optionally, JWTs from an identity provider.
//!
//! The keys file (`API_KEYS_FILE`) has one key per line, `#` comments and blank lines
//! aside:
//!
//! ```text
//! # id     role   SHA-256 of the key
//! reader   read   sha256:5e2bf57d3f40c4b6df69daf1936cb766f832374b4fc0259a7cbff06e2f70f269
//! ```
//!
//! Keys are `bw_` and 43 base64url characters (256 random bits, `bulwark auth new-key`).
//! Only their SHA-256 is stored: a key this long cannot be guessed from its hash, so a
//! slow password hash would buy nothing and cost every request. A presented key is
//! looked up by its hash; no comparison depends on how much of a key was right.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::{HeaderMap, header};
use base64::Engine as _;
use bulwark_config::ConfigError;
use bulwark_obs::events::{Emit, ReloadFailed, Reloaded};
use sha2::{Digest, Sha256};

use crate::route::Role;

/// Longest credential accepted in `Authorization` (a JWT with a few claims fits well).
const MAX_CREDENTIAL: usize = 8192;
/// How often the keys file is checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// Prefix of Bulwark API keys.
pub const KEY_PREFIX: &str = "bw_";

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key's id (`writer`), `jwt:<sub>`, or `anonymous` in protected mode.
    pub id: Arc<str>,
    /// Its role.
    pub role: Role,
}

/// A new random API key (`bw_` + 43 base64url characters) and its keys-file hash.
pub fn new_key() -> (String, String) {
    let bytes: [u8; 32] = rand::random();
    let key = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = key_hash(&key);
    (key, hash)
}

/// The keys-file form of a key's hash: `sha256:<64 hex digits>`.
pub fn key_hash(key: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

/// The parsed keys file: key hash → principal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySet {
    by_hash: HashMap<[u8; 32], Principal>,
}

impl KeySet {
    /// Parses a keys file's text; an error names the line and what is wrong with it.
    pub fn parse(text: &str) -> Result<KeySet, String> {
        let mut by_hash = HashMap::new();
        let mut ids = std::collections::HashSet::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |what: String| format!("line {}: {what}", n + 1);
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [id, role, hash] = fields[..] else {
                return Err(at(
                    "expected `<id> <role> sha256:<64 hex digits>`".to_owned()
                ));
            };
            if id.is_empty()
                || id.len() > 64
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
            {
                return Err(at(format!(
                    "key id {id:?}: 1 to 64 letters, digits, '.', '_', ':' or '-'"
                )));
            }
            let role: Role = role.parse().map_err(at)?;
            let digest = hash
                .strip_prefix("sha256:")
                .and_then(|h| hex::decode(h).ok())
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    at("the hash must be sha256: and 64 hex digits (the key itself is never stored)".to_owned())
                })?;
            if !ids.insert(id.to_owned()) {
                return Err(at(format!("key id {id:?} appears twice")));
            }
            let principal = Principal {
                id: Arc::from(id),
                role,
            };
            if by_hash.insert(digest, principal).is_some() {
                return Err(at("this hash appears twice (one key, two ids)".to_owned()));
            }
        }
        if by_hash.is_empty() {
            return Err("no keys (an empty keys file would lock everyone out)".to_owned());
        }
        Ok(KeySet { by_hash })
    }

    /// Reads and parses `path`; the error names the file.
    pub fn load(path: &Path) -> Result<KeySet, ConfigError> {
        let file_err = |reason: String| ConfigError::File {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
        KeySet::parse(&text).map_err(file_err)
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    fn find(&self, key: &str) -> Option<&Principal> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.by_hash.get(&digest)
    }
}

/// How JWTs are verified (`JWT_*` settings).
#[derive(Clone)]
pub struct JwtConfig {
    /// The one algorithm accepted (`JWT_ALGORITHM`): never `none`, never another than
    /// the key's, so a token cannot choose how it is checked.
    pub algorithm: jsonwebtoken::Algorithm,
    /// The key (`JWT_SECRET` for HS256, `JWT_PUBLIC_KEY_FILE` for RS256/ES256).
    pub key: jsonwebtoken::DecodingKey,
    /// Required `aud` (`JWT_AUDIENCE`).
    pub audience: String,
    /// Required `iss`, if set (`JWT_ISSUER`).
    pub issuer: Option<String>,
    /// The claim holding the role (`JWT_ROLE_CLAIM`, default `role`).
    pub role_claim: String,
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("algorithm", &self.algorithm)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("role_claim", &self.role_claim)
            .finish_non_exhaustive()
    }
}

impl JwtConfig {
    fn validation(&self) -> jsonwebtoken::Validation {
        let mut v = jsonwebtoken::Validation::new(self.algorithm);
        v.set_audience(&[self.audience.as_str()]);
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss.as_str()]);
        }
        v.set_required_spec_claims(&["exp", "aud", "sub"]);
        v.validate_exp = true;
        v.validate_nbf = true;
        v.leeway = 30;
        v
    }
}

/// The credentials a service accepts. With none configured the service is in protected
/// mode: loopback only, every caller `anonymous` with every right (as Redis without a
/// password).
#[derive(Debug, Clone)]
pub struct Authenticator {
    keys: Option<Arc<KeysFile>>,
    jwt: Option<Arc<(JwtConfig, jsonwebtoken::Validation)>>,
}

/// A keys file and its current contents.
#[derive(Debug)]
struct KeysFile {
    path: PathBuf,
    current: RwLock<Arc<KeySet>>,
    /// What the file looked like when last loaded (modification time, length, inode).
    stamp: std::sync::Mutex<Option<(std::time::SystemTime, u64, u64)>>,
}

/// Why a request has no principal. Deliberately one kind: the answer must not tell a
/// missing key from a wrong or expired one (design invariant 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unauthenticated;

impl Authenticator {
    /// Protected mode: no credentials.
    pub fn open() -> Authenticator {
        Authenticator {
            keys: None,
            jwt: None,
        }
    }

    /// Accepts the keys of `path` (already loaded as `keys`) and/or JWTs.
    pub fn new(keys: Option<(PathBuf, KeySet)>, jwt: Option<JwtConfig>) -> Authenticator {
        Authenticator {
            keys: keys.map(|(path, set)| {
                let stamp = file_stamp(&path);
                Arc::new(KeysFile {
                    path,
                    current: RwLock::new(Arc::new(set)),
                    stamp: std::sync::Mutex::new(stamp),
                })
            }),
            jwt: jwt.map(|c| {
                let v = c.validation();
                Arc::new((c, v))
            }),
        }
    }

    /// Whether no credentials are configured (protected mode).
    pub fn is_open(&self) -> bool {
        self.keys.is_none() && self.jwt.is_none()
    }

    /// Who the request's `Authorization: Bearer …` names.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, Unauthenticated> {
        if self.is_open() {
            return Ok(Principal {
                id: Arc::from("anonymous"),
                role: Role::Admin,
            });
        }
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(Unauthenticated);
        };
        let value = value.to_str().map_err(|_| Unauthenticated)?;
        let (scheme, token) = value.split_once(' ').ok_or(Unauthenticated)?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer")
            || token.is_empty()
            || token.len() > MAX_CREDENTIAL
            || !token.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(Unauthenticated);
        }
        if token.starts_with(KEY_PREFIX) {
            let keys = self.keys.as_ref().ok_or(Unauthenticated)?;
            let set = keys.current.read().map_err(|_| Unauthenticated)?.clone();
            return set.find(token).cloned().ok_or(Unauthenticated);
        }
        let (config, validation) = self.jwt.as_deref().ok_or(Unauthenticated)?;
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &config.key, validation)
            .map_err(|_| Unauthenticated)?;
        let claims = data.claims;
        let sub = claims["sub"]
            .as_str()
            .filter(|s| !s.is_empty() && s.len() <= 128);
        let role = match &claims[config.role_claim.as_str()] {
            serde_json::Value::String(r) => r.parse::<Role>().ok(),
            serde_json::Value::Array(rs) => rs
                .iter()
                .filter_map(|r| r.as_str()?.parse::<Role>().ok())
                .max(),
            _ => None,
        };
        match (sub, role) {
            (Some(sub), Some(role)) => Ok(Principal {
                id: Arc::from(format!("jwt:{sub}")),
                role,
            }),
            _ => Err(Unauthenticated),
        }
    }

    /// Reloads the keys file if it changed since it was last loaded (or always, when
    /// `force`: SIGHUP). A file that fails to load leaves the current keys in force.
    pub fn reload(&self, force: bool) {
        let Some(keys) = &self.keys else { return };
        let stamp = file_stamp(&keys.path);
        {
            let Ok(mut last) = keys.stamp.lock() else {
                return;
            };
            if !force && stamp == *last {
                return;
            }
            *last = stamp;
        }
        let file = keys.path.display().to_string();
        match KeySet::load(&keys.path) {
            Ok(set) => {
                let detail = format!("{} keys", set.len());
                if let Ok(mut current) = keys.current.write() {
                    *current = Arc::new(set);
                }
                Reloaded {
                    what: "api_keys",
                    file: &file,
                    detail: &detail,
                }
                .emit();
            }
            Err(e) => ReloadFailed {
                what: "api_keys",
                file: &file,
                error: &e.to_string(),
            }
            .emit(),
        }
    }

    /// Watches the keys file (every second, and at once on SIGHUP) until the last clone
    /// of this authenticator is dropped.
    pub fn spawn_watcher(&self) {
        let Some(keys) = &self.keys else { return };
        let weak = Arc::downgrade(keys);
        let jwt = self.jwt.clone();
        tokio::spawn(async move {
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(WATCH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let force = tokio::select! {
                    _ = tick.tick() => false,
                    Some(()) = async {
                        match hup.as_mut() {
                            Some(h) => h.recv().await,
                            None => std::future::pending().await,
                        }
                    } => true,
                };
                let Some(keys) = weak.upgrade() else { return };
                Authenticator {
                    keys: Some(keys),
                    jwt: jwt.clone(),
                }
                .reload(force);
            }
        });
    }
}

fn file_stamp(path: &Path) -> Option<(std::time::SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}"))
                .unwrap_or(HeaderValue::from_static("x")),
        );
        h
    }

    #[test]
    fn keys_files_parse_and_errors_name_the_line() {
        let (_, hash) = new_key();
        let ok = KeySet::parse(&format!("# comment\n\nreader read {hash}\n"));
        assert_eq!(ok.map(|k| k.len()), Ok(1));
        for (text, needle) in [
            (format!("reader read {hash} extra"), "line 1: expected"),
            (format!("reader root {hash}"), "unknown role"),
            ("reader read sha256:abc".to_owned(), "64 hex digits"),
            (
                format!("r read {hash}\nr write {hash}"),
                "line 2: key id \"r\" appears twice",
            ),
            (
                format!("a read {hash}\nb write {hash}"),
                "line 2: this hash appears twice",
            ),
            ("# nothing\n".to_owned(), "no keys"),
            (format!("bad/id read {hash}"), "key id"),
        ] {
            let e = KeySet::parse(&text).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn keys_authenticate_and_nothing_else_does() {
        let (key, hash) = new_key();
        let (other, _) = new_key();
        let set = KeySet::parse(&format!("writer write {hash}")).unwrap_or_default();
        let auth = Authenticator::new(Some((PathBuf::from("/nonexistent"), set)), None);
        let p = auth.authenticate(&bearer(&key));
        assert_eq!(
            p.map(|p| (p.id.to_string(), p.role)),
            Ok(("writer".into(), Role::Write))
        );
        assert_eq!(auth.authenticate(&bearer(&other)), Err(Unauthenticated));
        assert_eq!(auth.authenticate(&HeaderMap::new()), Err(Unauthenticated));
        let mut basic = HeaderMap::new();
        basic.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dXNlcjpwYXNz"),
        );
        assert_eq!(auth.authenticate(&basic), Err(Unauthenticated));
        let mut twice = bearer(&key);
        twice.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(
            auth.authenticate(&twice),
            Err(Unauthenticated),
            "two credentials are ambiguous"
        );
        // No JWT verifier: a JWT-shaped token is just unknown.
        assert_eq!(
            auth.authenticate(&bearer("eyJ.eyJ.sig")),
            Err(Unauthenticated)
        );
    }

    #[test]
    fn jwts_are_checked_for_algorithm_expiry_and_audience() {
        use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
        let secret = b"0123456789abcdef0123456789abcdef";
        let auth = Authenticator::new(
            None,
            Some(JwtConfig {
                algorithm: Algorithm::HS256,
                key: jsonwebtoken::DecodingKey::from_secret(secret)
                    .unwrap_or_else(|e| panic!("{e}")),
                audience: "bulwark".into(),
                issuer: None,
                role_claim: "role".into(),
            }),
        );
        let now = jsonwebtoken::get_current_timestamp();
        let token = |claims: serde_json::Value, alg: Algorithm| {
            let key = EncodingKey::from_secret(secret).unwrap_or_else(|e| panic!("{e}"));
            encode(&Header::new(alg), &claims, &key).unwrap_or_default()
        };
        let good =
            serde_json::json!({"sub": "alice", "aud": "bulwark", "exp": now + 60, "role": "write"});
        let p = auth.authenticate(&bearer(&token(good.clone(), Algorithm::HS256)));
        assert_eq!(
            p.map(|p| (p.id.to_string(), p.role)),
            Ok(("jwt:alice".into(), Role::Write))
        );
        // Expired, not yet valid, wrong audience, no role, another algorithm.
        let mut expired = good.clone();
        expired["exp"] = (now - 120).into();
        let mut early = good.clone();
        early["nbf"] = (now + 600).into();
        let mut audience = good.clone();
        audience["aud"] = "someone-else".into();
        let mut roleless = good.clone();
        roleless["role"] = "root".into();
        for claims in [expired, early, audience, roleless] {
            let t = token(claims.clone(), Algorithm::HS256);
            assert_eq!(
                auth.authenticate(&bearer(&t)),
                Err(Unauthenticated),
                "{claims}"
            );
        }
        let t = token(good.clone(), Algorithm::HS512);
        assert_eq!(
            auth.authenticate(&bearer(&t)),
            Err(Unauthenticated),
            "HS512"
        );
        // alg: none, hand-made (no library signs it).
        let b64 = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let none = format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg": "none", "typ": "JWT"})),
            b64(&good)
        );
        assert_eq!(
            auth.authenticate(&bearer(&none)),
            Err(Unauthenticated),
            "alg none"
        );
    }

    #[test]
    fn a_bad_reload_keeps_the_current_keys() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("keys");
        let (key, hash) = new_key();
        std::fs::write(&path, format!("admin admin {hash}\n")).unwrap_or_default();
        let set = KeySet::load(&path).unwrap_or_default();
        let auth = Authenticator::new(Some((path.clone(), set)), None);
        assert!(auth.authenticate(&bearer(&key)).is_ok());
        std::fs::write(&path, "garbage\n").unwrap_or_default();
        auth.reload(true);
        assert!(
            auth.authenticate(&bearer(&key)).is_ok(),
            "kept after a bad reload"
        );
        let (key2, hash2) = new_key();
        std::fs::write(&path, format!("admin2 admin {hash2}\n")).unwrap_or_default();
        auth.reload(true);
        assert!(auth.authenticate(&bearer(&key)).is_err(), "rotated out");
        assert!(auth.authenticate(&bearer(&key2)).is_ok(), "rotated in");
    }
}
