//! Every SQL statement of the commerce service, written once for all three dialects
//! (`?` placeholders, rewritten by [`Dialect::sql`]). Functions take a connection so the
//! caller decides the transaction; none of them commits.

use std::collections::HashMap;

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row as _};

use crate::db::{DbError, Dialect};
use crate::model::{Event, Order, Product, Step, now_ms};

/// The order columns, in [`order_from_row`]'s terms.
pub(crate) const ORDER_COLS: &str = "id, idempotency_key, fingerprint, product_id, customer_id, quantity, \
     amount_cents, step, attempts, reason, created_ms, expires_ms";

/// `?, ?, …` with `n` placeholders.
fn marks(n: usize) -> String {
    let mut s = String::with_capacity(n * 3);
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('?');
    }
    s
}

/// Rows of `SELECT {select} WHERE {column} IN (values){suffix}`, one statement; none
/// when `values` is empty. (The statement's text changes with the number of values, so it
/// is not kept prepared.)
async fn select_in(
    c: &mut AnyConnection,
    d: Dialect,
    select: &str,
    column: &str,
    values: &[&str],
    suffix: &str,
) -> Result<Vec<AnyRow>, DbError> {
    if values.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {select} WHERE {column} IN ({}){suffix}",
        marks(values.len())
    );
    let sql = d.sql(&sql);
    let mut q = sqlx::query(&sql).persistent(false);
    for v in values {
        q = q.bind(*v);
    }
    Ok(q.fetch_all(&mut *c).await?)
}

/// A text column. MySQL reports `TEXT` columns as `BLOB` to sqlx's `Any` driver, which
/// then refuses to decode them as `String`; read the bytes instead.
fn text(r: &AnyRow, col: &str) -> Result<String, DbError> {
    match r.try_get::<String, _>(col) {
        Ok(s) => Ok(s),
        Err(_) => {
            let bytes: Vec<u8> = r.try_get(col)?;
            String::from_utf8(bytes).map_err(|e| DbError::Other(format!("column {col}: {e}")))
        }
    }
}

/// A nullable text column (see [`text`]).
fn opt_text(r: &AnyRow, col: &str) -> Result<Option<String>, DbError> {
    match r.try_get::<Option<String>, _>(col) {
        Ok(s) => Ok(s),
        Err(_) => {
            let bytes: Option<Vec<u8>> = r.try_get(col)?;
            bytes
                .map(|b| {
                    String::from_utf8(b).map_err(|e| DbError::Other(format!("column {col}: {e}")))
                })
                .transpose()
        }
    }
}

/// An order from a row with [`ORDER_COLS`].
pub(crate) fn order_from_row(r: &AnyRow) -> Result<Order, DbError> {
    let step = text(r, "step")?;
    Ok(Order {
        id: text(r, "id")?,
        key: text(r, "idempotency_key")?,
        fingerprint: text(r, "fingerprint")?,
        product_id: text(r, "product_id")?,
        customer_id: text(r, "customer_id")?,
        quantity: r.try_get("quantity")?,
        amount_cents: r.try_get("amount_cents")?,
        step: Step::parse(&step).ok_or_else(|| DbError::Other(format!("unknown step {step}")))?,
        attempts: r.try_get("attempts")?,
        reason: opt_text(r, "reason")?,
        created_ms: r.try_get("created_ms")?,
        expires_ms: r.try_get("expires_ms")?,
    })
}

/// A product with its stock counters.
#[derive(Clone, Debug)]
pub struct ProductRow {
    /// The catalog entry (with `stock` from the database).
    pub product: Product,
    /// Stock when the sale was seeded.
    pub initial_stock: i64,
    /// Optimistic-lock version.
    pub version: i64,
}

fn product_from_row(r: &AnyRow) -> Result<ProductRow, DbError> {
    Ok(ProductRow {
        product: Product {
            id: text(r, "id")?,
            name: text(r, "name")?,
            description: text(r, "description")?,
            price_cents: r.try_get("price_cents")?,
            stock: r.try_get("stock")?,
        },
        initial_stock: r.try_get("initial_stock")?,
        version: r.try_get("version")?,
    })
}

const PRODUCT_COLS: &str = "id, name, description, price_cents, stock, initial_stock, version";

/// One product, optionally locking its row (`FOR UPDATE`) inside a transaction.
pub async fn product(
    c: &mut AnyConnection,
    d: Dialect,
    id: &str,
    lock: bool,
) -> Result<Option<ProductRow>, DbError> {
    let sql = format!(
        "SELECT {PRODUCT_COLS} FROM shop_products WHERE id = ?{}",
        if lock { d.for_update() } else { "" }
    );
    let row = sqlx::query(&d.sql(&sql))
        .bind(id)
        .fetch_optional(&mut *c)
        .await?;
    row.as_ref().map(product_from_row).transpose()
}

/// Up to `limit` products with ids after `after`, in id order (keyset pagination).
pub async fn list_products(
    c: &mut AnyConnection,
    d: Dialect,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<ProductRow>, DbError> {
    let sql = format!("SELECT {PRODUCT_COLS} FROM shop_products WHERE id > ? ORDER BY id LIMIT ?");
    let rows = sqlx::query(&d.sql(&sql))
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(&mut *c)
        .await?;
    rows.iter().map(product_from_row).collect()
}

/// All product ids (cache warm-up, reconciliation).
pub async fn product_ids(c: &mut AnyConnection, _d: Dialect) -> Result<Vec<String>, DbError> {
    let rows = sqlx::query("SELECT id FROM shop_products ORDER BY id")
        .fetch_all(&mut *c)
        .await?;
    rows.iter().map(|r| text(r, "id")).collect()
}

/// Seeds products. With `reset`, first deletes the whole sale state.
pub async fn seed(
    c: &mut AnyConnection,
    d: Dialect,
    products: &[(Product, i64)],
    reset: bool,
) -> Result<(), DbError> {
    const SALE_TABLES: [&str; 5] = [
        "shop_outbox",
        "shop_payments",
        "shop_orders",
        "shop_products",
        "shop_consumed_events",
    ];
    if reset && d == Dialect::Postgres {
        // TRUNCATE (transactional on PostgreSQL) leaves no dead rows behind, so a reset
        // sale does not scan its predecessors' rows until a vacuum runs.
        sqlx::query(&format!("TRUNCATE {}", SALE_TABLES.join(", ")))
            .execute(&mut *c)
            .await?;
    } else if reset {
        // MySQL's TRUNCATE would commit the transaction; SQLite's DELETE without WHERE
        // already truncates.
        for t in SALE_TABLES {
            sqlx::query(&format!("DELETE FROM {t}"))
                .execute(&mut *c)
                .await?;
        }
    }
    for (p, stock) in products {
        sqlx::query(&d.sql("DELETE FROM shop_products WHERE id = ?"))
            .bind(&p.id)
            .execute(&mut *c)
            .await?;
        sqlx::query(&d.sql(
            "INSERT INTO shop_products (id, name, description, price_cents, stock, initial_stock, version) \
             VALUES (?, ?, ?, ?, ?, ?, 0)",
        ))
        .bind(&p.id)
        .bind(&p.name)
        .bind(&p.description)
        .bind(p.price_cents)
        .bind(*stock)
        .bind(*stock)
        .execute(&mut *c)
        .await?;
    }
    Ok(())
}

/// Takes `n` units if that many are left: the one statement every strategy's decrement
/// goes through (invariant 1). Returns whether it applied.
pub async fn take_stock(
    c: &mut AnyConnection,
    d: Dialect,
    product: &str,
    n: i64,
) -> Result<bool, DbError> {
    let r = sqlx::query(&d.sql(
        "UPDATE shop_products SET stock = stock - ?, version = version + 1 WHERE id = ? AND stock >= ?",
    ))
    .bind(n)
    .bind(product)
    .bind(n)
    .execute(&mut *c)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// The optimistic variant of [`take_stock`]: also requires the version read earlier.
pub async fn take_stock_versioned(
    c: &mut AnyConnection,
    d: Dialect,
    product: &str,
    n: i64,
    version: i64,
) -> Result<bool, DbError> {
    let r = sqlx::query(&d.sql(
        "UPDATE shop_products SET stock = stock - ?, version = version + 1 \
         WHERE id = ? AND stock >= ? AND version = ?",
    ))
    .bind(n)
    .bind(product)
    .bind(n)
    .bind(version)
    .execute(&mut *c)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Gives `n` units back (compensation; the caller changes the orders in the same
/// transaction).
pub async fn return_stock(
    c: &mut AnyConnection,
    d: Dialect,
    product: &str,
    n: i64,
) -> Result<(), DbError> {
    sqlx::query(
        &d.sql("UPDATE shop_products SET stock = stock + ?, version = version + 1 WHERE id = ?"),
    )
    .bind(n)
    .bind(product)
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// The current stock of a product and the row version it is at (one statement, so the
/// two agree).
pub async fn stock(
    c: &mut AnyConnection,
    d: Dialect,
    id: &str,
) -> Result<Option<(i64, i64)>, DbError> {
    let row = sqlx::query(&d.sql("SELECT stock, version FROM shop_products WHERE id = ?"))
        .bind(id)
        .fetch_optional(&mut *c)
        .await?;
    row.map(|r| Ok((r.try_get("stock")?, r.try_get("version")?)))
        .transpose()
}

/// Orders created by any of `keys`.
pub async fn orders_by_keys(
    c: &mut AnyConnection,
    d: Dialect,
    keys: &[&str],
) -> Result<Vec<Order>, DbError> {
    let from = format!("{ORDER_COLS} FROM shop_orders");
    let rows = select_in(c, d, &from, "idempotency_key", keys, "").await?;
    rows.iter().map(order_from_row).collect()
}

/// Orders by id, locked (`FOR UPDATE`) when inside a transaction that will change them.
pub async fn orders_by_ids(
    c: &mut AnyConnection,
    d: Dialect,
    ids: &[&str],
    lock: bool,
) -> Result<Vec<Order>, DbError> {
    let from = format!("{ORDER_COLS} FROM shop_orders");
    let lock = if lock { d.for_update() } else { "" };
    let rows = select_in(c, d, &from, "id", ids, lock).await?;
    rows.iter().map(order_from_row).collect()
}

/// One order by id.
pub async fn order(c: &mut AnyConnection, d: Dialect, id: &str) -> Result<Option<Order>, DbError> {
    Ok(orders_by_ids(c, d, &[id], false).await?.pop())
}

/// Rows per multi-row `INSERT` (13 columns each; far below every backend's limit on
/// bound parameters).
const INSERT_CHUNK: usize = 256;

/// Inserts new orders (step `RESERVED`) with one multi-row statement per 256 rows.
/// A duplicate idempotency key fails the statement with [`DbError::Conflict`].
pub async fn insert_orders(
    c: &mut AnyConnection,
    d: Dialect,
    orders: &[Order],
) -> Result<(), DbError> {
    let now = now_ms();
    for chunk in orders.chunks(INSERT_CHUNK) {
        let row = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
        let sql = format!(
            "INSERT INTO shop_orders (id, idempotency_key, fingerprint, product_id, customer_id, \
             quantity, amount_cents, status, step, attempts, created_ms, updated_ms, expires_ms, \
             next_attempt_ms) VALUES {}",
            vec![row; chunk.len()].join(", ")
        );
        let sql = d.sql(&sql);
        let mut q = sqlx::query(&sql).persistent(false);
        for o in chunk {
            q = q
                .bind(&o.id)
                .bind(&o.key)
                .bind(&o.fingerprint)
                .bind(&o.product_id)
                .bind(&o.customer_id)
                .bind(o.quantity)
                .bind(o.amount_cents)
                .bind(o.step.status().as_str())
                .bind(o.step.as_str())
                .bind(o.attempts)
                .bind(o.created_ms)
                .bind(now)
                .bind(o.expires_ms)
                .bind(o.expires_ms);
        }
        q.execute(&mut *c).await?;
    }
    Ok(())
}

/// Moves orders to `step` (and its status), resetting their attempts.
pub async fn set_step(
    c: &mut AnyConnection,
    d: Dialect,
    ids: &[&str],
    step: Step,
    reason: Option<&str>,
) -> Result<(), DbError> {
    for chunk in ids.chunks(INSERT_CHUNK) {
        let sql = format!(
            "UPDATE shop_orders SET step = ?, status = ?, reason = COALESCE(?, reason), attempts = 0, \
             updated_ms = ?, next_attempt_ms = ? WHERE id IN ({})",
            marks(chunk.len())
        );
        let sql = d.sql(&sql);
        let now = now_ms();
        let mut q = sqlx::query(&sql)
            .persistent(false)
            .bind(step.as_str())
            .bind(step.status().as_str())
            .bind(reason)
            .bind(now)
            .bind(now);
        for id in chunk {
            q = q.bind(*id);
        }
        q.execute(&mut *c).await?;
    }
    Ok(())
}

/// Records a failed attempt and when the saga may try again.
pub async fn schedule_retry(
    c: &mut AnyConnection,
    d: Dialect,
    id: &str,
    attempts: i64,
    next_attempt_ms: i64,
    reason: &str,
) -> Result<(), DbError> {
    sqlx::query(&d.sql(
        "UPDATE shop_orders SET attempts = ?, next_attempt_ms = ?, reason = ?, updated_ms = ? WHERE id = ?",
    ))
    .bind(attempts)
    .bind(next_attempt_ms)
    .bind(reason)
    .bind(now_ms())
    .bind(id)
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// Non-terminal orders (`RESERVED`, `COMPENSATING`) whose next attempt is due, or that
/// did not change since `stale_before` (a driver parked them while the database was
/// down), oldest first: the recovery sweeper's work list.
pub async fn due_orders(
    c: &mut AnyConnection,
    d: Dialect,
    now: i64,
    stale_before: i64,
    limit: i64,
) -> Result<Vec<Order>, DbError> {
    let sql = format!(
        "SELECT {ORDER_COLS} FROM shop_orders WHERE status = 'PENDING' \
         AND (next_attempt_ms <= ? OR updated_ms < ?) ORDER BY next_attempt_ms LIMIT ?"
    );
    let rows = sqlx::query(&d.sql(&sql))
        .bind(now)
        .bind(stale_before)
        .bind(limit)
        .fetch_all(&mut *c)
        .await?;
    rows.iter().map(order_from_row).collect()
}

/// Appends one outbox row holding `events` (a no-op for none).
pub async fn append_outbox(
    c: &mut AnyConnection,
    d: Dialect,
    events: &[Event],
) -> Result<(), DbError> {
    if events.is_empty() {
        return Ok(());
    }
    let json = serde_json::to_string(events).map_err(|e| DbError::Other(e.to_string()))?;
    sqlx::query(&d.sql("INSERT INTO shop_outbox (created_ms, events) VALUES (?, ?)"))
        .bind(now_ms())
        .bind(json)
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// The oldest `limit` outbox rows: `(id, events)`.
pub async fn outbox_fetch(
    c: &mut AnyConnection,
    d: Dialect,
    limit: i64,
) -> Result<Vec<(i64, Vec<Event>)>, DbError> {
    let rows = sqlx::query(&d.sql("SELECT id, events FROM shop_outbox ORDER BY id LIMIT ?"))
        .bind(limit)
        .fetch_all(&mut *c)
        .await?;
    rows.iter()
        .map(|r| {
            let id: i64 = r.try_get("id")?;
            let json = text(r, "events")?;
            let events = serde_json::from_str(&json)
                .map_err(|e| DbError::Other(format!("outbox row {id}: {e}")))?;
            Ok((id, events))
        })
        .collect()
}

/// Deletes outbox rows up to `max_id` (after the bus acknowledged them).
pub async fn outbox_delete(c: &mut AnyConnection, d: Dialect, max_id: i64) -> Result<(), DbError> {
    sqlx::query(&d.sql("DELETE FROM shop_outbox WHERE id <= ?"))
        .bind(max_id)
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// Outbox rows not yet published.
pub async fn outbox_backlog(c: &mut AnyConnection, _d: Dialect) -> Result<i64, DbError> {
    let r = sqlx::query("SELECT COUNT(*) AS n FROM shop_outbox")
        .fetch_one(&mut *c)
        .await?;
    Ok(r.try_get("n")?)
}

/// Records that `consumer` processed `event_id`; `false` if it already had (the
/// idempotent consumer's check-and-set).
pub async fn mark_consumed(
    c: &mut AnyConnection,
    d: Dialect,
    consumer: &str,
    event_id: &str,
) -> Result<bool, DbError> {
    let sql = format!(
        "{} INTO shop_consumed_events (consumer, event_id) VALUES (?, ?){}",
        d.insert_ignore(),
        d.ignore_suffix()
    );
    let r = sqlx::query(&d.sql(&sql))
        .bind(consumer)
        .bind(event_id)
        .execute(&mut *c)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// The payment ledger's state of each order in `ids` that has one.
pub async fn payments(
    c: &mut AnyConnection,
    d: Dialect,
    ids: &[&str],
    lock: bool,
) -> Result<HashMap<String, String>, DbError> {
    let lock = if lock { d.for_update() } else { "" };
    let rows = select_in(
        c,
        d,
        "order_id, status FROM shop_payments",
        "order_id",
        ids,
        lock,
    )
    .await?;
    rows.iter()
        .map(|r| Ok((text(r, "order_id")?, text(r, "status")?)))
        .collect()
}

/// Inserts ledger rows `(order_id, amount, status)`.
pub async fn insert_payments(
    c: &mut AnyConnection,
    d: Dialect,
    rows: &[(&str, i64, &str)],
) -> Result<(), DbError> {
    let now = now_ms();
    for chunk in rows.chunks(INSERT_CHUNK) {
        let sql = format!(
            "INSERT INTO shop_payments (order_id, amount_cents, status, updated_ms) VALUES {}",
            vec!["(?, ?, ?, ?)"; chunk.len()].join(", ")
        );
        let sql = d.sql(&sql);
        let mut q = sqlx::query(&sql).persistent(false);
        for (id, amount, status) in chunk {
            q = q.bind(*id).bind(*amount).bind(*status).bind(now);
        }
        q.execute(&mut *c).await?;
    }
    Ok(())
}

/// Sets the ledger status of existing rows.
pub async fn update_payments(
    c: &mut AnyConnection,
    d: Dialect,
    ids: &[&str],
    status: &str,
) -> Result<(), DbError> {
    for chunk in ids.chunks(INSERT_CHUNK) {
        let sql = format!(
            "UPDATE shop_payments SET status = ?, updated_ms = ? WHERE order_id IN ({})",
            marks(chunk.len())
        );
        let sql = d.sql(&sql);
        let mut q = sqlx::query(&sql)
            .persistent(false)
            .bind(status)
            .bind(now_ms());
        for id in chunk {
            q = q.bind(*id);
        }
        q.execute(&mut *c).await?;
    }
    Ok(())
}

/// The database side of a product's audit.
#[derive(Clone, Debug, Default)]
pub struct AuditCounts {
    /// Stock at seeding.
    pub initial_stock: i64,
    /// Stock now.
    pub db_stock: i64,
    /// The product row's version (bumped by every stock change).
    pub version: i64,
    /// Units held by orders that are neither confirmed nor cancelled (pending, failed).
    pub reserved: i64,
    /// Units in confirmed orders.
    pub sold: i64,
    /// Orders per public status.
    pub orders: HashMap<String, i64>,
    /// Ledger rows `CAPTURED` (money kept).
    pub captured: i64,
    /// Ledger rows `REFUNDED`.
    pub refunded: i64,
    /// `CAPTURED` ledger rows whose order is not confirmed.
    pub unsettled_captures: i64,
}

/// Counts everything the audit endpoint and the reconciliation job check. Run it in
/// [`crate::db::Db::snapshot`], so every statement reads the same snapshot.
pub async fn audit(
    c: &mut AnyConnection,
    d: Dialect,
    product_id: &str,
) -> Result<Option<AuditCounts>, DbError> {
    let Some(p) = product(c, d, product_id, false).await? else {
        return Ok(None);
    };
    let mut a = AuditCounts {
        initial_stock: p.initial_stock,
        db_stock: p.product.stock,
        version: p.version,
        ..AuditCounts::default()
    };
    let sql = format!(
        "SELECT status, COUNT(*) AS n, {} AS units FROM shop_orders WHERE product_id = ? GROUP BY status",
        d.int("SUM(quantity)")
    );
    for r in sqlx::query(&d.sql(&sql))
        .bind(product_id)
        .fetch_all(&mut *c)
        .await?
    {
        let status = text(&r, "status")?;
        let n: i64 = r.try_get("n")?;
        let units: i64 = r.try_get("units")?;
        match status.as_str() {
            "CONFIRMED" => a.sold += units,
            "CANCELLED" => {}
            _ => a.reserved += units,
        }
        a.orders.insert(status, n);
    }
    let sql = "SELECT p.status AS pay, o.status AS ord, COUNT(*) AS n FROM shop_payments p \
               JOIN shop_orders o ON o.id = p.order_id WHERE o.product_id = ? GROUP BY p.status, o.status";
    for r in sqlx::query(&d.sql(sql))
        .bind(product_id)
        .fetch_all(&mut *c)
        .await?
    {
        let pay = text(&r, "pay")?;
        let ord = text(&r, "ord")?;
        let n: i64 = r.try_get("n")?;
        match pay.as_str() {
            "CAPTURED" => {
                a.captured += n;
                if ord != "CONFIRMED" {
                    a.unsettled_captures += n;
                }
            }
            "REFUNDED" => a.refunded += n,
            _ => {}
        }
    }
    Ok(Some(a))
}

/// Dead-lettered orders (status `FAILED`), oldest first.
pub async fn failed_orders(
    c: &mut AnyConnection,
    d: Dialect,
    limit: i64,
) -> Result<Vec<Order>, DbError> {
    let sql = format!(
        "SELECT {ORDER_COLS} FROM shop_orders WHERE status = 'FAILED' ORDER BY created_ms LIMIT ?"
    );
    let rows = sqlx::query(&d.sql(&sql))
        .bind(limit)
        .fetch_all(&mut *c)
        .await?;
    rows.iter().map(order_from_row).collect()
}

/// How far a PostgreSQL streaming replica's replay is behind, in ms (0 when it has
/// replayed all it received; `None` on other backends).
pub async fn replica_lag_ms(c: &mut AnyConnection, d: Dialect) -> Result<Option<i64>, DbError> {
    if d != Dialect::Postgres {
        return Ok(None);
    }
    let r = sqlx::query(
        "SELECT CAST(CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
         ELSE COALESCE(EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp())) * 1000, 0) END \
         AS BIGINT) AS lag",
    )
    .fetch_one(&mut *c)
    .await?;
    Ok(Some(r.try_get("lag")?))
}
