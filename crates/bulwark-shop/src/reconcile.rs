//! Inventory reconciliation (SHOP-6): for each product, compares the cache's stock with
//! the database's, and checks that the database conserves units
//! (`stock + reserved + sold = initial`). A disagreement seen twice in a row (so a
//! commit racing the check is not reported) raises `InventoryInconsistency` (log event +
//! `shop_inventory_inconsistency{product}` = 1) and is shown by the audit endpoint; the
//! cache is then refreshed from the database, which is the truth.

use std::time::Duration;

use bulwark_obs::events::{Emit, InventoryConsistent, InventoryInconsistency};
use serde::Serialize;

use crate::cache::Cache;
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
    /// Units held by pending or failed orders.
    pub reserved: i64,
    /// Units in confirmed orders.
    pub sold: i64,
    /// The cache's stock (`null` when not cached).
    pub cache_stock: Option<i64>,
    /// `cache_stock` is absent or equals `db_stock`.
    pub cache_matches_db: bool,
    /// `db_stock + reserved + sold == initial_stock`.
    pub stock_conserved: bool,
}

impl Report {
    fn of(product: &str, a: &AuditCounts, cache_stock: Option<i64>) -> Report {
        Report {
            product_id: product.to_string(),
            initial_stock: a.initial_stock,
            db_stock: a.db_stock,
            reserved: a.reserved,
            sold: a.sold,
            cache_stock,
            cache_matches_db: cache_stock.is_none_or(|c| c == a.db_stock),
            stock_conserved: a.db_stock + a.reserved + a.sold == a.initial_stock,
        }
    }

    /// Whether every check passed.
    pub fn consistent(&self) -> bool {
        self.cache_matches_db && self.stock_conserved
    }
}

/// The audit counts of one product, read from one snapshot of the primary.
pub async fn audit(db: &Db, product: &str) -> Result<Option<AuditCounts>, DbError> {
    let d = db.dialect;
    db.tx(async |c| store::audit(c, d, product).await).await
}

/// Checks one product now (one read of cache and database).
pub async fn check(db: &Db, cache: &Cache, product: &str) -> Result<Option<Report>, DbError> {
    let Some(a) = audit(db, product).await? else {
        return Ok(None);
    };
    Ok(Some(Report::of(product, &a, cache.peek_stock(product))))
}

/// Checks every product, confirming a disagreement with a second look 50 ms later, and
/// emits the events and metrics. Returns the reports (the caller repairs the cache).
pub async fn run(db: &Db, cache: &Cache) -> Result<Vec<Report>, DbError> {
    let d = db.dialect;
    let ids = db.primary(async |c| store::product_ids(c, d).await).await?;
    let mut reports = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(first) = check(db, cache, &id).await? else {
            continue;
        };
        let report = if first.consistent() {
            first
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            match check(db, cache, &id).await? {
                Some(second) => second,
                None => continue,
            }
        };
        if report.consistent() {
            InventoryConsistent { product: &id }.emit();
        } else {
            let failed: Vec<&str> = [
                (!report.cache_matches_db).then_some("cache_matches_db"),
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
