//! Results of `bulwark bench shop`: the serializable report, the invariant checker and
//! the side-by-side tables.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::report::{LatencySummary, fmt_ms};

/// The whole machine-readable output of one `bulwark bench shop` run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShopReport {
    /// Always `"bulwark bench shop"`.
    pub tool: String,
    /// [`crate::report::REPORT_FORMAT_VERSION`] at the time of writing.
    pub format_version: u32,
    /// How the load was applied.
    pub config: ShopRunConfig,
    /// The pgbench baseline, when it ran.
    pub pgbench: Option<PgbenchResult>,
    /// One entry per strategy (or one for `--target`), in the order they ran.
    pub runs: Vec<StrategyRun>,
}

impl ShopReport {
    /// Whether every run's invariants held.
    pub fn invariants_ok(&self) -> bool {
        self.runs.iter().all(|r| r.invariants_ok)
    }
}

/// The load of every run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShopRunConfig {
    /// Workers, and so connections.
    pub connections: u32,
    /// Share of views.
    pub read_ratio: f64,
    /// Open-loop rate (requests/s), `None` for closed loop.
    pub rate: Option<f64>,
    /// Measured seconds per run.
    pub duration_s: f64,
    /// Warm-up seconds per run.
    pub warmup_s: f64,
    /// Units seeded per sale.
    pub stock: i64,
    /// The hot product.
    pub product: String,
    /// Database kind of the spawned shops (`sqlite`, `postgres`, `mysql`), or `None` for
    /// `--target`.
    pub database: Option<String>,
}

/// The pgbench baseline: the single-row conditional `UPDATE` on the same PostgreSQL.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PgbenchResult {
    /// The statement each transaction ran.
    pub statement: String,
    /// `-c`.
    pub clients: u32,
    /// `-j`.
    pub threads: u32,
    /// `-T`.
    pub duration_s: u64,
    /// Transactions per second, without initial connection time.
    pub tps: f64,
    /// Transactions processed.
    pub transactions: u64,
    /// PostgreSQL's `fsync` and `synchronous_commit` settings during the run.
    pub fsync: String,
    /// See `fsync`.
    pub synchronous_commit: String,
}

/// One strategy's sale.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StrategyRun {
    /// Strategy name (`target` for `--target`).
    pub strategy: String,
    /// Base URL of the shop.
    pub url: String,
    /// Wall time of the measured phase, in seconds.
    pub elapsed_s: f64,
    /// Per operation: `view`, `view (cache hit)`, `view (cache miss)`, `purchase`.
    pub ops: Vec<OpResult>,
    /// Purchases answered 201 CONFIRMED during the measured phase, per second.
    pub purchases_ok_per_s: f64,
    /// `purchases_ok_per_s / pgbench.tps`, when the baseline ran.
    pub pgbench_ratio: Option<f64>,
    /// Whether a purchase was answered 409 `SOLD_OUT` (the stock ran out).
    pub sold_out: bool,
    /// The shop's cache hit rates over the measured phase, from its /metrics (`None`
    /// without a cache lookup, e.g. purchases only).
    pub cache: Option<CacheFigures>,
    /// Connections to the shop in state ESTABLISHED on its side right after the measured
    /// phase (from `/proc/net/tcp`; only for a shop on this machine).
    pub connections_established: Option<u64>,
    /// Peak resident memory of the shop process (VmHWM, or the highest VmRSS sampled),
    /// in bytes; only for spawned shops.
    pub rss_peak_bytes: Option<u64>,
    /// CPU time of the shop, PostgreSQL and the bench over the measured phase (Linux).
    #[serde(default)]
    pub cpu: Option<CpuFigures>,
    /// Seconds from the end of the load until every order was terminal.
    pub settle_s: f64,
    /// 201 answers the bench received (warm-up included): each must be a CONFIRMED order.
    pub acknowledged_confirmed: u64,
    /// The shop's audit of the product after the sale settled, as returned.
    pub audit: serde_json::Value,
    /// The checks made on the audit.
    pub invariants: Vec<InvariantCheck>,
    /// Whether every check passed.
    pub invariants_ok: bool,
}

/// CPU seconds each process used over the measured phase, from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct CpuFigures {
    /// Wall time between the two readings.
    pub elapsed_s: f64,
    /// CPUs of the machine (everything below shares them).
    pub cores: u32,
    /// The spawned shop (`None` with `--target`).
    pub shop_s: Option<f64>,
    /// Every process named `postgres` on this machine, exited backends included (`None`
    /// when there is none: SQLite, or PostgreSQL elsewhere).
    pub postgres_s: Option<f64>,
    /// This bench (the load generator).
    pub bench_s: Option<f64>,
}

/// Measurement of one operation of one run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OpResult {
    /// `view`, `view (cache hit)`, `view (cache miss)` or `purchase`.
    pub op: String,
    /// Completed requests, any outcome.
    pub requests: u64,
    /// 2xx answers.
    pub ok: u64,
    /// `requests / elapsed_s`.
    pub throughput_rps: f64,
    /// Latency of every answered request, in microseconds.
    pub latency_us: LatencySummary,
    /// Every HTTP status seen, with its count.
    pub status_codes: BTreeMap<u16, u64>,
    /// Failures by kind: `STATUS CODE` from the error body (`409 SOLD_OUT`), or
    /// `timeout`, `connect`, `transport`.
    pub errors: BTreeMap<String, u64>,
    /// Open loop only: scheduled requests never sent.
    pub missed: u64,
}

/// Cache lookups and hits over the measured phase (`shop_cache_requests_total`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct CacheFigures {
    /// Product details cache: hits / lookups.
    pub details_hit_rate: f64,
    /// Stock cache: hits / lookups.
    pub stock_hit_rate: f64,
    /// Both caches: hits / lookups.
    pub hit_rate: f64,
    /// Lookups of both caches.
    pub lookups: u64,
}

/// One invariant and its verdict.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InvariantCheck {
    /// Short name.
    pub name: String,
    /// Whether it held.
    pub ok: bool,
    /// The figures it was decided on.
    pub detail: String,
}

/// The audit endpoint's answer (`GET /v1/admin/products/{id}/audit`), the fields the
/// checks need.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Audit {
    /// Stock at seeding.
    pub initial_stock: i64,
    /// Stock in the database (neither reserved nor sold).
    pub db_stock: i64,
    /// Units held by pending or failed orders.
    pub reserved: i64,
    /// Units in confirmed orders.
    pub sold: i64,
    /// Orders by public status.
    pub orders: AuditOrders,
    /// Payments in the simulator's ledger.
    pub payments: AuditPayments,
    /// The shop's own verdicts.
    #[serde(default)]
    pub invariants: BTreeMap<String, bool>,
}

/// Orders by status.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub struct AuditOrders {
    /// Paid and confirmed.
    pub confirmed: i64,
    /// Compensated or declined.
    pub cancelled: i64,
    /// Saga still running.
    pub pending: i64,
    /// Dead-lettered (compensation failed).
    pub failed: i64,
}

/// Payments by state.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct AuditPayments {
    /// Captured and not refunded.
    pub captured: i64,
    /// Refunded.
    pub refunded: i64,
}

/// Checks a settled sale: nothing oversold, units conserved, every order terminal, every
/// captured payment on a confirmed order, and every 201 the bench received backed by a
/// confirmed order.
pub fn check_invariants(a: &Audit, acknowledged_confirmed: u64) -> Vec<InvariantCheck> {
    let check = |name: &str, ok: bool, detail: String| InvariantCheck {
        name: name.to_owned(),
        ok,
        detail,
    };
    let server_settled = a.invariants.get("paid_orders_settled").copied();
    vec![
        check(
            "no_oversell",
            a.sold <= a.initial_stock && a.db_stock >= 0,
            format!(
                "sold {} <= initial {} (db stock {})",
                a.sold, a.initial_stock, a.db_stock
            ),
        ),
        check(
            "stock_conserved",
            a.db_stock + a.reserved + a.sold == a.initial_stock,
            format!(
                "db {} + reserved {} + sold {} = {} (initial {})",
                a.db_stock,
                a.reserved,
                a.sold,
                a.db_stock + a.reserved + a.sold,
                a.initial_stock
            ),
        ),
        check(
            "all_terminal",
            a.orders.pending == 0,
            format!(
                "{} pending, {} confirmed, {} cancelled, {} failed",
                a.orders.pending, a.orders.confirmed, a.orders.cancelled, a.orders.failed
            ),
        ),
        check(
            "paid_orders_settled",
            server_settled == Some(true) && a.payments.captured <= a.orders.confirmed,
            format!(
                "{} captured for {} confirmed orders, {} refunded; shop says settled: {}",
                a.payments.captured,
                a.orders.confirmed,
                a.payments.refunded,
                server_settled.map_or("not reported".to_owned(), |b| b.to_string())
            ),
        ),
        check(
            "acknowledged_confirmed",
            i64::try_from(acknowledged_confirmed).is_ok_and(|n| n <= a.orders.confirmed),
            format!(
                "{} purchases answered 201, {} orders confirmed",
                acknowledged_confirmed, a.orders.confirmed
            ),
        ),
    ]
}

/// Aligns `rows` under `headers`: the first `left` columns left-aligned, the rest right.
fn table(headers: &[&str], rows: &[Vec<String>], left: usize) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            let pad = w.saturating_sub(cell.chars().count());
            if i < left {
                let _ = write!(out, "{cell}{}", " ".repeat(pad));
            } else {
                let _ = write!(out, "{}{cell}", " ".repeat(pad));
            }
        }
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out.push('\n');
    };
    line(headers);
    for row in rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells);
    }
    out
}

fn kinds(errors: &BTreeMap<String, u64>) -> String {
    if errors.is_empty() {
        return "-".to_owned();
    }
    errors
        .iter()
        .map(|(k, n)| format!("{k}×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// The CPU table (empty when no run has figures): cores each process kept busy over the
/// measured phase, and CPU microseconds per request completed (views and purchases).
fn render_cpu(report: &ShopReport) -> String {
    let rows: Vec<Vec<String>> = report
        .runs
        .iter()
        .filter_map(|r| {
            let c = r.cpu?;
            let requests: u64 = r
                .ops
                .iter()
                .filter(|o| o.op == "view" || o.op == "purchase")
                .map(|o| o.requests)
                .sum();
            let cores = |s: Option<f64>| {
                s.filter(|_| c.elapsed_s > 0.0)
                    .map_or("-".to_owned(), |s| format!("{:.2}", s / c.elapsed_s))
            };
            let per_request = |s: Option<f64>| {
                s.filter(|_| requests > 0).map_or("-".to_owned(), |s| {
                    format!("{:.0}", s * 1e6 / requests as f64)
                })
            };
            Some(vec![
                r.strategy.clone(),
                cores(c.shop_s),
                cores(c.postgres_s),
                cores(c.bench_s),
                per_request(c.shop_s),
                per_request(c.postgres_s),
                per_request(c.bench_s),
            ])
        })
        .collect();
    let Some(cores) = report.runs.iter().find_map(|r| r.cpu.map(|c| c.cores)) else {
        return String::new();
    };
    let mut out = format!(
        "CPU over the measured phase ({cores} cores; postgres = every postgres process on this machine):\n"
    );
    out.push_str(&table(
        &[
            "strategy",
            "shop cores",
            "postgres cores",
            "bench cores",
            "shop µs/req",
            "postgres µs/req",
            "bench µs/req",
        ],
        &rows,
        1,
    ));
    out.push('\n');
    out
}

/// The tables printed at the end: latency per (strategy, op), the CPU table when there
/// are figures, then one summary line per strategy with throughput, the pgbench ratio,
/// cache, memory and the invariants.
pub fn render_shop(report: &ShopReport) -> String {
    let mut out = String::new();
    if let Some(p) = &report.pgbench {
        let _ = writeln!(
            out,
            "pgbench baseline: {:.1} tps ({} clients, {} s, fsync={}, synchronous_commit={}): {}\n",
            p.tps, p.clients, p.duration_s, p.fsync, p.synchronous_commit, p.statement
        );
    }
    let rows: Vec<Vec<String>> = report
        .runs
        .iter()
        .flat_map(|r| {
            r.ops.iter().map(|o| {
                let l = &o.latency_us;
                vec![
                    r.strategy.clone(),
                    o.op.clone(),
                    o.requests.to_string(),
                    o.ok.to_string(),
                    format!("{:.1}", o.throughput_rps),
                    fmt_ms(l.p50),
                    fmt_ms(l.p95),
                    fmt_ms(l.p99),
                    fmt_ms(l.p999),
                    fmt_ms(l.max),
                    kinds(&o.errors),
                ]
            })
        })
        .collect();
    out.push_str(&table(
        &[
            "strategy", "op", "requests", "ok", "req/s", "p50 ms", "p95 ms", "p99 ms", "p99.9 ms",
            "max ms", "errors",
        ],
        &rows,
        2,
    ));
    out.push('\n');
    out.push_str(&render_cpu(report));
    let rows: Vec<Vec<String>> = report
        .runs
        .iter()
        .map(|r| {
            let failed: Vec<&str> = r
                .invariants
                .iter()
                .filter(|c| !c.ok)
                .map(|c| c.name.as_str())
                .collect();
            let confirmed = r
                .audit
                .pointer("/orders/CONFIRMED")
                .and_then(serde_json::Value::as_i64)
                .unwrap_or(0);
            let initial = r
                .audit
                .get("initial_stock")
                .and_then(serde_json::Value::as_i64)
                .unwrap_or(0);
            vec![
                r.strategy.clone(),
                format!("{:.1}", r.purchases_ok_per_s),
                r.pgbench_ratio
                    .map_or("-".to_owned(), |x| format!("{x:.1}×")),
                if r.sold_out { "yes" } else { "no" }.to_owned(),
                r.connections_established
                    .map_or("-".to_owned(), |n| n.to_string()),
                r.cache.map_or("-".to_owned(), |c| pct(c.hit_rate)),
                r.rss_peak_bytes
                    .map_or("-".to_owned(), |b| format!("{:.1}", b as f64 / 1_048_576.0)),
                format!("{confirmed}/{initial}"),
                format!("{:.1}", r.settle_s),
                if failed.is_empty() {
                    "OK".to_owned()
                } else {
                    format!("VIOLATED: {}", failed.join(", "))
                },
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "strategy",
            "purchases/s",
            "vs pgbench",
            "sold out",
            "conns",
            "cache hit",
            "RSS MB",
            "sold/stock",
            "settle s",
            "invariants",
        ],
        &rows,
        1,
    ));
    for r in &report.runs {
        for c in r.invariants.iter().filter(|c| !c.ok) {
            let _ = writeln!(
                out,
                "{}: invariant {} violated: {}",
                r.strategy, c.name, c.detail
            );
        }
        for o in r.ops.iter().filter(|o| o.missed > 0) {
            let _ = writeln!(
                out,
                "note: {} {}: {} scheduled requests were never sent (the generator fell more than one timeout behind)",
                r.strategy, o.op, o.missed
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn audit(v: serde_json::Value) -> Audit {
        serde_json::from_value(v).expect("audit parses")
    }

    fn good() -> serde_json::Value {
        json!({
            "product_id": "hot", "initial_stock": 100, "db_stock": 40, "reserved": 0, "sold": 55,
            "cache_stock": 40, "redis_stock": null,
            "orders": {"CONFIRMED": 55, "CANCELLED": 5, "PENDING": 0, "FAILED": 0},
            "payments": {"captured": 55, "refunded": 3},
            "invariants": {"no_oversell": true, "stock_conserved": false, "all_terminal": true,
                           "paid_orders_settled": true, "cache_matches_db": true},
            "conditions": []
        })
    }

    fn failed(checks: &[InvariantCheck]) -> Vec<&str> {
        checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name.as_str())
            .collect()
    }

    #[test]
    fn a_settled_sale_passes_on_its_own_figures() {
        let mut v = good();
        v["db_stock"] = json!(45);
        let checks = check_invariants(&audit(v), 50);
        assert_eq!(failed(&checks), Vec::<&str>::new(), "{checks:?}");
        assert_eq!(checks.len(), 5);
    }

    #[test]
    fn oversell_is_caught() {
        let mut v = good();
        v["sold"] = json!(101);
        v["db_stock"] = json!(-1);
        v["orders"]["CONFIRMED"] = json!(101);
        v["payments"]["captured"] = json!(101);
        assert_eq!(failed(&check_invariants(&audit(v), 0)), vec!["no_oversell"]);
    }

    #[test]
    fn lost_units_are_caught() {
        // 40 + 0 + 55 = 95, not 100: five units vanished.
        assert_eq!(
            failed(&check_invariants(&audit(good()), 0)),
            vec!["stock_conserved"]
        );
    }

    #[test]
    fn pending_orders_unpaid_captures_and_lost_acknowledgements_are_caught() {
        let mut v = good();
        v["db_stock"] = json!(43);
        v["reserved"] = json!(2);
        v["orders"]["PENDING"] = json!(2);
        assert_eq!(
            failed(&check_invariants(&audit(v), 0)),
            vec!["all_terminal"]
        );

        let mut v = good();
        v["db_stock"] = json!(45);
        v["invariants"]["paid_orders_settled"] = json!(false);
        assert_eq!(
            failed(&check_invariants(&audit(v), 0)),
            vec!["paid_orders_settled"]
        );

        let mut v = good();
        v["db_stock"] = json!(45);
        v["payments"]["captured"] = json!(56);
        assert_eq!(
            failed(&check_invariants(&audit(v), 0)),
            vec!["paid_orders_settled"]
        );

        let mut v = good();
        v["db_stock"] = json!(45);
        // The bench saw 56 purchases confirmed, the database has 55.
        assert_eq!(
            failed(&check_invariants(&audit(v), 56)),
            vec!["acknowledged_confirmed"]
        );
    }

    #[test]
    fn an_audit_without_the_shops_verdict_fails_the_payment_check() {
        let mut v = good();
        v["db_stock"] = json!(45);
        v.as_object_mut().expect("object").remove("invariants");
        assert_eq!(
            failed(&check_invariants(&audit(v), 0)),
            vec!["paid_orders_settled"]
        );
    }

    #[test]
    fn tables_show_every_op_and_the_verdict() {
        let op = |name: &str| OpResult {
            op: name.to_owned(),
            requests: 10,
            ok: 9,
            throughput_rps: 5.0,
            latency_us: LatencySummary {
                count: 10,
                p50: 1500,
                p95: 2500,
                p99: 3000,
                p999: 3000,
                max: 3001,
                ..LatencySummary::default()
            },
            status_codes: BTreeMap::from([(201, 9), (409, 1)]),
            errors: BTreeMap::from([("409 SOLD_OUT".to_owned(), 1)]),
            missed: 0,
        };
        let mut v = good();
        v["db_stock"] = json!(45);
        let invariants = check_invariants(&audit(v.clone()), 9);
        let mut run = StrategyRun {
            strategy: "batched".into(),
            url: "http://127.0.0.1:1".into(),
            elapsed_s: 2.0,
            ops: vec![op("view"), op("purchase")],
            purchases_ok_per_s: 4.5,
            pgbench_ratio: Some(0.5),
            sold_out: true,
            cache: None,
            connections_established: Some(4),
            rss_peak_bytes: Some(50 * 1_048_576),
            cpu: Some(CpuFigures {
                elapsed_s: 2.0,
                cores: 2,
                shop_s: Some(1.0),
                postgres_s: None,
                bench_s: Some(0.4),
            }),
            settle_s: 0.2,
            acknowledged_confirmed: 9,
            audit: v,
            invariants_ok: true,
            invariants,
        };
        let report = ShopReport {
            tool: "bulwark bench shop".into(),
            format_version: 1,
            config: ShopRunConfig {
                connections: 4,
                read_ratio: 0.8,
                rate: None,
                duration_s: 2.0,
                warmup_s: 0.0,
                stock: 100,
                product: "hot".into(),
                database: Some("sqlite".into()),
            },
            pgbench: None,
            runs: vec![run.clone()],
        };
        let t = render_shop(&report);
        assert!(t.contains("batched   view"), "{t}");
        assert!(t.contains("409 SOLD_OUT×1"), "{t}");
        assert!(t.contains(" 2.500 "), "{t}");
        assert!(
            t.contains("0.5×") && t.contains("50.0") && t.contains("55/100"),
            "{t}"
        );
        assert!(t.trim_end().ends_with("OK"), "{t}");
        assert!(report.invariants_ok());
        // 20 requests in the phase: 1.0 s of shop CPU over 2 s is 0.50 core and 50,000 µs
        // per request; no local PostgreSQL.
        let cpu = t
            .lines()
            .skip_while(|l| !l.starts_with("CPU over the measured phase (2 cores"))
            .nth(2)
            .unwrap_or_else(|| panic!("no CPU row:\n{t}"));
        let cols: Vec<&str> = cpu.split_whitespace().collect();
        assert_eq!(
            cols,
            ["batched", "0.50", "-", "0.20", "50000", "-", "20000"],
            "{t}"
        );

        run.invariants[0].ok = false;
        run.invariants_ok = false;
        let report = ShopReport {
            runs: vec![run],
            ..report
        };
        let t = render_shop(&report);
        assert!(t.contains("VIOLATED: no_oversell"), "{t}");
        assert!(t.contains("invariant no_oversell violated"), "{t}");
        assert!(!report.invariants_ok());
    }
}
