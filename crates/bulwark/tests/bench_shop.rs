//! `bulwark bench shop --spawn` end to end with the real binary: it starts its own
//! `bulwark shop` on a free port over a fresh SQLite file, runs a short 80/20 sale over a
//! few hundred connections, waits for every order to settle, and reports. Asserted: the
//! exit status, the invariants, that the JSON document has every figure the table
//! shows, that the shop saw one connection per worker, and that CPU figures were read.
//! Nothing about speed (the machine is shared and noisy).

use std::process::Command;

use serde_json::Value;

#[test]
fn spawned_sqlite_sale_passes_its_invariants_and_reports_every_figure() {
    let out = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["bench", "shop", "--spawn", "--strategies", "batched"])
        .args(["--connections", "300", "--duration", "2", "--warmup", "0.5"])
        .args(["--stock", "1000000", "--json"])
        .output()
        .expect("run bulwark bench shop");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {}\n{stdout}\n{stderr}",
        out.status
    );
    let report: Value = serde_json::from_str(&stdout).expect("--json prints one JSON document");
    assert_eq!(report["tool"], "bulwark bench shop");
    assert_eq!(report["config"]["connections"], 300);
    assert_eq!(report["config"]["database"], "sqlite");
    // SQLite: no pgbench baseline.
    assert!(report["pgbench"].is_null(), "{report:#}");
    let runs = report["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(run["strategy"], "batched");
    assert_eq!(run["invariants_ok"], true, "{run:#}");
    let names: Vec<&str> = run["invariants"]
        .as_array()
        .expect("invariants")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        [
            "no_oversell",
            "stock_conserved",
            "all_terminal",
            "paid_orders_settled",
            "acknowledged_confirmed"
        ]
    );
    let ops = run["ops"].as_array().expect("ops");
    let op = |name: &str| {
        ops.iter()
            .find(|o| o["op"] == name)
            .unwrap_or_else(|| panic!("no {name} in {ops:?}"))
    };
    for name in ["view", "purchase"] {
        let o = op(name);
        assert!(o["requests"].as_u64().expect("requests") > 0, "{o}");
        for p in ["p50", "p95", "p99", "p999", "max"] {
            assert!(o["latency_us"][p].as_u64().is_some(), "{name} {p}: {o}");
        }
        assert!(o["errors"].is_object(), "{o}");
    }
    // Every purchase answered 201 is a confirmed order in the audit; the stock was not
    // exhausted, so some purchases did succeed.
    let confirmed = run["audit"]["orders"]["CONFIRMED"]
        .as_i64()
        .expect("CONFIRMED");
    assert!(confirmed > 0 && run["purchases_ok_per_s"].as_f64().expect("rate") > 0.0);
    assert!(run["acknowledged_confirmed"].as_i64().expect("acks") <= confirmed);
    assert_eq!(run["sold_out"], false);
    let cache = &run["cache"];
    for f in ["details_hit_rate", "stock_hit_rate", "hit_rate"] {
        let r = cache[f].as_f64().unwrap_or(-1.0);
        assert!((0.0..=1.0).contains(&r), "{f}: {cache}");
    }
    assert!(cache["lookups"].as_u64().expect("lookups") > 0, "{cache}");
    assert!(
        run["rss_peak_bytes"].as_u64().expect("rss") > 1_000_000,
        "{run}"
    );
    // One connection per worker, held from the warm-up through the measurement, plus the
    // orchestration client's few (it keeps at most 4 idle).
    let established = run["connections_established"].as_u64().expect("conns");
    assert!(
        (300..=304).contains(&established),
        "{established} connections"
    );
    // CPU over the measured phase: the shop and the bench both worked, and no process
    // used more than the machine's cores for the phase's length.
    let cpu = &run["cpu"];
    let elapsed = cpu["elapsed_s"].as_f64().expect("elapsed");
    let cores = cpu["cores"].as_f64().expect("cores");
    assert!(elapsed >= 2.0, "{cpu}");
    for side in ["shop_s", "bench_s"] {
        let s = cpu[side]
            .as_f64()
            .unwrap_or_else(|| panic!("{side}: {cpu}"));
        assert!(s > 0.0 && s <= elapsed * cores + 0.1, "{side}: {cpu}");
    }
}

#[test]
fn table_output_ends_with_the_verdict() {
    let out = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args([
            "bench",
            "shop",
            "--spawn",
            "--connections",
            "50",
            "--read-ratio",
            "0",
        ])
        .args(["--duration", "1", "--warmup", "0", "--stock", "20"])
        .output()
        .expect("run bulwark bench shop");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 20 units and 50 workers that only buy: the first wave alone sells out the sale.
    assert!(stdout.contains("409 SOLD_OUT"), "{stdout}");
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("batched ") && l.ends_with("OK"))
        .unwrap_or_else(|| panic!("no summary line:\n{stdout}"));
    assert!(
        summary.contains("20/20") && summary.contains(" yes "),
        "{summary}"
    );
}
