//! The gateway's configuration (SPEC CAP-12), resolved from [`bulwark_config::Settings`].

use std::time::Duration;

use bulwark_config::{ConfigError, Environment, Settings};
use bulwark_core::Limits;
use bulwark_core::ae::AE_BUCKETS;
use bulwark_http::{HttpConfig, Listen};
use bulwark_placement::{
    DEFAULT_REPLICATION, DEFAULT_VNODES, Layout, LayoutState, MAX_VNODES, NodeSpec, Placement,
};
use bulwark_replica::{Dialect, ReplicaSpec, ReplicaTls};
use bulwark_resilience::breaker::BreakerConfig;

use crate::anti_entropy::AntiEntropyConfig;
use crate::mode::Mode;

/// The example secret shipped in `.env.example`; refused in production.
pub const EXAMPLE_SECRET_KEY: &str = "change-me-to-a-64-hex-char-secret";

/// The secret used in development when `SECRET_KEY` is unset. Shared by every gateway
/// started in development so read-your-writes works across them; refused in production.
const DEV_SECRET_KEY: &str = "bulwark-development-only-insecure-secret-key";

/// Everything a gateway needs to run. Every field is resolved and validated before the
/// gateway binds a port.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Service name in logs and `bulwark ctl` (`app_ap`, `app_cp`, …). `GATEWAY_NAME`.
    pub name: String,
    /// Default consistency mode for requests that do not choose one. `MODE`.
    pub mode: Mode,
    /// The listener, its limits and its security: `BIND` (default 127.0.0.1), `PORT`
    /// (default by mode; 0 picks a free one), `API_KEYS_FILE`, `TLS_*`, `RATE_LIMIT*`,
    /// `AUDIT_LOG`, … (docs/design/security.md).
    pub http: HttpConfig,
    /// The replicas, in preference order (the first is the primary). `REPLICAS`.
    pub replicas: Vec<ReplicaSpec>,
    /// Where keys live: `REPLICAS` as a consistent-hash ring of `VNODES` virtual nodes
    /// each (default 150) with `REPLICATION_FACTOR` replicas per key (default 3, or every
    /// replica when there are fewer: then every replica holds every key, as before
    /// sharding); or the layout in `LAYOUT_FILE`. docs/design/sharding.md.
    pub placement: Placement,
    /// The version of the layout `placement` comes from (1 when built from the settings).
    pub layout_version: u64,
    /// What the replicas are: `bulwark` nodes or real `redis` servers. `BACKEND`.
    pub backend: Dialect,
    /// TLS to the replicas: `REPLICA_TLS_CA_FILE` (the CA their certificates chain to)
    /// and, when they require client certificates, `REPLICA_TLS_CERT_FILE` and
    /// `REPLICA_TLS_KEY_FILE`. Unset: plain RESP.
    pub replica_tls: Option<ReplicaTls>,
    /// Bound on every call to a replica. `NETWORK_TIMEOUT_SEC` (default 0.2).
    pub network_timeout: Duration,
    /// Staleness above which a read reports `INCONSISTENT/STALE`. `MAX_STALENESS_MS`.
    pub max_staleness_ms: u64,
    /// Circuit breaker settings (`CB_FAILURE_THRESHOLD`, `CB_OPEN_TIMEOUT_SEC`).
    pub breaker: BreakerConfig,
    /// Signs read-your-writes session cookies. `SECRET_KEY`.
    pub secret_key: Vec<u8>,
    /// Whether the secret is insecure: the development default or the example value
    /// (allowed in development, with a warning; refused in production).
    pub secret_is_default: bool,
    /// `ENVIRONMENT`.
    pub environment: Environment,
    /// Key and value size limits. `MAX_KEY_BYTES`, `MAX_VALUE_BYTES`.
    pub limits: Limits,
    /// This gateway's HLC writer id. `GATEWAY_ID` (default: random).
    pub writer_id: u32,
    /// Time allowed to drain in-flight requests and hints on shutdown.
    /// `SHUTDOWN_TIMEOUT_SEC` (default 10).
    pub shutdown_timeout: Duration,
    /// Interval of the background replica health probe. `HEALTH_INTERVAL_SEC` (default 1).
    pub health_interval: Duration,
    /// Age after which an undecided prepared write may be aborted by a resolver.
    /// `IN_DOUBT_TIMEOUT_MS` (default: 10 × network timeout, at least 2 s).
    pub in_doubt_timeout: Duration,
    /// Hints kept per replica before the oldest are dropped. `MAX_HINTS` (default 100000).
    pub max_hints: usize,
    /// Enables the chaos admin endpoint (`/admin/chaos/clock`) for requests bearing this
    /// token. `CHAOS_TOKEN` (default: unset, fault injection refused). `bulwark up` sets a
    /// fresh random one per run.
    pub chaos_token: Option<String>,
    /// Data requests served at once; beyond it requests are shed with 503 `OVERLOADED`
    /// and `Retry-After` rather than queued without bound. `MAX_IN_FLIGHT` (default 4096).
    pub max_in_flight: usize,
    /// How long an AP write waits, after its first acknowledgement, for the other
    /// replicas before answering (those still in flight are reported `pending` and
    /// finished in the background). `AP_ACK_WAIT_MS` (default 1).
    pub ap_ack_wait: Duration,
    /// Anti-entropy settings (`ANTI_ENTROPY_*`).
    pub anti_entropy: AntiEntropyConfig,
}

/// Where keys live, from `LAYOUT_FILE` (the layout `bulwark up` keeps: its nodes, weights,
/// zones, N and version; `REPLICAS` then says how this gateway reaches each of its nodes)
/// or else from `REPLICATION_FACTOR` and `VNODES` over `REPLICAS`; validated as a ring.
/// Returns the placement, its nodes in `REPLICAS` order, and the layout's version.
fn placement(
    s: &Settings,
    replicas: &[ReplicaSpec],
    mode: Mode,
    raw_replicas: &str,
) -> Result<(Placement, u64), ConfigError> {
    let (placement, version) = match s.get("LAYOUT_FILE") {
        Some(path) => {
            for setting in ["REPLICATION_FACTOR", "VNODES"] {
                if let Some(v) = s.get(setting) {
                    return Err(ConfigError::invalid(
                        setting,
                        v,
                        "LAYOUT_FILE sets it; set one or the other",
                    ));
                }
            }
            layout_placement(path, replicas, raw_replicas)?
        }
        None => {
            let placement = Placement {
                replication_factor: s.int_in(
                    "REPLICATION_FACTOR",
                    DEFAULT_REPLICATION.min(replicas.len()),
                    1..=replicas.len(),
                )?,
                vnodes: s.int_in("VNODES", DEFAULT_VNODES, 1..=MAX_VNODES)?,
                nodes: replicas
                    .iter()
                    .map(|r| NodeSpec::new(r.name.clone(), r.addr.clone()))
                    .collect(),
            };
            (placement, 1)
        }
    };
    let n = placement.replication_factor;
    if mode == Mode::Quorum && n < 3 {
        let (setting, value) = match s.get("LAYOUT_FILE") {
            Some(path) => ("LAYOUT_FILE", path.to_owned()),
            None => ("REPLICATION_FACTOR", n.to_string()),
        };
        return Err(ConfigError::invalid(
            setting,
            &value,
            format!("quorum mode needs at least 3 replicas per key; the layout has N = {n}"),
        ));
    }
    placement
        .validate()
        .map_err(|e| ConfigError::invalid("REPLICAS", raw_replicas, e.to_string()))?;
    Ok((placement, version))
}

/// The stable placement of the layout in `path`, with this gateway's addresses of its
/// nodes (from `REPLICAS`, which must list exactly those nodes) in `REPLICAS` order.
fn layout_placement(
    path: &str,
    replicas: &[ReplicaSpec],
    raw_replicas: &str,
) -> Result<(Placement, u64), ConfigError> {
    let bad = |why: String| ConfigError::invalid("LAYOUT_FILE", path, why);
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let layout = Layout::from_json(&text).map_err(|e| bad(e.to_string()))?;
    let LayoutState::Stable(stored) = &layout.state else {
        return Err(bad(format!(
            "layout version {} is a transition; this gateway routes stable layouts only",
            layout.version
        )));
    };
    let mut nodes = Vec::with_capacity(replicas.len());
    for r in replicas {
        let node = stored.node(&r.name).ok_or_else(|| {
            ConfigError::invalid(
                "REPLICAS",
                raw_replicas,
                format!(
                    "lists {}, which layout version {} in {path} does not have",
                    r.name, layout.version
                ),
            )
        })?;
        nodes.push(NodeSpec {
            addr: r.addr.clone(),
            ..node.clone()
        });
    }
    if let Some(missing) = stored
        .nodes
        .iter()
        .find(|n| replicas.iter().all(|r| r.name != n.name))
    {
        return Err(ConfigError::invalid(
            "REPLICAS",
            raw_replicas,
            format!(
                "has no address for node {} of layout version {} in {path}",
                missing.name, layout.version
            ),
        ));
    }
    Ok((
        Placement {
            nodes,
            ..stored.clone()
        },
        layout.version,
    ))
}

/// `REPLICA_TLS_*`, checked by loading the files (an error names the setting or file).
fn replica_tls(s: &Settings) -> Result<Option<ReplicaTls>, ConfigError> {
    let path = |name: &str| s.get(name).map(std::path::PathBuf::from);
    let (ca, cert, key) = (
        path("REPLICA_TLS_CA_FILE"),
        path("REPLICA_TLS_CERT_FILE"),
        path("REPLICA_TLS_KEY_FILE"),
    );
    let identity = match (cert, key) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, Some(_)) => {
            return Err(ConfigError::Missing {
                setting: "REPLICA_TLS_CERT_FILE".into(),
                reason: "a client key needs its certificate".into(),
            });
        }
        (Some(_), None) => {
            return Err(ConfigError::Missing {
                setting: "REPLICA_TLS_KEY_FILE".into(),
                reason: "a client certificate needs its private key".into(),
            });
        }
    };
    let Some(ca) = ca else {
        if identity.is_some() {
            return Err(ConfigError::Missing {
                setting: "REPLICA_TLS_CA_FILE".into(),
                reason: "TLS to the replicas needs the CA their certificates chain to".into(),
            });
        }
        return Ok(None);
    };
    bulwark_tls::client_config(
        &ca,
        identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
    )?;
    Ok(Some(ReplicaTls { ca, identity }))
}

impl GatewayConfig {
    /// The longest a prepare phase may take before the writer must abort instead of
    /// committing: half the in-doubt timeout, so resolvers (which wait the full in-doubt
    /// timeout) never race a writer that could still commit.
    pub fn prepare_deadline(&self) -> Duration {
        self.in_doubt_timeout / 2
    }

    /// Resolves and validates the configuration.
    pub fn from_settings(s: &Settings) -> Result<GatewayConfig, ConfigError> {
        let mode: Mode = s.parse_or("MODE", Mode::Ap)?;
        let environment: Environment = s.parse_or("ENVIRONMENT", Environment::Development)?;
        let raw_replicas = s
            .get("REPLICAS")
            .unwrap_or("db_g1=127.0.0.1:6401,db_g2=127.0.0.1:6402");
        let replicas = ReplicaSpec::parse_list(raw_replicas)
            .map_err(|e| ConfigError::invalid("REPLICAS", raw_replicas, e.to_string()))?;
        if replicas.is_empty() {
            return Err(ConfigError::invalid(
                "REPLICAS",
                raw_replicas,
                "at least one replica is required",
            ));
        }
        if mode == Mode::Quorum && replicas.len() < 3 {
            return Err(ConfigError::invalid(
                "MODE",
                "quorum",
                format!(
                    "quorum mode needs at least 3 replicas; REPLICAS has {}",
                    replicas.len()
                ),
            ));
        }
        let (placement, layout_version) = placement(s, &replicas, mode, raw_replicas)?;
        let network_timeout = s.seconds_or(
            "NETWORK_TIMEOUT_SEC",
            Duration::from_millis(200),
            Duration::from_secs(60),
        )?;
        let (secret_key, secret_is_default) = match s.get("SECRET_KEY") {
            Some(k) if environment == Environment::Production && k == EXAMPLE_SECRET_KEY => {
                return Err(ConfigError::invalid(
                    "SECRET_KEY",
                    "<redacted>",
                    "the example value from .env.example is refused in production; generate one with `openssl rand -hex 32`",
                ));
            }
            Some(k) if environment == Environment::Production && k.len() < 32 => {
                return Err(ConfigError::invalid(
                    "SECRET_KEY",
                    "<redacted>",
                    "must be at least 32 characters in production",
                ));
            }
            Some(k) => (k.as_bytes().to_vec(), k == EXAMPLE_SECRET_KEY),
            None if environment == Environment::Production => {
                return Err(ConfigError::Missing {
                    setting: "SECRET_KEY".into(),
                    reason: "required when ENVIRONMENT=production (signs session cookies)".into(),
                });
            }
            None => (DEV_SECRET_KEY.as_bytes().to_vec(), true),
        };
        let in_doubt_default = (network_timeout * 10).max(Duration::from_secs(2));
        let in_doubt_ms: u64 = s.int_in(
            "IN_DOUBT_TIMEOUT_MS",
            in_doubt_default.as_millis() as u64,
            1..=3_600_000,
        )?;
        let in_doubt_timeout = Duration::from_millis(in_doubt_ms);
        if in_doubt_timeout < network_timeout * 4 {
            return Err(ConfigError::invalid(
                "IN_DOUBT_TIMEOUT_MS",
                &in_doubt_ms.to_string(),
                "must be at least 4 × NETWORK_TIMEOUT_SEC (a prepare phase must fit in half of it)",
            ));
        }
        let limits = Limits {
            max_key_bytes: s.int_in("MAX_KEY_BYTES", 1024usize, 1..=65_536)?,
            max_value_bytes: s.int_in("MAX_VALUE_BYTES", 1024 * 1024usize, 1..=64 * 1024 * 1024)?,
        };
        let name = s
            .get("GATEWAY_NAME")
            .map(str::to_string)
            .unwrap_or_else(|| format!("app_{}", mode.as_str().to_ascii_lowercase()));
        Ok(GatewayConfig {
            name,
            mode,
            http: HttpConfig::from_settings(
                s,
                Listen {
                    bind: "BIND",
                    port: "PORT",
                    default_port: mode.default_port(),
                },
            )?,
            replicas,
            placement,
            layout_version,
            backend: s.parse_or("BACKEND", Dialect::Bulwark)?,
            replica_tls: replica_tls(s)?,
            network_timeout,
            max_staleness_ms: s.int_in("MAX_STALENESS_MS", 500u64, 1..=86_400_000)?,
            breaker: BreakerConfig {
                failure_threshold: s.int_in("CB_FAILURE_THRESHOLD", 3u32, 1..=1000)?,
                open_timeout: s.seconds_or(
                    "CB_OPEN_TIMEOUT_SEC",
                    Duration::from_secs(10),
                    Duration::from_secs(3600),
                )?,
                half_open_max_probes: 1,
            },
            secret_key,
            secret_is_default,
            environment,
            limits,
            writer_id: s.parse_or("GATEWAY_ID", rand::random::<u32>())?,
            shutdown_timeout: s.seconds_or(
                "SHUTDOWN_TIMEOUT_SEC",
                Duration::from_secs(10),
                Duration::from_secs(600),
            )?,
            health_interval: s.seconds_or(
                "HEALTH_INTERVAL_SEC",
                Duration::from_secs(1),
                Duration::from_secs(600),
            )?,
            in_doubt_timeout,
            max_hints: s.int_in("MAX_HINTS", 100_000usize, 1..=10_000_000)?,
            max_in_flight: s.int_in("MAX_IN_FLIGHT", 4096usize, 1..=1_000_000)?,
            ap_ack_wait: Duration::from_millis(s.int_in("AP_ACK_WAIT_MS", 1u64, 0..=60_000)?),
            anti_entropy: AntiEntropyConfig {
                interval: match s.int_in("ANTI_ENTROPY_INTERVAL_SEC", 30u64, 0..=86_400)? {
                    0 => None,
                    secs => Some(Duration::from_secs(secs)),
                },
                timeout: s.seconds_or(
                    "ANTI_ENTROPY_TIMEOUT_SEC",
                    Duration::from_secs(5),
                    Duration::from_secs(600),
                )?,
                max_buckets: s.int_in("ANTI_ENTROPY_MAX_BUCKETS", 512usize, 1..=AE_BUCKETS)?,
                max_keys: s.int_in("ANTI_ENTROPY_MAX_KEYS", 10_000usize, 1..=10_000_000)?,
            },
            chaos_token: match s.get("CHAOS_TOKEN") {
                None | Some("") => None,
                Some(t) if t.len() < 16 => {
                    return Err(ConfigError::invalid(
                        "CHAOS_TOKEN",
                        "<redacted>",
                        "must be at least 16 characters",
                    ));
                }
                Some(t) => Some(t.to_owned()),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Result<GatewayConfig, ConfigError> {
        GatewayConfig::from_settings(&Settings::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn defaults_match_the_seed() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.mode, Mode::Ap);
        assert_eq!(c.http.port, 5001);
        assert_eq!(c.network_timeout, Duration::from_millis(200));
        assert_eq!(c.max_staleness_ms, 500);
        assert_eq!(c.breaker.failure_threshold, 3);
        assert_eq!(c.breaker.open_timeout, Duration::from_secs(10));
        assert_eq!(c.replicas.len(), 2);
        assert!(c.secret_is_default);
        assert_eq!(c.anti_entropy.interval, Some(Duration::from_secs(30)));
        let off = cfg(&[("ANTI_ENTROPY_INTERVAL_SEC", "0")]).unwrap();
        assert_eq!(off.anti_entropy.interval, None);
    }

    #[test]
    fn bad_settings_are_named() {
        for (k, v) in [
            ("MODE", "eventual"),
            ("NETWORK_TIMEOUT_SEC", "fast"),
            ("CB_FAILURE_THRESHOLD", "0"),
            ("REPLICAS", "db_g1"),
            ("PORT", "99999"),
            ("BACKEND", "mongo"),
            ("ANTI_ENTROPY_INTERVAL_SEC", "-1"),
            ("ANTI_ENTROPY_MAX_BUCKETS", "5000"),
        ] {
            let e = cfg(&[(k, v)]).unwrap_err().to_string();
            assert!(e.contains(k), "{k}={v}: {e}");
        }
    }

    #[test]
    fn production_refuses_missing_or_example_secrets() {
        let e = cfg(&[("ENVIRONMENT", "production")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("SECRET_KEY"), "{e}");
        let e = cfg(&[
            ("ENVIRONMENT", "production"),
            ("SECRET_KEY", EXAMPLE_SECRET_KEY),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("SECRET_KEY") && !e.contains(EXAMPLE_SECRET_KEY),
            "{e}"
        );
        let ok = cfg(&[
            ("ENVIRONMENT", "production"),
            ("SECRET_KEY", &"a".repeat(64)),
        ])
        .unwrap();
        assert!(!ok.secret_is_default);
    }

    #[test]
    fn quorum_needs_three_replicas() {
        let e = cfg(&[("MODE", "quorum")]).unwrap_err().to_string();
        assert!(e.contains("MODE"), "{e}");
        let c = cfg(&[
            ("MODE", "quorum"),
            ("REPLICAS", "a=127.0.0.1:1,b=127.0.0.1:2,c=127.0.0.1:3"),
        ])
        .unwrap();
        assert_eq!(c.http.port, 5003);
    }

    #[test]
    fn replication_factor_defaults_to_three_and_is_bounded() {
        let five = "a=127.0.0.1:1,b=127.0.0.1:2,c=127.0.0.1:3,d=127.0.0.1:4,e=127.0.0.1:5";
        let c = cfg(&[("REPLICAS", five)]).unwrap();
        assert_eq!(c.placement.replication_factor, 3);
        assert_eq!(c.placement.vnodes, 150);
        assert_eq!(cfg(&[]).unwrap().placement.replication_factor, 2);
        let e = cfg(&[("REPLICAS", five), ("REPLICATION_FACTOR", "6")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("REPLICATION_FACTOR"), "{e}");
        let e = cfg(&[
            ("REPLICAS", five),
            ("MODE", "quorum"),
            ("REPLICATION_FACTOR", "2"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("REPLICATION_FACTOR") && e.contains("quorum"),
            "{e}"
        );
    }

    #[test]
    fn a_layout_file_gives_the_ring_and_replicas_give_the_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("layout.json");
        let placement = Placement {
            replication_factor: 2,
            vnodes: 64,
            nodes: ["a", "b", "c"]
                .iter()
                .enumerate()
                .map(|(i, n)| NodeSpec {
                    name: (*n).to_owned(),
                    addr: format!("10.0.0.{i}:6379"),
                    weight: if *n == "c" { 2.0 } else { 1.0 },
                    zone: Some(format!("z{i}")),
                })
                .collect(),
        };
        let mut layout = Layout::stable(placement.clone()).unwrap();
        layout.version = 7;
        std::fs::write(&path, layout.to_json()).unwrap();
        let file = path.to_str().unwrap();
        // REPLICAS in another order, through other addresses (a gateway's proxies).
        let replicas = "c=127.0.0.1:3,a=127.0.0.1:1,b=127.0.0.1:2";
        let c = cfg(&[("LAYOUT_FILE", file), ("REPLICAS", replicas)]).unwrap();
        assert_eq!(c.layout_version, 7);
        assert_eq!(c.placement.replication_factor, 2);
        assert_eq!(c.placement.vnodes, 64);
        let names: Vec<&str> = c.placement.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["c", "a", "b"]);
        assert_eq!(c.placement.nodes[0].addr, "127.0.0.1:3");
        assert_eq!(c.placement.nodes[0].weight, 2.0);
        assert_eq!(c.placement.nodes[0].zone.as_deref(), Some("z2"));

        let refused = |pairs: &[(&str, &str)], setting: &str, what: &str| {
            let e = cfg(pairs).unwrap_err().to_string();
            assert!(e.contains(setting) && e.contains(what), "{e}");
        };
        refused(
            &[
                ("LAYOUT_FILE", file),
                ("REPLICAS", replicas),
                ("MODE", "quorum"),
            ],
            "LAYOUT_FILE",
            "quorum mode needs at least 3 replicas per key; the layout has N = 2",
        );
        refused(
            &[
                ("LAYOUT_FILE", file),
                ("REPLICAS", replicas),
                ("REPLICATION_FACTOR", "2"),
            ],
            "REPLICATION_FACTOR",
            "set one or the other",
        );
        refused(
            &[
                ("LAYOUT_FILE", file),
                ("REPLICAS", "a=127.0.0.1:1,b=127.0.0.1:2"),
            ],
            "REPLICAS",
            "no address for node c",
        );
        refused(
            &[
                ("LAYOUT_FILE", file),
                (
                    "REPLICAS",
                    "a=127.0.0.1:1,b=127.0.0.1:2,c=127.0.0.1:3,d=127.0.0.1:4",
                ),
            ],
            "REPLICAS",
            "lists d",
        );
        let transition = Layout {
            state: LayoutState::Transition {
                from: placement.clone(),
                to: placement,
            },
            ..layout
        };
        std::fs::write(&path, transition.to_json()).unwrap();
        refused(
            &[("LAYOUT_FILE", file), ("REPLICAS", replicas)],
            "LAYOUT_FILE",
            "transition",
        );
        std::fs::write(&path, "{}").unwrap();
        refused(
            &[("LAYOUT_FILE", file), ("REPLICAS", replicas)],
            "LAYOUT_FILE",
            "not a layout",
        );
        refused(
            &[
                ("LAYOUT_FILE", "/nonexistent/layout.json"),
                ("REPLICAS", replicas),
            ],
            "LAYOUT_FILE",
            "No such file",
        );
    }
}
