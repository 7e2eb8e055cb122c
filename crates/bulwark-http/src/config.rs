//! The settings every HTTP service shares (docs/design/security.md, "Settings"), and the
//! layer stack built from them.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::middleware;
use bulwark_audit::{AuditConfig, AuditLog};
use bulwark_config::{ConfigError, Settings};
use bulwark_resilience::rate::Policy;
use bulwark_tls::{ServerTls, TlsFiles};

use crate::auth::{Authenticator, JwtConfig, KeySet};
use crate::envelope::envelope;
use crate::guard::GuardLimits;
use crate::observe::{Observed, observe};
use crate::security::{self, Limiters, Security};
use crate::serve::ServeOptions;

/// The seed's default quotas (seed 001: 100 a minute, 1,000 an hour per client).
pub const DEFAULT_RATE_LIMIT: &str = "100/min,1000/h";
/// The audit log of a service with credentials when `AUDIT_LOG` is unset.
pub const DEFAULT_AUDIT_LOG: &str = "./data/logs/audit.jsonl";
/// Per-address connection cap of a service with credentials.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;

/// Which settings give a service's address (the gateway's `BIND`/`PORT`, the shop's
/// `SHOP_BIND`/`SHOP_PORT`).
#[derive(Debug, Clone, Copy)]
pub struct Listen {
    /// The address setting.
    pub bind: &'static str,
    /// The port setting.
    pub port: &'static str,
    /// The port when unset.
    pub default_port: u16,
}

/// Rate-limit policies per route class (`None`: that class is not limited).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    /// `RATE_LIMIT_READ` (default `RATE_LIMIT`).
    pub read: Option<Policy>,
    /// `RATE_LIMIT_WRITE` (default `RATE_LIMIT`).
    pub write: Option<Policy>,
    /// `RATE_LIMIT_ADMIN` (default `RATE_LIMIT`).
    pub admin: Option<Policy>,
    /// `RATE_LIMIT_MAX_KEYS`: clients remembered per class.
    pub max_keys: usize,
}

/// An HTTP service's listener, limits and security, resolved and checked.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// The address to bind.
    pub bind: String,
    /// The port (0: any free one).
    pub port: u16,
    /// The server loop's options (guard limits, keep-alive, connection caps, TLS).
    pub serve: ServeOptions,
    /// Who may call (keys loaded, JWT key read).
    pub auth: Authenticator,
    /// Rate limits, or `None` (`RATE_LIMIT=off`).
    pub rate: Option<RateLimits>,
    /// The audit log, or `None` (`AUDIT_LOG=off`).
    pub audit: Option<AuditConfig>,
}

impl HttpConfig {
    /// Resolves the settings. Files (keys, certificates, a JWT key) are read now, so a
    /// bad one stops the service before it binds, and protected mode is enforced: a
    /// non-loopback address needs credentials and TLS.
    pub fn from_settings(s: &Settings, listen: Listen) -> Result<HttpConfig, ConfigError> {
        let bind = s.get(listen.bind).unwrap_or("127.0.0.1").trim().to_owned();
        let loopback = match bind.as_str() {
            "localhost" => true,
            b => b
                .parse::<IpAddr>()
                .map_err(|_| {
                    ConfigError::invalid(listen.bind, b, "expected an IP address or localhost")
                })?
                .is_loopback(),
        };
        let port: u16 = s.parse_or(listen.port, listen.default_port)?;
        let keys = match s.get("API_KEYS_FILE") {
            Some(path) => {
                let path = PathBuf::from(path);
                let set = KeySet::load(&path)?;
                Some((path, set))
            }
            None => None,
        };
        let jwt = jwt_config(s)?;
        let secured = keys.is_some() || jwt.is_some();
        let auth = if secured {
            Authenticator::new(keys, jwt)
        } else {
            Authenticator::open()
        };
        let tls_files = TlsFiles::from_settings(s, "TLS")?;
        if !loopback {
            if !secured {
                return Err(ConfigError::invalid(
                    listen.bind,
                    &bind,
                    "protected mode: a non-loopback address needs credentials (set API_KEYS_FILE or JWT_SECRET/JWT_PUBLIC_KEY_FILE)",
                ));
            }
            if tls_files.is_none() {
                return Err(ConfigError::invalid(
                    listen.bind,
                    &bind,
                    "a non-loopback address needs TLS (set TLS_CERT_FILE and TLS_KEY_FILE)",
                ));
            }
        }
        let tls = match &tls_files {
            Some(files) => Some(ServerTls::load(files, &[b"http/1.1"])?),
            None => None,
        };
        let rate_default = if secured { DEFAULT_RATE_LIMIT } else { "off" };
        let policy = |name: &str, fallback: &str| -> Result<Option<Policy>, ConfigError> {
            let raw = s.get(name).unwrap_or(fallback).trim().to_owned();
            if raw.eq_ignore_ascii_case("off") {
                return Ok(None);
            }
            raw.parse::<Policy>()
                .map(Some)
                .map_err(|e| ConfigError::invalid(name, &raw, e))
        };
        let base = s.get("RATE_LIMIT").unwrap_or(rate_default).to_owned();
        let (read, write, admin) = (
            policy("RATE_LIMIT_READ", &base)?,
            policy("RATE_LIMIT_WRITE", &base)?,
            policy("RATE_LIMIT_ADMIN", &base)?,
        );
        policy("RATE_LIMIT", rate_default)?;
        let rate = if read.is_none() && write.is_none() && admin.is_none() {
            None
        } else {
            Some(RateLimits {
                read,
                write,
                admin,
                max_keys: s.int_in("RATE_LIMIT_MAX_KEYS", 100_000usize, 16..=10_000_000)?,
            })
        };
        let audit_default = if secured { DEFAULT_AUDIT_LOG } else { "off" };
        let audit_path = s
            .get("AUDIT_LOG")
            .unwrap_or(audit_default)
            .trim()
            .to_owned();
        let audit = if audit_path.eq_ignore_ascii_case("off") {
            None
        } else {
            Some(AuditConfig {
                path: PathBuf::from(audit_path),
                max_bytes: s.int_in("AUDIT_LOG_MAX_BYTES", 64u64 << 20, 4096..=1u64 << 40)?,
                fsync_interval: Duration::from_secs(1),
            })
        };
        let secs = |name: &str, default: u64| {
            s.seconds_or(
                name,
                Duration::from_secs(default),
                Duration::from_secs(3600),
            )
        };
        let guard = GuardLimits {
            max_uri: s.int_in("MAX_URI_BYTES", 16 * 1024usize, 256..=1 << 20)?,
            max_head: s.int_in("MAX_HEAD_BYTES", 64 * 1024usize, 1024..=1 << 20)?,
            head_timeout: secs("HEAD_READ_TIMEOUT_SEC", 10)?,
            body_timeout: secs("BODY_READ_TIMEOUT_SEC", 30)?,
        };
        let per_ip_default = if secured {
            DEFAULT_MAX_CONNECTIONS_PER_IP
        } else {
            0
        };
        let per_ip = s.int_in("MAX_CONNECTIONS_PER_IP", per_ip_default, 0..=10_000_000)?;
        Ok(HttpConfig {
            bind,
            port,
            serve: ServeOptions {
                guard,
                keepalive: secs("KEEPALIVE_TIMEOUT_SEC", 75)?,
                max_connections: s.int_in("MAX_CONNECTIONS", 10_000usize, 1..=10_000_000)?,
                max_connections_per_ip: (per_ip > 0).then_some(per_ip),
                tls,
            },
            auth,
            rate,
            audit,
        })
    }

    /// Whether credentials are configured (not protected mode).
    pub fn secured(&self) -> bool {
        !self.auth.is_open()
    }

    /// A line for `SERVICE_STARTED`: how the service is protected (no secrets).
    pub fn describe(&self) -> String {
        format!(
            "auth={} tls={} rate_limit={} audit={}",
            if self.secured() {
                "on"
            } else {
                "protected-mode"
            },
            if self.serve.tls.is_some() {
                "on"
            } else {
                "off"
            },
            self.rate
                .as_ref()
                .and_then(|r| r.write.as_ref())
                .map_or("off".to_owned(), policy_text),
            self.audit
                .as_ref()
                .map_or("off".to_owned(), |a| a.path.display().to_string()),
        )
    }

    /// Wraps a service's router in the shared stack, in request order: `observe`
    /// (request id, `REQUEST_COMPLETED`), `envelope` (refusals, body timeouts, plain
    /// errors as JSON), `security` (authentication, roles, rate limits, audit). Opens the
    /// audit log and starts watching the keys and certificate files. Returns the router
    /// and the [`Security`] to close at shutdown.
    pub fn stack(
        &self,
        service: &str,
        observed: Observed,
        router: Router,
    ) -> Result<(Router, Security), ConfigError> {
        let audit = match &self.audit {
            Some(config) => {
                Some(
                    AuditLog::open(config.clone()).map_err(|e| ConfigError::File {
                        path: config.path.clone(),
                        reason: e.to_string(),
                    })?,
                )
            }
            None => None,
        };
        let limits = self.rate.as_ref().map(|r| {
            Limiters::new(
                [r.read.clone(), r.write.clone(), r.admin.clone()],
                r.max_keys,
            )
        });
        if let Some(tls) = &self.serve.tls {
            tls.spawn_watcher();
        }
        let security = Security::new(service, observed.classify, self.auth.clone(), limits, audit);
        let router = router
            .layer(middleware::from_fn_with_state(
                security.clone(),
                security::layer,
            ))
            .layer(middleware::from_fn_with_state(self.serve.guard, envelope))
            .layer(middleware::from_fn_with_state(observed, observe));
        Ok((router, security))
    }
}

fn policy_text(p: &Policy) -> String {
    p.quotas()
        .iter()
        .map(|q| format!("{}/{}", q.count, q.name()))
        .collect::<Vec<_>>()
        .join(",")
}

/// `JWT_*`: one key (a secret or a public key file), one algorithm, a required audience.
fn jwt_config(s: &Settings) -> Result<Option<JwtConfig>, ConfigError> {
    use jsonwebtoken::{Algorithm, DecodingKey};
    let secret = s.get("JWT_SECRET");
    let public = s.get("JWT_PUBLIC_KEY_FILE");
    let any = [
        "JWT_ALGORITHM",
        "JWT_AUDIENCE",
        "JWT_ISSUER",
        "JWT_ROLE_CLAIM",
    ]
    .into_iter()
    .find(|n| s.get(n).is_some());
    let (key, algorithm) = match (secret, public) {
        (None, None) => {
            if let Some(n) = any {
                return Err(ConfigError::Missing {
                    setting: "JWT_SECRET".into(),
                    reason: format!(
                        "{n} is set, but no JWT key (JWT_SECRET or JWT_PUBLIC_KEY_FILE)"
                    ),
                });
            }
            return Ok(None);
        }
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                "JWT_PUBLIC_KEY_FILE",
                public.unwrap_or_default(),
                "set JWT_SECRET or JWT_PUBLIC_KEY_FILE, not both (which key would decide is ambiguous)",
            ));
        }
        (Some(secret), None) => {
            if secret.len() < 32 {
                return Err(ConfigError::invalid(
                    "JWT_SECRET",
                    "<redacted>",
                    "must be at least 32 characters",
                ));
            }
            let alg = match s.get("JWT_ALGORITHM").unwrap_or("HS256") {
                "HS256" => Algorithm::HS256,
                "HS384" => Algorithm::HS384,
                "HS512" => Algorithm::HS512,
                other => {
                    return Err(ConfigError::invalid(
                        "JWT_ALGORITHM",
                        other,
                        "with JWT_SECRET: HS256, HS384 or HS512",
                    ));
                }
            };
            let key = DecodingKey::from_secret(secret.as_bytes())
                .map_err(|e| ConfigError::invalid("JWT_SECRET", "<redacted>", e.to_string()))?;
            (key, alg)
        }
        (None, Some(file)) => {
            let path = PathBuf::from(file);
            let pem = std::fs::read(&path).map_err(|e| ConfigError::File {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let raw = s.get("JWT_ALGORITHM").ok_or_else(|| ConfigError::Missing {
                setting: "JWT_ALGORITHM".into(),
                reason:
                    "with JWT_PUBLIC_KEY_FILE: RS256, RS384, RS512, PS256, ES256, ES384 or EdDSA"
                        .into(),
            })?;
            let alg = match raw {
                "RS256" => Algorithm::RS256,
                "RS384" => Algorithm::RS384,
                "RS512" => Algorithm::RS512,
                "PS256" => Algorithm::PS256,
                "ES256" => Algorithm::ES256,
                "ES384" => Algorithm::ES384,
                "EdDSA" => Algorithm::EdDSA,
                other => {
                    return Err(ConfigError::invalid(
                        "JWT_ALGORITHM",
                        other,
                        "with JWT_PUBLIC_KEY_FILE: RS256, RS384, RS512, PS256, ES256, ES384 or EdDSA",
                    ));
                }
            };
            let key = match alg {
                Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
                Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                _ => DecodingKey::from_rsa_pem(&pem),
            }
            .map_err(|e| ConfigError::File {
                path: path.clone(),
                reason: format!("not a {raw} public key in PEM: {e}"),
            })?;
            (key, alg)
        }
    };
    let audience = s.required(
        "JWT_AUDIENCE",
        "JWTs are only accepted for a named audience",
    )?;
    Ok(Some(JwtConfig {
        algorithm,
        key,
        audience: audience.to_owned(),
        issuer: s.get("JWT_ISSUER").map(str::to_owned),
        role_claim: s.get("JWT_ROLE_CLAIM").unwrap_or("role").to_owned(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTEN: Listen = Listen {
        bind: "BIND",
        port: "PORT",
        default_port: 5001,
    };

    fn cfg(pairs: &[(&str, &str)]) -> Result<HttpConfig, ConfigError> {
        HttpConfig::from_settings(&Settings::from_pairs(pairs.iter().copied()), LISTEN)
    }

    #[test]
    fn protected_mode_is_the_default_and_keeps_today_s_behaviour() {
        let c = cfg(&[]).unwrap_or_else(|e| panic!("{e}"));
        assert!(!c.secured());
        assert_eq!(c.rate, None);
        assert!(c.audit.is_none());
        assert_eq!(c.serve.max_connections_per_ip, None);
        assert_eq!((c.bind.as_str(), c.port), ("127.0.0.1", 5001));
    }

    #[test]
    fn a_public_bind_needs_credentials_and_tls() {
        let e = cfg(&[("BIND", "0.0.0.0")]).unwrap_err().to_string();
        assert!(e.contains("BIND") && e.contains("credentials"), "{e}");
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let keys = dir.path().join("keys");
        let (_, hash) = crate::auth::new_key();
        std::fs::write(&keys, format!("a admin {hash}\n")).unwrap_or_default();
        let k = keys.to_string_lossy().into_owned();
        let e = cfg(&[("BIND", "0.0.0.0"), ("API_KEYS_FILE", &k)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("BIND") && e.contains("TLS"), "{e}");
        let c = cfg(&[("API_KEYS_FILE", &k)]).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.secured());
        assert_eq!(
            c.rate
                .as_ref()
                .and_then(|r| r.write.as_ref())
                .map(|p| p.quotas().len()),
            Some(2)
        );
        assert_eq!(c.serve.max_connections_per_ip, Some(256));
        assert!(c.audit.is_some());
    }

    #[test]
    fn bad_settings_are_named() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let bad_keys = dir.path().join("keys");
        std::fs::write(&bad_keys, "writer write sha256:zz\n").unwrap_or_default();
        let bk = bad_keys.to_string_lossy().into_owned();
        for (pairs, needle) in [
            (vec![("BIND", "example.com")], "BIND"),
            (vec![("RATE_LIMIT", "lots")], "RATE_LIMIT"),
            (
                vec![("RATE_LIMIT_WRITE", "5/fortnight")],
                "RATE_LIMIT_WRITE",
            ),
            (
                vec![("API_KEYS_FILE", "/nonexistent/keys")],
                "/nonexistent/keys",
            ),
            (vec![("API_KEYS_FILE", bk.as_str())], "line 1"),
            (vec![("JWT_AUDIENCE", "x")], "JWT_SECRET"),
            (vec![("JWT_SECRET", "short")], "JWT_SECRET"),
            (vec![("JWT_SECRET", &"s".repeat(32))], "JWT_AUDIENCE"),
            (vec![("TLS_CERT_FILE", "/c.pem")], "TLS_KEY_FILE"),
            (
                vec![("TLS_CERT_FILE", "/c.pem"), ("TLS_KEY_FILE", "/k.pem")],
                "/c.pem",
            ),
            (
                vec![("HEAD_READ_TIMEOUT_SEC", "0")],
                "HEAD_READ_TIMEOUT_SEC",
            ),
        ] {
            let e = cfg(&pairs).map(|_| ()).unwrap_err().to_string();
            assert!(e.contains(needle), "{pairs:?}: {e}");
        }
    }
}
