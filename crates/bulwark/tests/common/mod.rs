//! Drives the real `bulwark` binary: `bulwark up` as a child process, `bulwark ctl` for
//! actions, plain HTTP for the gateways. These tests use the seed's fixed ports, so
//! nextest runs them one at a time (`.config/nextest.toml`, group `fixed-ports`).

#![allow(dead_code)] // Each test binary uses a different subset.

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use bulwark_testkit::wait_for;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

pub const AP: &str = "http://127.0.0.1:5001";
pub const CP: &str = "http://127.0.0.1:5002";
pub const QUORUM: &str = "http://127.0.0.1:5003";
pub const CONTROL: &str = "http://127.0.0.1:7070";
pub const SHOP: &str = "http://127.0.0.1:8080";

/// Ports `bulwark up` uses by default: gateways, replicas, control API, the fault proxy's
/// API and a few of its links (65xx from app_ap, 66xx from app_cp), the commerce service.
const FIXED_PORTS: [u16; 12] = [
    5001, 5002, 5003, 6401, 6402, 6403, 7070, 8474, 6501, 6502, 6601, 8080,
];

pub fn bulwark() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bulwark"))
}

/// A running `bulwark up`; stopped with SIGINT (Ctrl-C) on drop.
pub struct Up {
    child: Option<Child>,
    pub data: tempfile::TempDir,
}

impl Up {
    /// Starts `bulwark up` with `args` and waits until every service is healthy.
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Up {
        // Another cluster on the seed's ports would answer our health checks and receive
        // our faults: refuse to run rather than test the wrong cluster.
        for port in FIXED_PORTS {
            assert!(
                std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
                "port {port} is in use: stop any running `bulwark up` before these tests"
            );
        }
        let data = tempfile::tempdir().expect("temp dir");
        let mut cmd = bulwark();
        cmd.arg("up")
            .arg("--data-dir")
            .arg(data.path())
            .arg("--quiet")
            .args(args)
            .env_remove("DATA_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn bulwark up");
        let up = Up {
            child: Some(child),
            data,
        };
        assert!(
            up.wait_healthy().await,
            "cluster did not become healthy: {}",
            up.status_text().await
        );
        up
    }

    /// Services from the control API.
    pub async fn services(&self) -> Vec<Value> {
        let r = reqwest::get(format!("{CONTROL}/api/v1/services")).await;
        match r {
            Ok(r) => r
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    pub async fn service(&self, name: &str) -> Value {
        self.services()
            .await
            .into_iter()
            .find(|s| s["name"] == name)
            .unwrap_or(Value::Null)
    }

    async fn status_text(&self) -> String {
        serde_json::to_string_pretty(&self.services().await).unwrap_or_default()
    }

    /// Waits until every service runs and passes its health check.
    pub async fn wait_healthy(&self) -> bool {
        wait_for(Duration::from_secs(60), || async {
            let s = self.services().await;
            !s.is_empty()
                && s.iter()
                    .all(|s| s["state"] == "running" && s["healthy"] == true)
        })
        .await
    }

    /// Waits until `service` is in `state` and (if running) healthy.
    pub async fn wait_state(&self, service: &str, state: &str) -> bool {
        wait_for(Duration::from_secs(60), || async {
            let s = self.service(service).await;
            s["state"] == state && (state != "running" || s["healthy"] == true)
        })
        .await
    }

    /// Ctrl-C: stops everything; returns the exit status.
    pub fn interrupt(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGINT);
        for _ in 0..600 {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        self.interrupt();
    }
}

/// Runs `bulwark ctl …` and returns its output.
pub fn ctl(args: &[&str]) -> Output {
    bulwark()
        .arg("ctl")
        .args(args)
        .output()
        .expect("run bulwark ctl")
}

/// Runs `bulwark ctl …`, asserting success; returns stdout.
pub fn ctl_ok(args: &[&str]) -> String {
    let out = ctl(args);
    assert!(
        out.status.success(),
        "bulwark ctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// JSON log lines of `service` that contain `needle` (`docker logs X | grep needle`).
pub fn log_events(service: &str, needle: &str) -> Vec<Value> {
    ctl_ok(&["logs", service, "--grep", needle])
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

pub fn session_client() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

pub async fn post(c: &reqwest::Client, url: String) -> (u16, Value) {
    match c.post(url).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(e) => (0, Value::String(e.to_string())),
    }
}

pub async fn get(c: &reqwest::Client, url: String) -> (u16, Value) {
    match c.get(url).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(e) => (0, Value::String(e.to_string())),
    }
}

/// Waits until the gateway at `base` reports `node`'s breaker in `state`.
pub async fn wait_breaker(base: &str, node: &str, state: &str) -> bool {
    let c = client();
    wait_for(Duration::from_secs(60), || {
        let c = c.clone();
        let url = format!("{base}/circuit-breaker");
        async move { get(&c, url).await.1[node]["state"] == state }
    })
    .await
}
