//! Inventory reconciliation (SHOP-6): for each product, checks that the database
//! conserves units (`stock + reserved + sold = initial`) and that the cache's stock does
//! not contradict the database's. Both checks are exact under continuous purchasing, so
//! one failed check raises `InventoryInconsistency` (log event +
//! `shop_inventory_inconsistency{product}` = 1), shown by the audit endpoint; the cache
//! is then repaired from the database, which is the truth.
//!
//! * Conservation reads the product row and its orders in one snapshot
//!   ([`Db::snapshot`]): every transaction that moves units changes both, so a snapshot
//!   sees all of it or none.
//! * The cache entry carries the row version it was read at. Same version, other count:
//!   wrong. Older version: the entry lags behind commits made since (by another process,
//!   or a request that has not written its count yet), which its TTL bounds; not an
//!   inconsistency. Newer version than the database: wrong (nothing committed it).

use bulwark_obs::events::{Emit, InventoryConsistent, InventoryInconsistency};
use serde::Serialize;

use crate::cache::{Cache, StockEntry};
use crate::db::{Db, DbError};
use crate::store::{self, AuditCounts};

/// One product's figures and verdicts.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The product.
    pub product_id: String,
    /// Stock at seeding.
    pub initial_stock: i64,
    /// Stock in the database.
    pub db_stock: i64,
    /// The product row's version.
    pub db_version: i64,
    /// Units held by pending or failed orders.
    pub reserved: i64,
    /// Units in confirmed orders.
    pub sold: i64,
    /// The cache's stock (`null` when not cached).
    pub cache_stock: Option<i64>,
    /// The row version the cache's stock was read at.
    pub cache_version: Option<i64>,
    /// `cache_stock` is absent or equals `db_stock` (what SHOP-6 asks once the product
    /// is quiet).
    pub cache_matches_db: bool,
    /// The cache entry is absent, exact, or lags (older version): it contradicts
    /// nothing. The alarm's criterion, exact under load.
    pub cache_consistent: bool,
    /// `db_stock + reserved + sold == initial_stock`, in one snapshot.
    pub stock_conserved: bool,
}

impl Report {
    /// The verdicts on `a` (one snapshot) and the cache entry `cached`.
    pub fn of(product: &str, a: &AuditCounts, cached: Option<StockEntry>) -> Report {
        Report {
            product_id: product.to_string(),
            initial_stock: a.initial_stock,
            db_stock: a.db_stock,
            db_version: a.version,
            reserved: a.reserved,
            sold: a.sold,
            cache_stock: cached.map(|e| e.units),
            cache_version: cached.map(|e| e.version),
            cache_matches_db: cached.is_none_or(|e| e.units == a.db_stock),
            cache_consistent: cached.is_none_or(|e| {
                e.version < a.version || (e.version == a.version && e.units == a.db_stock)
            }),
            stock_conserved: a.db_stock + a.reserved + a.sold == a.initial_stock,
        }
    }

    /// Whether every check the alarm is based on passed.
    pub fn consistent(&self) -> bool {
        self.cache_consistent && self.stock_conserved
    }
}

/// The audit counts of one product, read from one snapshot of the primary.
pub async fn audit(db: &Db, product: &str) -> Result<Option<AuditCounts>, DbError> {
    let d = db.dialect;
    db.snapshot(async |c| store::audit(c, d, product).await)
        .await
}

/// Checks one product now. The cache entry is peeked before the snapshot is taken, so
/// every entry was read from a state the snapshot includes: its version is at most the
/// snapshot's unless the entry is wrong.
pub async fn check(db: &Db, cache: &Cache, product: &str) -> Result<Option<Report>, DbError> {
    let cached = cache.peek_stock(product);
    let Some(a) = audit(db, product).await? else {
        return Ok(None);
    };
    Ok(Some(Report::of(product, &a, cached)))
}

/// Checks every product and emits the events and metrics. Returns the reports (the
/// caller repairs the cache).
pub async fn run(db: &Db, cache: &Cache) -> Result<Vec<Report>, DbError> {
    let d = db.dialect;
    let ids = db.primary(async |c| store::product_ids(c, d).await).await?;
    let mut reports = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(report) = check(db, cache, &id).await? else {
            continue;
        };
        if report.consistent() {
            InventoryConsistent { product: &id }.emit();
        } else {
            let failed: Vec<&str> = [
                (!report.cache_consistent).then_some("cache_matches_db"),
                (!report.stock_conserved).then_some("stock_conserved"),
            ]
            .into_iter()
            .flatten()
            .collect();
            InventoryInconsistency {
                product: &id,
                db_stock: report.db_stock,
                cache_stock: report.cache_stock,
                reserved: report.reserved,
                sold: report.sold,
                initial_stock: report.initial_stock,
                failed: &failed.join(","),
            }
            .emit();
        }
        reports.push(report);
    }
    Ok(reports)
}
