//! [`run`]: schemathesis (PyPI; `scripts/test.sh` installs it) with every check against a
//! live service's OpenAPI document, with the project's settings and hooks
//! (`scripts/schemathesis/`).

use std::path::PathBuf;
use std::time::Duration;

/// How long schemathesis generates requests for one service.
pub const MAX_TIME: Duration = Duration::from_secs(40);

/// Runs `schemathesis run <base>/openapi.json --checks all` for at most [`MAX_TIME`] (one
/// worker, so writes to one key never race), sending `headers` with every request, with
/// `args` added (`--exclude-path …`).
/// `Ok` with its summary when no check failed; `Err` with its report otherwise (or when
/// it could not run).
pub async fn run(base: &str, headers: &[(&str, &str)], args: &[&str]) -> Result<String, String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/schemathesis");
    let mut cmd = tokio::process::Command::new("schemathesis");
    cmd.arg("--config-file")
        .arg(dir.join("schemathesis.toml"))
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args(["--checks", "all", "--workers", "1", "--no-color"])
        .args(["--max-time", &MAX_TIME.as_secs().to_string()])
        .args(["--request-timeout", "10"])
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", &dir)
        .kill_on_drop(true);
    cmd.args(args);
    for (k, v) in headers {
        cmd.args(["--header", &format!("{k}: {v}")]);
    }
    let out = tokio::time::timeout(MAX_TIME * 3, cmd.output())
        .await
        .map_err(|_| "schemathesis did not finish".to_owned())?
        .map_err(|e| format!("cannot run schemathesis (pip install schemathesis): {e}"))?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(report)
    } else {
        Err(report)
    }
}
