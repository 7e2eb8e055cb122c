//! The payment provider simulator: configurable latency, a seeded decline rate, an
//! operator switch that makes it unreachable, and a durable, group-committed ledger
//! (`shop_payments`) so that it behaves like a real provider across our crashes: a
//! charge is idempotent per order id, and its answer never changes.
//!
//! Ledger state machine per order (terminal states never change):
//! none → `CAPTURED` | `DECLINED` (charge), none → `VOIDED` (refund before any charge:
//! fences a late charge, Seata's "anti-hanging"), `CAPTURED` → `REFUNDED` (refund).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::batch::{Batcher, answer_fast_first};
use crate::config::PaymentConfig;
use crate::db::{Db, DbError, Dialect};
use crate::{pgbatch, store};

/// What a charge did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Charge {
    /// Money captured (now or by an earlier call for the same order).
    Captured,
    /// Declined (now or earlier); final.
    Declined,
    /// Refused because the order was already refunded or voided (a compensation won).
    Refused,
}

/// What a refund did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refund {
    /// A capture was refunded (now or earlier).
    Refunded,
    /// Nothing was captured; the order is now voided, so no later charge can capture.
    Voided,
    /// The charge had been declined: nothing to give back.
    NothingCaptured,
}

/// A call that did not get an answer: the outcome is unknown, retry (it is idempotent).
#[derive(Debug, Clone, thiserror::Error)]
pub enum PaymentError {
    /// The provider is unreachable (the operator switch, or its ledger is down).
    #[error("payment provider unavailable: {0}")]
    Unavailable(String),
    /// No answer within the step timeout.
    #[error("payment provider did not answer within {0:?}")]
    Timeout(std::time::Duration),
}

#[derive(Debug)]
enum Op {
    Charge { order: String, amount: i64 },
    Refund { order: String, amount: i64 },
}

/// The simulator.
#[derive(Debug)]
pub struct PaymentProvider {
    config: PaymentConfig,
    /// Cleared by the operator (`POST /v1/admin/payment-provider`) to simulate an outage.
    available: AtomicBool,
    /// The ledger writer (group commit).
    ledger: Batcher<Op, Result<&'static str, DbError>>,
}

impl PaymentProvider {
    /// Starts the simulator's ledger writer.
    pub fn start(
        config: PaymentConfig,
        db: Arc<Db>,
        batch_max: usize,
        tracker: &tokio_util::task::TaskTracker,
    ) -> PaymentProvider {
        let ledger = Batcher::spawn("payment_ledger", 65_536, batch_max, tracker, move |ops| {
            let db = db.clone();
            async move { apply(&db, ops).await }
        });
        PaymentProvider {
            config,
            available: AtomicBool::new(true),
            ledger,
        }
    }

    /// Makes the provider reachable or not (fault injection for operators and tests).
    pub fn set_available(&self, up: bool) {
        self.available.store(up, Ordering::SeqCst);
    }

    /// Whether the provider is reachable.
    pub fn is_available(&self) -> bool {
        self.available.load(Ordering::SeqCst)
    }

    /// Whether the simulator declines `order` (a pure function of seed and order id, so
    /// every retry of a charge gets the same decision).
    pub fn declines(&self, order: &str) -> bool {
        if self.config.failure_rate <= 0.0 {
            return false;
        }
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(self.config.seed.to_le_bytes());
        h.update(order.as_bytes());
        let d = h.finalize();
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[..8]);
        let unit = (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64;
        unit < self.config.failure_rate
    }

    /// Charges `amount` for `order` (idempotent).
    pub async fn charge(&self, order: &str, amount: i64) -> Result<Charge, PaymentError> {
        let status = self
            .call(Op::Charge {
                order: order.to_string(),
                amount,
            })
            .await?;
        Ok(match status {
            "CAPTURED" => Charge::Captured,
            "DECLINED" => Charge::Declined,
            _ => Charge::Refused,
        })
    }

    /// Refunds whatever was captured for `order`, or voids it (idempotent).
    pub async fn refund(&self, order: &str, amount: i64) -> Result<Refund, PaymentError> {
        let status = self
            .call(Op::Refund {
                order: order.to_string(),
                amount,
            })
            .await?;
        Ok(match status {
            "REFUNDED" => Refund::Refunded,
            "DECLINED" => Refund::NothingCaptured,
            _ => Refund::Voided,
        })
    }

    async fn call(&self, op: Op) -> Result<&'static str, PaymentError> {
        let timeout = self.config.timeout;
        let work = async {
            if !self.is_available() {
                return Err(PaymentError::Unavailable("connection refused".into()));
            }
            let op = match op {
                Op::Charge { order, amount } if self.declines(&order) => Op::Charge {
                    order: format!("!{order}"),
                    amount,
                },
                other => other,
            };
            // The configured latency is the provider's whole response time: its own
            // durable write happens within it, not after it.
            let (recorded, ()) = tokio::join!(self.ledger.call(op), async {
                if !self.config.latency.is_zero() {
                    tokio::time::sleep(self.config.latency).await;
                }
            });
            match recorded {
                Ok(Ok(s)) => Ok(s),
                Ok(Err(e)) => Err(PaymentError::Unavailable(e.to_string())),
                Err(_) => Err(PaymentError::Unavailable("ledger stopped".into())),
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or(Err(PaymentError::Timeout(timeout)))
    }
}

/// Applies one batch of ledger operations. A charge whose order id starts with `!` is
/// one the simulator decided to decline. On PostgreSQL a batch of charges is first
/// recorded in one statement ([`pgbatch::record_charges`]); the charges of orders that
/// already had a ledger row, and every other batch, take the generic path.
async fn apply(db: &Db, ops: Vec<Op>) -> Vec<Result<&'static str, DbError>> {
    if db.dialect != Dialect::Postgres || !ops.iter().all(|op| matches!(op, Op::Charge { .. })) {
        return apply_generic(db, ops).await;
    }
    let charged = |order: &str| {
        if order.starts_with('!') {
            "DECLINED"
        } else {
            "CAPTURED"
        }
    };
    let mut charges = Vec::with_capacity(ops.len());
    let mut seen = HashSet::new();
    for op in &ops {
        if let Op::Charge { order, amount } = op {
            let id = order.trim_start_matches('!');
            if seen.insert(id) {
                charges.push(pgbatch::FirstCharge {
                    order_id: id,
                    amount_cents: *amount,
                    status: charged(order),
                });
            }
        }
    }
    let mut recorded = match db
        .tx_single(async |c| pgbatch::record_charges(c, &charges).await)
        .await
    {
        Ok(ids) => ids,
        Err(e) => return vec![Err(e); ops.len()],
    };
    // A charge not recorded now (its order had a row, or it repeats an order of this
    // batch) is answered from the ledger by the generic path.
    answer_fast_first(
        ops,
        |op| match op {
            Op::Charge { order, .. } if recorded.remove(order.trim_start_matches('!')) => {
                Some(Ok(charged(order)))
            }
            _ => None,
        },
        async |left| apply_generic(db, left).await,
        || DbError::Other("ledger: answer missing".into()),
    )
    .await
}

/// The generic path: one transaction that reads the ledger rows and applies the batch.
async fn apply_generic(db: &Db, ops: Vec<Op>) -> Vec<Result<&'static str, DbError>> {
    let n = ops.len();
    let d = db.dialect;
    let result = db
        .tx(async |c| {
            let ids: Vec<&str> = ops
                .iter()
                .map(|op| match op {
                    Op::Charge { order, .. } => order.trim_start_matches('!'),
                    Op::Refund { order, .. } => order.as_str(),
                })
                .collect();
            let mut unique = ids.clone();
            unique.sort_unstable();
            unique.dedup();
            let existing = store::payments(c, d, &unique, true).await?;
            // (status before the batch, status now) per order touched.
            let mut state: HashMap<&str, (Option<&'static str>, &'static str, i64)> =
                HashMap::new();
            let known = |s: &str| -> &'static str {
                match s {
                    "CAPTURED" => "CAPTURED",
                    "DECLINED" => "DECLINED",
                    "REFUNDED" => "REFUNDED",
                    _ => "VOIDED",
                }
            };
            let mut answers = Vec::with_capacity(ops.len());
            for (op, id) in ops.iter().zip(&ids) {
                let before = state
                    .get(id)
                    .map(|(b, now, _)| (*b, Some(*now)))
                    .unwrap_or_else(|| {
                        let b = existing.get(*id).map(|s| known(s));
                        (b, b)
                    });
                let (orig, current) = before;
                let (next, amount) = match (op, current) {
                    (Op::Charge { order, amount }, None) => {
                        if order.starts_with('!') {
                            ("DECLINED", *amount)
                        } else {
                            ("CAPTURED", *amount)
                        }
                    }
                    (Op::Refund { amount, .. }, None) => ("VOIDED", *amount),
                    (Op::Refund { amount, .. }, Some("CAPTURED")) => ("REFUNDED", *amount),
                    (op, Some(s)) => (
                        s,
                        match op {
                            Op::Charge { amount, .. } | Op::Refund { amount, .. } => *amount,
                        },
                    ),
                };
                state.insert(id, (orig, next, amount));
                answers.push(next);
            }
            let mut inserts = Vec::new();
            let mut refunded = Vec::new();
            for (id, (orig, now, amount)) in &state {
                match orig {
                    None => inserts.push((*id, *amount, *now)),
                    Some(o) if o != now => refunded.push(*id),
                    Some(_) => {}
                }
            }
            store::insert_payments(c, d, &inserts).await?;
            store::update_payments(c, d, &refunded, "REFUNDED").await?;
            Ok(answers)
        })
        .await;
    match result {
        Ok(answers) => answers.into_iter().map(Ok).collect(),
        Err(e) => vec![Err(e); n],
    }
}
