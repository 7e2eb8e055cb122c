//! A real Toxiproxy client from a registry drives the API: `toxiproxy-python` from PyPI
//! (installed by `scripts/test.sh`), running `toxiproxy_client.py` against an in-process
//! fault proxy in front of a real `redis-server`.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use bulwark_testkit::{RedisOptions, RedisServer};
use common::FaultProxy;

/// How long the script may run (it takes about two seconds).
const SCRIPT_DEADLINE: Duration = Duration::from_secs(120);

#[tokio::test]
async fn toxiproxy_python_drives_the_api() {
    let has_client = tokio::process::Command::new("python3")
        .args(["-c", "import toxiproxy"])
        .status()
        .await
        .is_ok_and(|s| s.success());
    assert!(
        has_client,
        "toxiproxy-python is not installed: run scripts/test.sh, which installs it \
         (python3 -m pip install toxiproxy-python)"
    );
    let redis = RedisServer::start(RedisOptions::default()).await;
    let fp = FaultProxy::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/toxiproxy_client.py");
    let child = tokio::process::Command::new("python3")
        .arg(script)
        .env("TOXIPROXY_PORT", fp.port.to_string())
        .env("UPSTREAM", redis.addr())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(SCRIPT_DEADLINE, child.wait_with_output())
        .await
        .expect("the client script finished in time")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "toxiproxy-python failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    fp.shutdown().await;
}
