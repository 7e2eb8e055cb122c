//! The Prometheus metrics Bulwark exports (SPEC CAP-11), registered once per process.

use std::sync::OnceLock;

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric a Bulwark process can export. Services only touch the ones they use;
/// untouched label sets are simply absent from the output.
#[derive(Debug)]
pub struct Metrics {
    /// The registry all metrics below belong to.
    pub registry: Registry,
    /// `app_requests_total{mode,operation,status}`: HTTP requests served by a gateway.
    pub requests_total: IntCounterVec,
    /// `app_request_latency_seconds{mode,operation}`: HTTP request latency.
    pub request_latency: HistogramVec,
    /// `circuit_breaker_state{node}`: 0 CLOSED, 1 HALF_OPEN, 2 OPEN.
    pub circuit_breaker_state: IntGaugeVec,
    /// `circuit_breaker_transitions_total{node,state}`: transitions into each state.
    pub circuit_breaker_transitions: IntCounterVec,
    /// `data_staleness_ms{node}`: staleness of the replica in the last read that saw it.
    pub data_staleness_ms: IntGaugeVec,
    /// `db_connection_failures_total{node}`: failed calls to a replica.
    pub db_connection_failures: IntCounterVec,
    /// `replication_lag_ms{node}`: age of the oldest hint queued for a replica.
    pub replication_lag_ms: IntGaugeVec,
    /// `hint_queue_depth{node}`: writes a replica missed and that wait for handoff.
    pub hint_queue_depth: IntGaugeVec,
    /// `quorum_outcomes_total{mode,outcome}`: committed, aborted, unknown, degraded.
    pub quorum_outcomes: IntCounterVec,
    /// `replica_call_latency_seconds{node,op}`: latency of calls to replicas.
    pub replica_call_latency: HistogramVec,
    /// `ryw_violations_total`: reads that could not honour read-your-writes.
    pub ryw_violations: IntCounterVec,
    /// `node_commands_total{command}`: RESP commands served by a storage node.
    pub node_commands: IntCounterVec,
    /// `node_fsync_seconds`: duration of storage fsyncs (group commits).
    pub node_fsync: Histogram,
    /// `anti_entropy_rounds_total{result}`: anti-entropy rounds by result (`in_sync`,
    /// `repaired`, `conflict`, `incomplete`, `skipped`).
    pub anti_entropy_rounds: IntCounterVec,
    /// `anti_entropy_repairs_total{node,reason}`: records written to a replica by
    /// anti-entropy, by reason (`missing`, `stale`, `corrupt`).
    pub anti_entropy_repairs: IntCounterVec,
    /// `anti_entropy_conflicts_total`: keys whose replicas hold different bytes for the
    /// same version with no majority (detected, not repaired).
    pub anti_entropy_conflicts: IntCounterVec,
    /// `anti_entropy_divergent_buckets`: digest buckets that differed in the last round.
    pub anti_entropy_divergent_buckets: IntGaugeVec,
    /// `chaos_experiments_total{outcome}`: experiment runs finished (`succeeded`, `failed`,
    /// `aborted`).
    pub chaos_experiments: IntCounterVec,
    /// `chaos_faults_injected_total{kind}`: faults applied by the chaos controller.
    pub chaos_faults_injected: IntCounterVec,
    /// `chaos_faults_removed_total{reason}`: faults removed (`ttl`, `rollback`, `disable`,
    /// `recovered`, `shutdown`).
    pub chaos_faults_removed: IntCounterVec,
    /// `chaos_faults_active`: faults in effect now.
    pub chaos_faults_active: IntGauge,
    /// `chaos_recovery_seconds`: time from a run's last fault removed to its steady state
    /// holding again (its mean is `_sum / _count`).
    pub chaos_recovery: Histogram,
    /// `fault_proxy_connections{proxy}`: connections open through a fault proxy.
    pub fault_proxy_connections: IntGaugeVec,
    /// `fault_proxy_bytes_total{proxy,direction}`: bytes read by a fault proxy, per
    /// direction (`upstream`: client → server).
    pub fault_proxy_bytes: IntCounterVec,
    /// `fault_proxy_toxics{proxy}`: toxics active on a fault proxy.
    pub fault_proxy_toxics: IntGaugeVec,
    /// `shop_cache_requests_total{cache,result}`: commerce cache lookups (`details` or
    /// `stock`; `hit` or `miss`).
    pub shop_cache_requests: IntCounterVec,
    /// `shop_cache_hit_ratio{cache}`: hits / lookups since start (SHOP-1).
    pub shop_cache_hit_ratio: GaugeVec,
    /// `shop_purchases_total{strategy,outcome}`: purchase requests by outcome.
    pub shop_purchases: IntCounterVec,
    /// `shop_batch_size{stage}`: operations merged into one transaction (group commit).
    pub shop_batch_size: HistogramVec,
    /// `shop_batch_seconds{stage}`: time to apply one batch (its transaction, commit
    /// included); with `shop_batch_size` it shows where a purchase's latency goes.
    pub shop_batch_seconds: HistogramVec,
    /// `shop_saga_transitions_total{step}`: saga steps entered.
    pub shop_saga_transitions: IntCounterVec,
    /// `shop_inventory_inconsistency{product}`: 1 while the last reconciliation of a
    /// product found cache, reservations and database disagreeing (SHOP-6).
    pub shop_inventory_inconsistency: IntGaugeVec,
    /// `shop_reconcile_runs_total{result}`: reconciliation checks, `ok` or `inconsistent`.
    pub shop_reconcile_runs: IntCounterVec,
    /// `shop_outbox_backlog`: outbox rows not yet acknowledged by the event bus.
    pub shop_outbox_backlog: IntGauge,
    /// `shop_events_published_total{sink}`: events handed to the bus and acknowledged.
    pub shop_events_published: IntCounterVec,
    /// `http_auth_refusals_total{reason}`: requests refused by the security layer
    /// (`unauthenticated`, `forbidden`, `not_loopback`).
    pub http_auth_refusals: IntCounterVec,
    /// `http_rate_limited_total{class}`: requests refused with 429 by a rate limit, by
    /// route class (`read`, `write`, `admin`).
    pub http_rate_limited: IntCounterVec,
    /// `http_connections_refused_total{reason}`: connections or request heads refused
    /// before reaching a service, by refusal code.
    pub http_connections_refused: IntCounterVec,
    /// `http_connections_open`: connections open on this process's HTTP listener.
    pub http_connections_open: IntGauge,
    /// `http_shed_total`: data requests shed with 503 `OVERLOADED` (`MAX_IN_FLIGHT`).
    pub http_shed: IntCounterVec,
}

/// Batch sizes from 1 to 4096 (powers of two).
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// Buckets from 100 µs to 10 s: fine enough to see a 1 ms p99.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let m = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(m.clone()))
        .expect("metric registered once");
    m
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let m = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(m.clone()))
        .expect("metric registered once");
    m
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let m = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .expect("valid metric definition");
    registry
        .register(Box::new(m.clone()))
        .expect("metric registered once");
    m
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let http_connections_open = IntGauge::new(
            "http_connections_open",
            "Connections open on this process's HTTP listener.",
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(http_connections_open.clone()))
            .expect("metric registered once");
        let node_fsync = Histogram::with_opts(
            HistogramOpts::new(
                "node_fsync_seconds",
                "Duration of storage group-commit fsyncs.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(node_fsync.clone()))
            .expect("metric registered once");
        let chaos_faults_active = IntGauge::new(
            "chaos_faults_active",
            "Faults injected by the chaos controller and not yet removed.",
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(chaos_faults_active.clone()))
            .expect("metric registered once");
        let chaos_recovery = Histogram::with_opts(
            HistogramOpts::new(
                "chaos_recovery_seconds",
                "Time from an experiment's last fault removed to its steady state holding again.",
            )
            .buckets(vec![0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]),
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(chaos_recovery.clone()))
            .expect("metric registered once");
        let shop_batch_size = HistogramVec::new(
            HistogramOpts::new(
                "shop_batch_size",
                "Operations merged into one database transaction, per stage.",
            )
            .buckets(BATCH_BUCKETS.to_vec()),
            &["stage"],
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(shop_batch_size.clone()))
            .expect("metric registered once");
        let shop_cache_hit_ratio = GaugeVec::new(
            Opts::new(
                "shop_cache_hit_ratio",
                "Commerce cache hits divided by lookups since start, per cache.",
            ),
            &["cache"],
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(shop_cache_hit_ratio.clone()))
            .expect("metric registered once");
        let shop_outbox_backlog = IntGauge::new(
            "shop_outbox_backlog",
            "Outbox rows not yet acknowledged by the event bus.",
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(shop_outbox_backlog.clone()))
            .expect("metric registered once");
        Metrics {
            shop_cache_requests: counter(
                &registry,
                "shop_cache_requests_total",
                "Commerce cache lookups by cache (details, stock) and result (hit, miss).",
                &["cache", "result"],
            ),
            shop_cache_hit_ratio,
            shop_purchases: counter(
                &registry,
                "shop_purchases_total",
                "Purchase requests by strategy and outcome.",
                &["strategy", "outcome"],
            ),
            shop_batch_size,
            shop_batch_seconds: histogram(
                &registry,
                "shop_batch_seconds",
                "Time to apply one group-committed batch (transaction and commit), per stage.",
                &["stage"],
            ),
            shop_saga_transitions: counter(
                &registry,
                "shop_saga_transitions_total",
                "Saga steps entered (RESERVED, CONFIRMED, COMPENSATING, CANCELLED, DEAD).",
                &["step"],
            ),
            shop_inventory_inconsistency: gauge(
                &registry,
                "shop_inventory_inconsistency",
                "1 while a product's cache, reservations and database stock disagree.",
                &["product"],
            ),
            shop_reconcile_runs: counter(
                &registry,
                "shop_reconcile_runs_total",
                "Inventory reconciliation checks by result (ok, inconsistent).",
                &["result"],
            ),
            shop_outbox_backlog,
            shop_events_published: counter(
                &registry,
                "shop_events_published_total",
                "Saga events acknowledged by the event bus, per sink.",
                &["sink"],
            ),
            chaos_experiments: counter(
                &registry,
                "chaos_experiments_total",
                "Chaos experiment runs finished, by outcome (succeeded, failed, aborted).",
                &["outcome"],
            ),
            chaos_faults_injected: counter(
                &registry,
                "chaos_faults_injected_total",
                "Faults applied by the chaos controller, by kind.",
                &["kind"],
            ),
            chaos_faults_removed: counter(
                &registry,
                "chaos_faults_removed_total",
                "Faults removed by the chaos controller, by reason.",
                &["reason"],
            ),
            chaos_faults_active,
            chaos_recovery,
            requests_total: counter(
                &registry,
                "app_requests_total",
                "HTTP requests served, by consistency mode, operation and status code.",
                &["mode", "operation", "status"],
            ),
            request_latency: histogram(
                &registry,
                "app_request_latency_seconds",
                "HTTP request latency in seconds.",
                &["mode", "operation"],
            ),
            circuit_breaker_state: gauge(
                &registry,
                "circuit_breaker_state",
                "Circuit breaker state per replica: 0 CLOSED, 1 HALF_OPEN, 2 OPEN.",
                &["node"],
            ),
            circuit_breaker_transitions: counter(
                &registry,
                "circuit_breaker_transitions_total",
                "Circuit breaker transitions per replica and target state.",
                &["node", "state"],
            ),
            data_staleness_ms: gauge(
                &registry,
                "data_staleness_ms",
                "Staleness of each replica in the most recent read, in milliseconds.",
                &["node"],
            ),
            db_connection_failures: counter(
                &registry,
                "db_connection_failures_total",
                "Failed calls to a replica (connect, timeout, protocol error).",
                &["node"],
            ),
            replication_lag_ms: gauge(
                &registry,
                "replication_lag_ms",
                "Age of the oldest write a replica missed and has not yet received, in ms.",
                &["node"],
            ),
            hint_queue_depth: gauge(
                &registry,
                "hint_queue_depth",
                "Writes a replica missed that wait for hinted handoff.",
                &["node"],
            ),
            quorum_outcomes: counter(
                &registry,
                "quorum_outcomes_total",
                "Outcomes of replicated writes: committed, degraded, aborted, unknown.",
                &["mode", "outcome"],
            ),
            replica_call_latency: histogram(
                &registry,
                "replica_call_latency_seconds",
                "Latency of calls from a gateway to a replica, in seconds.",
                &["node", "op"],
            ),
            ryw_violations: counter(
                &registry,
                "ryw_violations_total",
                "Reads that returned a version older than the session's own write.",
                &["mode"],
            ),
            node_commands: counter(
                &registry,
                "node_commands_total",
                "RESP commands served by a storage node.",
                &["command"],
            ),
            anti_entropy_rounds: counter(
                &registry,
                "anti_entropy_rounds_total",
                "Anti-entropy rounds by result: in_sync, repaired, conflict, incomplete, skipped.",
                &["result"],
            ),
            anti_entropy_repairs: counter(
                &registry,
                "anti_entropy_repairs_total",
                "Records written to a replica by anti-entropy, by reason: missing, stale, corrupt.",
                &["node", "reason"],
            ),
            anti_entropy_conflicts: counter(
                &registry,
                "anti_entropy_conflicts_total",
                "Keys whose replicas hold different bytes for one version, with no majority.",
                &[],
            ),
            anti_entropy_divergent_buckets: gauge(
                &registry,
                "anti_entropy_divergent_buckets",
                "Digest buckets that differed between replicas in the last anti-entropy round.",
                &[],
            ),
            node_fsync,
            fault_proxy_connections: gauge(
                &registry,
                "fault_proxy_connections",
                "Connections open through a fault proxy.",
                &["proxy"],
            ),
            fault_proxy_bytes: counter(
                &registry,
                "fault_proxy_bytes_total",
                "Bytes read by a fault proxy, by direction (upstream: client to server).",
                &["proxy", "direction"],
            ),
            fault_proxy_toxics: gauge(
                &registry,
                "fault_proxy_toxics",
                "Toxics active on a fault proxy.",
                &["proxy"],
            ),
            http_auth_refusals: counter(
                &registry,
                "http_auth_refusals_total",
                "Requests refused by authentication or authorization, by reason.",
                &["reason"],
            ),
            http_rate_limited: counter(
                &registry,
                "http_rate_limited_total",
                "Requests refused with 429 by a rate limit, by route class.",
                &["class"],
            ),
            http_connections_refused: counter(
                &registry,
                "http_connections_refused_total",
                "Connections or request heads refused before reaching the service, by code.",
                &["reason"],
            ),
            http_connections_open,
            http_shed: counter(
                &registry,
                "http_shed_total",
                "Data requests shed with 503 OVERLOADED beyond MAX_IN_FLIGHT.",
                &[],
            ),
            registry,
        }
    }
}

impl Metrics {
    /// The size and time histograms of one group-commit stage.
    pub fn shop_batch_stage(&self, stage: &str) -> BatchStage {
        BatchStage {
            size: self.shop_batch_size.with_label_values(&[stage]),
            seconds: self.shop_batch_seconds.with_label_values(&[stage]),
        }
    }
}

/// `shop_batch_size` and `shop_batch_seconds` of one stage, resolved once.
#[derive(Clone, Debug)]
pub struct BatchStage {
    size: Histogram,
    seconds: Histogram,
}

impl BatchStage {
    /// Records one batch of `size` operations that took `elapsed`.
    pub fn observe(&self, size: usize, elapsed: std::time::Duration) {
        self.size.observe(size as f64);
        self.seconds.observe(elapsed.as_secs_f64());
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// All metrics in the Prometheus text exposition format.
pub fn render() -> String {
    let mut buf = Vec::new();
    let families = metrics().registry.gather();
    // Encoding into a Vec cannot fail for the text format.
    let _ = TextEncoder::new().encode(&families, &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_seed_metric_names() {
        let m = metrics();
        m.requests_total
            .with_label_values(&["AP", "write", "200"])
            .inc();
        m.circuit_breaker_state.with_label_values(&["db_g2"]).set(2);
        let text = render();
        assert!(text.contains(r#"app_requests_total{mode="AP",operation="write",status="200"} 1"#));
        assert!(text.contains(r#"circuit_breaker_state{node="db_g2"} 2"#));
    }
}
