//! The commerce service's configuration, resolved from [`bulwark_config::Settings`]
//! (flags over environment over `.env` over the config file). Every field is validated
//! before the service binds a port; an error names its setting.

use std::str::FromStr;
use std::time::Duration;

use bulwark_config::{ConfigError, Settings};
use bulwark_resilience::breaker::BreakerConfig;

use crate::db::{DbConfig, Dialect};

/// How a purchase reserves stock (SHOP-2). Every strategy ends in the same guarded
/// decrement (docs/ARCHITECTURE.md, purchase invariant 1); they differ in what they do
/// before it and how many database round trips a purchase costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// One writer task per product merges queued reservations into one transaction
    /// (group commit). The default: the fastest, and correct by the database guard.
    Batched,
    /// `SELECT … FOR UPDATE` on the product row, then the decrement (the seed's layer 2).
    RowLock,
    /// Read the version, decrement only if it is unchanged, retry on conflict (layer 3).
    Optimistic,
    /// Atomic check-and-decrement in Redis (Lua), then the database (layer 4).
    RedisLua,
    /// The seed's four layers together: Redis lock, Lua decrement, row lock, version.
    Layered,
}

impl Strategy {
    /// The name used in flags, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Batched => "batched",
            Strategy::RowLock => "row-lock",
            Strategy::Optimistic => "optimistic",
            Strategy::RedisLua => "redis-lua",
            Strategy::Layered => "layered",
        }
    }

    /// Every strategy (tests run the same checks on each).
    pub const ALL: [Strategy; 5] = [
        Strategy::Batched,
        Strategy::RowLock,
        Strategy::Optimistic,
        Strategy::RedisLua,
        Strategy::Layered,
    ];

    /// Whether the strategy needs Redis.
    pub fn needs_redis(self) -> bool {
        matches!(self, Strategy::RedisLua | Strategy::Layered)
    }
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Strategy::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                "expected one of batched, row-lock, optimistic, redis-lua, layered".to_string()
            })
    }
}

/// Where cached catalog reads live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheMode {
    /// In this process only (the default; nothing to run).
    Memory,
    /// In this process, backed by Redis (shared by several instances).
    Redis,
}

impl FromStr for CacheMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "memory" => Ok(CacheMode::Memory),
            "redis" => Ok(CacheMode::Redis),
            _ => Err("expected memory or redis".to_string()),
        }
    }
}

/// The payment provider simulator's behaviour.
#[derive(Clone, Debug)]
pub struct PaymentConfig {
    /// Simulated provider response time per call, its own ledger write included (the
    /// write runs during it). `SHOP_PAYMENT_LATENCY_MS` (default 2).
    pub latency: Duration,
    /// Share of charges declined, decided per order from the seed (so a retried charge
    /// gets the same answer). `SHOP_PAYMENT_FAILURE_RATE` (0.0–1.0, default 0).
    pub failure_rate: f64,
    /// Seed of the decline decisions. `SHOP_PAYMENT_SEED` (default 42).
    pub seed: u64,
    /// Bound on one call to the provider (a step timeout). `SHOP_PAYMENT_TIMEOUT_MS`
    /// (default 5000).
    pub timeout: Duration,
}

/// Everything the service needs to run.
#[derive(Clone, Debug)]
pub struct ShopConfig {
    /// The listener, its limits and its security: `SHOP_BIND` (default 127.0.0.1),
    /// `SHOP_PORT` (default 8080; 0 picks a free one and prints it), `API_KEYS_FILE`,
    /// `TLS_*`, `RATE_LIMIT*`, `AUDIT_LOG`, … (docs/design/security.md).
    pub http: bulwark_http::HttpConfig,
    /// Database connections and their bounds.
    pub db: DbConfig,
    /// Purchase strategy. `SHOP_STRATEGY` (default batched).
    pub strategy: Strategy,
    /// Redis, for `redis-lua`, `layered` and the Redis cache. `SHOP_REDIS_URL`.
    pub redis_url: Option<String>,
    /// Cache placement. `SHOP_CACHE` (memory or redis; default memory).
    pub cache: CacheMode,
    /// NATS server for the outbox relay. `SHOP_NATS_URL` (default: embedded bus).
    pub nats_url: Option<String>,
    /// JetStream stream (created if missing). `SHOP_NATS_STREAM` (default SHOP_EVENTS).
    pub nats_stream: String,
    /// Payment simulator.
    pub payment: PaymentConfig,
    /// Purchase requests in flight at once; beyond it 503 `OVERLOADED` with `Retry-After`.
    /// `SHOP_MAX_IN_FLIGHT` (default 8192).
    pub max_in_flight: usize,
    /// Reservations queued per product writer; beyond it 503. `SHOP_QUEUE_PER_PRODUCT`
    /// (default 8192).
    pub queue_per_product: usize,
    /// Longest a `layered` purchase waits for its product's lock (this process's FIFO
    /// lane, then the Redis lock) before 503. `SHOP_LOCK_WAIT_MS` (default 2000).
    pub lock_wait: Duration,
    /// Most operations merged into one transaction. `SHOP_BATCH_MAX` (default 512).
    pub batch_max: usize,
    /// How long a purchase request waits for its saga before answering 202 PENDING.
    /// `SHOP_SYNC_WAIT_MS` (default 2000).
    pub sync_wait: Duration,
    /// Age after which an unsettled reservation is compensated. `SHOP_RESERVATION_TTL_SEC`
    /// (default 60).
    pub reservation_ttl: Duration,
    /// Attempts of a saga step before it compensates (forward) or dead-letters
    /// (compensation). `SHOP_SAGA_MAX_ATTEMPTS` (default 5).
    pub saga_max_attempts: u32,
    /// First retry delay cap of a saga step (doubles up to 2 s). `SHOP_SAGA_BACKOFF_MS`
    /// (default 20).
    pub saga_backoff: Duration,
    /// Interval of the recovery sweeper and the reconciliation job.
    /// `SHOP_SWEEP_INTERVAL_SEC` (default 5).
    pub sweep_interval: Duration,
    /// Product details cache TTL. `SHOP_DETAILS_TTL_SEC` (default 300, the seed's).
    pub details_ttl: Duration,
    /// Stock cache TTL. `SHOP_STOCK_TTL_SEC` (default 5, the seed's).
    pub stock_ttl: Duration,
    /// Time allowed to drain requests and sagas on shutdown. `SHOP_SHUTDOWN_TIMEOUT_SEC`.
    pub shutdown_timeout: Duration,
}

impl ShopConfig {
    /// Resolves and validates the configuration.
    pub fn from_settings(s: &Settings) -> Result<ShopConfig, ConfigError> {
        let url = s
            .get("SHOP_DATABASE_URL")
            .unwrap_or("sqlite://./data/shop.db")
            .to_string();
        let dialect = Dialect::of_url(&url).ok_or_else(|| {
            ConfigError::invalid(
                "SHOP_DATABASE_URL",
                &redact(&url),
                "expected sqlite://PATH, postgres://… or mysql://…",
            )
        })?;
        let replica_url = s.get("SHOP_REPLICA_URL").map(str::to_string);
        if let Some(r) = &replica_url
            && Dialect::of_url(r) != Some(dialect)
        {
            return Err(ConfigError::invalid(
                "SHOP_REPLICA_URL",
                &redact(r),
                format!("must be a {} URL like SHOP_DATABASE_URL", dialect.as_str()),
            ));
        }
        let strategy: Strategy = s.parse_or("SHOP_STRATEGY", Strategy::Batched)?;
        let redis_url = s.get("SHOP_REDIS_URL").map(str::to_string);
        if let Some(r) = &redis_url
            && !r.starts_with("redis://")
        {
            return Err(ConfigError::invalid(
                "SHOP_REDIS_URL",
                &redact(r),
                "expected redis://HOST:PORT",
            ));
        }
        if strategy.needs_redis() && redis_url.is_none() {
            return Err(ConfigError::Missing {
                setting: "SHOP_REDIS_URL".into(),
                reason: format!("strategy {} needs Redis", strategy.as_str()),
            });
        }
        let cache: CacheMode = s.parse_or("SHOP_CACHE", CacheMode::Memory)?;
        if cache == CacheMode::Redis && redis_url.is_none() {
            return Err(ConfigError::Missing {
                setting: "SHOP_REDIS_URL".into(),
                reason: "SHOP_CACHE=redis needs Redis".into(),
            });
        }
        let nats_url = s.get("SHOP_NATS_URL").map(str::to_string);
        let nats_stream = s
            .get("SHOP_NATS_STREAM")
            .unwrap_or("SHOP_EVENTS")
            .to_string();
        if nats_stream.is_empty()
            || !nats_stream
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(ConfigError::invalid(
                "SHOP_NATS_STREAM",
                &nats_stream,
                "letters, digits, '_' and '-' only",
            ));
        }
        let failure_rate: f64 = s.parse_or("SHOP_PAYMENT_FAILURE_RATE", 0.0)?;
        if !(0.0..=1.0).contains(&failure_rate) {
            return Err(ConfigError::invalid(
                "SHOP_PAYMENT_FAILURE_RATE",
                &failure_rate.to_string(),
                "expected a number from 0.0 to 1.0",
            ));
        }
        let ms = |name: &str, default: u64, max: u64| -> Result<Duration, ConfigError> {
            Ok(Duration::from_millis(s.int_in(name, default, 0..=max)?))
        };
        let positive_ms = |name: &str, default: u64, max: u64| -> Result<Duration, ConfigError> {
            Ok(Duration::from_millis(s.int_in(name, default, 1..=max)?))
        };
        let secs = |name: &str, default: u64, max: u64| -> Result<Duration, ConfigError> {
            s.seconds_or(name, Duration::from_secs(default), Duration::from_secs(max))
        };
        Ok(ShopConfig {
            http: bulwark_http::HttpConfig::from_settings(
                s,
                bulwark_http::Listen {
                    bind: "SHOP_BIND",
                    port: "SHOP_PORT",
                    default_port: 8080,
                },
            )?,
            db: DbConfig {
                url,
                replica_url,
                pool_size: s.int_in("SHOP_DB_POOL_SIZE", 16u32, 1..=1000)?,
                saga_pool_size: s.int_in("SHOP_SAGA_POOL_SIZE", 4u32, 1..=1000)?,
                timeout: secs("SHOP_DB_TIMEOUT_SEC", 5, 600)?,
                breaker: BreakerConfig {
                    failure_threshold: s.int_in("SHOP_DB_BREAKER_FAILURES", 3u32, 1..=1000)?,
                    open_timeout: secs("SHOP_DB_BREAKER_OPEN_SEC", 5, 3600)?,
                    half_open_max_probes: 1,
                },
            },
            strategy,
            redis_url,
            cache,
            nats_url,
            nats_stream,
            payment: PaymentConfig {
                latency: ms("SHOP_PAYMENT_LATENCY_MS", 2, 60_000)?,
                failure_rate,
                seed: s.parse_or("SHOP_PAYMENT_SEED", 42u64)?,
                timeout: positive_ms("SHOP_PAYMENT_TIMEOUT_MS", 5000, 600_000)?,
            },
            max_in_flight: s.int_in("SHOP_MAX_IN_FLIGHT", 8192usize, 1..=1_000_000)?,
            queue_per_product: s.int_in("SHOP_QUEUE_PER_PRODUCT", 8192usize, 1..=1_000_000)?,
            lock_wait: positive_ms("SHOP_LOCK_WAIT_MS", 2000, 600_000)?,
            batch_max: s.int_in("SHOP_BATCH_MAX", 512usize, 1..=4096)?,
            sync_wait: ms("SHOP_SYNC_WAIT_MS", 2000, 600_000)?,
            reservation_ttl: secs("SHOP_RESERVATION_TTL_SEC", 60, 86_400)?,
            saga_max_attempts: s.int_in("SHOP_SAGA_MAX_ATTEMPTS", 5u32, 1..=100)?,
            saga_backoff: positive_ms("SHOP_SAGA_BACKOFF_MS", 20, 60_000)?,
            sweep_interval: secs("SHOP_SWEEP_INTERVAL_SEC", 5, 3600)?,
            details_ttl: secs("SHOP_DETAILS_TTL_SEC", 300, 86_400)?,
            stock_ttl: secs("SHOP_STOCK_TTL_SEC", 5, 86_400)?,
            shutdown_timeout: secs("SHOP_SHUTDOWN_TIMEOUT_SEC", 10, 600)?,
        })
    }
}

/// A URL without its password, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Result<ShopConfig, ConfigError> {
        ShopConfig::from_settings(&Settings::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.http.port, 8080);
        assert_eq!(c.strategy, Strategy::Batched);
        assert_eq!(c.db.url, "sqlite://./data/shop.db");
        assert_eq!(c.payment.latency, Duration::from_millis(2));
        assert_eq!(c.details_ttl, Duration::from_secs(300));
        assert_eq!(c.stock_ttl, Duration::from_secs(5));
    }

    #[test]
    fn bad_settings_are_named() {
        for (k, v) in [
            ("SHOP_STRATEGY", "yolo"),
            ("SHOP_DATABASE_URL", "mongodb://x"),
            ("SHOP_PAYMENT_FAILURE_RATE", "1.5"),
            ("SHOP_PORT", "70000"),
            ("SHOP_MAX_IN_FLIGHT", "0"),
            ("SHOP_REDIS_URL", "http://x"),
            ("SHOP_CACHE", "disk"),
            ("SHOP_NATS_STREAM", "a.b"),
            ("SHOP_REPLICA_URL", "mysql://r"),
        ] {
            let e = cfg(&[(k, v)]).unwrap_err().to_string();
            assert!(e.contains(k), "{k}={v}: {e}");
        }
        let e = cfg(&[("SHOP_STRATEGY", "redis-lua")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("SHOP_REDIS_URL"), "{e}");
    }

    #[test]
    fn passwords_are_redacted() {
        let e = cfg(&[("SHOP_DATABASE_URL", "oracle://u:secret@h/db")])
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secret") && e.contains("u:***@h"), "{e}");
    }
}
