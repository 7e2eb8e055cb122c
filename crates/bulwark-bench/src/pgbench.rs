//! The pgbench baseline of `bench shop`: the single-row conditional `UPDATE` every
//! purchase strategy ends in, run by `pgbench` with 64 clients on a scratch table of the
//! same PostgreSQL, in the same run.

use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::process::Command;

use crate::shop_report::PgbenchResult;

/// The scratch table (created before, dropped after).
const TABLE: &str = "bulwark_bench_pgbench";

/// Runs `pgbench -n -c clients -j 2 -T secs -f script url` against a scratch table.
pub(crate) async fn baseline(
    url: &str,
    clients: u32,
    duration: Duration,
) -> anyhow::Result<PgbenchResult> {
    let setup = format!(
        "DROP TABLE IF EXISTS {TABLE}; \
         CREATE TABLE {TABLE} (id integer PRIMARY KEY, stock bigint NOT NULL CHECK (stock >= 0)); \
         INSERT INTO {TABLE} VALUES (1, 1000000000000);"
    );
    psql(url, &setup).await?;
    let statement = format!("UPDATE {TABLE} SET stock = stock - 1 WHERE id = 1 AND stock >= 1;");
    let dir = tempfile::tempdir().context("temporary directory for the pgbench script")?;
    let script = dir.path().join("update.sql");
    std::fs::write(&script, format!("{statement}\n"))?;
    let secs = duration.as_secs_f64().ceil().max(1.0) as u64;
    let threads = 2.min(clients);
    let output = Command::new("pgbench")
        .args(["-n", "-c", &clients.to_string(), "-j", &threads.to_string()])
        .args(["-T", &secs.to_string(), "-f"])
        .arg(&script)
        .arg(url)
        .output()
        .await
        .context("running pgbench (is the PostgreSQL client installed?)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "pgbench failed ({}): {}{}",
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let (tps, transactions) =
        parse_output(&stdout).with_context(|| format!("no tps in pgbench's output:\n{stdout}"))?;
    let fsync = psql(url, "SHOW fsync").await?;
    let synchronous_commit = psql(url, "SHOW synchronous_commit").await?;
    psql(url, &format!("DROP TABLE IF EXISTS {TABLE}")).await?;
    Ok(PgbenchResult {
        statement,
        clients,
        threads,
        duration_s: secs,
        tps,
        transactions,
        fsync,
        synchronous_commit,
    })
}

/// Runs `sql` with psql and returns its unaligned output.
async fn psql(url: &str, sql: &str) -> anyhow::Result<String> {
    let out = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .output()
        .await
        .context("running psql (is the PostgreSQL client installed?)")?;
    if !out.status.success() {
        bail!(
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `tps = N (without initial connection time)` and `number of transactions actually
/// processed: N` from pgbench's report.
pub(crate) fn parse_output(text: &str) -> Option<(f64, u64)> {
    let tps = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("tps = "))
        .find(|rest| rest.contains("without initial connection time"))
        .or_else(|| {
            text.lines()
                .filter_map(|l| l.trim().strip_prefix("tps = "))
                .next()
        })?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let transactions = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("number of transactions actually processed:")
        })
        .and_then(|rest| rest.split('/').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    Some((tps, transactions))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pgbench_16_output() {
        let text = "pgbench (16.4)\ntransaction type: /tmp/x/update.sql\nscaling factor: 1\n\
            query mode: simple\nnumber of clients: 64\nnumber of threads: 2\n\
            maximum number of tries: 1\nduration: 10 s\n\
            number of transactions actually processed: 12345\n\
            number of failed transactions: 0 (0.000%)\nlatency average = 51.8 ms\n\
            initial connection time = 40.1 ms\ntps = 1234.567890 (without initial connection time)\n";
        assert_eq!(parse_output(text), Some((1234.56789, 12345)));
    }

    #[test]
    fn reads_older_output_with_two_tps_lines() {
        let text = "number of transactions actually processed: 500/500\n\
            tps = 99.0 (including connections establishing)\n\
            tps = 101.5 (excluding connections establishing)\n";
        assert_eq!(parse_output(text), Some((99.0, 500)));
        assert_eq!(parse_output("no figures"), None);
    }
}
