//! Internal events (SPEC CAP-8). Each struct is one event name; [`Emit::emit`] writes the
//! JSON log line at the event's level and updates the metrics that go with it.
//!
//! Values and secrets are never fields of an event: keys are, values are not.

use crate::metrics::metrics;

/// `tracing`'s macros need their level at compile time; this picks one at run time for
/// events whose level depends on their content, keeping the fields written once.
macro_rules! event_at {
    ($level:expr, $($fields:tt)*) => {
        match $level {
            tracing::Level::ERROR => tracing::error!($($fields)*),
            tracing::Level::WARN => tracing::warn!($($fields)*),
            tracing::Level::INFO => tracing::info!($($fields)*),
            tracing::Level::DEBUG => tracing::debug!($($fields)*),
            _ => tracing::trace!($($fields)*),
        }
    };
}

/// Something that happened, worth a log line and perhaps a metric.
pub trait Emit {
    /// Logs the event and records its metrics.
    fn emit(self);
}

/// An HTTP request finished (`REQUEST_COMPLETED`, INFO).
#[derive(Debug)]
pub struct RequestCompleted<'a> {
    /// Correlation id (from `X-Request-Id` or generated).
    pub request_id: &'a str,
    /// Consistency mode of the serving gateway (`AP`, `CP`, `QUORUM`).
    pub mode: &'a str,
    /// Logical operation (`write`, `read`, `delete`, `health`, …), the metric label.
    pub operation: &'a str,
    /// HTTP method.
    pub method: &'a str,
    /// The `path` field: the route template (`/write/{key}/{value}`), never the raw
    /// path, since the seed's write URL carries the value and values are never logged.
    /// `<unmatched>` for a path no route matches, `<refused>` for a request head
    /// refused before routing.
    pub route: &'a str,
    /// Response status code.
    pub status: u16,
    /// Time from request received to response ready.
    pub latency: std::time::Duration,
    /// A high-volume request that went as expected (health checks; the commerce
    /// service's successful reads and purchases): logged at DEBUG, still counted, so
    /// the request log does not cost more than the request.
    pub routine: bool,
}

impl Emit for RequestCompleted<'_> {
    fn emit(self) {
        let secs = self.latency.as_secs_f64();
        let status = self.status.to_string();
        let m = metrics();
        m.requests_total
            .with_label_values(&[self.mode, self.operation, &status])
            .inc();
        m.request_latency
            .with_label_values(&[self.mode, self.operation])
            .observe(secs);
        let level = if self.routine {
            tracing::Level::DEBUG
        } else {
            tracing::Level::INFO
        };
        event_at!(
            level,
            event = "REQUEST_COMPLETED",
            request_id = self.request_id,
            mode = self.mode,
            method = self.method,
            path = self.route,
            status = self.status,
            latency_ms = format!("{:.2}", secs * 1000.0),
        );
    }
}

/// A service is stopping (`SHUTDOWN_EVENT`, WARNING as in the seed).
#[derive(Debug)]
pub struct ShutdownEvent<'a> {
    /// Service name (`app_cp`, `db_g1`, …).
    pub service: &'a str,
    /// What asked it to stop (`SIGTERM`, `SIGINT`, `ctl stop`).
    pub signal: &'a str,
    /// `started` when draining begins, `completed` when it is done.
    pub phase: &'a str,
    /// In-flight requests or connections at this point.
    pub in_flight: usize,
}

impl Emit for ShutdownEvent<'_> {
    fn emit(self) {
        tracing::warn!(
            event = "SHUTDOWN_EVENT",
            service = self.service,
            signal = self.signal,
            phase = self.phase,
            in_flight = self.in_flight,
        );
    }
}

/// Circuit breaker states (SPEC CAP-5).
///
/// The names follow the electrical metaphor: a **CLOSED** circuit lets calls through, an
/// **OPEN** one refuses them without touching the network, **HALF_OPEN** lets a limited
/// probe through to decide which of the two comes next. (Linkerd uses "open" for the
/// opposite; we do not.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls pass; consecutive failures are counted.
    Closed,
    /// A limited number of probe calls pass; success closes, failure reopens.
    HalfOpen,
    /// Calls fail fast until the open timeout elapses.
    Open,
}

impl BreakerState {
    /// The name used in logs and in `GET /circuit-breaker`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "CLOSED",
            BreakerState::HalfOpen => "HALF_OPEN",
            BreakerState::Open => "OPEN",
        }
    }

    /// The value of the `circuit_breaker_state` gauge.
    pub fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

/// A breaker changed state (`CIRCUIT_BREAKER`; WARNING when opening, INFO otherwise).
#[derive(Debug)]
pub struct CircuitBreakerTransition<'a> {
    /// Replica name.
    pub node: &'a str,
    /// State left.
    pub from: BreakerState,
    /// State entered.
    pub to: BreakerState,
    /// Consecutive failures counted when the transition happened.
    pub failures: u32,
}

impl Emit for CircuitBreakerTransition<'_> {
    fn emit(self) {
        let m = metrics();
        m.circuit_breaker_state
            .with_label_values(&[self.node])
            .set(self.to.gauge());
        m.circuit_breaker_transitions
            .with_label_values(&[self.node, self.to.as_str()])
            .inc();
        let level = if self.to == BreakerState::Open {
            tracing::Level::WARN
        } else {
            tracing::Level::INFO
        };
        event_at!(
            level,
            event = "CIRCUIT_BREAKER",
            node = self.node,
            state = self.to.as_str(),
            from = self.from.as_str(),
            failures = self.failures,
        );
    }
}

/// Sets a breaker's gauge without a transition (at start-up, so the metric exists).
pub fn register_breaker(node: &str) {
    metrics()
        .circuit_breaker_state
        .with_label_values(&[node])
        .set(BreakerState::Closed.gauge());
}

/// A call to a replica failed (`DB_CONNECT_FAILURE`, ERROR).
#[derive(Debug)]
pub struct DbConnectFailure<'a> {
    /// Replica name.
    pub node: &'a str,
    /// Operation attempted (`get`, `prepare`, …).
    pub op: &'a str,
    /// What went wrong (never contains a value).
    pub error: &'a str,
}

impl Emit for DbConnectFailure<'_> {
    fn emit(self) {
        metrics()
            .db_connection_failures
            .with_label_values(&[self.node])
            .inc();
        tracing::error!(
            event = "DB_CONNECT_FAILURE",
            node = self.node,
            op = self.op,
            error = self.error,
        );
    }
}

/// A CP or quorum write was aborted and is guaranteed not applied (`CP_ABORTED`, ERROR).
#[derive(Debug)]
pub struct CpAborted<'a> {
    /// Correlation id.
    pub request_id: &'a str,
    /// `CP` or `QUORUM`.
    pub mode: &'a str,
    /// The key written.
    pub key: &'a str,
    /// The version the write would have had.
    pub version: &'a str,
    /// Replicas that acknowledged the prepare.
    pub acked: usize,
    /// Acknowledgements required.
    pub required: usize,
    /// Why (which replicas failed, or that a resolver aborted it).
    pub reason: &'a str,
}

impl Emit for CpAborted<'_> {
    fn emit(self) {
        metrics()
            .quorum_outcomes
            .with_label_values(&[self.mode, "aborted"])
            .inc();
        tracing::error!(
            event = "CP_ABORTED",
            request_id = self.request_id,
            mode = self.mode,
            key = self.key,
            version = self.version,
            acked = self.acked,
            required = self.required,
            reason = self.reason,
        );
    }
}

/// A write's outcome could not be determined (`WRITE_OUTCOME_UNKNOWN`, ERROR).
#[derive(Debug)]
pub struct WriteOutcomeUnknown<'a> {
    /// Correlation id.
    pub request_id: &'a str,
    /// `CP` or `QUORUM`.
    pub mode: &'a str,
    /// The key written.
    pub key: &'a str,
    /// The write's version, so an operator can look for it.
    pub version: &'a str,
    /// Why the outcome is unknown.
    pub reason: &'a str,
}

impl Emit for WriteOutcomeUnknown<'_> {
    fn emit(self) {
        metrics()
            .quorum_outcomes
            .with_label_values(&[self.mode, "unknown"])
            .inc();
        tracing::error!(
            event = "WRITE_OUTCOME_UNKNOWN",
            request_id = self.request_id,
            mode = self.mode,
            key = self.key,
            version = self.version,
            reason = self.reason,
        );
    }
}

/// An AP write succeeded but some replicas missed it (`AP_STALE_RISK`, WARNING).
#[derive(Debug)]
pub struct ApStaleRisk<'a> {
    /// Correlation id.
    pub request_id: &'a str,
    /// The key written.
    pub key: &'a str,
    /// The write's version.
    pub version: &'a str,
    /// Replicas that missed the write (queued for hinted handoff).
    pub behind: &'a [String],
}

impl Emit for ApStaleRisk<'_> {
    fn emit(self) {
        metrics()
            .quorum_outcomes
            .with_label_values(&["AP", "degraded"])
            .inc();
        tracing::warn!(
            event = "AP_STALE_RISK",
            request_id = self.request_id,
            key = self.key,
            version = self.version,
            behind = self.behind.join(","),
        );
    }
}

/// A session read could not see its own write (`RYW_VIOLATION`, WARNING).
#[derive(Debug)]
pub struct RywViolation<'a> {
    /// Correlation id.
    pub request_id: &'a str,
    /// Consistency mode of the gateway.
    pub mode: &'a str,
    /// The key read.
    pub key: &'a str,
    /// The version the session wrote.
    pub required: &'a str,
    /// The newest version any reachable replica returned.
    pub seen: &'a str,
}

impl Emit for RywViolation<'_> {
    fn emit(self) {
        metrics()
            .ryw_violations
            .with_label_values(&[self.mode])
            .inc();
        tracing::warn!(
            event = "RYW_VIOLATION",
            request_id = self.request_id,
            mode = self.mode,
            key = self.key,
            required = self.required,
            seen = self.seen,
        );
    }
}

/// A service finished starting and accepts traffic (`SERVICE_STARTED`, INFO).
#[derive(Debug)]
pub struct ServiceStarted<'a> {
    /// Service name.
    pub service: &'a str,
    /// Listening address.
    pub addr: &'a str,
    /// A short description of the configuration (mode, backend, replicas; no secrets).
    pub detail: &'a str,
}

impl Emit for ServiceStarted<'_> {
    fn emit(self) {
        tracing::info!(
            event = "SERVICE_STARTED",
            service = self.service,
            addr = self.addr,
            detail = self.detail,
        );
    }
}

/// The chaos controller applied or removed a fault (`CHAOS_FAULT`, WARNING: the cluster is
/// being broken on purpose, and whoever reads the logs must be able to tell).
#[derive(Debug)]
pub struct ChaosFault<'a> {
    /// The fault's id (`f-…`).
    pub id: &'a str,
    /// Its kind (`pause`, `latency`, `partition`, …).
    pub kind: &'a str,
    /// `applied` or `removed`.
    pub phase: &'a str,
    /// What it targets (`db_g2`, `app_ap.db_g2`, …).
    pub target: &'a str,
    /// Why it was removed (`ttl`, `rollback`, `disable`, `recovered`, `shutdown`); empty
    /// when applied.
    pub reason: &'a str,
    /// Time to live when applied, in milliseconds.
    pub ttl_ms: u64,
}

impl Emit for ChaosFault<'_> {
    fn emit(self) {
        let m = metrics();
        if self.phase == "applied" {
            m.chaos_faults_injected
                .with_label_values(&[self.kind])
                .inc();
            m.chaos_faults_active.inc();
        } else {
            m.chaos_faults_removed
                .with_label_values(&[self.reason])
                .inc();
            m.chaos_faults_active.dec();
        }
        tracing::warn!(
            event = "CHAOS_FAULT",
            id = self.id,
            kind = self.kind,
            phase = self.phase,
            target = self.target,
            reason = self.reason,
            ttl_ms = self.ttl_ms,
        );
    }
}

/// A chaos experiment run finished (`CHAOS_EXPERIMENT`; INFO if it succeeded, WARNING
/// otherwise).
#[derive(Debug)]
pub struct ChaosExperiment<'a> {
    /// The run's id.
    pub run_id: &'a str,
    /// The experiment's title.
    pub title: &'a str,
    /// `succeeded`, `failed` or `aborted`.
    pub outcome: &'a str,
    /// Time to recover, when the steady state was measured after the faults.
    pub recovery: Option<std::time::Duration>,
}

impl Emit for ChaosExperiment<'_> {
    fn emit(self) {
        let m = metrics();
        m.chaos_experiments.with_label_values(&[self.outcome]).inc();
        if let Some(r) = self.recovery {
            m.chaos_recovery.observe(r.as_secs_f64());
        }
        let level = if self.outcome == "succeeded" {
            tracing::Level::INFO
        } else {
            tracing::Level::WARN
        };
        event_at!(
            level,
            event = "CHAOS_EXPERIMENT",
            run_id = self.run_id,
            title = self.title,
            outcome = self.outcome,
            recovery_ms = self.recovery.map(|r| r.as_millis() as u64),
        );
    }
}

/// The chaos controller could not undo part of a fault within its retry window
/// (`CHAOS_UNDO_FAILED`, ERROR): the fault stays in the journal and the next controller
/// start tries again.
#[derive(Debug)]
pub struct ChaosUndoFailed<'a> {
    /// The undo step, as text.
    pub step: &'a str,
    /// Why it failed.
    pub error: &'a str,
}

impl Emit for ChaosUndoFailed<'_> {
    fn emit(self) {
        tracing::error!(
            event = "CHAOS_UNDO_FAILED",
            step = self.step,
            error = self.error,
        );
    }
}

/// A fault proxy was created, changed, enabled, disabled or deleted (`PROXY_CHANGED`, INFO;
/// WARNING when it goes down, since clients lose their connections).
#[derive(Debug)]
pub struct ProxyChanged<'a> {
    /// Proxy name.
    pub proxy: &'a str,
    /// `created`, `updated`, `enabled`, `disabled`, `deleted`, `replaced`.
    pub action: &'a str,
    /// Listening address.
    pub listen: &'a str,
    /// Upstream address.
    pub upstream: &'a str,
    /// Whether it accepts connections now.
    pub enabled: bool,
}

impl Emit for ProxyChanged<'_> {
    fn emit(self) {
        if self.action == "deleted" {
            let _ = metrics()
                .fault_proxy_toxics
                .remove_label_values(&[self.proxy]);
        }
        let level = if self.enabled {
            tracing::Level::INFO
        } else {
            tracing::Level::WARN
        };
        event_at!(
            level,
            event = "PROXY_CHANGED",
            proxy = self.proxy,
            action = self.action,
            listen = self.listen,
            upstream = self.upstream,
            enabled = self.enabled,
        );
    }
}

/// A toxic (a fault) was added to, updated on or removed from a fault proxy
/// (`TOXIC_CHANGED`; WARNING when a fault is added or changed, INFO when removed).
#[derive(Debug)]
pub struct ToxicChanged<'a> {
    /// Proxy name.
    pub proxy: &'a str,
    /// Toxic name.
    pub toxic: &'a str,
    /// Toxic type (`latency`, `down`, `http_fault`, …).
    pub kind: &'a str,
    /// `upstream` or `downstream`.
    pub stream: &'a str,
    /// `added`, `updated`, `removed`.
    pub action: &'a str,
    /// The toxic's attributes, as JSON text.
    pub attributes: &'a str,
    /// Toxics on the proxy after the change.
    pub active: usize,
}

impl Emit for ToxicChanged<'_> {
    fn emit(self) {
        metrics()
            .fault_proxy_toxics
            .with_label_values(&[self.proxy])
            .set(i64::try_from(self.active).unwrap_or(i64::MAX));
        let level = if self.action == "removed" {
            tracing::Level::INFO
        } else {
            tracing::Level::WARN
        };
        event_at!(
            level,
            event = "TOXIC_CHANGED",
            proxy = self.proxy,
            toxic = self.toxic,
            kind = self.kind,
            stream = self.stream,
            action = self.action,
            attributes = self.attributes,
            active = self.active,
        );
    }
}

/// A gateway's HLC clock source was skewed (or reset) by the chaos control plane
/// (`CLOCK_SKEW`, WARNING).
#[derive(Debug)]
pub struct ClockSkew<'a> {
    /// The gateway.
    pub service: &'a str,
    /// The offset now added to its clock readings.
    pub offset_ms: i64,
    /// The offset before.
    pub previous_offset_ms: i64,
}

impl Emit for ClockSkew<'_> {
    fn emit(self) {
        tracing::warn!(
            event = "CLOCK_SKEW",
            service = self.service,
            offset_ms = self.offset_ms,
            previous_offset_ms = self.previous_offset_ms,
        );
    }
}

/// An anti-entropy round finished (`ANTI_ENTROPY_ROUND`): INFO when it repaired or found
/// a conflict, DEBUG when the replicas were already in sync (it runs every 30 s).
#[derive(Debug)]
pub struct AntiEntropyRound<'a> {
    /// The gateway that ran it.
    pub service: &'a str,
    /// `in_sync`, `repaired`, `conflict`, `incomplete` (bounds or errors left work for the
    /// next round) or `skipped` (fewer than two replicas could be compared).
    pub result: &'a str,
    /// Replicas compared, comma-separated.
    pub compared: &'a str,
    /// Replicas left out (breaker OPEN, digest failed), comma-separated.
    pub skipped: &'a str,
    /// Digest buckets that differed.
    pub divergent_buckets: usize,
    /// Keys compared record by record.
    pub keys_compared: usize,
    /// Records written to replicas.
    pub repaired: usize,
    /// Keys with conflicting copies and no majority.
    pub conflicts: usize,
    /// Calls that failed.
    pub errors: usize,
    /// How long the round took.
    pub duration: std::time::Duration,
}

impl Emit for AntiEntropyRound<'_> {
    fn emit(self) {
        let m = metrics();
        m.anti_entropy_rounds
            .with_label_values(&[self.result])
            .inc();
        if self.result != "skipped" {
            m.anti_entropy_divergent_buckets
                .with_label_values::<&str>(&[])
                .set(i64::try_from(self.divergent_buckets).unwrap_or(i64::MAX));
        }
        let level = if self.repaired > 0 || self.conflicts > 0 || self.errors > 0 {
            tracing::Level::INFO
        } else {
            tracing::Level::DEBUG
        };
        event_at!(
            level,
            event = "ANTI_ENTROPY_ROUND",
            service = self.service,
            result = self.result,
            compared = self.compared,
            skipped = self.skipped,
            divergent_buckets = self.divergent_buckets,
            keys_compared = self.keys_compared,
            repaired = self.repaired,
            conflicts = self.conflicts,
            errors = self.errors,
            duration_ms = format!("{:.1}", self.duration.as_secs_f64() * 1000.0),
        );
    }
}

/// Anti-entropy wrote a record to a replica (`ANTI_ENTROPY_REPAIR`, DEBUG: a replica back
/// from a long outage may need thousands; the round event sums them up).
#[derive(Debug)]
pub struct AntiEntropyRepair<'a> {
    /// The replica repaired.
    pub node: &'a str,
    /// The key.
    pub key: &'a str,
    /// The version written.
    pub version: &'a str,
    /// `missing`, `stale` or `corrupt`.
    pub reason: &'a str,
}

impl Emit for AntiEntropyRepair<'_> {
    fn emit(self) {
        metrics()
            .anti_entropy_repairs
            .with_label_values(&[self.node, self.reason])
            .inc();
        tracing::debug!(
            event = "ANTI_ENTROPY_REPAIR",
            node = self.node,
            key = self.key,
            version = self.version,
            reason = self.reason,
        );
    }
}

/// Replicas hold different bytes for the same version of a key and no copy has a strict
/// majority (`ANTI_ENTROPY_CONFLICT`, ERROR): corruption detected, left to an operator.
#[derive(Debug)]
pub struct AntiEntropyConflict<'a> {
    /// The key.
    pub key: &'a str,
    /// The version the replicas disagree about.
    pub version: &'a str,
    /// Each holder as `replica:hash`, comma-separated.
    pub holders: &'a str,
}

impl Emit for AntiEntropyConflict<'_> {
    fn emit(self) {
        metrics()
            .anti_entropy_conflicts
            .with_label_values::<&str>(&[])
            .inc();
        tracing::error!(
            event = "ANTI_ENTROPY_CONFLICT",
            key = self.key,
            version = self.version,
            holders = self.holders,
        );
    }
}

/// A saga step was entered (`SAGA_STEP`; DEBUG for the happy path, WARNING for
/// compensations, ERROR for dead letters).
#[derive(Debug)]
pub struct SagaStep<'a> {
    /// The order.
    pub order_id: &'a str,
    /// The step entered (`RESERVED`, `CONFIRMED`, `COMPENSATING`, `CANCELLED`, `DEAD`).
    pub step: &'a str,
    /// Why (compensations and dead letters).
    pub reason: Option<&'a str>,
    /// Failed attempts before this step.
    pub attempts: i64,
}

impl Emit for SagaStep<'_> {
    fn emit(self) {
        metrics()
            .shop_saga_transitions
            .with_label_values(&[self.step])
            .inc();
        let level = match self.step {
            "DEAD" => tracing::Level::ERROR,
            "COMPENSATING" => tracing::Level::WARN,
            "CANCELLED" if self.reason != Some("PAYMENT_DECLINED") => tracing::Level::WARN,
            _ => tracing::Level::DEBUG,
        };
        event_at!(
            level,
            event = "SAGA_STEP",
            order_id = self.order_id,
            step = self.step,
            reason = self.reason.unwrap_or(""),
            attempts = self.attempts,
        );
    }
}

/// A reconciliation found a product's stock figures disagreeing
/// (`InventoryInconsistency`, ERROR; the seed's alert name, SHOP-6).
#[derive(Debug)]
pub struct InventoryInconsistency<'a> {
    /// The product.
    pub product: &'a str,
    /// Stock in the database.
    pub db_stock: i64,
    /// Stock in the cache (if cached).
    pub cache_stock: Option<i64>,
    /// Units held by unfinished orders.
    pub reserved: i64,
    /// Units sold.
    pub sold: i64,
    /// Stock at seeding.
    pub initial_stock: i64,
    /// Which checks failed (`cache_matches_db`, `stock_conserved`).
    pub failed: &'a str,
}

impl Emit for InventoryInconsistency<'_> {
    fn emit(self) {
        let m = metrics();
        m.shop_inventory_inconsistency
            .with_label_values(&[self.product])
            .set(1);
        m.shop_reconcile_runs
            .with_label_values(&["inconsistent"])
            .inc();
        tracing::error!(
            event = "InventoryInconsistency",
            product = self.product,
            db_stock = self.db_stock,
            cache_stock = self.cache_stock,
            reserved = self.reserved,
            sold = self.sold,
            initial_stock = self.initial_stock,
            failed = self.failed,
        );
    }
}

/// A reconciliation found a product consistent (metric only: it runs every few seconds).
#[derive(Debug)]
pub struct InventoryConsistent<'a> {
    /// The product.
    pub product: &'a str,
}

impl Emit for InventoryConsistent<'_> {
    fn emit(self) {
        let m = metrics();
        m.shop_inventory_inconsistency
            .with_label_values(&[self.product])
            .set(0);
        m.shop_reconcile_runs.with_label_values(&["ok"]).inc();
    }
}

/// The event bus refused or did not acknowledge outbox events in time
/// (`OUTBOX_PUBLISH_FAILED`, WARNING); they stay in the outbox and are retried.
#[derive(Debug)]
pub struct OutboxPublishFailed<'a> {
    /// `embedded` or `nats`.
    pub sink: &'a str,
    /// Events in the failed attempt.
    pub events: usize,
    /// What went wrong.
    pub error: &'a str,
}

impl Emit for OutboxPublishFailed<'_> {
    fn emit(self) {
        tracing::warn!(
            event = "OUTBOX_PUBLISH_FAILED",
            sink = self.sink,
            events = self.events,
            error = self.error,
        );
    }
}

/// Credentials or a certificate were reloaded from their file (`RELOADED`, INFO).
#[derive(Debug)]
pub struct Reloaded<'a> {
    /// What: `api_keys`, `tls_certificate`.
    pub what: &'a str,
    /// The file.
    pub file: &'a str,
    /// A short description (how many keys; the certificate's subject) without secrets.
    pub detail: &'a str,
}

impl Emit for Reloaded<'_> {
    fn emit(self) {
        tracing::info!(
            event = "RELOADED",
            what = self.what,
            file = self.file,
            detail = self.detail
        );
    }
}

/// A reload failed and the previous credentials or certificate stay in force
/// (`RELOAD_FAILED`, ERROR).
#[derive(Debug)]
pub struct ReloadFailed<'a> {
    /// What: `api_keys`, `tls_certificate`.
    pub what: &'a str,
    /// The file.
    pub file: &'a str,
    /// What is wrong with it (never its content).
    pub error: &'a str,
}

impl Emit for ReloadFailed<'_> {
    fn emit(self) {
        tracing::error!(
            event = "RELOAD_FAILED",
            what = self.what,
            file = self.file,
            error = self.error,
            message = "the previous version stays in force"
        );
    }
}
