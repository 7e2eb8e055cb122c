//! Results: the serializable types and the human-readable table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::args::{Api, Op, Scenario};

/// Version of the JSON document layout; bumped when a field changes meaning or goes away.
pub const REPORT_FORMAT_VERSION: u32 = 1;

/// The whole machine-readable output of one `bulwark bench kv` run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BenchReport {
    /// Always `"bulwark bench kv"`, so the document says what produced it.
    pub tool: String,
    /// [`REPORT_FORMAT_VERSION`] at the time of writing.
    pub format_version: u32,
    /// One entry per (target × op) scenario, in the order they ran.
    pub results: Vec<ScenarioResult>,
}

/// How load was applied during a scenario.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(tag = "model", rename_all = "lowercase")]
pub enum LoadModel {
    /// `concurrency` workers, each sending its next request when the last one finished.
    /// Latency is from actual send; a stalled server also slows the generator, so tail
    /// latency is understated (coordinated omission). Use `--rate` for honest tails.
    Closed {
        /// Workers (and connections).
        concurrency: u32,
    },
    /// A fixed schedule of `rate` requests/s over at most `concurrency` workers; latency is
    /// from each request's intended send time.
    Open {
        /// Intended requests per second.
        rate: f64,
        /// Workers (and connections): the most requests in flight at once.
        concurrency: u32,
    },
}

/// Measurement of one (target × op) scenario.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScenarioResult {
    /// Human label, e.g. `"CP write"` or `"CP write (db_g2 down)"`.
    pub scenario: String,
    /// Target label (`AP`, `CP`, …).
    pub target: String,
    /// Target base URL.
    pub url: String,
    /// What each request did.
    pub op: Op,
    /// Which HTTP API was driven.
    pub api: Api,
    /// Condition measured under.
    pub condition: Scenario,
    /// The replica stopped, when `condition` is `replica-down`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub replica_down: Option<String>,
    /// Closed or open loop, and its parameters.
    pub load: LoadModel,
    /// Wall time of the measured phase, from its start to the last response, in seconds.
    pub elapsed_s: f64,
    /// Requests that completed (any outcome); excludes `missed`.
    pub requests: u64,
    /// Requests answered 2xx.
    pub ok: u64,
    /// Requests that failed, by kind.
    pub errors: ErrorCounts,
    /// Every HTTP status seen, with its count (successes included).
    pub status_codes: BTreeMap<u16, u64>,
    /// Open loop only: scheduled requests never sent because the generator fell more than
    /// one timeout behind schedule. Non-zero means the target (or the generator) was
    /// overloaded at this rate.
    pub missed: u64,
    /// `requests / elapsed_s`.
    pub throughput_rps: f64,
    /// Latency of every request that got an HTTP response (any status), in microseconds.
    /// Timeouts and connection failures are counted in `errors` but not recorded here.
    pub latency_us: LatencySummary,
}

/// Failed requests, by kind.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorCounts {
    /// 4xx responses (e.g. 404 for a never-written key).
    pub http_4xx: u64,
    /// 5xx responses (503 `CP_ABORTED`, 504 unknown outcome, …).
    pub http_5xx: u64,
    /// Other non-2xx statuses (1xx, 3xx).
    pub http_other: u64,
    /// No complete response within `--timeout`.
    pub timeout: u64,
    /// Could not connect.
    pub connect: u64,
    /// Any other transport failure (connection reset mid-request, malformed response).
    pub other: u64,
}

impl ErrorCounts {
    /// All failures.
    pub fn total(&self) -> u64 {
        self.http_4xx + self.http_5xx + self.http_other + self.timeout + self.connect + self.other
    }
}

/// Latency distribution in microseconds, from an HDR histogram (3 significant digits).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencySummary {
    /// Recorded samples.
    pub count: u64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 95th percentile (absent from documents written before it was added).
    #[serde(default)]
    pub p95: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
}

/// Formats microseconds as milliseconds with exactly three decimals (`1234` → `"1.234"`),
/// using integer arithmetic so the table shows what the histogram holds.
pub fn fmt_ms(us: u64) -> String {
    format!("{}.{:03}", us / 1000, us % 1000)
}

/// The table printed to stdout at the end of a run.
pub fn render_table(results: &[ScenarioResult]) -> String {
    const HEADERS: [&str; 14] = [
        "scenario", "requests", "ok", "4xx", "5xx", "timeout", "connect", "other", "req/s",
        "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms",
    ];
    let rows: Vec<[String; 14]> = results
        .iter()
        .map(|r| {
            let l = &r.latency_us;
            [
                r.scenario.clone(),
                r.requests.to_string(),
                r.ok.to_string(),
                r.errors.http_4xx.to_string(),
                r.errors.http_5xx.to_string(),
                r.errors.timeout.to_string(),
                r.errors.connect.to_string(),
                (r.errors.other + r.errors.http_other).to_string(),
                format!("{:.1}", r.throughput_rps),
                fmt_ms(l.p50),
                fmt_ms(l.p90),
                fmt_ms(l.p99),
                fmt_ms(l.p999),
                fmt_ms(l.max),
            ]
        })
        .collect();
    let mut widths = HEADERS.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            // The scenario name reads best left-aligned, numbers right-aligned.
            if i == 0 {
                let _ = write!(out, "{cell:<w$}");
            } else {
                let _ = write!(out, "{cell:>w$}");
            }
        }
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out.push('\n');
    };
    line(&HEADERS);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells);
    }
    let notes: Vec<String> = results
        .iter()
        .filter(|r| r.missed > 0)
        .map(|r| {
            format!(
                "note: {}: {} scheduled requests were never sent (generator fell more than one timeout behind; the target is overloaded at this rate)\n",
                r.scenario, r.missed
            )
        })
        .collect();
    for n in notes {
        out.push_str(&n);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ms_has_three_decimals() {
        assert_eq!(fmt_ms(0), "0.000");
        assert_eq!(fmt_ms(7), "0.007");
        assert_eq!(fmt_ms(1234), "1.234");
        assert_eq!(fmt_ms(1_000_000), "1000.000");
        assert_eq!(fmt_ms(12_345_678), "12345.678");
    }

    fn sample() -> ScenarioResult {
        ScenarioResult {
            scenario: "AP write".into(),
            target: "AP".into(),
            url: "http://127.0.0.1:5001".into(),
            op: Op::Write,
            api: Api::Seed,
            condition: Scenario::Normal,
            replica_down: None,
            load: LoadModel::Closed { concurrency: 4 },
            elapsed_s: 1.0,
            requests: 10,
            ok: 8,
            errors: ErrorCounts {
                http_5xx: 2,
                ..ErrorCounts::default()
            },
            status_codes: BTreeMap::from([(200, 8), (503, 2)]),
            missed: 3,
            throughput_rps: 10.0,
            latency_us: LatencySummary {
                count: 10,
                mean: 1500.0,
                p50: 1000,
                p90: 2000,
                p95: 2500,
                p99: 3000,
                p999: 3000,
                max: 3001,
            },
        }
    }

    #[test]
    fn table_has_header_row_and_note() {
        let t = render_table(&[sample()]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("scenario"));
        assert!(lines[0].ends_with("max ms"));
        assert!(lines[1].starts_with("AP write"));
        assert!(lines[1].ends_with("3.001"));
        assert!(lines[1].contains(" 2.000 "));
        // Columns line up: every row has the header's width.
        assert_eq!(lines[0].len(), lines[1].len());
        assert!(lines[2].contains("3 scheduled requests were never sent"));
    }

    #[test]
    fn json_round_trips() {
        let r = sample();
        let v = serde_json::to_value(&r).expect("serializes");
        assert_eq!(v["load"]["model"], "closed");
        assert_eq!(v["op"], "write");
        assert_eq!(v["condition"], "normal");
        assert_eq!(v["status_codes"]["503"], 2);
        assert!(v.get("replica_down").is_none());
        let back: ScenarioResult = serde_json::from_value(v).expect("deserializes");
        assert_eq!(back, r);
    }
}
