//! The hot path's group commits on PostgreSQL, each as ONE statement.
//!
//! On the generic path ([`crate::store`]) a batch is `BEGIN`, four to six statements and
//! `COMMIT`: about eight round trips between the service and the database, and every
//! round trip waits for a CPU on a loaded machine. Here each batch is one statement with
//! its rows in one JSON parameter, unpacked by `json_to_recordset`, and PostgreSQL's
//! data-modifying CTEs do the whole transaction: one round trip, one implicit
//! transaction, one commit. The statement text is built once and never changes, so it
//! stays prepared.
//!
//! Each function covers the common case only (new reservations, first charges,
//! confirmations) and says what it left undone; its caller finishes those rows on the
//! generic path, which re-reads the database. The guards are the database's own: the
//! `CHECK (stock >= 0)` constraint for the decrement (a short batch fails whole, with
//! [`DbError::StockShort`]), the unique indexes for idempotency (`ON CONFLICT DO
//! NOTHING`: the row is skipped, and reported), and `WHERE step = 'RESERVED'` for the
//! saga's compare-and-set. Events are built from the rows the statement changed, so the
//! outbox holds exactly the changes that committed.

use std::collections::HashSet;
use std::sync::LazyLock;

use serde::Serialize;
use sqlx::{AnyConnection, Row as _};

use crate::db::DbError;
use crate::model::{EVENT_VERSION, Order, now_ms};
use crate::store;

fn json<T: Serialize>(rows: &T) -> Result<String, DbError> {
    serde_json::to_string(rows).map_err(|e| DbError::Other(e.to_string()))
}

fn id_list(text: &str) -> Result<HashSet<String>, DbError> {
    serde_json::from_str(text).map_err(|e| DbError::Other(format!("id list: {e}")))
}

/// One event object, as [`crate::model::Event`] serializes it, for the order row `o`
/// (columns `id`, `product_id`, `quantity`) and the event type `kind` (an SQL
/// expression); `$at` is the parameter holding the time.
fn event_sql(kind: &str, at: &str) -> String {
    format!(
        "json_build_object('v', {EVENT_VERSION}, 'id', o.id || ':' || {kind}, 'type', {kind}, \
         'order_id', o.id, 'product_id', o.product_id, 'quantity', o.quantity, 'at_ms', {at})"
    )
}

/// A new order as the reserve statement reads it.
#[derive(Serialize)]
struct NewOrder<'a> {
    id: &'a str,
    idempotency_key: &'a str,
    fingerprint: &'a str,
    customer_id: &'a str,
    quantity: i64,
    amount_cents: i64,
    created_ms: i64,
    expires_ms: i64,
}

/// What [`reserve`] committed.
#[derive(Debug)]
pub struct Reserved {
    /// Ids of the orders inserted (the others' idempotency keys already had an order).
    pub inserted: HashSet<String>,
    /// The product's stock after the statement.
    pub stock: i64,
    /// The product row's version after the statement.
    pub version: i64,
}

/// [`reserve`]'s statement. The INSERT joins the product row, so nothing is inserted for
/// a missing product.
static RESERVE_SQL: LazyLock<String> = LazyLock::new(|| {
    let event = event_sql("'ORDER_RESERVED'", "$3");
    format!(
        "WITH input AS ( \
           SELECT * FROM json_to_recordset($1::json) AS x(id text, idempotency_key text, \
             fingerprint text, customer_id text, quantity bigint, amount_cents bigint, \
             created_ms bigint, expires_ms bigint)), \
         o AS ( \
           INSERT INTO shop_orders (id, idempotency_key, fingerprint, product_id, customer_id, \
             quantity, amount_cents, status, step, attempts, created_ms, updated_ms, \
             expires_ms, next_attempt_ms) \
           SELECT i.id, i.idempotency_key, i.fingerprint, p.id, i.customer_id, i.quantity, \
             i.amount_cents, 'PENDING', 'RESERVED', 0, i.created_ms, $3, i.expires_ms, \
             i.expires_ms \
           FROM input i JOIN shop_products p ON p.id = $2 \
           ON CONFLICT (idempotency_key) DO NOTHING \
           RETURNING id, product_id, quantity), \
         taken AS ( \
           UPDATE shop_products SET stock = stock - (SELECT COALESCE(SUM(quantity), 0) FROM o), \
             version = version + 1 \
           WHERE id = $2 RETURNING stock, version), \
         events AS ( \
           INSERT INTO shop_outbox (created_ms, events) \
           SELECT $3, json_agg({event} ORDER BY o.id)::text FROM o HAVING COUNT(*) > 0) \
         SELECT t.stock, t.version, \
           (SELECT COALESCE(json_agg(o.id), '[]'::json)::text FROM o) AS ids \
         FROM taken t"
    )
});

/// Inserts `orders` (new reservations of `product`, step `RESERVED`), takes their units
/// from the product's stock and appends their `ORDER_RESERVED` events, in one statement.
/// An order whose idempotency key already has one is skipped, and its units are not
/// taken. `Err(StockShort)`: fewer units were left than the inserted orders need, and
/// nothing was written. `Ok(None)`: the product does not exist (nothing written).
pub async fn reserve(
    c: &mut AnyConnection,
    product: &str,
    orders: &[Order],
) -> Result<Option<Reserved>, DbError> {
    let rows: Vec<NewOrder> = orders
        .iter()
        .map(|o| NewOrder {
            id: &o.id,
            idempotency_key: &o.key,
            fingerprint: &o.fingerprint,
            customer_id: &o.customer_id,
            quantity: o.quantity,
            amount_cents: o.amount_cents,
            created_ms: o.created_ms,
            expires_ms: o.expires_ms,
        })
        .collect();
    let row = sqlx::query(RESERVE_SQL.as_str())
        .bind(json(&rows)?)
        .bind(product)
        .bind(now_ms())
        .fetch_optional(&mut *c)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let ids: String = row.try_get("ids")?;
    Ok(Some(Reserved {
        inserted: id_list(&ids)?,
        stock: row.try_get("stock")?,
        version: row.try_get("version")?,
    }))
}

/// A first charge, as the ledger statement reads it.
#[derive(Debug, Serialize)]
pub struct FirstCharge<'a> {
    /// The order charged.
    pub order_id: &'a str,
    /// The amount.
    pub amount_cents: i64,
    /// `CAPTURED` or `DECLINED`.
    pub status: &'a str,
}

/// Records first charges in the payment ledger, in one statement; returns the orders
/// recorded. An order that already has a ledger row is skipped (its caller reads that
/// row on the generic path).
pub async fn record_charges(
    c: &mut AnyConnection,
    charges: &[FirstCharge<'_>],
) -> Result<HashSet<String>, DbError> {
    let row = sqlx::query(
        "WITH input AS ( \
           SELECT * FROM json_to_recordset($1::json) AS x(order_id text, amount_cents bigint, \
             status text)), \
         ins AS ( \
           INSERT INTO shop_payments (order_id, amount_cents, status, updated_ms) \
           SELECT order_id, amount_cents, status, $2 FROM input \
           ON CONFLICT (order_id) DO NOTHING RETURNING order_id) \
         SELECT COALESCE(json_agg(order_id), '[]'::json)::text AS ids FROM ins",
    )
    .bind(json(&charges)?)
    .bind(now_ms())
    .fetch_one(&mut *c)
    .await?;
    let ids: String = row.try_get("ids")?;
    id_list(&ids)
}

/// [`confirm`]'s statement.
static CONFIRM_SQL: LazyLock<String> = LazyLock::new(|| {
    let captured = event_sql("k.kind", "$2");
    format!(
        "WITH o AS ( \
           UPDATE shop_orders SET step = 'CONFIRMED', status = 'CONFIRMED', attempts = 0, \
             updated_ms = $2, next_attempt_ms = $2 \
           WHERE id IN (SELECT json_array_elements_text($1::json)) AND step = 'RESERVED' \
           RETURNING {cols}), \
         events AS ( \
           INSERT INTO shop_outbox (created_ms, events) \
           SELECT $2, json_agg({captured} ORDER BY o.id, k.n)::text \
           FROM o CROSS JOIN (VALUES (1, 'PAYMENT_CAPTURED'), (2, 'ORDER_CONFIRMED')) AS k(n, kind) \
           HAVING COUNT(*) > 0) \
         SELECT {cols} FROM o",
        cols = store::ORDER_COLS
    )
});

/// `RESERVED → CONFIRMED` for each of `ids` still `RESERVED`, with their
/// `PAYMENT_CAPTURED` and `ORDER_CONFIRMED` events, in one statement. Returns the orders
/// confirmed now, as they are after the change; the others (already past `RESERVED`, or
/// missing) are left unchanged for the caller to read.
pub async fn confirm(c: &mut AnyConnection, ids: &[&str]) -> Result<Vec<Order>, DbError> {
    // It runs on the saga pool, whose connections plan every execution for the table
    // as it is (`Plans::Custom` in `db.rs`): a generic plan made while the table was
    // nearly empty walks the whole primary key per batch.
    let rows = sqlx::query(CONFIRM_SQL.as_str())
        .bind(json(&ids)?)
        .bind(now_ms())
        .fetch_all(&mut *c)
        .await?;
    rows.iter().map(store::order_from_row).collect()
}
