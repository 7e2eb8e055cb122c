//! The catalog cache (SHOP-1): product details (TTL 300 s) and stock counts (TTL 5 s),
//! warmed on start, in this process and optionally in Redis behind it, with the hit rate
//! exported as `shop_cache_hit_ratio{cache}`.
//!
//! The stock entry of a product is also written through by whoever changes the
//! database stock in this process (the product writer after each commit), so it is
//! usually exact; the TTL bounds how stale it can be when another process changed it.
//! Every stock entry carries the product row's `version` it was read at (each stock
//! change bumps it), and an entry is only replaced by one of the same or a newer
//! version: so racing writers cannot leave an older count over a newer one, and
//! reconciliation can tell an entry that lags (older version) from one that is wrong
//! (same version, other count).

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::AsyncCommands as _;
use tokio::time::Instant;

use crate::model::Product;

/// Bound on a Redis cache call: a slow Redis must not make a cached read slower than
/// the database read it saves.
const REDIS_TIMEOUT: Duration = Duration::from_millis(50);

/// Hit and lookup counters of one cache, for the ratio gauge.
#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    lookups: AtomicU64,
}

/// A cached stock count and the product row's version it was read at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StockEntry {
    /// Units available.
    pub units: i64,
    /// `shop_products.version` when `units` was read.
    pub version: i64,
}

/// The cache.
#[derive(Debug)]
pub struct Cache {
    details_ttl: Duration,
    stock_ttl: Duration,
    /// Product id → (details, stored at).
    details: RwLock<HashMap<String, (Product, Instant)>>,
    /// Product id → (units available and the row version they were read at, stored at).
    stock: RwLock<HashMap<String, (StockEntry, Instant)>>,
    /// The optional shared level behind this process's maps.
    redis: Option<redis::aio::MultiplexedConnection>,
    details_counters: Counters,
    stock_counters: Counters,
}

impl Cache {
    /// An empty cache with the given TTLs, optionally backed by Redis.
    pub fn new(
        details_ttl: Duration,
        stock_ttl: Duration,
        redis: Option<redis::aio::MultiplexedConnection>,
    ) -> Cache {
        Cache {
            details_ttl,
            stock_ttl,
            details: RwLock::default(),
            stock: RwLock::default(),
            redis,
            details_counters: Counters::default(),
            stock_counters: Counters::default(),
        }
    }

    fn record(&self, cache: &'static str, hit: bool) {
        let c = match cache {
            "details" => &self.details_counters,
            _ => &self.stock_counters,
        };
        let hits = c.hits.fetch_add(u64::from(hit), Ordering::Relaxed) + u64::from(hit);
        let lookups = c.lookups.fetch_add(1, Ordering::Relaxed) + 1;
        let m = bulwark_obs::metrics::metrics();
        m.shop_cache_requests
            .with_label_values(&[cache, if hit { "hit" } else { "miss" }])
            .inc();
        m.shop_cache_hit_ratio
            .with_label_values(&[cache])
            .set(hits as f64 / lookups as f64);
    }

    /// Hits / lookups of the details and stock caches since start.
    pub fn hit_ratio(&self) -> (f64, f64) {
        let r = |c: &Counters| {
            let l = c.lookups.load(Ordering::Relaxed);
            if l == 0 {
                0.0
            } else {
                c.hits.load(Ordering::Relaxed) as f64 / l as f64
            }
        };
        (r(&self.details_counters), r(&self.stock_counters))
    }

    /// Cached details of `id` (a lookup: counted in the hit rate).
    pub async fn details(&self, id: &str) -> Option<Product> {
        let local = {
            let g = self.details.read().unwrap_or_else(|e| e.into_inner());
            g.get(id)
                .filter(|(_, at)| at.elapsed() < self.details_ttl)
                .map(|(p, _)| p.clone())
        };
        let found = match local {
            Some(p) => Some(p),
            None => match self.redis_get(&details_key(id)).await {
                Some(json) => match serde_json::from_str::<Product>(&json) {
                    Ok(p) => {
                        self.store_details(&p);
                        Some(p)
                    }
                    Err(_) => None,
                },
                None => None,
            },
        };
        self.record("details", found.is_some());
        found
    }

    /// Cached stock of `id` (a lookup: counted in the hit rate).
    pub async fn stock(&self, id: &str) -> Option<i64> {
        let mut found = self.peek_stock(id);
        if found.is_none()
            && let Some(e) = self
                .redis_get(&stock_key(id))
                .await
                .and_then(|s| parse_stock(&s))
        {
            self.store_stock(id, e, false);
            found = Some(e);
        }
        self.record("stock", found.is_some());
        found.map(|e| e.units)
    }

    /// The stock entry of this process if fresh, without counting a lookup
    /// (reconciliation and audit).
    pub fn peek_stock(&self, id: &str) -> Option<StockEntry> {
        let g = self.stock.read().unwrap_or_else(|e| e.into_inner());
        g.get(id)
            .filter(|(_, at)| at.elapsed() < self.stock_ttl)
            .map(|(e, _)| *e)
    }

    fn store_details(&self, p: &Product) {
        let mut g = self.details.write().unwrap_or_else(|e| e.into_inner());
        g.insert(p.id.clone(), (p.clone(), Instant::now()));
    }

    /// Stores `e` unless a fresh entry of a newer version is there (`force`: always).
    /// Returns whether it was stored.
    fn store_stock(&self, id: &str, e: StockEntry, force: bool) -> bool {
        let mut g = self.stock.write().unwrap_or_else(|e| e.into_inner());
        match g.get_mut(id) {
            Some((old, at))
                if !force && at.elapsed() < self.stock_ttl && old.version > e.version =>
            {
                false
            }
            Some(slot) => {
                *slot = (e, Instant::now());
                true
            }
            None => {
                g.insert(id.to_string(), (e, Instant::now()));
                true
            }
        }
    }

    /// Stores details (after a database read, or warm-up).
    pub fn put_details(&self, p: &Product) {
        self.store_details(p);
        if let Ok(json) = serde_json::to_string(p) {
            self.redis_set(details_key(&p.id), json, self.details_ttl);
        }
    }

    /// Stores a stock count read at row version `version` (after a database read, or
    /// written through after a commit), unless the cache holds a newer one.
    pub fn put_stock(&self, id: &str, units: i64, version: i64) {
        let e = StockEntry { units, version };
        if self.store_stock(id, e, false) {
            self.redis_set(stock_key(id), format!("{units}:{version}"), self.stock_ttl);
        }
    }

    /// Stores a stock count whatever the cache holds (seeding restarts versions;
    /// reconciliation repairs a wrong entry from the database).
    pub fn replace_stock(&self, id: &str, units: i64, version: i64) {
        self.store_stock(id, StockEntry { units, version }, true);
        self.redis_set(stock_key(id), format!("{units}:{version}"), self.stock_ttl);
    }

    /// Forgets everything (the sale was reset).
    pub fn clear(&self) {
        self.details
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.stock
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    async fn redis_get(&self, key: &str) -> Option<String> {
        let mut conn = self.redis.clone()?;
        tokio::time::timeout(REDIS_TIMEOUT, conn.get::<_, Option<String>>(key))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
    }

    /// Writes to Redis in the background: the local entry already serves this process,
    /// and a cache write must never delay a purchase.
    fn redis_set(&self, key: String, value: String, ttl: Duration) {
        let Some(mut conn) = self.redis.clone() else {
            return;
        };
        let secs = ttl.as_secs().max(1);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REDIS_TIMEOUT, conn.set_ex::<_, _, ()>(key, value, secs))
                .await;
        });
    }
}

fn details_key(id: &str) -> String {
    format!("shop:details:{id}")
}

fn stock_key(id: &str) -> String {
    format!("shop:stock:{id}")
}

/// A Redis stock value, `units:version`.
fn parse_stock(s: &str) -> Option<StockEntry> {
    let (units, version) = s.split_once(':')?;
    Some(StockEntry {
        units: units.parse().ok()?,
        version: version.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(stock: i64) -> Product {
        Product {
            id: "p1".into(),
            name: "n".into(),
            description: "d".into(),
            price_cents: 100,
            stock,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_their_ttl() {
        let c = Cache::new(Duration::from_secs(300), Duration::from_secs(5), None);
        assert_eq!(c.details("p1").await, None);
        c.put_details(&product(3));
        c.put_stock("p1", 3, 7);
        assert_eq!(c.stock("p1").await, Some(3));
        c.put_stock("p1", 4, 6);
        assert_eq!(
            c.stock("p1").await,
            Some(3),
            "an older version never replaces"
        );
        c.put_stock("p1", 2, 8);
        assert_eq!(
            c.peek_stock("p1"),
            Some(StockEntry {
                units: 2,
                version: 8
            })
        );
        c.replace_stock("p1", 3, 0);
        assert_eq!(
            c.peek_stock("p1"),
            Some(StockEntry {
                units: 3,
                version: 0
            })
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(c.stock("p1").await, None, "stock TTL is 5 s");
        assert!(c.details("p1").await.is_some(), "details TTL is 300 s");
        tokio::time::advance(Duration::from_secs(300)).await;
        assert!(c.details("p1").await.is_none());
        let (details, stock) = c.hit_ratio();
        assert!((details - 1.0 / 3.0).abs() < 1e-9, "{details}");
        assert!((stock - 2.0 / 3.0).abs() < 1e-9, "{stock}");
    }
}
