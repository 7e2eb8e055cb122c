//! The purchase saga (SHOP-3): reserve + create order → charge → confirm, with the
//! compensations refund/void → release + cancel. State lives in the order row; every
//! transition is a compare-and-set applied by a group-committing task (the [`Settler`]
//! for confirm, fence, dead-letter and revive; the product writer for reserve and
//! release). The invariants are in docs/ARCHITECTURE.md, "Saga invariants".

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulwark_obs::events::{Emit, SagaStep};
use bulwark_resilience::retry::{RetryPolicy, backoff_delay};
use tokio::sync::oneshot;

use crate::batch::{Batcher, answer_fast_first};
use crate::db::{Db, DbError, Dialect};
use crate::inventory::{Inventory, Release};
use crate::model::{Event, Order, Step, now_ms, reason};
use crate::payment::{Charge, PaymentProvider};
use crate::{pgbatch, store};

/// A compare-and-set on an order's step.
#[derive(Debug, Clone)]
enum SettleOp {
    /// `RESERVED → CONFIRMED` (payment captured).
    Confirm(String),
    /// `RESERVED → COMPENSATING` (also succeeds if already `COMPENSATING`): the fence.
    Fence(String, String),
    /// `COMPENSATING → DEAD`: compensation gave up.
    DeadLetter(String, String),
    /// `DEAD → COMPENSATING`: an operator retries.
    Revive(String),
}

impl SettleOp {
    fn id(&self) -> &str {
        match self {
            SettleOp::Confirm(id)
            | SettleOp::Fence(id, _)
            | SettleOp::DeadLetter(id, _)
            | SettleOp::Revive(id) => id,
        }
    }
}

/// The result of a compare-and-set: whether it applied, and the order after it.
#[derive(Debug, Clone)]
struct Cas {
    won: bool,
    order: Option<Order>,
}

type Settler = Batcher<SettleOp, Result<Cas, DbError>>;

/// What a saga step leaves.
enum Next {
    /// Go on with the order in this state.
    Go(Order),
    /// The database is unreachable: leave the order to the recovery sweeper.
    Park(Order),
}

/// Saga settings.
#[derive(Clone, Debug)]
pub struct SagaConfig {
    /// Attempts per step before compensating (forward) or dead-lettering (compensation).
    pub max_attempts: u32,
    /// Backoff of retried steps (capped exponential, full jitter).
    pub backoff: Duration,
    /// Operations per settle transaction.
    pub batch_max: usize,
}

/// The saga orchestrator.
#[derive(Debug)]
pub struct Saga {
    db: Arc<Db>,
    inventory: Arc<Inventory>,
    payments: Arc<PaymentProvider>,
    settler: Settler,
    policy: RetryPolicy,
    config: SagaConfig,
    /// Orders a task of this process is driving (the sweeper leaves them alone).
    active: Mutex<HashSet<String>>,
    /// The driver tasks, drained on shutdown.
    drivers: tokio_util::task::TaskTracker,
}

/// Removes an order from the active set when its driver ends, however it ends.
struct ActiveGuard {
    saga: Arc<Saga>,
    id: String,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.saga
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl Saga {
    /// Starts the settler (tracked by `workers`).
    pub fn start(
        db: Arc<Db>,
        inventory: Arc<Inventory>,
        payments: Arc<PaymentProvider>,
        config: SagaConfig,
        workers: &tokio_util::task::TaskTracker,
    ) -> Arc<Saga> {
        let settle_db = db.clone();
        let settler = Batcher::spawn("settle", 65_536, config.batch_max, workers, move |ops| {
            let db = settle_db.clone();
            async move { settle(&db, ops).await }
        });
        let policy = RetryPolicy::new(config.max_attempts, config.backoff, Duration::from_secs(2));
        Arc::new(Saga {
            db,
            inventory,
            payments,
            settler,
            policy,
            config,
            active: Mutex::default(),
            drivers: tokio_util::task::TaskTracker::new(),
        })
    }

    /// Waits up to `deadline` for every running saga driver to stop (shutdown); sagas
    /// still running then are left to recovery. Returns whether all stopped.
    pub async fn drain(&self, deadline: Duration) -> bool {
        self.drivers.close();
        tokio::time::timeout(deadline, self.drivers.wait())
            .await
            .is_ok()
    }

    /// Waits up to `deadline` until no saga runs (a sale reset). Returns whether none does.
    pub async fn idle(&self, deadline: Duration) -> bool {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            if self
                .active
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
            {
                return true;
            }
            if tokio::time::Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The payment simulator (admin switch).
    pub fn payments(&self) -> &PaymentProvider {
        &self.payments
    }

    /// Starts driving `order` in the background unless a task already does; the
    /// receiver gets the order's state when the driver stops (terminal, or parked).
    pub fn spawn(self: &Arc<Self>, order: Order) -> Option<oneshot::Receiver<Order>> {
        {
            let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
            if !active.insert(order.id.clone()) {
                return None;
            }
        }
        let (tx, rx) = oneshot::channel();
        let guard = ActiveGuard {
            saga: self.clone(),
            id: order.id.clone(),
        };
        let saga = self.clone();
        self.drivers.spawn(async move {
            let _guard = guard;
            let end = saga.drive(order).await;
            let _ = tx.send(end);
        });
        Some(rx)
    }

    /// Whether a task of this process drives `id` now.
    pub fn is_active(&self, id: &str) -> bool {
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }

    /// Resumes every non-terminal order that is due or untouched for 10 s (`all`: every
    /// one, as after a crash) and that no task drives. Returns how many it started.
    pub async fn sweep(self: &Arc<Self>, all: bool) -> Result<usize, DbError> {
        let d = self.db.dialect;
        let (now, stale_before) = if all {
            (i64::MAX, i64::MAX)
        } else {
            (now_ms(), now_ms() - 10_000)
        };
        let due = self
            .db
            .primary(async |c| store::due_orders(c, d, now, stale_before, 100_000).await)
            .await?;
        let mut started = 0;
        for order in due {
            if self.spawn(order).is_some() {
                started += 1;
            }
        }
        Ok(started)
    }

    /// Operator retry of a dead-lettered order: back to `COMPENSATING`, driven again.
    /// `None` if the order does not exist; `Some(false)` if it was not dead.
    pub async fn revive(self: &Arc<Self>, id: &str) -> Result<Option<(bool, Order)>, DbError> {
        let cas = self.cas(SettleOp::Revive(id.to_string())).await?;
        let Some(order) = cas.order else {
            return Ok(None);
        };
        if cas.won {
            emit(&order, None);
            let _ = self.spawn(order.clone());
        }
        Ok(Some((cas.won, order)))
    }

    async fn cas(&self, op: SettleOp) -> Result<Cas, DbError> {
        match self.settler.call(op).await {
            Ok(r) => r,
            Err(_) => Err(DbError::Unavailable("settler stopped".into())),
        }
    }

    fn delay(&self, attempt: u32) -> Duration {
        backoff_delay(&self.policy, attempt, rand::random::<f64>())
    }

    /// Runs the saga of `order` until it is terminal or parked.
    async fn drive(&self, mut order: Order) -> Order {
        loop {
            let next = match order.step {
                Step::Reserved if now_ms() > order.expires_ms => {
                    self.fence(order, reason::EXPIRED).await
                }
                Step::Reserved => self.forward(order).await,
                Step::Compensating => {
                    let why = order
                        .reason
                        .clone()
                        .unwrap_or_else(|| reason::PAYMENT_UNAVAILABLE.to_string());
                    self.compensate(order, &why).await
                }
                Step::Confirmed | Step::Cancelled | Step::Dead => return order,
            };
            match next {
                Next::Go(o) => order = o,
                Next::Park(o) => return o,
            }
        }
    }

    /// Charge, then confirm (or release on a decline).
    async fn forward(&self, order: Order) -> Next {
        let mut attempt = u32::try_from(order.attempts).unwrap_or(u32::MAX);
        loop {
            match self.payments.charge(&order.id, order.amount_cents).await {
                Ok(Charge::Captured) => return self.confirm(order).await,
                Ok(Charge::Declined) => {
                    return self.release(order, reason::PAYMENT_DECLINED).await;
                }
                // Refunded or voided: a compensation owns this order; make sure it runs.
                Ok(Charge::Refused) => {
                    return self.fence(order, reason::PAYMENT_UNAVAILABLE).await;
                }
                Err(e) => {
                    attempt += 1;
                    if attempt >= self.config.max_attempts || now_ms() > order.expires_ms {
                        return self.fence(order, reason::PAYMENT_UNAVAILABLE).await;
                    }
                    self.record_attempt(&order, attempt, &e.to_string()).await;
                    tokio::time::sleep(self.delay(attempt - 1)).await;
                }
            }
        }
    }

    /// Records a failed attempt (visible in `GET /v1/orders/{id}`); best effort.
    async fn record_attempt(&self, order: &Order, attempt: u32, error: &str) {
        let d = self.db.dialect;
        let next = now_ms() + 1000;
        let _ = self
            .db
            .primary(async |c| {
                store::schedule_retry(
                    c,
                    d,
                    &order.id,
                    i64::from(attempt),
                    next.max(order.expires_ms),
                    error,
                )
                .await
            })
            .await;
    }

    /// `RESERVED → CONFIRMED`.
    async fn confirm(&self, order: Order) -> Next {
        let op = SettleOp::Confirm(order.id.clone());
        self.decide(order, op, None).await
    }

    /// `RESERVED → COMPENSATING`; then compensates if this or an earlier fence won.
    async fn fence(&self, order: Order, why: &str) -> Next {
        let op = SettleOp::Fence(order.id.clone(), why.to_string());
        self.decide(order, op, Some(why)).await
    }

    /// One compare-and-set through the settler, retried with backoff: goes on with the
    /// order as the database left it (emitting the step if this call won), or parks it
    /// when the database stays unavailable.
    async fn decide(&self, order: Order, op: SettleOp, why: Option<&str>) -> Next {
        for attempt in 0..self.config.max_attempts {
            match self.cas(op.clone()).await {
                Ok(Cas {
                    won,
                    order: Some(o),
                }) => {
                    if won {
                        emit(&o, why);
                    }
                    return Next::Go(o);
                }
                Ok(Cas { order: None, .. }) => {
                    return Next::Go(Order {
                        step: Step::Cancelled,
                        ..order
                    });
                }
                Err(_) => tokio::time::sleep(self.delay(attempt)).await,
            }
        }
        Next::Park(order)
    }

    /// Refund or void at the provider, then release; dead-letter when the provider
    /// stays unreachable.
    async fn compensate(&self, order: Order, why: &str) -> Next {
        let mut attempt = 0;
        loop {
            match self.payments.refund(&order.id, order.amount_cents).await {
                Ok(_) => return self.release(order, why).await,
                Err(e) => {
                    attempt += 1;
                    if attempt >= self.config.max_attempts {
                        return self.dead_letter(order, &e.to_string()).await;
                    }
                    tokio::time::sleep(self.delay(attempt - 1)).await;
                }
            }
        }
    }

    async fn dead_letter(&self, order: Order, error: &str) -> Next {
        let why = format!("compensation failed: {error}");
        match self
            .cas(SettleOp::DeadLetter(order.id.clone(), why.clone()))
            .await
        {
            Ok(Cas {
                won,
                order: Some(o),
            }) => {
                if won {
                    emit(&o, Some(&why));
                }
                Next::Go(o)
            }
            Ok(Cas { order: None, .. }) | Err(_) => Next::Park(order),
        }
    }

    async fn release(&self, order: Order, why: &str) -> Next {
        for attempt in 0..self.config.max_attempts {
            match self.inventory.release(&order, why).await {
                Release::Released => {
                    let o = Order {
                        step: Step::Cancelled,
                        reason: Some(why.to_string()),
                        ..order
                    };
                    emit(&o, Some(why));
                    return Next::Go(o);
                }
                Release::Already(step) => {
                    let d = self.db.dialect;
                    let id = order.id.clone();
                    let stored = self
                        .db
                        .primary(async |c| store::order(c, d, &id).await)
                        .await
                        .ok()
                        .flatten();
                    return Next::Go(stored.unwrap_or(Order { step, ..order }));
                }
                Release::Unavailable(_) => tokio::time::sleep(self.delay(attempt)).await,
            }
        }
        Next::Park(order)
    }
}

fn emit(order: &Order, why: Option<&str>) {
    SagaStep {
        order_id: &order.id,
        step: order.step.as_str(),
        reason: why.or(order.reason.as_deref()),
        attempts: order.attempts,
    }
    .emit();
}

/// Applies a batch of compare-and-sets in one transaction: on PostgreSQL, a batch of
/// confirmations as one statement ([`pgbatch::confirm`]), then the generic path for the
/// orders that statement did not confirm (it only reads them: their compare-and-set lost).
async fn settle(db: &Db, ops: Vec<SettleOp>) -> Vec<Result<Cas, DbError>> {
    if db.dialect != Dialect::Postgres || !ops.iter().all(|op| matches!(op, SettleOp::Confirm(_))) {
        return settle_generic(db, ops).await;
    }
    let mut ids: Vec<&str> = ops.iter().map(SettleOp::id).collect();
    ids.sort_unstable();
    ids.dedup();
    let confirmed = match db
        .tx_single(async |c| pgbatch::confirm(c, &ids).await)
        .await
    {
        Ok(orders) => orders,
        Err(e) => return vec![Err(e); ops.len()],
    };
    let mut won: HashMap<String, Order> =
        confirmed.into_iter().map(|o| (o.id.clone(), o)).collect();
    // The orders not confirmed now (their compare-and-set lost, they are missing, or a
    // second confirmation of one order in this batch) go to the generic path, which
    // reads them.
    answer_fast_first(
        ops,
        |op| {
            won.remove(op.id()).map(|order| {
                Ok(Cas {
                    won: true,
                    order: Some(order),
                })
            })
        },
        async |left| settle_generic(db, left).await,
        || DbError::Other("settle: answer missing".into()),
    )
    .await
}

/// The generic path: one transaction that reads the orders and applies every
/// compare-and-set.
async fn settle_generic(db: &Db, ops: Vec<SettleOp>) -> Vec<Result<Cas, DbError>> {
    let n = ops.len();
    let d = db.dialect;
    let result = db
        .tx(async |c| {
            let mut ids: Vec<&str> = ops.iter().map(SettleOp::id).collect();
            ids.sort_unstable();
            ids.dedup();
            let mut orders: HashMap<String, Order> = store::orders_by_ids(c, d, &ids, true)
                .await?
                .into_iter()
                .map(|o| (o.id.clone(), o))
                .collect();
            let mut answers = Vec::with_capacity(ops.len());
            // Step changes to write: id → (step, reason).
            let mut changes: HashMap<String, (Step, Option<String>)> = HashMap::new();
            let mut events = Vec::new();
            for op in &ops {
                let Some(o) = orders.get_mut(op.id()) else {
                    answers.push(Cas {
                        won: false,
                        order: None,
                    });
                    continue;
                };
                let (won, to, why, kinds): (bool, Step, Option<String>, &[&str]) =
                    match (op, o.step) {
                        (SettleOp::Confirm(_), Step::Reserved) => (
                            true,
                            Step::Confirmed,
                            None,
                            &["PAYMENT_CAPTURED", "ORDER_CONFIRMED"],
                        ),
                        (SettleOp::Fence(_, r), Step::Reserved) => (
                            true,
                            Step::Compensating,
                            Some(r.clone()),
                            &["COMPENSATION_STARTED"],
                        ),
                        (SettleOp::Fence(..), Step::Compensating) => {
                            (true, Step::Compensating, None, &[])
                        }
                        (SettleOp::DeadLetter(_, r), Step::Compensating) => {
                            (true, Step::Dead, Some(r.clone()), &["ORDER_DEAD_LETTERED"])
                        }
                        (SettleOp::Revive(_), Step::Dead) => {
                            (true, Step::Compensating, None, &["COMPENSATION_RETRIED"])
                        }
                        (_, step) => (false, step, None, &[]),
                    };
                if won && (to != o.step || !kinds.is_empty()) {
                    o.step = to;
                    if why.is_some() {
                        o.reason = why.clone();
                    }
                    o.attempts = 0;
                    changes.insert(o.id.clone(), (to, o.reason.clone()));
                    for k in kinds {
                        events.push(Event::of(o, k, why.as_deref()));
                    }
                }
                answers.push(Cas {
                    won,
                    order: Some(o.clone()),
                });
            }
            let mut groups: HashMap<(Step, Option<String>), Vec<&str>> = HashMap::new();
            for (id, (step, why)) in &changes {
                groups
                    .entry((*step, why.clone()))
                    .or_default()
                    .push(id.as_str());
            }
            for ((step, why), ids) in groups {
                store::set_step(c, d, &ids, step, why.as_deref()).await?;
            }
            store::append_outbox(c, d, &events).await?;
            Ok(answers)
        })
        .await;
    match result {
        Ok(answers) => answers.into_iter().map(Ok).collect(),
        Err(e) => vec![Err(e); n],
    }
}
