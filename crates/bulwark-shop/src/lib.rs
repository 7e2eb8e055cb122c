//! `bulwark shop`: the flash-sale commerce service (SPEC SHOP-1 … SHOP-6).
//!
//! Code map, bottom up: [`db`] (pools, dialect, migrations, breaker + timeout on every
//! call), [`store`] (every SQL statement of the generic path), [`pgbatch`] (the hot
//! path's batches as one PostgreSQL statement each), [`model`] (products, orders, saga steps,
//! events), [`batch`] (group commit), [`cache`] (SHOP-1), [`payment`] (the provider
//! simulator and its ledger), [`inventory`] (the purchase strategies, SHOP-2), [`saga`]
//! (SHOP-3), [`outbox`] (relay to the embedded bus or NATS JetStream), [`reconcile`]
//! (SHOP-6), [`http`] (the only module that knows HTTP). The invariants are in
//! docs/ARCHITECTURE.md, "The commerce service".

#![forbid(unsafe_code)]

pub mod batch;
pub mod cache;
pub mod config;
pub mod db;
pub mod http;
pub mod inventory;
pub mod model;
pub mod outbox;
pub mod payment;
pub mod pgbatch;
pub mod reconcile;
pub mod saga;
pub mod store;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bulwark_config::Settings;
use bulwark_obs::events::{Emit, ServiceStarted};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::cache::Cache;
use crate::config::{CacheMode, ShopConfig};
use crate::db::{Db, DbError};
use crate::inventory::{Inventory, InventoryConfig};
use crate::outbox::{Outbox, Sink};
use crate::payment::PaymentProvider;
use crate::saga::{Saga, SagaConfig};

/// Command-line flags of `bulwark shop`. Each overrides the setting named in its help
/// (environment, `.env`, config file); see `.env.example`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ShopArgs {
    /// Address to bind (SHOP_BIND; default 127.0.0.1).
    #[arg(long)]
    pub bind: Option<String>,
    /// Port; 0 picks a free one (SHOP_PORT; default 8080).
    #[arg(long)]
    pub port: Option<String>,
    /// sqlite://PATH, postgres://… or mysql://… (SHOP_DATABASE_URL; default
    /// sqlite://./data/shop.db).
    #[arg(long)]
    pub database_url: Option<String>,
    /// Read replica for catalog reads (SHOP_REPLICA_URL).
    #[arg(long)]
    pub replica_url: Option<String>,
    /// batched, row-lock, optimistic, redis-lua or layered (SHOP_STRATEGY; default batched).
    #[arg(long)]
    pub strategy: Option<String>,
    /// Redis for redis-lua, layered and the Redis cache (SHOP_REDIS_URL).
    #[arg(long)]
    pub redis_url: Option<String>,
    /// memory or redis (SHOP_CACHE; default memory).
    #[arg(long)]
    pub cache: Option<String>,
    /// NATS server; events then go to JetStream (SHOP_NATS_URL).
    #[arg(long)]
    pub nats_url: Option<String>,
    /// JetStream stream name (SHOP_NATS_STREAM; default SHOP_EVENTS).
    #[arg(long)]
    pub nats_stream: Option<String>,
    /// Simulated payment latency in ms (SHOP_PAYMENT_LATENCY_MS; default 2).
    #[arg(long)]
    pub payment_latency_ms: Option<String>,
    /// Share of charges declined, 0.0–1.0 (SHOP_PAYMENT_FAILURE_RATE; default 0).
    #[arg(long)]
    pub payment_failure_rate: Option<String>,
    /// Seed of the payment simulator's decisions (SHOP_PAYMENT_SEED; default 42).
    #[arg(long)]
    pub payment_seed: Option<String>,
    /// Purchases in flight before 503 (SHOP_MAX_IN_FLIGHT; default 8192).
    #[arg(long)]
    pub max_in_flight: Option<String>,
    /// A TOML config file with the same settings (BULWARK_CONFIG).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl ShopArgs {
    /// The merged settings: flags over environment over `.env` over the config file.
    pub fn settings(&self) -> Result<Settings, bulwark_config::ConfigError> {
        let flags = [
            ("SHOP_BIND", &self.bind),
            ("SHOP_PORT", &self.port),
            ("SHOP_DATABASE_URL", &self.database_url),
            ("SHOP_REPLICA_URL", &self.replica_url),
            ("SHOP_STRATEGY", &self.strategy),
            ("SHOP_REDIS_URL", &self.redis_url),
            ("SHOP_CACHE", &self.cache),
            ("SHOP_NATS_URL", &self.nats_url),
            ("SHOP_NATS_STREAM", &self.nats_stream),
            ("SHOP_PAYMENT_LATENCY_MS", &self.payment_latency_ms),
            ("SHOP_PAYMENT_FAILURE_RATE", &self.payment_failure_rate),
            ("SHOP_PAYMENT_SEED", &self.payment_seed),
            ("SHOP_MAX_IN_FLIGHT", &self.max_in_flight),
        ];
        Settings::for_command_line(self.config.as_deref(), &flags)
    }
}

/// Everything the handlers and background tasks share.
#[derive(Debug)]
pub struct Shop {
    /// The resolved configuration.
    pub config: ShopConfig,
    /// The database.
    pub db: Arc<Db>,
    /// The catalog cache.
    pub cache: Arc<Cache>,
    /// Stock reservations (the strategy).
    pub inventory: Arc<Inventory>,
    /// The saga orchestrator.
    pub saga: Arc<Saga>,
    /// The outbox relay.
    pub outbox: Arc<Outbox>,
    /// Purchase admission (`SHOP_MAX_IN_FLIGHT`); readiness reports its shedding.
    pub admission: bulwark_http::admission::Admission,
    /// Purchases and reconciliation hold it shared; a sale reset (or reseed) holds it
    /// exclusively, so no purchase runs while the state is wiped, and no reconciliation
    /// compares a cache entry of the old sale with the new one's row versions.
    pub sale: tokio::sync::RwLock<()>,
    /// The batching tasks (writers, settler, ledger); they stop when their queues close.
    pub tracker: TaskTracker,
}

impl Shop {
    /// Connects, migrates and starts the batching tasks (not the background loops).
    pub async fn start(config: ShopConfig) -> anyhow::Result<Arc<Shop>> {
        let db = Arc::new(Db::open(&config.db).await?);
        db.migrate()
            .await
            .context("cannot migrate the database (setting SHOP_DATABASE_URL)")?;
        let redis = match &config.redis_url {
            Some(url) => {
                let client = redis::Client::open(url.as_str())
                    .context("invalid Redis URL (setting SHOP_REDIS_URL)")?;
                let conn = tokio::time::timeout(
                    Duration::from_secs(5),
                    client.get_multiplexed_async_connection(),
                )
                .await
                .context("Redis did not answer within 5 s (setting SHOP_REDIS_URL)")?
                .context("cannot connect to Redis (setting SHOP_REDIS_URL)")?;
                Some(conn)
            }
            None => None,
        };
        let cache = Arc::new(Cache::new(
            config.details_ttl,
            config.stock_ttl,
            if config.cache == CacheMode::Redis {
                redis.clone()
            } else {
                None
            },
        ));
        let sink = match &config.nats_url {
            Some(url) => Sink::nats(url, &config.nats_stream)
                .await
                .context("setting SHOP_NATS_URL")?,
            None => Sink::embedded(),
        };
        let tracker = TaskTracker::new();
        let inventory = Arc::new(Inventory::new(
            db.clone(),
            cache.clone(),
            InventoryConfig {
                strategy: config.strategy,
                reservation_ttl: config.reservation_ttl,
                batch_max: config.batch_max,
                queue_per_product: config.queue_per_product,
                lock_wait: config.lock_wait,
            },
            if config.strategy.needs_redis() {
                redis
            } else {
                None
            },
            tracker.clone(),
        ));
        // Saga steps (ledger, confirm, compensations, recovery) use their own pool of the
        // primary: a bulkhead against the per-request strategies' transactions.
        let saga_db = Arc::new(db.for_sagas());
        let payments = Arc::new(PaymentProvider::start(
            config.payment.clone(),
            saga_db.clone(),
            config.batch_max,
            &tracker,
        ));
        let saga = Saga::start(
            saga_db,
            inventory.clone(),
            payments,
            SagaConfig {
                max_attempts: config.saga_max_attempts,
                backoff: config.saga_backoff,
                batch_max: config.batch_max,
            },
            &tracker,
        );
        let outbox = Arc::new(Outbox::new(db.clone(), sink));
        Ok(Arc::new(Shop {
            admission: bulwark_http::admission::Admission::new(config.max_in_flight),
            config,
            db,
            cache,
            inventory,
            saga,
            outbox,
            sale: tokio::sync::RwLock::new(()),
            tracker,
        }))
    }

    /// Loads every product into the cache (and the Redis counters of the Redis
    /// strategies): SHOP-1's warm start.
    pub async fn warm(&self) -> Result<usize, DbError> {
        let d = self.db.dialect;
        let mut after: Option<String> = None;
        let mut stocks = Vec::new();
        loop {
            let page = self
                .db
                .primary(async |c| store::list_products(c, d, after.as_deref(), 1000).await)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.product.id.clone());
            for row in &page {
                let p = &row.product;
                self.cache.put_details(p);
                self.cache.put_stock(&p.id, p.stock, row.version);
                stocks.push((p.id.clone(), p.stock));
            }
        }
        self.inventory
            .load_redis(&stocks)
            .await
            .map_err(DbError::Unavailable)?;
        Ok(stocks.len())
    }

    /// Runs reconciliation for every product and repairs what it found wrong (the
    /// cache and the writer's counter are reloaded from the database).
    pub async fn reconcile(&self) -> Result<Vec<reconcile::Report>, DbError> {
        let _sale = self.sale.read().await;
        let reports = reconcile::run(&self.db, &self.cache).await?;
        for r in &reports {
            if !r.consistent() {
                self.cache
                    .replace_stock(&r.product_id, r.db_stock, r.db_version);
                self.inventory.forget_writer(&r.product_id);
            }
        }
        Ok(reports)
    }
}

/// Validates the configuration (an error names the setting; nothing has started), sets
/// up logging, binds, prints `listening on ADDR` and serves until `shutdown` resolves.
pub async fn run(
    args: ShopArgs,
    shutdown: impl Future<Output = String> + Send + 'static,
) -> anyhow::Result<()> {
    let settings = args.settings()?;
    let log_level = settings.log_level()?;
    let config = ShopConfig::from_settings(&settings)?;
    let http = &config.http;
    let listener = TcpListener::bind((http.bind.as_str(), http.port))
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}:{} (setting SHOP_PORT)",
                http.bind, http.port
            )
        })?;
    println!("listening on {}", listener.local_addr()?);
    bulwark_obs::logging::init(log_level.directive());
    serve(listener, config, shutdown).await
}

/// Serves on an already-bound listener until `shutdown` resolves, then stops accepting,
/// drains in-flight requests and sagas (bounded by `SHOP_SHUTDOWN_TIMEOUT_SEC`) and
/// returns.
pub async fn serve(
    listener: TcpListener,
    config: ShopConfig,
    shutdown: impl Future<Output = String> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let shop = Shop::start(config).await?;
    let (app, security) =
        shop.config
            .http
            .stack("shop", http::observed(), http::router(shop.clone()))?;
    // A database that is down now is not fatal: readiness says so and the sweeper
    // retries; the warm-up and recovery below run again in the background loop.
    let warmed = shop.warm().await.unwrap_or(0);
    let resumed = shop.saga.sweep(true).await.unwrap_or(0);
    let c = &shop.config;
    ServiceStarted {
        service: "shop",
        addr: &bulwark_http::describe(addr, &c.http.serve),
        detail: &format!(
            "database={} replica={} strategy={} cache={:?} bus={} warmed={warmed} resumed_sagas={resumed} {}",
            shop.db.dialect.as_str(),
            shop.db.has_replica,
            c.strategy.as_str(),
            c.cache,
            shop.outbox.sink().name(),
            c.http.describe(),
        ),
    }
    .emit();

    let (stop_tx, stop_rx) = watch::channel(false);
    let relay = tokio::spawn(shop.outbox.clone().run(stop_rx.clone()));
    let sweeper = tokio::spawn(background(shop.clone(), stop_rx));
    let deadline = shop.config.shutdown_timeout;
    let reason = bulwark_http::serve_until_shutdown(
        "shop",
        listener,
        app,
        shop.config.http.serve.clone(),
        deadline,
        shutdown,
    )
    .await;
    // Sagas still running finish their current step or are left to recovery.
    if !shop.saga.drain(deadline).await {
        tracing::warn!(
            event = "SHUTDOWN_DEADLINE",
            message = "sagas still running are left to recovery"
        );
    }
    shop.inventory.stop_writers();
    let _ = stop_tx.send(true);
    let _ = relay.await;
    let _ = sweeper.await;
    // One last relay round so events of the final commits are not left waiting.
    let _ = shop.outbox.relay_once().await;
    shop.db.close().await;
    security.close().await;
    bulwark_http::shutdown_completed("shop", &reason);
    Ok(())
}

/// Every sweep interval: resume due sagas (expired reservations, parked steps) and
/// reconcile inventory.
async fn background(shop: Arc<Shop>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(shop.config.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {
                let _ = shop.saga.sweep(false).await;
                let _ = shop.reconcile().await;
            }
        }
    }
}
