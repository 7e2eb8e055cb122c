//! The chaos control plane end to end (SPEC CHAOS-1, CHAOS-2, CTRL-1), against a real
//! `bulwark up` with its fault proxy: the six shipped experiments pass; partition shapes
//! cut exactly the links they should on a real cluster; a runner killed with SIGKILL
//! leaves its faults to the controller, which removes them at their TTL; Ctrl-C rolls a
//! run back at once; a malformed experiment or a disabled switch stops a run before any
//! fault.
//!
//! The cluster runs with `--port-offset 20000` (AP gateway on 25001, control API on 27070,
//! fault proxy API on 28474) so these tests never touch a cluster on the seed's ports.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bulwark_testkit::wait_for;
use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

const OFFSET: &str = "20000";
const AP_URL: &str = "http://127.0.0.1:25001";
const CP_URL: &str = "http://127.0.0.1:25002";
const CONTROL_URL: &str = "http://127.0.0.1:27070";
const PROXY_API: &str = "http://127.0.0.1:28474";
const PORTS: [u16; 9] = [
    25001, 25002, 25003, 26401, 26402, 26403, 27070, 28474, 26502,
];

/// A `bulwark up --port-offset 20000 --chaos`, stopped with SIGINT on drop.
struct Cluster {
    child: Option<Child>,
    data: tempfile::TempDir,
}

impl Cluster {
    async fn start(args: &[&str]) -> Cluster {
        Cluster::start_in(tempfile::tempdir().expect("temp dir"), args).await
    }

    /// Starts `up` on an existing data directory (a restart after a crash).
    async fn start_in(data: tempfile::TempDir, args: &[&str]) -> Cluster {
        for port in PORTS {
            assert!(
                std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
                "port {port} is in use: another chaos test cluster is running"
            );
        }
        let child = bulwark()
            .args(["up", "--quiet", "--chaos", "--port-offset", OFFSET])
            .arg("--data-dir")
            .arg(data.path())
            .args(args)
            .env_remove("DATA_DIR")
            // Breakers close again 2 s after a fault, so recoveries take seconds.
            .env("CB_OPEN_TIMEOUT_SEC", "2")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn bulwark up");
        let c = Cluster {
            child: Some(child),
            data,
        };
        let healthy = wait_for(Duration::from_secs(60), || async {
            let s = get(&client(), format!("{CONTROL_URL}/api/v1/services"))
                .await
                .1;
            s.as_array().is_some_and(|s| {
                !s.is_empty()
                    && s.iter()
                        .all(|s| s["state"] == "running" && s["healthy"] == true)
            })
        })
        .await;
        assert!(healthy, "cluster did not become healthy");
        c
    }

    fn journal(&self) -> String {
        std::fs::read_to_string(self.data.path().join("chaos/journal.jsonl")).unwrap_or_default()
    }

    /// The machine "loses power": `up` and every service it runs are SIGKILLed at once,
    /// nothing gets to clean up. Returns the data directory.
    async fn crash(mut self) -> tempfile::TempDir {
        let services = get(&client(), format!("{CONTROL_URL}/api/v1/services"))
            .await
            .1;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for s in services.as_array().into_iter().flatten() {
            if let Some(pid) = s["pid"].as_i64() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
        let free = wait_for(Duration::from_secs(20), || async {
            PORTS
                .iter()
                .all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        })
        .await;
        assert!(free, "every port is released");
        let tmp = tempfile::tempdir().expect("placeholder");
        std::mem::replace(&mut self.data, tmp)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGINT);
            for _ in 0..600 {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn experiments_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments")
}

/// `bulwark chaos run FILE` against the offset cluster.
fn chaos_run(file: &Path, report: &Path) -> Command {
    let mut cmd = bulwark();
    cmd.args(["chaos", "run"])
        .arg(file)
        .args(["--control", CONTROL_URL])
        .args([
            "--var",
            &format!("ap={AP_URL}"),
            "--var",
            &format!("cp={CP_URL}"),
        ])
        .arg("--report-file")
        .arg(report);
    cmd
}

async fn status() -> Value {
    get(&client(), format!("{CONTROL_URL}/api/v1/chaos/status"))
        .await
        .1
}

async fn inject(fault: Value, ttl_ms: u64) -> (u16, Value) {
    let r = client()
        .post(format!("{CONTROL_URL}/api/v1/chaos/faults"))
        .json(&json!({"fault": fault, "ttl_ms": ttl_ms}))
        .send()
        .await
        .expect("inject");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn remove(id: &str) {
    let r = client()
        .delete(format!("{CONTROL_URL}/api/v1/chaos/faults/{id}"))
        .send()
        .await
        .expect("remove");
    assert_eq!(r.status().as_u16(), 200);
}

/// `proxy → [toxic stream, …]` for every proxy with toxics.
async fn toxics() -> Vec<String> {
    let proxies = get(&client(), format!("{PROXY_API}/proxies")).await.1;
    let mut out = Vec::new();
    for (name, p) in proxies.as_object().expect("proxies") {
        for t in p["toxics"].as_array().into_iter().flatten() {
            out.push(format!("{name}:{}", t["stream"].as_str().unwrap_or("")));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_six_experiments_pass_against_up() {
    let _cluster = Cluster::start(&[]).await;
    let dir = tempfile::tempdir().expect("reports");
    let mut names: Vec<PathBuf> = std::fs::read_dir(experiments_dir())
        .expect("experiments/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 6, "{names:?}");
    for file in &names {
        let report = dir.path().join("report.json");
        let out = chaos_run(file, &report).output().expect("run");
        let text = String::from_utf8_lossy(&out.stdout);
        eprintln!("{text}");
        assert!(
            out.status.success(),
            "{}: {text}{}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let r: Value =
            serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
        assert_eq!(r["status"], "succeeded", "{r:#}");
        assert!(
            r["faults"].as_array().is_some_and(|f| !f.is_empty()),
            "a fault was injected"
        );
        assert!(r["time_to_recover_ms"].as_u64().is_some(), "{r:#}");
        assert!(
            r["impacted_services"]
                .as_array()
                .is_some_and(|s| !s.is_empty())
        );
        assert!(
            status().await["active"]
                .as_array()
                .is_some_and(Vec::is_empty),
            "no fault left"
        );
    }
    let m = get(&client(), format!("{CONTROL_URL}/api/v1/chaos/metrics"))
        .await
        .1;
    assert_eq!(
        (
            m["total_experiments"].as_u64(),
            m["successful_experiments"].as_u64()
        ),
        (Some(6), Some(6)),
        "{m}"
    );
    assert!(m["mean_recovery_time_ms"].as_f64().is_some(), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_shapes_cut_the_right_links_of_a_real_cluster() {
    let _cluster = Cluster::start(&["--replicas", "3", "--no-quorum"]).await;
    let c = client();
    // Isolate db_g2: both directions of both gateways' links to it; CP refuses, AP serves.
    let (s, f) = inject(
        json!({"type": "partition", "shape": "isolate", "node": "db_g2"}),
        30_000,
    )
    .await;
    assert_eq!(s, 201, "{f}");
    assert_eq!(
        toxics().await,
        [
            "app_ap.db_g2:downstream",
            "app_ap.db_g2:upstream",
            "app_cp.db_g2:downstream",
            "app_cp.db_g2:upstream"
        ]
    );
    let (s, body) = post(&c, format!("{CP_URL}/write/shape-isolate/v")).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (503, Some("CP_ABORTED")),
        "{body}"
    );
    // AP answers without db_g2: reported behind (its call failed) or pending (still
    // waiting for the cut link when the write was answered), never as acknowledging.
    // (Other replicas may be pending too: AP answers at the first acknowledgement.)
    let (s, body) = post(&c, format!("{AP_URL}/write/shape-isolate/v")).await;
    assert_eq!(s, 200, "{body}");
    let names = |field: &str| -> Vec<String> {
        body[field]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let missed = [names("behind"), names("pending")].concat();
    assert!(missed.iter().any(|n| n == "db_g2"), "{body}");
    assert!(!names("acked_by").iter().any(|n| n == "db_g2"), "{body}");
    let id = f["id"].as_str().expect("id").to_owned();
    remove(&id).await;
    assert!(
        toxics().await.is_empty(),
        "heal: removing the fault removes its toxics"
    );
    // `up`'s own log records the fault's life: `bulwark ctl logs up`.
    let out = bulwark()
        .args(["ctl", "--control", CONTROL_URL, "logs", "up", "--grep", &id])
        .output()
        .expect("ctl logs up");
    let phases: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "CHAOS_FAULT")
        .filter_map(|e| e["phase"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(phases, ["applied", "removed"], "{out:?}");

    // Halves over [app_ap, db_g1 | app_cp, db_g2, db_g3].
    let nodes = json!(["app_ap", "db_g1", "app_cp", "db_g2", "db_g3"]);
    let (s, f) = inject(
        json!({"type": "partition", "shape": "halves", "nodes": nodes}),
        30_000,
    )
    .await;
    assert_eq!(s, 201, "{f}");
    assert_eq!(
        toxics().await,
        [
            "app_ap.db_g2:downstream",
            "app_ap.db_g2:upstream",
            "app_ap.db_g3:downstream",
            "app_ap.db_g3:upstream",
            "app_cp.db_g1:downstream",
            "app_cp.db_g1:upstream"
        ]
    );
    remove(f["id"].as_str().expect("id")).await;

    // Bridge: app_cp (first of the second half) still sees everyone, so only app_ap's
    // links across the split are cut.
    let (s, f) = inject(
        json!({"type": "partition", "shape": "bridge", "nodes": nodes}),
        30_000,
    )
    .await;
    assert_eq!(s, 201, "{f}");
    assert_eq!(
        toxics().await,
        [
            "app_ap.db_g2:downstream",
            "app_ap.db_g2:upstream",
            "app_ap.db_g3:downstream",
            "app_ap.db_g3:upstream"
        ]
    );
    remove(f["id"].as_str().expect("id")).await;

    // Majorities ring over five nodes: every node loses two of its four peers.
    let (s, f) = inject(
        json!({"type": "partition", "shape": "majorities_ring", "nodes": nodes}),
        30_000,
    )
    .await;
    assert_eq!(s, 201, "{f}");
    assert!(!toxics().await.is_empty());
    remove(f["id"].as_str().expect("id")).await;

    // One way: db_g1's replies never reach app_cp; its requests still arrive.
    let (s, f) = inject(
        json!({"type": "partition", "shape": "one_way", "from": ["db_g1"], "to": ["app_cp"]}),
        30_000,
    )
    .await;
    assert_eq!(s, 201, "{f}");
    assert_eq!(toxics().await, ["app_cp.db_g1:downstream"]);
    let (s, body) = post(&c, format!("{CP_URL}/write/shape-oneway/v")).await;
    assert!(
        s == 503 || s == 504,
        "the coordinator's reply is lost: {s} {body}"
    );
    remove(f["id"].as_str().expect("id")).await;

    // A shape that cuts nothing is refused before anything is journaled.
    let (s, body) = inject(
        json!({"type": "partition", "shape": "halves", "nodes": ["db_g1", "db_g2"]}),
        30_000,
    )
    .await;
    assert_eq!(
        (s, body["error"]["field"].as_str()),
        (400, Some("shape")),
        "{body}"
    );
}

/// A runner killed with SIGKILL mid-experiment cannot clean up: the controller in `up`
/// (which outlives it) removes the fault at its TTL. Ctrl-C, in contrast, removes it at
/// once and runs the rollbacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_runner_leaves_its_faults_to_the_ttl_and_ctrl_c_rolls_back() {
    let cluster = Cluster::start(&[]).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("long.json");
    std::fs::write(
        &file,
        json!({
            "title": "a long partition",
            "method": [
                {"type": "action", "name": "isolate db_g2",
                 "provider": {"type": "bulwark", "func": "partition", "arguments": {"shape": "isolate", "node": "db_g2", "duration": 4}}},
                {"type": "probe", "name": "wait", "pauses": {"after": 60},
                 "provider": {"type": "bulwark", "func": "service_status", "arguments": {"service": "db_g2"}}}
            ]
        })
        .to_string(),
    )
    .expect("write");
    let fault_of_run = || async {
        status().await["active"]
            .as_array()
            .and_then(|a| a.first().cloned())
            .filter(|f| f["run"].is_string())
    };

    // SIGKILL: the fault stays until its TTL, then the controller removes it.
    let mut runner = chaos_run(&file, &dir.path().join("r1.json"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run");
    assert!(
        wait_for(Duration::from_secs(20), || async {
            fault_of_run().await.is_some()
        })
        .await
    );
    let fault = fault_of_run().await.expect("fault");
    kill(Pid::from_raw(runner.id() as i32), Signal::SIGKILL).expect("SIGKILL");
    let _ = runner.wait();
    assert!(
        fault_of_run().await.is_some(),
        "the runner is dead, the fault still there"
    );
    assert!(!toxics().await.is_empty());
    let expires = fault["expires_at_ms"].as_u64().expect("expiry");
    assert!(
        wait_for(Duration::from_secs(20), || async {
            status().await["active"]
                .as_array()
                .is_some_and(Vec::is_empty)
        })
        .await
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    assert!(now + 200 >= expires, "removed at its TTL, not before");
    assert!(toxics().await.is_empty(), "and its toxics are gone");
    let id = fault["id"].as_str().expect("id");
    assert!(
        cluster
            .journal()
            .contains(&format!("\"id\":\"{id}\",\"reason\":\"ttl\"")),
        "{}",
        cluster.journal()
    );

    // Ctrl-C: removed at once (well before the TTL), the run reported as aborted.
    let report = dir.path().join("r2.json");
    let mut runner = chaos_run(&file, &report)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run");
    assert!(
        wait_for(Duration::from_secs(20), || async {
            fault_of_run().await.is_some()
        })
        .await
    );
    let fault = fault_of_run().await.expect("fault");
    kill(Pid::from_raw(runner.id() as i32), Signal::SIGINT).expect("SIGINT");
    let code = runner.wait().expect("wait");
    assert_eq!(code.code(), Some(1));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    assert!(
        now < fault["expires_at_ms"].as_u64().expect("expiry"),
        "rolled back before the TTL"
    );
    assert!(
        status().await["active"]
            .as_array()
            .is_some_and(Vec::is_empty)
    );
    assert!(toxics().await.is_empty());
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    assert_eq!(r["status"], "aborted", "{r:#}");
    let id = fault["id"].as_str().expect("id");
    assert!(
        cluster
            .journal()
            .contains(&format!("\"id\":\"{id}\",\"reason\":\"rollback\"")),
        "{}",
        cluster.journal()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_experiments_and_a_disabled_switch_stop_a_run_before_any_fault() {
    let _cluster = Cluster::start(&[]).await;
    let dir = tempfile::tempdir().expect("dir");
    let report = dir.path().join("r.json");
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        "{\n  \"title\": \"bad\",\n  \"method\": [\n    {\"type\": \"action\", \"name\": \"x\",\n     \"provider\": {\"type\": \"bulwark\", \"func\": \"latency\",\n       \"arguments\": {\"replica\": \"db_g9\", \"latency_ms\": 10, \"duration\": 5}}}\n  ]\n}\n",
    )
    .expect("write");
    let out = chaos_run(&bad, &report).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 6, field method[0].provider.arguments.replica") && err.contains("db_g9"),
        "{err}"
    );
    assert!(
        status().await["active"]
            .as_array()
            .is_some_and(Vec::is_empty)
    );

    let r = client()
        .post(format!("{CONTROL_URL}/api/v1/chaos/disable"))
        .send()
        .await
        .expect("disable");
    assert_eq!(r.status().as_u16(), 200);
    let (s, body) = inject(json!({"type": "kill", "service": "db_g1"}), 1000).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (403, Some("CHAOS_DISABLED")),
        "{body}"
    );
    let out = chaos_run(
        &experiments_dir().join("replica-kill-restart.json"),
        &report,
    )
    .output()
    .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    assert_eq!(r["status"], "aborted");
    assert!(
        r["error"].as_str().is_some_and(|e| e.contains("disabled")),
        "{r:#}"
    );
    assert!(r["faults"].as_array().is_some_and(Vec::is_empty));

    // `bulwark chaos enable` turns it back on.
    let out = bulwark()
        .args(["chaos", "enable", "--control", CONTROL_URL])
        .output()
        .expect("enable");
    assert!(out.status.success());
    assert_eq!(status().await["enabled"], true);
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU, memory and disk faults run in burner processes that end at their deadline by
/// themselves (without any controller), and that the controller stops early on removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_faults_are_bounded_and_end_by_themselves() {
    // A burner alone: fills its file, then deletes it and exits 0 at its deadline.
    let dir = tempfile::tempdir().expect("dir");
    let began = now_ms();
    let mut burner = bulwark()
        .args([
            "chaos",
            "burn",
            "--disk-mb",
            "5",
            "--fault-id",
            "f-alone",
            "--until-ms",
        ])
        .arg((began + 1500).to_string())
        .arg("--dir")
        .arg(dir.path())
        .spawn()
        .expect("burner");
    let fill = dir.path().join("bulwark-chaos-f-alone.fill");
    assert!(
        wait_for(Duration::from_secs(10), || async {
            std::fs::metadata(&fill).is_ok_and(|m| m.len() == 5 << 20)
        })
        .await
    );
    let status = tokio::task::spawn_blocking(move || burner.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success());
    assert!(now_ms() >= began + 1500, "not before its deadline");
    assert!(!fill.exists(), "it cleaned up");
    let out = bulwark()
        .args([
            "chaos",
            "burn",
            "--cpu",
            "65",
            "--fault-id",
            "x",
            "--until-ms",
            "1",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "bounded: at most 64 workers");

    // Through the controller.
    let _cluster = Cluster::start(&[]).await;
    let (s, f) = inject(
        json!({"type": "disk_fill", "dir": dir.path(), "megabytes": 3}),
        1500,
    )
    .await;
    assert_eq!(s, 201, "{f}");
    let id = f["id"].as_str().expect("id").to_owned();
    let fill = dir.path().join(format!("bulwark-chaos-{id}.fill"));
    assert!(wait_for(Duration::from_secs(10), || async { fill.exists() }).await);
    assert!(
        wait_for(Duration::from_secs(10), || async { !fill.exists() }).await,
        "gone at the TTL"
    );

    let (s, f) = inject(json!({"type": "memory_hog", "megabytes": 32}), 60_000).await;
    assert_eq!(s, 201, "{f}");
    let id = f["id"].as_str().expect("id").to_owned();
    let pid = wait_for_pid(&id).await;
    assert!(
        wait_for(Duration::from_secs(10), || async {
            rss_kib(pid) >= 32 * 1024
        })
        .await,
        "32 MiB resident"
    );
    let (s, f) = inject(json!({"type": "cpu_burn", "workers": 1}), 60_000).await;
    assert_eq!(s, 201, "{f}");
    let cpu = f["id"].as_str().expect("id").to_owned();
    wait_for_pid(&cpu).await;
    remove(&id).await;
    assert!(
        bulwark_chaos::resource::burners_of(&id).is_empty(),
        "stopped on removal"
    );
    let r = client()
        .post(format!("{CONTROL_URL}/api/v1/chaos/disable"))
        .send()
        .await
        .expect("disable");
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        bulwark_chaos::resource::burners_of(&cpu).is_empty(),
        "stopped on disable"
    );
    let (s, body) = inject(
        json!({"type": "disk_fill", "dir": "relative", "megabytes": 1}),
        1000,
    )
    .await;
    assert_eq!(s, 403, "disabled first: {body}");
}

async fn wait_for_pid(fault_id: &str) -> u32 {
    let mut found = 0;
    assert!(
        wait_for(Duration::from_secs(10), || {
            let pids = bulwark_chaos::resource::burners_of(fault_id);
            found = pids.first().copied().unwrap_or(0);
            async move { !pids.is_empty() }
        })
        .await,
        "burner of {fault_id} running"
    );
    found
}

/// A controller that died with its cluster (SIGKILL of everything) leaves a journal; the
/// next `up` on the same data directory undoes what it lists. Here: a corrupted record on
/// db_g2, whose bytes survive the crash on disk, is restored once db_g2 runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_up_undoes_the_faults_a_dead_controller_left() {
    let cluster = Cluster::start(&[]).await;
    let c = client();
    let (s, body) = post(&c, format!("{CP_URL}/write/chaos-crash/intact")).await;
    assert_eq!(s, 200, "{body}");
    let (s, f) = inject(
        json!({"type": "corrupt", "replica": "db_g2", "key": "chaos-crash", "value": "garbage"}),
        600_000,
    )
    .await;
    assert_eq!(s, 201, "{f}");
    let id = f["id"].as_str().expect("id").to_owned();
    let agree = || async {
        get(
            &client(),
            format!("{CONTROL_URL}/api/v1/chaos/replicas/chaos-crash"),
        )
        .await
        .1["agree"]
            .clone()
    };
    assert_eq!(agree().await, false, "corrupted");

    let data = cluster.crash().await;
    let journal =
        std::fs::read_to_string(data.path().join("chaos/journal.jsonl")).expect("journal");
    assert!(
        journal.contains(&id) && !journal.contains("\"op\":\"remove\""),
        "{journal}"
    );

    let cluster = Cluster::start_in(data, &[]).await;
    assert!(
        wait_for(Duration::from_secs(20), || async { agree().await == true }).await,
        "restored by the new controller"
    );
    assert!(
        cluster
            .journal()
            .contains(&format!("\"id\":\"{id}\",\"reason\":\"recovered\"")),
        "{}",
        cluster.journal()
    );
    let (_, body) = get(
        &c,
        format!("{CONTROL_URL}/api/v1/chaos/replicas/chaos-crash"),
    )
    .await;
    assert_eq!(body["replicas"]["db_g2"]["value"], "intact", "{body}");
    assert!(
        status().await["active"]
            .as_array()
            .is_some_and(Vec::is_empty)
    );
}
