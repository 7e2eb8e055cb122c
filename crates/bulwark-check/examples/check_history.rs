//! Re-checks a saved history (the JSON a failing test wrote) and prints the verdict:
//! `cargo run -p bulwark-check --example check_history -- target/tmp/linearizability-cp.json`.

use std::process::ExitCode;
use std::time::Instant;

use bulwark_check::{History, Limits, check};

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: check_history <history.json>");
        return ExitCode::from(2);
    };
    let history: History = match std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(h) => h,
        Err(e) => {
            eprintln!("cannot read {path}: {e}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let report = match check(&history, &Limits::default()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot check {path}: {e}");
            return ExitCode::from(2);
        }
    };
    let (ok, failed, unknown) = history.outcome_counts();
    println!(
        "{} ops ({ok} ok, {failed} failed, {unknown} unknown), {} keys, checked in {:?}",
        history.ops.len(),
        report.keys.len(),
        started.elapsed()
    );
    for k in &report.keys {
        println!(
            "  {}: {} ops, {} searched, {} states",
            k.key, k.ops, k.searched, k.states
        );
    }
    let mut violations = 0;
    for c in report.violations() {
        violations += 1;
        println!("{c}");
    }
    if violations == 0 {
        println!("linearizable");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
