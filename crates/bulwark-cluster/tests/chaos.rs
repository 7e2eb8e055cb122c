//! Process faults of the chaos controller hosted by `up` (SPEC CHAOS-1), through the control
//! API, against real `redis-server` processes run by the real supervisor on free ports:
//! pause/resume, stop then start at the TTL, kill, crash loop, the safety switch, and the
//! rollback journal (a restarted controller undoes what a dead one left).

use bulwark_http::client::ClientIdentity;
use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bulwark_chaos::client::{ChaosClient, ClientError};
use bulwark_chaos::fault::{Fault, FaultRequest};
use bulwark_cluster::supervisor::State;
use bulwark_cluster::topology::{HealthCheck, Policy, ServiceKind, ServiceSpec, Topology};
use bulwark_cluster::up::Cluster;
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

fn redis(dir: &Path, name: &str) -> ServiceSpec {
    let port = free_port();
    let data = dir.join(name);
    std::fs::create_dir_all(&data).expect("redis dir");
    let args: Vec<OsString> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
    ]
    .iter()
    .map(OsString::from)
    .chain([data.into_os_string()])
    .collect();
    ServiceSpec {
        tls: None,
        name: name.to_owned(),
        kind: ServiceKind::Replica,
        port,
        label: name.to_owned(),
        program: PathBuf::from("redis-server"),
        args,
        env: Vec::new(),
        health: HealthCheck::RespPing,
    }
}

fn topology(dir: &Path, chaos: bool) -> Topology {
    Topology {
        services: vec![redis(dir, "db_g1"), redis(dir, "db_g2")],
        data_dir: dir.to_path_buf(),
        control: SocketAddr::from(([127, 0, 0, 1], 0)),
        policy: Policy {
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_millis(200),
            backoff_reset_after: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(2),
            health_interval: Duration::from_millis(100),
            health_timeout: Duration::from_millis(500),
            startup_timeout: Duration::from_secs(15),
        },
        echo_logs: false,
        chaos,
        links: Vec::new(),
        keys_file: None,
        tls: None,
        identity: ClientIdentity::default(),
        chaos_token: None,
        layout: bulwark_cluster::topology::layout_of(
            &[("db_g1".to_owned(), 6401), ("db_g2".to_owned(), 6402)],
            1,
        ),
    }
}

async fn wait_for<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The scheduler state of a process (`R`, `S`, `T` for stopped), `None` if it is gone.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

/// Waits until the process is stopped (`T`) or not, as asked: signal delivery is
/// asynchronous.
async fn wait_stopped(pid: u32, stopped: bool) {
    wait_for(if stopped { "stopped" } else { "running" }, async || {
        ((proc_state(pid) == Some('T')) == stopped).then_some(())
    })
    .await;
}

fn req(fault: Fault, ttl_ms: u64, run: Option<&str>) -> FaultRequest {
    FaultRequest {
        fault,
        ttl_ms,
        run: run.map(str::to_owned),
    }
}

fn pause(service: &str) -> Fault {
    Fault::Pause {
        service: service.into(),
    }
}

async fn started(dir: &Path, chaos: bool) -> (Cluster, ChaosClient) {
    let cluster = Cluster::prepare(&topology(dir, chaos))
        .await
        .expect("prepare");
    cluster.start().await.expect("start healthy");
    let client = ChaosClient::new(
        &format!("http://{}", cluster.control_addr()),
        &ClientIdentity::default(),
    );
    (cluster, client)
}

fn pid_of(cluster: &Cluster, name: &str) -> u32 {
    cluster
        .supervisor()
        .status(name)
        .expect("status")
        .pid
        .expect("running")
}

#[tokio::test]
async fn faults_are_refused_while_disabled_and_nothing_is_journaled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cluster, client) = started(dir.path(), false).await;
    let err = client
        .inject(&req(pause("db_g1"), 5000, None))
        .await
        .expect_err("disabled");
    assert!(
        matches!(&err, ClientError::Api { status: 403, code, .. } if code == "CHAOS_DISABLED"),
        "{err}"
    );
    let pid = pid_of(&cluster, "db_g1");
    assert_ne!(proc_state(pid), Some('T'), "nothing was applied");
    let journal = std::fs::read_to_string(dir.path().join("chaos/journal.jsonl")).expect("journal");
    assert_eq!(journal, "{\"format\":1}\n", "nothing was journaled");

    // Enabled, the same request works; disabling removes it at once.
    client.enable().await.expect("enable");
    let f = client
        .inject(&req(pause("db_g1"), 60_000, None))
        .await
        .expect("inject");
    wait_stopped(pid, true).await;
    let v = client.disable().await.expect("disable");
    assert_eq!(v["removed"], 1);
    wait_stopped(pid, false).await;
    assert!(client.status().await.expect("status").active.is_empty());
    let journal = std::fs::read_to_string(dir.path().join("chaos/journal.jsonl")).expect("journal");
    assert!(
        journal.contains(&format!(
            "\"op\":\"remove\",\"id\":\"{}\",\"reason\":\"disable\"",
            f.id
        )),
        "{journal}"
    );
    cluster.shutdown().await;
}

#[tokio::test]
async fn pause_lasts_until_its_ttl_then_the_process_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cluster, client) = started(dir.path(), true).await;
    let pid = pid_of(&cluster, "db_g2");
    let began = Instant::now();
    let f = client
        .inject(&req(pause("db_g2"), 1500, Some("run-1")))
        .await
        .expect("inject");
    assert_eq!((f.kind.as_str(), f.target.as_str()), ("pause", "db_g2"));
    wait_stopped(pid, true).await;
    assert_eq!(client.status().await.expect("status").active.len(), 1);
    wait_for("resumed at the TTL", async || {
        (proc_state(pid) != Some('T')).then_some(())
    })
    .await;
    assert!(
        began.elapsed() >= Duration::from_millis(1400),
        "not before its TTL"
    );
    wait_for("removed from the active list", async || {
        client.status().await.ok()?.active.is_empty().then_some(())
    })
    .await;
    assert_eq!(pid_of(&cluster, "db_g2"), pid, "same process, resumed");
    cluster.shutdown().await;
}

#[tokio::test]
async fn stop_is_a_clean_stop_undone_by_a_start_at_the_ttl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cluster, client) = started(dir.path(), true).await;
    let sup = cluster.supervisor();
    let old = pid_of(&cluster, "db_g1");
    client
        .inject(&req(
            Fault::Stop {
                service: "db_g1".into(),
            },
            1500,
            None,
        ))
        .await
        .expect("inject");
    wait_for("exited on SIGTERM", async || {
        (sup.status("db_g1").ok()?.state == State::Exited).then_some(())
    })
    .await;
    let s = wait_for("started again at the TTL", async || {
        sup.status("db_g1")
            .ok()
            .filter(|s| s.state == State::Running && s.healthy)
    })
    .await;
    assert_ne!(s.pid, Some(old));
    assert_eq!(s.restarts, 0, "a start, not a crash restart");
    cluster.shutdown().await;
}

#[tokio::test]
async fn kill_and_crash_loop_are_crashes_the_supervisor_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cluster, client) = started(dir.path(), true).await;
    let sup = cluster.supervisor();
    client
        .inject(&req(
            Fault::Kill {
                service: "db_g1".into(),
            },
            1000,
            None,
        ))
        .await
        .expect("kill");
    wait_for("restarted after SIGKILL", async || {
        sup.status("db_g1")
            .ok()
            .filter(|s| s.restarts == 1 && s.state == State::Running)
    })
    .await;

    client
        .inject(&req(
            Fault::CrashLoop {
                service: "db_g2".into(),
                interval_ms: 300,
            },
            2000,
            None,
        ))
        .await
        .expect("crash loop");
    wait_for("killed again and again", async || {
        sup.status("db_g2").ok().filter(|s| s.restarts >= 3)
    })
    .await;
    wait_for("the loop ended with its TTL", async || {
        client.status().await.ok()?.active.is_empty().then_some(())
    })
    .await;
    let s = wait_for("healthy again", async || {
        sup.status("db_g2")
            .ok()
            .filter(|s| s.state == State::Running && s.healthy)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        sup.status("db_g2").expect("status").restarts,
        s.restarts,
        "no kill after the fault ended"
    );
    cluster.shutdown().await;
}

#[tokio::test]
async fn bad_requests_name_the_problem_and_a_run_is_rolled_back_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cluster, client) = started(dir.path(), true).await;
    let err = client
        .inject(&req(pause("db_g9"), 1000, None))
        .await
        .expect_err("unknown service");
    assert!(
        matches!(&err, ClientError::Api { status: 400, code, message } if code == "INVALID_FAULT" && message.contains("db_g1, db_g2")),
        "{err}"
    );
    let err = client
        .call::<serde_json::Value>(
            reqwest::Method::POST,
            "/api/v1/chaos/faults",
            Some(serde_json::json!({"fault": {"type": "pause", "service": "db_g1"}, "ttl_ms": "soon"})),
        )
        .await
        .expect_err("bad ttl");
    assert!(
        matches!(&err, ClientError::Api { status: 400, message, .. } if message.contains("ttl_ms")),
        "{err}"
    );

    let (p1, p2) = (pid_of(&cluster, "db_g1"), pid_of(&cluster, "db_g2"));
    client
        .inject(&req(pause("db_g1"), 60_000, Some("r-7")))
        .await
        .expect("a");
    client
        .inject(&req(pause("db_g2"), 60_000, Some("r-7")))
        .await
        .expect("b");
    wait_stopped(p1, true).await;
    wait_stopped(p2, true).await;
    assert_eq!(client.remove_run("r-7").await.expect("rollback"), 2);
    wait_stopped(p1, false).await;
    wait_stopped(p2, false).await;
    cluster.shutdown().await;
}

/// A controller that died (SIGKILL) leaves its journal; the next one undoes what it lists
/// before serving anything. Here the leftover fault is a paused process that outlived its
/// controller; the new controller resumes it (and only it: the start time is checked).
#[tokio::test]
async fn a_restarted_controller_undoes_the_journal_left_by_a_dead_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut orphan = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep");
    let pid = orphan.id();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .expect("SIGSTOP");
    wait_stopped(pid, true).await;
    let ticks = bulwark_chaos::processes::start_ticks(pid).expect("ticks");
    let chaos = dir.path().join("chaos");
    std::fs::create_dir_all(&chaos).expect("dir");
    let entry = serde_json::json!({
        "op": "apply", "id": "f-dead", "fault": {"type": "pause", "service": "db_g1"},
        "undo": [{"step": "signal", "service": "db_g1", "pid": pid, "start_ticks": ticks, "signal": "SIGCONT"}],
        "run": null, "applied_at_ms": 1, "expires_at_ms": 2
    });
    std::fs::write(
        chaos.join("journal.jsonl"),
        format!("{{\"format\":1}}\n{entry}\n"),
    )
    .expect("journal");

    let cluster = Cluster::prepare(&topology(dir.path(), false))
        .await
        .expect("prepare");
    wait_stopped(pid, false).await; // the new controller resumed it
    let journal = std::fs::read_to_string(chaos.join("journal.jsonl")).expect("journal");
    assert!(
        journal
            .ends_with("{\"op\":\"remove\",\"id\":\"f-dead\",\"reason\":\"recovered\",\"at_ms\":")
            || journal.contains("\"id\":\"f-dead\",\"reason\":\"recovered\""),
        "and closed the entry: {journal}"
    );
    cluster.shutdown().await;
    let _ = orphan.kill();
    let _ = orphan.wait();
}

/// An experiment stored and run through the API: the steady state (a replica is healthy)
/// holds before, a pause breaks it during the method (the probe sees it unhealthy), the
/// controller ends the pause at its TTL, and the report times the recovery. The metrics
/// count the run.
#[tokio::test]
async fn an_experiment_runs_through_the_api_and_reports_its_recovery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cluster, client) = started(dir.path(), true).await;
    let control = format!("http://{}", cluster.control_addr());
    let experiment = serde_json::json!({
        "version": "1.0.0",
        "title": "a paused replica recovers",
        "steady-state-hypothesis": {"title": "db_g2 is healthy", "probes": [
            {"type": "probe", "name": "db_g2 healthy", "tolerance": true,
             "provider": {"type": "bulwark", "func": "service_status", "arguments": {"service": "db_g2"}}},
            {"type": "probe", "name": "control API up", "tolerance": 200,
             "provider": {"type": "http", "url": format!("{control}/api/v1/health")}}
        ]},
        "method": [
            {"type": "action", "name": "pause db_g2",
             "provider": {"type": "bulwark", "func": "pause", "arguments": {"service": "db_g2", "duration": 3}},
             "pauses": {"after": 1.5}},
            {"type": "probe", "name": "db_g2 unhealthy while paused", "tolerance": false,
             "provider": {"type": "bulwark", "func": "service_status", "arguments": {"service": "db_g2"}}}
        ],
        "rollbacks": [
            {"type": "action", "name": "start db_g2",
             "provider": {"type": "bulwark", "func": "start_service", "arguments": {"service": "db_g2"}}}
        ]
    });
    let created: serde_json::Value = client
        .call(
            reqwest::Method::POST,
            "/api/v1/chaos/experiments",
            Some(experiment),
        )
        .await
        .expect("create");
    let id = created["id"].as_str().expect("id").to_owned();
    let started: serde_json::Value = client
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/chaos/experiments/{id}/run"),
            None,
        )
        .await
        .expect("run");
    assert_eq!(started["status"], "running");
    let report = wait_for("the run to finish", async || {
        let e: serde_json::Value = client
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/chaos/experiments/{id}"),
                None,
            )
            .await
            .ok()?;
        let r = e["runs"][0].clone();
        (r["status"] != "running").then_some(r)
    })
    .await;
    assert_eq!(report["status"], "succeeded", "{report:#}");
    let results: Vec<(String, String)> = report["activities"]
        .as_array()
        .expect("activities")
        .iter()
        .map(|a| {
            (
                a["phase"].as_str().unwrap_or("").to_owned()
                    + " "
                    + a["name"].as_str().unwrap_or(""),
                a["result"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert!(
        results.contains(&("method db_g2 unhealthy while paused".into(), "pass".into())),
        "{results:?}"
    );
    assert!(
        results.contains(&("after db_g2 healthy".into(), "pass".into())),
        "{results:?}"
    );
    assert_eq!(report["impacted_services"], serde_json::json!(["db_g2"]));
    assert!(
        report["time_to_recover_ms"].as_u64().is_some(),
        "{report:#}"
    );
    assert_eq!(report["faults"][0]["kind"], "pause");

    let m: serde_json::Value = client
        .call(reqwest::Method::GET, "/api/v1/chaos/metrics", None)
        .await
        .expect("metrics");
    assert_eq!(
        (
            m["total_experiments"].as_u64(),
            m["successful_experiments"].as_u64(),
            m["faults_active"].as_u64()
        ),
        (Some(1), Some(1), Some(0)),
        "{m}"
    );
    assert!(m["mean_recovery_time_ms"].as_f64().is_some());
    // The gauge follows the removal's journal write, just after the fault left the list.
    let prom = wait_for("the Prometheus metrics", async || {
        let text = reqwest::get(format!("{control}/api/v1/chaos/metrics?format=prometheus"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.contains("chaos_faults_active 0").then_some(text)
    })
    .await;
    assert!(
        prom.contains("chaos_experiments_total{outcome=\"succeeded\"} 1"),
        "{prom}"
    );
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_malformed_experiment_is_refused_with_its_line_and_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cluster, client) = started(dir.path(), true).await;
    let text = "{\n  \"title\": \"bad\",\n  \"method\": [\n    {\"type\": \"action\", \"name\": \"x\",\n     \"provider\": {\"type\": \"bulwark\", \"func\": \"pause\", \"arguments\": {\"service\": \"db_g7\", \"duration\": 5}}}\n  ]\n}";
    let resp = reqwest::Client::new()
        .post(format!(
            "http://{}/api/v1/chaos/experiments",
            cluster.control_addr()
        ))
        .body(text)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 400);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "INVALID_EXPERIMENT");
    assert_eq!(body["error"]["line"], 5);
    assert_eq!(
        body["error"]["field"],
        "method[0].provider.arguments.service"
    );
    assert!(
        client.status().await.expect("status").active.is_empty(),
        "nothing injected"
    );
    cluster.shutdown().await;
}
