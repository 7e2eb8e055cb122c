//! The commerce service's domain types: products, orders and their saga state, events.

use serde::{Deserialize, Serialize};

/// Largest quantity one order may ask for; more is refused as `INVALID_QUANTITY`
/// (no flash sale sells a thousand units to one buyer, and it bounds every sum).
pub const MAX_QUANTITY: i64 = 1000;

/// Longest product id, customer id and idempotency key accepted.
pub const MAX_ID_LEN: usize = 128;

/// A product of the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// Stable id chosen by the operator (`p1`).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Display description.
    pub description: String,
    /// Unit price in cents.
    pub price_cents: i64,
    /// Units neither reserved nor sold (from the stock cache: up to 5 s old).
    pub stock: i64,
}

/// The public status of an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// The saga is running (stock held).
    Pending,
    /// Paid and confirmed (terminal).
    Confirmed,
    /// Compensated: stock released, any charge refunded (terminal).
    Cancelled,
    /// Dead-lettered: a compensation exhausted its attempts; an operator must retry it.
    Failed,
}

impl Status {
    /// The stored and shown name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Confirmed => "CONFIRMED",
            Status::Cancelled => "CANCELLED",
            Status::Failed => "FAILED",
        }
    }
}

/// The saga state of an order (column `step`). See docs/ARCHITECTURE.md, "Saga
/// invariants", for what each state promises after a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// Stock reserved and order created in one transaction; payment not settled.
    Reserved,
    /// The saga decided to compensate (the fence against a late confirm).
    Compensating,
    /// Paid and confirmed.
    Confirmed,
    /// Stock released, order cancelled.
    Cancelled,
    /// Compensation gave up after its attempts; waits for an operator.
    Dead,
}

impl Step {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Reserved => "RESERVED",
            Step::Compensating => "COMPENSATING",
            Step::Confirmed => "CONFIRMED",
            Step::Cancelled => "CANCELLED",
            Step::Dead => "DEAD",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Step> {
        Some(match s {
            "RESERVED" => Step::Reserved,
            "COMPENSATING" => Step::Compensating,
            "CONFIRMED" => Step::Confirmed,
            "CANCELLED" => Step::Cancelled,
            "DEAD" => Step::Dead,
            _ => return None,
        })
    }

    /// The public status that goes with this step.
    pub fn status(self) -> Status {
        match self {
            Step::Reserved | Step::Compensating => Status::Pending,
            Step::Confirmed => Status::Confirmed,
            Step::Cancelled => Status::Cancelled,
            Step::Dead => Status::Failed,
        }
    }

    /// Whether the saga has nothing left to do on its own.
    pub fn is_terminal(self) -> bool {
        matches!(self, Step::Confirmed | Step::Cancelled | Step::Dead)
    }
}

/// Why an order was cancelled (column `reason`), which decides the replayed answer.
pub mod reason {
    /// The payment provider declined the charge (replayed as 402).
    pub const PAYMENT_DECLINED: &str = "PAYMENT_DECLINED";
    /// The reservation outlived `RESERVATION_TTL_SEC`.
    pub const EXPIRED: &str = "RESERVATION_EXPIRED";
    /// The payment provider could not be reached within the attempts.
    pub const PAYMENT_UNAVAILABLE: &str = "PAYMENT_UNAVAILABLE";
}

/// A purchase request after validation.
#[derive(Clone, Debug)]
pub struct PurchaseRequest {
    /// The idempotency key (1..=128 chars).
    pub key: String,
    /// Hash of the request body: a replay with another body is 422.
    pub fingerprint: String,
    /// The product bought.
    pub product_id: String,
    /// Units (1..=[`MAX_QUANTITY`]).
    pub quantity: i64,
    /// The buyer.
    pub customer_id: String,
}

impl PurchaseRequest {
    /// The fingerprint of a body: SHA-256 of its canonical fields.
    pub fn fingerprint_of(product_id: &str, quantity: i64, customer_id: &str) -> String {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(product_id.as_bytes());
        h.update([0]);
        h.update(quantity.to_le_bytes());
        h.update([0]);
        h.update(customer_id.as_bytes());
        hex::encode(&h.finalize()[..16])
    }
}

/// One order row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    /// Order id (`o_` + 24 hex digits).
    pub id: String,
    /// The idempotency key that created it.
    pub key: String,
    /// Fingerprint of the creating request.
    pub fingerprint: String,
    /// Product bought.
    pub product_id: String,
    /// Buyer.
    pub customer_id: String,
    /// Units.
    pub quantity: i64,
    /// Price × quantity at reservation time.
    pub amount_cents: i64,
    /// Saga state.
    pub step: Step,
    /// Attempts of the current step that failed.
    pub attempts: i64,
    /// Why it was cancelled or dead-lettered.
    pub reason: Option<String>,
    /// Creation time (ms since the epoch).
    pub created_ms: i64,
    /// After this time an unsettled reservation is compensated.
    pub expires_ms: i64,
}

/// A fresh order id: `o_`, 11 hex digits of the creation time in ms, 13 random ones
/// (52 bits). Ids created later sort later, so the primary-key indexes of orders and
/// payments grow at their right edge instead of touching a random page per insert.
pub fn new_order_id() -> String {
    let ms = u64::try_from(now_ms()).unwrap_or(0) & ((1 << 44) - 1);
    format!("o_{ms:011x}{:013x}", rand::random::<u64>() >> 12)
}

/// Milliseconds since the Unix epoch (stored times; saga deadlines).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Format version of events in the outbox and on the bus.
pub const EVENT_VERSION: u32 = 1;

/// A saga event, as written to the outbox and published.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Format version ([`EVENT_VERSION`]).
    pub v: u32,
    /// Deterministic id `<order_id>:<type>`: a retried step produces the same id, so
    /// JetStream and consumers deduplicate it.
    pub id: String,
    /// `ORDER_RESERVED`, `PAYMENT_CAPTURED`, `ORDER_CONFIRMED`, `COMPENSATION_STARTED`,
    /// `ORDER_CANCELLED`, `ORDER_DEAD_LETTERED`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The order.
    pub order_id: String,
    /// Its product.
    pub product_id: String,
    /// Its units.
    pub quantity: i64,
    /// Why (cancellations, dead letters).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// When the transaction that wrote it ran (ms since the epoch).
    pub at_ms: i64,
}

impl Event {
    /// The event `kind` of `order`.
    pub fn of(order: &Order, kind: &str, reason: Option<&str>) -> Event {
        Event {
            v: EVENT_VERSION,
            id: format!("{}:{kind}", order.id),
            kind: kind.to_string(),
            order_id: order.id.clone(),
            product_id: order.product_id.clone(),
            quantity: order.quantity,
            reason: reason.map(str::to_string),
            at_ms: now_ms(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_ids_are_unique_and_sort_by_creation_time() {
        let a = new_order_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_order_id();
        for id in [&a, &b] {
            assert_eq!(id.len(), 26, "{id}");
            assert!(id.starts_with("o_"));
            assert!(id[2..].bytes().all(|c| c.is_ascii_hexdigit()), "{id}");
        }
        assert!(a < b, "{a} then {b}");
        let many: std::collections::HashSet<String> = (0..10_000).map(|_| new_order_id()).collect();
        assert_eq!(many.len(), 10_000);
    }
}
