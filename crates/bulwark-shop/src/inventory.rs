//! Reserving and releasing stock (SHOP-2): the purchase strategies.
//!
//! Every strategy ends in the same guarded decrement ([`store::take_stock`] or its
//! versioned form) in the transaction that inserts the order, so none can oversell
//! (docs/ARCHITECTURE.md, purchase invariants). `batched` merges the requests of one
//! product into one transaction ([`ProductWriter`]); the others run one transaction per
//! request, with the seed's protection layers in front.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::AnyConnection;
use tokio::sync::{mpsc, oneshot};

use crate::cache::Cache;
use crate::config::Strategy;
use crate::db::{Db, DbError, Dialect};
use crate::model::{Event, Order, PurchaseRequest, Step, new_order_id, now_ms};
use crate::{pgbatch, store};

/// The outcome of a reservation.
#[derive(Clone, Debug)]
pub enum Reserve {
    /// Stock reserved and order created (step `RESERVED`): the saga goes on.
    Reserved(Order),
    /// The idempotency key already has this order (same body): answer from it.
    Existing(Order),
    /// The key was used with another body (422).
    KeyReused,
    /// Not enough stock; nothing reserved (409).
    SoldOut,
    /// No such product (404).
    NotFound,
    /// Admission control refused it (429).
    Overloaded,
    /// The database is unavailable; nothing was reserved, or (after an unknown commit
    /// outcome) a retry with the same key will say what happened (503).
    Unavailable(String),
}

/// The outcome of a release (compensation: cancel an order and give its units back).
#[derive(Clone, Debug)]
pub enum Release {
    /// Cancelled now, units back in stock.
    Released,
    /// The order was already in this step (cancelled earlier, or confirmed): nothing done.
    Already(Step),
    /// Not applied; retry later.
    Unavailable(String),
}

/// One operation for a product writer.
#[derive(Debug)]
enum WriterOp {
    Reserve(PurchaseRequest),
    Release { order_id: String, reason: String },
}

#[derive(Debug)]
enum WriterAnswer {
    Reserve(Reserve),
    Release(Release),
}

type WriterJob = (WriterOp, oneshot::Sender<WriterAnswer>);

/// Reservation settings.
#[derive(Clone, Debug)]
pub struct InventoryConfig {
    /// The strategy.
    pub strategy: Strategy,
    /// Reservation lifetime (the order's `expires_ms`).
    pub reservation_ttl: Duration,
    /// Most operations per writer transaction.
    pub batch_max: usize,
    /// Queue bound per product writer (and per `layered` lane).
    pub queue_per_product: usize,
    /// Longest a `layered` buyer waits for the product's lock before 429.
    pub lock_wait: Duration,
}

/// One product's turn-taking in this process (`layered`): a FIFO semaphore of one permit
/// (tokio's semaphore is fair, so waiters are served in arrival order and nobody spins)
/// and the number of buyers waiting for it (the queue bound).
#[derive(Debug)]
struct Lane {
    turn: tokio::sync::Semaphore,
    waiting: AtomicUsize,
}

impl Default for Lane {
    fn default() -> Lane {
        Lane {
            turn: tokio::sync::Semaphore::new(1),
            waiting: AtomicUsize::new(0),
        }
    }
}

impl Lane {
    /// Counts a waiter until the guard drops; `None` when `bound` are already waiting.
    fn enqueue(&self, bound: usize) -> Option<Waiting<'_>> {
        self.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < bound).then_some(n + 1)
            })
            .ok()
            .map(|_| Waiting(&self.waiting))
    }
}

/// A buyer counted in [`Lane::waiting`].
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Stock reservations for every product.
#[derive(Debug)]
pub struct Inventory {
    db: Arc<Db>,
    /// The same database through the saga pool (compensations: [`Inventory::release`]).
    saga_db: Arc<Db>,
    cache: Arc<Cache>,
    config: InventoryConfig,
    /// Redis for `redis-lua` and `layered`.
    redis: Option<redis::aio::MultiplexedConnection>,
    /// Product id → its writer's queue (`batched` only; started on first use).
    writers: Mutex<HashMap<String, mpsc::Sender<WriterJob>>>,
    /// Product id → its `layered` lane (started on first use).
    lanes: Mutex<HashMap<String, Arc<Lane>>>,
    /// Where writer tasks are tracked (drained on shutdown and reset).
    tracker: tokio_util::task::TaskTracker,
}

/// Bound on one Redis call of the Redis strategies.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// Lease of the `layered` Redis lock: a holder that dies frees it after this long (the
/// database guard keeps a lease that outlives its holder from overselling).
const LOCK_LEASE_MS: u64 = 5000;

/// Atomic check-and-decrement (the seed's layer 4), at most once per idempotency key: the
/// units taken are recorded as the key's *hold* (`KEYS[2]`, a hash key → units), so an
/// attempt whose answer was lost (a timeout) is not charged twice by its retry. `1`:
/// taken now (this attempt owns the hold); `0`: the key already holds units (an earlier
/// or concurrent attempt of the same key); `-1`: fewer than `ARGV[1]` left; `-2`: the
/// counter is missing (not loaded).
const LUA_TAKE: &str = r"
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then return 0 end
local current = redis.call('GET', KEYS[1])
if not current then return -2 end
if tonumber(current) >= tonumber(ARGV[1]) then
    redis.call('DECRBY', KEYS[1], ARGV[1])
    redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
    return 1
end
return -1";

/// Ends the hold of key `ARGV[1]`, giving its units back when `ARGV[2]` is `1` (the
/// database did not take them) or keeping them sold when `0`. Idempotent: `0` when no
/// hold was there.
const LUA_SETTLE: &str = r"
local units = redis.call('HGET', KEYS[2], ARGV[1])
if not units then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
if ARGV[2] == '1' then redis.call('INCRBY', KEYS[1], units) end
return 1";

/// Deletes a lock only if we still own it.
const LUA_UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

/// The product's Redis counter. (Counter and holds share a hash tag, so a cluster keeps
/// them on one node, as the scripts touching both need.)
fn redis_stock_key(product: &str) -> String {
    format!("shop:inventory:{{{product}}}")
}

/// The product's holds: idempotency key → units taken from the counter, not yet settled.
fn redis_holds_key(product: &str) -> String {
    format!("shop:holds:{{{product}}}")
}

impl Inventory {
    /// Reservations with `config`; `redis` is required by the Redis strategies.
    pub fn new(
        db: Arc<Db>,
        cache: Arc<Cache>,
        config: InventoryConfig,
        redis: Option<redis::aio::MultiplexedConnection>,
        tracker: tokio_util::task::TaskTracker,
    ) -> Inventory {
        Inventory {
            saga_db: Arc::new(db.for_sagas()),
            db,
            cache,
            config,
            redis,
            writers: Mutex::default(),
            lanes: Mutex::default(),
            tracker,
        }
    }

    /// The strategy in use.
    pub fn strategy(&self) -> Strategy {
        self.config.strategy
    }

    /// Stops every writer (after its queued batches): the sale is being reset.
    pub fn stop_writers(&self) {
        self.writers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Stops the writer of one product, so the next request starts one that reloads its
    /// counter from the database (after reconciliation found it wrong).
    pub fn forget_writer(&self, product: &str) {
        self.writers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(product);
    }

    /// Loads the Redis stock counters from the database (start-up and reset). The
    /// database is the truth; Redis is a filter in front of it.
    pub async fn load_redis(&self, stocks: &[(String, i64)]) -> Result<(), String> {
        let Some(conn) = &self.redis else {
            return Ok(());
        };
        let mut conn = conn.clone();
        for (id, n) in stocks {
            // The counter and no holds (the sale starts again), in one MULTI.
            let r: Result<(), _> = tokio::time::timeout(
                REDIS_TIMEOUT,
                redis::pipe()
                    .atomic()
                    .set(redis_stock_key(id), *n)
                    .ignore()
                    .del(redis_holds_key(id))
                    .ignore()
                    .query_async(&mut conn),
            )
            .await
            .map_err(|_| "timeout".to_string())?;
            r.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The Redis stock counter of a product (audit), if Redis is used.
    pub async fn redis_stock(&self, product: &str) -> Option<i64> {
        let mut conn = self.redis.clone()?;
        tokio::time::timeout(
            REDIS_TIMEOUT,
            redis::cmd("GET")
                .arg(redis_stock_key(product))
                .query_async::<Option<i64>>(&mut conn),
        )
        .await
        .ok()?
        .ok()?
    }

    /// Reserves stock for `req` and creates its order, with the configured strategy.
    pub async fn reserve(&self, req: PurchaseRequest) -> Reserve {
        match self.config.strategy {
            Strategy::Batched => self.reserve_batched(req).await,
            Strategy::RowLock => self.reserve_single(req, Guard::RowLock).await,
            Strategy::Optimistic => self.reserve_optimistic(req).await,
            Strategy::RedisLua => self.reserve_redis(req, false).await,
            Strategy::Layered => self.reserve_redis(req, true).await,
        }
    }

    /// Cancels `order` and gives its units back, if it is still `RESERVED` or
    /// `COMPENSATING` (idempotent).
    pub async fn release(&self, order: &Order, reason: &str) -> Release {
        if self.config.strategy == Strategy::Batched {
            let op = WriterOp::Release {
                order_id: order.id.clone(),
                reason: reason.to_string(),
            };
            return match self.send(&order.product_id, op, true).await {
                Ok(WriterAnswer::Release(r)) => r,
                Ok(WriterAnswer::Reserve(_)) => Release::Unavailable("wrong answer".into()),
                Err(r) => Release::Unavailable(format!("{r:?}")),
            };
        }
        // A compensation is a saga step: it runs on the saga pool, so a storm of
        // per-request reservations cannot hold it back.
        let d = self.saga_db.dialect;
        let id = order.id.clone();
        let result = self
            .saga_db
            .tx(async |c| {
                let Some(current) = store::orders_by_ids(c, d, &[id.as_str()], true)
                    .await?
                    .pop()
                else {
                    return Ok(Release::Already(Step::Cancelled));
                };
                if !matches!(current.step, Step::Reserved | Step::Compensating) {
                    return Ok(Release::Already(current.step));
                }
                store::return_stock(c, d, &current.product_id, current.quantity).await?;
                store::set_step(c, d, &[id.as_str()], Step::Cancelled, Some(reason)).await?;
                store::append_outbox(
                    c,
                    d,
                    &[Event::of(&current, "ORDER_CANCELLED", Some(reason))],
                )
                .await?;
                Ok(Release::Released)
            })
            .await;
        match result {
            Ok(Release::Released) => {
                if let Some(mut conn) = self.redis.clone() {
                    let _ = tokio::time::timeout(
                        REDIS_TIMEOUT,
                        redis::cmd("INCRBY")
                            .arg(redis_stock_key(&order.product_id))
                            .arg(order.quantity)
                            .query_async::<i64>(&mut conn),
                    )
                    .await;
                }
                self.cache_stock_from_db(&self.saga_db, &order.product_id)
                    .await;
                Release::Released
            }
            Ok(other) => other,
            Err(e) => Release::Unavailable(e.to_string()),
        }
    }

    async fn cache_stock_from_db(&self, db: &Db, product: &str) {
        let d = db.dialect;
        if let Ok(Some((n, version))) = db
            .primary(async |c| store::stock(c, d, product).await)
            .await
        {
            self.cache.put_stock(product, n, version);
        }
    }

    // ---- batched ------------------------------------------------------------------

    async fn reserve_batched(&self, req: PurchaseRequest) -> Reserve {
        let product = req.product_id.clone();
        match self.send(&product, WriterOp::Reserve(req), false).await {
            Ok(WriterAnswer::Reserve(r)) => r,
            Ok(WriterAnswer::Release(_)) => Reserve::Unavailable("wrong answer".into()),
            Err(r) => r,
        }
    }

    /// Queues `op` on the product's writer, starting it if needed. Reservations are
    /// refused when the queue is full (admission control); releases wait for room, as a
    /// compensation must not be dropped.
    async fn send(&self, product: &str, op: WriterOp, wait: bool) -> Result<WriterAnswer, Reserve> {
        let tx = match self.writer(product).await {
            Ok(tx) => tx,
            Err(r) => return Err(r),
        };
        let (reply, answer) = oneshot::channel();
        if wait {
            tx.send((op, reply))
                .await
                .map_err(|_| Reserve::Unavailable("writer stopped".into()))?;
        } else {
            tx.try_send((op, reply)).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => Reserve::Overloaded,
                mpsc::error::TrySendError::Closed(_) => {
                    Reserve::Unavailable("writer stopped".into())
                }
            })?;
        }
        answer
            .await
            .map_err(|_| Reserve::Unavailable("writer stopped".into()))
    }

    async fn writer(&self, product: &str) -> Result<mpsc::Sender<WriterJob>, Reserve> {
        if let Some(tx) = self
            .writers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(product)
        {
            return Ok(tx.clone());
        }
        let d = self.db.dialect;
        let row = self
            .db
            .primary(async |c| store::product(c, d, product, false).await)
            .await
            .map_err(|e| Reserve::Unavailable(e.to_string()))?
            .ok_or(Reserve::NotFound)?;
        let mut writers = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = writers.get(product) {
            return Ok(tx.clone());
        }
        let (tx, rx) = mpsc::channel(self.config.queue_per_product);
        let writer = ProductWriter {
            product: product.to_string(),
            price: row.product.price_cents,
            available: None,
            db: self.db.clone(),
            cache: self.cache.clone(),
            ttl_ms: i64::try_from(self.config.reservation_ttl.as_millis()).unwrap_or(i64::MAX),
        };
        self.tracker.spawn(writer.run(rx, self.config.batch_max));
        writers.insert(product.to_string(), tx.clone());
        Ok(tx)
    }

    /// The order an idempotency key created, if any (read from the primary).
    async fn stored_order(&self, key: &str) -> Result<Option<Order>, DbError> {
        let d = self.db.dialect;
        let mut found = self
            .db
            .primary(async |c| store::orders_by_keys(c, d, &[key]).await)
            .await?;
        Ok(found.pop())
    }

    // ---- one transaction per request ------------------------------------------------

    async fn reserve_single(&self, req: PurchaseRequest, guard: Guard) -> Reserve {
        let result = self.reserve_tx(&req, guard).await;
        self.finish_single(&req, result).await
    }

    async fn reserve_optimistic(&self, req: PurchaseRequest) -> Reserve {
        let policy = bulwark_resilience::retry::RetryPolicy::new(
            20,
            Duration::from_millis(1),
            Duration::from_millis(50),
        );
        let mut delays = policy.delays();
        loop {
            let result = self.reserve_tx(&req, Guard::Version).await;
            if let Ok(Single::VersionConflict) = result {
                match delays.next() {
                    Some(delay) => {
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    None => return Reserve::Overloaded,
                }
            }
            return self.finish_single(&req, result).await;
        }
    }

    /// `redis-lua` and `layered`: the atomic Redis pre-deduct (the seed's layer 4) first,
    /// so a buyer who finds the counter empty is answered at once and never queues; then
    /// (`layered` only) the per-product lock; then the database transaction, which
    /// decides. Units the database did not take are given back to the counter.
    async fn reserve_redis(&self, req: PurchaseRequest, layered: bool) -> Reserve {
        let Some(conn) = &self.redis else {
            return Reserve::Unavailable("redis not configured".into());
        };
        let mut conn = conn.clone();
        let outcome = match self.redis_take(&mut conn, &req).await {
            Err(refused) => refused,
            Ok(owner) => {
                let result = if layered {
                    self.reserve_locked(&mut conn, &req).await
                } else {
                    Ok(self.reserve_tx(&req, Guard::Plain).await)
                };
                let reserved = matches!(result, Ok(Ok(Single::Reserved(_))));
                // Sold: the hold is spent. Not sold: its owner gives the units back (a
                // concurrent attempt of the same key leaves the hold to its owner).
                if reserved || owner {
                    redis_settle(&mut conn, &req, !reserved).await;
                }
                match result {
                    Ok(r) => self.finish_single(&req, r).await,
                    Err(shed) => shed,
                }
            }
        };
        // Redis said sold out: a replayed key must still get its original answer. (Looked
        // up only on this path, so buyers of an available product pay nothing for it.)
        let Reserve::SoldOut = outcome else {
            return outcome;
        };
        match self.stored_order(&req.key).await {
            Ok(Some(o)) => replay(o, &req),
            Ok(None) => Reserve::SoldOut,
            Err(e) => Reserve::Unavailable(e.to_string()),
        }
    }

    /// The atomic check-and-decrement of the product's Redis counter (loaded from the
    /// database first if missing), held under the request's key. `Ok(true)`: this
    /// attempt took the units; `Ok(false)`: the key already held them. `Err` is the
    /// answer when nothing is held.
    async fn redis_take(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        req: &PurchaseRequest,
    ) -> Result<bool, Reserve> {
        let skey = redis_stock_key(&req.product_id);
        let mut loaded = false;
        loop {
            let took: Result<Result<i64, _>, _> = tokio::time::timeout(
                REDIS_TIMEOUT,
                redis::Script::new(LUA_TAKE)
                    .key(&skey)
                    .key(redis_holds_key(&req.product_id))
                    .arg(req.quantity)
                    .arg(&req.key)
                    .invoke_async(conn),
            )
            .await;
            match took {
                Ok(Ok(-1)) => return Err(Reserve::SoldOut),
                Ok(Ok(-2)) if !loaded => {
                    // Not loaded (new product): load it from the database, then retry once.
                    let d = self.db.dialect;
                    let id = req.product_id.clone();
                    match self
                        .db
                        .primary(async |c| store::stock(c, d, &id).await)
                        .await
                    {
                        Ok(Some((n, _))) => {
                            let _: Result<Result<bool, _>, _> = tokio::time::timeout(
                                REDIS_TIMEOUT,
                                redis::cmd("SET")
                                    .arg(&skey)
                                    .arg(n)
                                    .arg("NX")
                                    .query_async(conn),
                            )
                            .await;
                            loaded = true;
                        }
                        Ok(None) => return Err(Reserve::NotFound),
                        Err(e) => return Err(Reserve::Unavailable(e.to_string())),
                    }
                }
                Ok(Ok(-2)) => return Err(Reserve::Unavailable("redis: counter missing".into())),
                Ok(Ok(taken)) => return Ok(taken == 1),
                Ok(Err(e)) => return Err(Reserve::Unavailable(format!("redis: {e}"))),
                Err(_) => {
                    // The script may still run: undo it if it did. (Same connection, so
                    // Redis runs this after it.)
                    redis_settle(conn, req, true).await;
                    return Err(Reserve::Unavailable("redis: timeout".into()));
                }
            }
        }
    }

    /// `layered`'s layers 1–3 after the pre-deduct: this process's fair per-product lane
    /// (FIFO, bounded queue), the Redis lock (mutual exclusion across instances), then the
    /// transaction with `SELECT … FOR UPDATE` and the version check. Waiting for the lane
    /// and the lock together is bounded by `lock_wait`; `Err(Overloaded)` (429) sheds a
    /// buyer who would wait longer, or who finds `queue_per_product` already waiting.
    async fn reserve_locked(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        req: &PurchaseRequest,
    ) -> Result<Result<Single, DbError>, Reserve> {
        let deadline = tokio::time::Instant::now() + self.config.lock_wait;
        let lane = self.lane(&req.product_id);
        let _turn = {
            let Some(_waiting) = lane.enqueue(self.config.queue_per_product) else {
                return Err(Reserve::Overloaded);
            };
            match tokio::time::timeout_at(deadline, lane.turn.acquire()).await {
                Ok(Ok(permit)) => permit,
                Ok(Err(_)) => return Err(Reserve::Unavailable("lane closed".into())),
                Err(_) => return Err(Reserve::Overloaded),
            }
        };
        // Layer 1: the seed's Redis lock. Within this process the lane already serializes
        // buyers, so only another instance's holder can make us wait here.
        let lock_key = format!("shop:lock:{}", req.product_id);
        let token = format!("{:x}", rand::random::<u64>());
        let policy = bulwark_resilience::retry::RetryPolicy::new(
            u32::MAX,
            Duration::from_millis(2),
            Duration::from_millis(50),
        );
        let mut delays = policy.delays();
        loop {
            let got: Result<Result<Option<String>, _>, _> = tokio::time::timeout(
                REDIS_TIMEOUT,
                redis::cmd("SET")
                    .arg(&lock_key)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(LOCK_LEASE_MS)
                    .query_async(conn),
            )
            .await;
            match got {
                Ok(Ok(Some(_))) => break,
                Ok(Ok(None)) => {
                    let delay = delays.next().unwrap_or(policy.max);
                    if tokio::time::Instant::now() + delay >= deadline {
                        return Err(Reserve::Overloaded);
                    }
                    tokio::time::sleep(delay).await;
                }
                Ok(Err(e)) => return Err(Reserve::Unavailable(format!("redis: {e}"))),
                Err(_) => return Err(Reserve::Unavailable("redis: timeout".into())),
            }
        }
        let result = self.reserve_tx(req, Guard::RowLockVersion).await;
        let _ = tokio::time::timeout(
            REDIS_TIMEOUT,
            redis::Script::new(LUA_UNLOCK)
                .key(&lock_key)
                .arg(&token)
                .invoke_async::<i64>(conn),
        )
        .await;
        Ok(result)
    }

    /// The lane of `product` (created on first use; products are few and known).
    fn lane(&self, product: &str) -> Arc<Lane> {
        self.lanes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(product.to_string())
            .or_insert_with(|| Arc::new(Lane::default()))
            .clone()
    }

    /// One request's reservation transaction.
    async fn reserve_tx(&self, req: &PurchaseRequest, guard: Guard) -> Result<Single, DbError> {
        let d = self.db.dialect;
        let ttl = self.config.reservation_ttl;
        self.db
            .tx(async |c| reserve_in_tx(c, d, req, guard, ttl).await)
            .await
    }

    async fn finish_single(
        &self,
        req: &PurchaseRequest,
        result: Result<Single, DbError>,
    ) -> Reserve {
        match result {
            Ok(Single::Reserved(o)) => {
                self.cache_stock_from_db(&self.db, &o.product_id).await;
                Reserve::Reserved(o)
            }
            Ok(Single::Existing(o)) => replay(o, req),
            Ok(Single::SoldOut) => Reserve::SoldOut,
            Ok(Single::NotFound) => Reserve::NotFound,
            Ok(Single::VersionConflict) => Reserve::Overloaded,
            Err(DbError::Conflict) => {
                // The key was inserted concurrently: answer from the stored order.
                match self.stored_order(&req.key).await {
                    Ok(Some(o)) => replay(o, req),
                    Ok(None) => Reserve::Unavailable("conflict without a stored order".into()),
                    Err(e) => Reserve::Unavailable(e.to_string()),
                }
            }
            Err(e) => Reserve::Unavailable(e.to_string()),
        }
    }
}

/// Ends `req`'s Redis hold ([`LUA_SETTLE`]), giving its units back if `give_back`. Best
/// effort: a hold left behind (Redis unreachable) is settled by the key's retry, and a
/// wrong counter can only cost a false sold-out, never an oversell.
async fn redis_settle(
    conn: &mut redis::aio::MultiplexedConnection,
    req: &PurchaseRequest,
    give_back: bool,
) {
    let _ = tokio::time::timeout(
        REDIS_TIMEOUT,
        redis::Script::new(LUA_SETTLE)
            .key(redis_stock_key(&req.product_id))
            .key(redis_holds_key(&req.product_id))
            .arg(&req.key)
            .arg(if give_back { "1" } else { "0" })
            .invoke_async::<i64>(conn),
    )
    .await;
}

/// How a per-request transaction protects its decrement (all end in the guarded
/// `UPDATE`; these are the seed's extra layers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Guard {
    /// Only the guarded `UPDATE` (after the Redis pre-check).
    Plain,
    /// `SELECT … FOR UPDATE` first.
    RowLock,
    /// Read the version, decrement only if unchanged.
    Version,
    /// Both (the seed's layers 2 and 3).
    RowLockVersion,
}

#[derive(Debug)]
enum Single {
    Reserved(Order),
    Existing(Order),
    SoldOut,
    NotFound,
    VersionConflict,
}

fn replay(o: Order, req: &PurchaseRequest) -> Reserve {
    if o.fingerprint == req.fingerprint {
        Reserve::Existing(o)
    } else {
        Reserve::KeyReused
    }
}

fn new_order(req: &PurchaseRequest, price: i64, ttl_ms: i64) -> Order {
    let now = now_ms();
    Order {
        id: new_order_id(),
        key: req.key.clone(),
        fingerprint: req.fingerprint.clone(),
        product_id: req.product_id.clone(),
        customer_id: req.customer_id.clone(),
        quantity: req.quantity,
        amount_cents: price.saturating_mul(req.quantity),
        step: Step::Reserved,
        attempts: 0,
        reason: None,
        created_ms: now,
        expires_ms: now.saturating_add(ttl_ms),
    }
}

/// One request's reservation transaction (every strategy but `batched`).
async fn reserve_in_tx(
    c: &mut AnyConnection,
    d: Dialect,
    req: &PurchaseRequest,
    guard: Guard,
    ttl: Duration,
) -> Result<Single, DbError> {
    if let Some(o) = store::orders_by_keys(c, d, &[req.key.as_str()])
        .await?
        .pop()
    {
        return Ok(Single::Existing(o));
    }
    let lock = matches!(guard, Guard::RowLock | Guard::RowLockVersion);
    let Some(p) = store::product(c, d, &req.product_id, lock).await? else {
        return Ok(Single::NotFound);
    };
    if p.product.stock < req.quantity {
        return Ok(Single::SoldOut);
    }
    let took = match guard {
        Guard::Plain | Guard::RowLock => {
            store::take_stock(c, d, &req.product_id, req.quantity).await?
        }
        Guard::Version | Guard::RowLockVersion => {
            store::take_stock_versioned(c, d, &req.product_id, req.quantity, p.version).await?
        }
    };
    if !took {
        return Ok(match guard {
            Guard::Version | Guard::RowLockVersion => Single::VersionConflict,
            Guard::Plain | Guard::RowLock => Single::SoldOut,
        });
    }
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let order = new_order(req, p.product.price_cents, ttl_ms);
    store::insert_orders(c, d, std::slice::from_ref(&order)).await?;
    store::append_outbox(c, d, &[Event::of(&order, "ORDER_RESERVED", None)]).await?;
    Ok(Single::Reserved(order))
}

/// The single writer of one product's stock (strategy `batched`): merges every queued
/// reservation and release into one transaction (group commit).
struct ProductWriter {
    product: String,
    /// Unit price (amounts of new orders).
    price: i64,
    /// Units available as of the last commit, `None` when unknown (start, or after a
    /// failed transaction): then reloaded from the database before the next batch. A
    /// filter only: the guarded `UPDATE` decides.
    available: Option<i64>,
    db: Arc<Db>,
    cache: Arc<Cache>,
    ttl_ms: i64,
}

/// What one batch did, for the replies, the in-memory counter and the cache.
struct BatchPlan {
    answers: Vec<WriterAnswer>,
    /// The stock the batch's transaction left, read inside it.
    available: i64,
    /// The row version of `available`.
    version: i64,
}

impl ProductWriter {
    async fn run(mut self, mut rx: mpsc::Receiver<WriterJob>, max: usize) {
        let metrics = bulwark_obs::metrics::metrics().shop_batch_stage("reserve");
        let mut jobs = Vec::with_capacity(max);
        while rx.recv_many(&mut jobs, max).await > 0 {
            let (ops, replies): (Vec<WriterOp>, Vec<_>) = jobs.drain(..).unzip();
            let started = std::time::Instant::now();
            let answers = self.commit(&ops).await;
            metrics.observe(ops.len(), started.elapsed());
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
        }
    }

    /// Commits `ops` as one transaction; on a key collision, one by one.
    async fn commit(&mut self, ops: &[WriterOp]) -> Vec<WriterAnswer> {
        for _attempt in 0..2 {
            let available = match self.available {
                Some(n) => n,
                None => {
                    let d = self.db.dialect;
                    let id = self.product.clone();
                    match self
                        .db
                        .primary(async |c| store::stock(c, d, &id).await)
                        .await
                    {
                        Ok(Some((n, _))) => n,
                        Ok(None) => return ops.iter().map(not_found).collect(),
                        Err(e) => return ops.iter().map(|op| unavailable(op, &e)).collect(),
                    }
                }
            };
            let d = self.db.dialect;
            if d == Dialect::Postgres && ops.iter().all(|op| matches!(op, WriterOp::Reserve(_))) {
                match Box::pin(self.commit_pg(ops, available)).await {
                    Ok(Some(answers)) => return answers,
                    // The database had fewer units than the counter: reload and redo.
                    Ok(None) => {
                        self.available = None;
                        continue;
                    }
                    Err(e) => {
                        self.available = None;
                        return ops.iter().map(|op| unavailable(op, &e)).collect();
                    }
                }
            }
            let (product, price, ttl_ms) = (self.product.clone(), self.price, self.ttl_ms);
            let result = self
                .db
                .tx(async |c| plan_batch(c, d, &product, price, ttl_ms, ops, available).await)
                .await;
            match result {
                Ok(Some(plan)) => {
                    self.available = Some(plan.available);
                    self.cache
                        .put_stock(&self.product, plan.available, plan.version);
                    return plan.answers;
                }
                // The database had fewer units than the counter: reload and redo.
                Ok(None) => self.available = None,
                Err(DbError::Conflict) if ops.len() > 1 => {
                    self.available = None;
                    let mut answers = Vec::with_capacity(ops.len());
                    for op in ops {
                        let mut one = Box::pin(self.commit(std::slice::from_ref(op))).await;
                        answers.append(&mut one);
                    }
                    return answers;
                }
                Err(DbError::Conflict) => {
                    // A lone reservation collided with a concurrent insert of its key:
                    // redo it, the key lookup now sees the stored order.
                    self.available = None;
                }
                Err(e) => {
                    self.available = None;
                    return ops.iter().map(|op| unavailable(op, &e)).collect();
                }
            }
        }
        let e = DbError::Unavailable("stock changed concurrently; retry".into());
        ops.iter().map(|op| unavailable(op, &e)).collect()
    }

    /// PostgreSQL, a batch of reservations only: decides each in arrival order against
    /// the in-memory count, then writes the batch as one statement
    /// ([`pgbatch::reserve`]). Replays are found afterwards: an order the statement
    /// skipped had its key taken already, and a buyer told sold out may hold an earlier
    /// order; both are looked up, in one query, only when they occur. `Ok(None)`: the
    /// database had fewer units than `available` (nothing written; reload and redo).
    async fn commit_pg(
        &mut self,
        ops: &[WriterOp],
        available: i64,
    ) -> Result<Option<Vec<WriterAnswer>>, DbError> {
        /// What the plan says for one request.
        enum Plan {
            /// A new order (index in `orders`).
            New(usize),
            /// The key already came earlier in this batch (that order's index).
            Again(usize),
            SoldOut,
        }
        let reqs: Vec<&PurchaseRequest> = ops
            .iter()
            .filter_map(|op| match op {
                WriterOp::Reserve(r) => Some(r),
                WriterOp::Release { .. } => None,
            })
            .collect();
        let mut avail = available;
        let mut orders: Vec<Order> = Vec::new();
        let mut first: HashMap<&str, usize> = HashMap::new();
        let mut plans = Vec::with_capacity(reqs.len());
        for req in &reqs {
            plans.push(if let Some(&i) = first.get(req.key.as_str()) {
                Plan::Again(i)
            } else if req.quantity <= avail {
                avail -= req.quantity;
                first.insert(req.key.as_str(), orders.len());
                orders.push(new_order(req, self.price, self.ttl_ms));
                Plan::New(orders.len() - 1)
            } else {
                Plan::SoldOut
            });
        }
        let mut inserted = HashSet::new();
        if !orders.is_empty() {
            let product = self.product.as_str();
            let done = match self
                .db
                .tx_single(async |c| pgbatch::reserve(c, product, &orders).await)
                .await
            {
                Ok(Some(done)) => done,
                Ok(None) => return Ok(Some(ops.iter().map(not_found).collect())),
                Err(DbError::StockShort) => return Ok(None),
                Err(e) => return Err(e),
            };
            self.available = Some(done.stock);
            self.cache
                .put_stock(&self.product, done.stock, done.version);
            inserted = done.inserted;
        }
        let stored_new = |i: usize| inserted.contains(&orders[i].id);
        // Keys to look up: skipped orders' and sold-out buyers'.
        let lookup: Vec<&str> = reqs
            .iter()
            .zip(&plans)
            .filter(|(_, plan)| match plan {
                Plan::New(i) => !stored_new(*i),
                Plan::Again(_) => false,
                Plan::SoldOut => true,
            })
            .map(|(req, _)| req.key.as_str())
            .collect();
        let mut stored: HashMap<String, Order> = HashMap::new();
        if !lookup.is_empty() {
            let d = self.db.dialect;
            stored = self
                .db
                .primary(async |c| store::orders_by_keys(c, d, &lookup).await)
                .await?
                .into_iter()
                .map(|o| (o.key.clone(), o))
                .collect();
        }
        let raced = || Reserve::Unavailable("idempotency key raced another request; retry".into());
        let mut answers = Vec::with_capacity(reqs.len());
        let mut retry = Vec::new();
        for (req, plan) in reqs.iter().zip(&plans) {
            let answer = match plan {
                Plan::New(i) if stored_new(*i) => Reserve::Reserved(orders[*i].clone()),
                Plan::Again(i) if stored_new(*i) => replay(orders[*i].clone(), req),
                Plan::New(_) | Plan::Again(_) | Plan::SoldOut => {
                    match stored.get(&req.key) {
                        Some(o) => replay(o.clone(), req),
                        None if matches!(plan, Plan::SoldOut) => {
                            // Units the skipped orders did not take may serve this buyer.
                            if inserted.len() < orders.len() {
                                retry.push(answers.len());
                            }
                            Reserve::SoldOut
                        }
                        None => raced(),
                    }
                }
            };
            answers.push(WriterAnswer::Reserve(answer));
        }
        if !retry.is_empty() {
            let again: Vec<WriterOp> = retry
                .iter()
                .map(|&i| WriterOp::Reserve(reqs[i].clone()))
                .collect();
            for (i, answer) in retry.into_iter().zip(Box::pin(self.commit(&again)).await) {
                answers[i] = answer;
            }
        }
        Ok(Some(answers))
    }
}

fn not_found(op: &WriterOp) -> WriterAnswer {
    match op {
        WriterOp::Reserve(_) => WriterAnswer::Reserve(Reserve::NotFound),
        WriterOp::Release { .. } => WriterAnswer::Release(Release::Already(Step::Cancelled)),
    }
}

fn unavailable(op: &WriterOp, e: &DbError) -> WriterAnswer {
    match op {
        WriterOp::Reserve(_) => WriterAnswer::Reserve(Reserve::Unavailable(e.to_string())),
        WriterOp::Release { .. } => WriterAnswer::Release(Release::Unavailable(e.to_string())),
    }
}

/// Plans and applies one batch inside its transaction. `Ok(None)`: the guarded
/// decrement found fewer units than `available` (nothing was written; reload and redo).
async fn plan_batch(
    c: &mut AnyConnection,
    d: Dialect,
    product: &str,
    price: i64,
    ttl_ms: i64,
    ops: &[WriterOp],
    available: i64,
) -> Result<Option<BatchPlan>, DbError> {
    // 1. Idempotency: which keys already have an order (from any earlier batch).
    let keys: Vec<&str> = ops
        .iter()
        .filter_map(|op| match op {
            WriterOp::Reserve(r) => Some(r.key.as_str()),
            WriterOp::Release { .. } => None,
        })
        .collect();
    let existing: HashMap<String, Order> = store::orders_by_keys(c, d, &keys)
        .await?
        .into_iter()
        .map(|o| (o.key.clone(), o))
        .collect();
    // 2. Releases: only orders still holding stock.
    let release_ids: Vec<&str> = ops
        .iter()
        .filter_map(|op| match op {
            WriterOp::Release { order_id, .. } => Some(order_id.as_str()),
            WriterOp::Reserve(_) => None,
        })
        .collect();
    let mut holding: HashMap<String, Order> = HashMap::new();
    let mut steps: HashMap<String, Step> = HashMap::new();
    for o in store::orders_by_ids(c, d, &release_ids, true).await? {
        steps.insert(o.id.clone(), o.step);
        if matches!(o.step, Step::Reserved | Step::Compensating) {
            holding.insert(o.id.clone(), o);
        }
    }
    // 3. Decide every operation in arrival order.
    let mut avail = available;
    let mut new_orders: Vec<Order> = Vec::new();
    let mut in_batch: HashMap<&str, usize> = HashMap::new();
    let mut cancels: Vec<(Order, &str)> = Vec::new();
    let mut released_ids: HashSet<&str> = HashSet::new();
    let mut answers = Vec::with_capacity(ops.len());
    for op in ops {
        match op {
            WriterOp::Reserve(req) => {
                let answer = if let Some(o) = existing.get(&req.key) {
                    replay(o.clone(), req)
                } else if let Some(&i) = in_batch.get(req.key.as_str()) {
                    replay(new_orders[i].clone(), req)
                } else if req.quantity <= avail {
                    avail -= req.quantity;
                    let o = new_order(req, price, ttl_ms);
                    in_batch.insert(req.key.as_str(), new_orders.len());
                    new_orders.push(o.clone());
                    Reserve::Reserved(o)
                } else {
                    Reserve::SoldOut
                };
                answers.push(WriterAnswer::Reserve(answer));
            }
            WriterOp::Release { order_id, reason } => {
                let answer = match holding.get(order_id) {
                    Some(o) if released_ids.insert(order_id.as_str()) => {
                        cancels.push((o.clone(), reason.as_str()));
                        Release::Released
                    }
                    Some(_) => Release::Already(Step::Cancelled),
                    None => {
                        Release::Already(steps.get(order_id).copied().unwrap_or(Step::Cancelled))
                    }
                };
                answers.push(WriterAnswer::Release(answer));
            }
        }
    }
    let taken: i64 = new_orders.iter().map(|o| o.quantity).sum();
    let returned: i64 = cancels.iter().map(|(o, _)| o.quantity).sum();
    // 4. The one guarded statement for the whole batch's net change.
    let net = taken - returned;
    if net > 0 {
        if !store::take_stock(c, d, product, net).await? {
            return Ok(None);
        }
    } else if net < 0 {
        store::return_stock(c, d, product, -net).await?;
    }
    store::insert_orders(c, d, &new_orders).await?;
    let mut events: Vec<Event> = new_orders
        .iter()
        .map(|o| Event::of(o, "ORDER_RESERVED", None))
        .collect();
    let mut by_reason: HashMap<&str, Vec<&str>> = HashMap::new();
    for (o, reason) in &cancels {
        by_reason.entry(reason).or_default().push(o.id.as_str());
        events.push(Event::of(o, "ORDER_CANCELLED", Some(reason)));
    }
    for (reason, ids) in by_reason {
        store::set_step(c, d, &ids, Step::Cancelled, Some(reason)).await?;
    }
    store::append_outbox(c, d, &events).await?;
    // The stock and version this transaction leaves (exact, for the versioned cache
    // entry; reconciliation relies on the pair).
    let (available, version) = store::stock(c, d, product)
        .await?
        .ok_or_else(|| DbError::Other(format!("product {product} vanished in a batch")))?;
    Ok(Some(BatchPlan {
        answers,
        available,
        version,
    }))
}
