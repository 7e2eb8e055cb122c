//! The supervisor, control API and `ctl` client against small fake services: shell one-liners
//! that crash or exit, a Python HTTP stub that behaves like a gateway (answers
//! `/health/ready`, logs JSON lines, exits 0 on SIGTERM after logging `SHUTDOWN_EVENT`),
//! and `redis-server` as a replica. Every port is a free one; nothing uses the defaults.

use bulwark_http::client::ClientIdentity;
use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bulwark_cluster::client::{ClientError, ControlClient};
use bulwark_cluster::supervisor::{Action, ServiceStatus, State, Supervisor};
use bulwark_cluster::topology::{HealthCheck, Policy, ServiceKind, ServiceSpec, Topology};
use bulwark_cluster::up::{Cluster, UpError};
use bulwark_cluster::{CtlArgs, CtlCommand, run_ctl};
use nix::sys::signal::kill;
use nix::unistd::Pid;
use tokio::time::Instant;

/// Upper bound for any awaited condition; conditions are polled, never slept on.
const DEADLINE: Duration = Duration::from_secs(20);

/// A gateway-like HTTP stub. Arguments: port, name, dependency port (0 for none), and
/// `ignore-term` to make it ignore SIGTERM (to exercise the SIGKILL fallback).
const STUB: &str = r#"
import http.server, json, signal, socket, sys, threading
port, name, dep = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ignore_term = len(sys.argv) > 4 and sys.argv[4] == "ignore-term"
def log(level, event, **kw):
    print(json.dumps({"timestamp": "2025-01-01T00:00:00Z", "level": level, "event": event, "service": name, **kw}), flush=True)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = 200 if self.path.startswith("/health") else 404
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
        log("INFO", "REQUEST_COMPLETED", method="GET", path=self.path, status=code, latency_ms="0.10")
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer(("127.0.0.1", port), H)
def term(signum, frame):
    reachable = False
    if dep:
        try:
            socket.create_connection(("127.0.0.1", dep), timeout=1).close()
            reachable = True
        except OSError:
            pass
    log("WARNING", "SHUTDOWN_EVENT", signal="SIGTERM", dep_reachable=reachable)
    if not ignore_term:
        threading.Thread(target=srv.shutdown).start()
signal.signal(signal.SIGTERM, term)
log("INFO", "STARTED", port=port)
srv.serve_forever()
"#;

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn test_policy() -> Policy {
    Policy {
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        backoff_reset_after: Duration::from_secs(30),
        stop_timeout: Duration::from_secs(2),
        health_interval: Duration::from_millis(100),
        health_timeout: Duration::from_millis(500),
        startup_timeout: Duration::from_secs(15),
    }
}

fn topology(dir: &Path, services: Vec<ServiceSpec>) -> Topology {
    Topology {
        services,
        data_dir: dir.to_path_buf(),
        control: SocketAddr::from(([127, 0, 0, 1], 0)),
        policy: test_policy(),
        echo_logs: false,
        chaos: false,
        links: Vec::new(),
        keys_file: None,
        tls: None,
        identity: ClientIdentity::default(),
        chaos_token: None,
        layout: bulwark_cluster::topology::layout_of(&[("db_g1".to_owned(), 6401)], 1),
    }
}

fn shell(name: &str, script: &str) -> ServiceSpec {
    ServiceSpec {
        tls: None,
        name: name.to_owned(),
        kind: ServiceKind::Gateway,
        port: free_port(),
        label: name.to_owned(),
        program: PathBuf::from("sh"),
        args: os(&["-c", script]),
        env: Vec::new(),
        health: HealthCheck::Tcp,
    }
}

fn stub(dir: &Path, name: &str, dep_port: u16, extra: &[&str]) -> ServiceSpec {
    let script = dir.join("stub.py");
    if !script.exists() {
        std::fs::write(&script, STUB).expect("write stub");
    }
    let port = free_port();
    let mut args = vec![
        OsString::from("-u"),
        script.into_os_string(),
        port.to_string().into(),
        name.into(),
        dep_port.to_string().into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    ServiceSpec {
        tls: None,
        name: name.to_owned(),
        kind: ServiceKind::Gateway,
        port,
        label: format!("stub {name}"),
        program: PathBuf::from("python3"),
        args,
        env: Vec::new(),
        health: HealthCheck::Http {
            path: "/health/ready".to_owned(),
        },
    }
}

fn redis(dir: &Path, name: &str) -> ServiceSpec {
    let port = free_port();
    let data = dir.join(name);
    std::fs::create_dir_all(&data).expect("redis dir");
    ServiceSpec {
        tls: None,
        name: name.to_owned(),
        kind: ServiceKind::Replica,
        port,
        label: format!("replica {name}"),
        program: PathBuf::from("redis-server"),
        args: vec![
            "--port".into(),
            port.to_string().into(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            "".into(),
            "--appendonly".into(),
            "no".into(),
            "--dir".into(),
            data.into_os_string(),
        ],
        env: Vec::new(),
        health: HealthCheck::RespPing,
    }
}

fn alive(pid: u32) -> bool {
    let pid = i32::try_from(pid).expect("pid fits i32");
    match kill(Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(e) => e == nix::Error::EPERM,
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` after [`DEADLINE`].
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

async fn wait_status(
    sup: &Supervisor,
    name: &str,
    what: &str,
    pred: impl Fn(&ServiceStatus) -> bool,
) -> ServiceStatus {
    wait_for(what, async || sup.status(name).ok().filter(|s| pred(s))).await
}

/// Watches a service for `window` and fails if `pred` ever stops holding: used to show
/// that something does *not* happen (no restart) over many backoff periods.
async fn holds_for(
    sup: &Supervisor,
    name: &str,
    window: Duration,
    pred: impl Fn(&ServiceStatus) -> bool,
) {
    let end = Instant::now() + window;
    while Instant::now() < end {
        let s = sup.status(name).expect("status");
        assert!(pred(&s), "condition broke: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn log_text(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join("logs").join(format!("{name}.log"))).unwrap_or_default()
}

#[tokio::test]
async fn a_crash_is_restarted_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = topology(dir.path(), vec![shell("crasher", "echo boom >&2; exit 3")]);
    std::fs::create_dir_all(t.log_dir()).expect("log dir");
    let sup = Supervisor::new(&t);
    sup.act("crasher", Action::Start).await.expect("start");
    let s = wait_status(&sup, "crasher", "three restarts", |s| {
        s.restarts >= 3 && s.state == State::Restarting
    })
    .await;
    assert_eq!((s.exit_code, s.pid), (Some(3), None));
    // Each run wrote its stderr line to the same, appended log file.
    wait_for("three boom lines", async || {
        (log_text(dir.path(), "crasher")
            .lines()
            .filter(|l| *l == "boom")
            .count()
            >= 3)
            .then_some(())
    })
    .await;
    sup.shutdown().await;
    assert_eq!(sup.status("crasher").expect("status").state, State::Stopped);
}

#[tokio::test]
async fn a_clean_exit_is_not_restarted_until_started() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = topology(dir.path(), vec![shell("oneshot", "echo done; exit 0")]);
    std::fs::create_dir_all(t.log_dir()).expect("log dir");
    let sup = Supervisor::new(&t);
    sup.act("oneshot", Action::Start).await.expect("start");
    let s = wait_status(&sup, "oneshot", "exited", |s| s.state == State::Exited).await;
    assert_eq!(s.exit_code, Some(0));
    assert_eq!(s.pid, None);
    // Twenty initial backoffs: a restart would have happened many times over.
    holds_for(&sup, "oneshot", Duration::from_secs(1), |s| {
        s.state == State::Exited && s.restarts == 0
    })
    .await;
    sup.act("oneshot", Action::Start)
        .await
        .expect("start again");
    wait_for("second run's output", async || {
        (log_text(dir.path(), "oneshot")
            .lines()
            .filter(|l| *l == "done")
            .count()
            == 2)
            .then_some(())
    })
    .await;
    assert_eq!(sup.status("oneshot").expect("status").restarts, 0);
    sup.shutdown().await;
}

#[tokio::test]
async fn a_program_that_cannot_start_is_crashed_with_a_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = shell("missing", "");
    spec.program = PathBuf::from("/nonexistent/bulwark-test-program");
    let t = topology(dir.path(), vec![spec]);
    let sup = Supervisor::new(&t);
    sup.act("missing", Action::Start).await.expect("start");
    let s = wait_status(&sup, "missing", "crashed and retried", |s| {
        s.state == State::Crashed && s.restarts >= 1
    })
    .await;
    let reason = s.last_error.expect("a reason");
    assert!(
        reason.contains("/nonexistent/bulwark-test-program"),
        "{reason}"
    );
    sup.shutdown().await;
}

#[tokio::test]
async fn control_api_stop_start_kill_and_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = redis(dir.path(), "db_g1");
    let gw = stub(dir.path(), "app_cp", db.port, &[]);
    let t = topology(dir.path(), vec![db, gw]);
    let cluster = Cluster::prepare(&t).await.expect("prepare");
    cluster.start().await.expect("start healthy");
    let client = ControlClient::new(
        &format!("http://{}", cluster.control_addr()),
        &ClientIdentity::default(),
    );

    // Status JSON: both running and, once probed, healthy.
    let all = wait_for("both healthy", async || {
        let all = client.services().await.ok()?;
        all.iter().all(|s| s.healthy).then_some(all)
    })
    .await;
    let names: Vec<_> = all
        .iter()
        .map(|s| (s.name.as_str(), s.kind, s.state))
        .collect();
    assert_eq!(
        names,
        [
            ("db_g1", ServiceKind::Replica, State::Running),
            ("app_cp", ServiceKind::Gateway, State::Running)
        ]
    );
    let raw: serde_json::Value = serde_json::to_value(&all[1]).expect("json");
    for field in [
        "name",
        "kind",
        "port",
        "pid",
        "state",
        "exit_code",
        "restarts",
        "uptime_secs",
        "healthy",
    ] {
        assert!(raw.get(field).is_some(), "missing {field} in {raw}");
    }

    // Stop: SIGTERM is handled (exit 0), the process is gone, and it stays stopped.
    let db_pid = all[0].pid.expect("replica pid");
    let stopped = client.act("db_g1", "stop", None).await.expect("stop");
    assert_eq!(stopped.state, State::Stopped);
    assert!(
        !alive(db_pid),
        "replica pid {db_pid} still alive after stop"
    );
    holds_for(cluster.supervisor(), "db_g1", Duration::from_secs(1), |s| {
        s.state == State::Stopped && s.restarts == 0
    })
    .await;

    // Start: runs again with a new process, and becomes healthy.
    let started = client.act("db_g1", "start", None).await.expect("start");
    assert_eq!(started.state, State::Running);
    assert_ne!(started.pid, Some(db_pid));
    wait_status(
        cluster.supervisor(),
        "db_g1",
        "replica healthy again",
        |s| s.healthy,
    )
    .await;

    // kill --signal TERM reaches the process: it logs SHUTDOWN_EVENT and exits 0, which is
    // a clean stop, not restarted.
    let gw_pid = client
        .service("app_cp")
        .await
        .expect("status")
        .pid
        .expect("pid");
    client
        .act("app_cp", "kill", Some("SIGTERM"))
        .await
        .expect("kill TERM");
    let s = wait_status(cluster.supervisor(), "app_cp", "exited", |s| {
        s.state == State::Exited
    })
    .await;
    assert_eq!((s.exit_code, s.restarts), (Some(0), 0));
    assert!(!alive(gw_pid));
    assert!(log_text(dir.path(), "app_cp").contains("SHUTDOWN_EVENT"));

    // kill (default KILL) on a running service is a crash: restarted and counted.
    client.act("app_cp", "start", None).await.expect("start");
    client.act("app_cp", "kill", None).await.expect("kill");
    let s = wait_status(
        cluster.supervisor(),
        "app_cp",
        "restarted after SIGKILL",
        |s| s.restarts == 1 && s.state == State::Running,
    )
    .await;
    assert_eq!(s.exit_signal, None, "a new run clears the previous exit");
    wait_status(
        cluster.supervisor(),
        "app_cp",
        "healthy after restart",
        |s| s.healthy,
    )
    .await;

    // Errors: unknown service (listing the known ones), kill of a stopped service, bad signal.
    match client.act("db_g9", "stop", None).await {
        Err(ClientError::UnknownService { message, known }) => {
            assert_eq!(known, ["db_g1", "app_cp"]);
            assert!(
                message.contains("db_g9") && message.contains("db_g1, app_cp"),
                "{message}"
            );
        }
        other => panic!("expected unknown service, got {other:?}"),
    }
    client.act("db_g1", "stop", None).await.expect("stop");
    assert!(matches!(
        client.act("db_g1", "kill", Some("TERM")).await,
        Err(ClientError::Api { status: 409, .. })
    ));
    assert!(matches!(
        client.act("app_cp", "kill", Some("BOGUS")).await,
        Err(ClientError::Api { status: 400, .. })
    ));

    // The ctl front end: exit code 2 for an unknown service, 0 for status.
    let ctl = |command| CtlArgs {
        command,
        control: Some(format!("http://{}", cluster.control_addr())),
        data_dir: std::path::PathBuf::from("/nonexistent"),
        json: true,
    };
    let code = run_ctl(ctl(CtlCommand::Stop {
        service: "nope".to_owned(),
    }))
    .await
    .expect("ctl");
    assert_eq!(code, ExitCode::from(2));
    assert_eq!(
        run_ctl(ctl(CtlCommand::Status)).await.expect("ctl"),
        ExitCode::SUCCESS
    );

    cluster.shutdown().await;
}

#[tokio::test]
async fn ctl_without_up_says_so() {
    let port = free_port();
    let client = ControlClient::new(
        &format!("http://127.0.0.1:{port}"),
        &ClientIdentity::default(),
    );
    let err = client.services().await.expect_err("nothing listens");
    assert_eq!(
        err.to_string(),
        format!("bulwark up is not running (no control API at http://127.0.0.1:{port})")
    );
    let code = run_ctl(CtlArgs {
        command: CtlCommand::Status,
        control: Some(format!("http://127.0.0.1:{port}")),
        data_dir: std::path::PathBuf::from("/nonexistent"),
        json: false,
    })
    .await
    .expect("ctl");
    assert_eq!(code, ExitCode::from(1));
}

#[tokio::test]
async fn logs_go_to_the_file_as_emitted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = stub(dir.path(), "app_ap", 0, &[]);
    let port = gw.port;
    let t = topology(dir.path(), vec![gw]);
    let cluster = Cluster::prepare(&t).await.expect("prepare");
    cluster.start().await.expect("start");
    let request = "GET /write-probe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut conn, request.as_bytes())
        .await
        .expect("write");
    let mut sink = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut conn, &mut sink)
        .await
        .expect("read");

    let line = wait_for("REQUEST_COMPLETED for /write-probe", async || {
        let mut found = None;
        let path = dir.path().join("logs").join("app_ap.log");
        bulwark_cluster::logs::read_log(&path, Some("/write-probe"), Some(1), |l| {
            found = Some(l.to_owned())
        })
        .await
        .ok()?;
        found
    })
    .await;
    let json: serde_json::Value = serde_json::from_str(&line).expect("raw JSON line");
    assert_eq!(json["event"], "REQUEST_COMPLETED");
    assert_eq!(json["status"], 404);
    assert_eq!(json["latency_ms"], "0.10");
    assert_eq!(
        bulwark_cluster::logs::format_line(&line, "app_ap", false),
        "INFO  REQUEST_COMPLETED method=GET path=/write-probe status=404 latency_ms=0.10"
    );
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_taken_port_or_data_dir_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let mut busy = shell("app_ap", "exit 0");
    busy.port = port;
    let t = topology(dir.path(), vec![shell("db_g1", "exit 0"), busy]);
    let err = Cluster::prepare(&t).await.expect_err("port taken");
    assert!(
        matches!(&err, UpError::PortInUse { port: p, service } if *p == port && service == "app_ap")
    );
    assert_eq!(
        err.to_string(),
        format!("port {port} (app_ap) is already in use")
    );
    // Nothing was started, so no log file exists.
    assert!(!dir.path().join("logs").join("db_g1.log").exists());

    let mut t = topology(dir.path(), vec![shell("db_g1", "exit 0")]);
    t.control = SocketAddr::from(([127, 0, 0, 1], port));
    let err = Cluster::prepare(&t).await.expect_err("control port taken");
    assert_eq!(
        err.to_string(),
        format!("port {port} (control API) is already in use")
    );
    drop(taken);

    // Two clusters on one data directory: the second refuses.
    let t = topology(dir.path(), vec![shell("db_g1", "exit 0")]);
    let first = Cluster::prepare(&t).await.expect("first");
    let err = Cluster::prepare(&t)
        .await
        .expect_err("second on the same dir");
    assert!(matches!(err, UpError::Locked { .. }), "{err}");
    first.shutdown().await;
    let again = Cluster::prepare(&t)
        .await
        .expect("lock released on shutdown");
    again.shutdown().await;
}

#[tokio::test]
async fn up_stops_gateways_before_replicas_and_leaves_no_process_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db1 = redis(dir.path(), "db_g1");
    let db2 = redis(dir.path(), "db_g2");
    let ap = stub(dir.path(), "app_ap", db1.port, &[]);
    // Ignores SIGTERM: shutdown must fall back to SIGKILL after the stop timeout.
    let stubborn = stub(dir.path(), "app_stubborn", db1.port, &["ignore-term"]);
    let control = free_port();
    let mut t = topology(dir.path(), vec![db1, db2, ap, stubborn]);
    t.control = SocketAddr::from(([127, 0, 0, 1], control));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let up = tokio::spawn(bulwark_cluster::up::run(t, async move {
        let _ = stop_rx.await;
        "test shutdown".to_owned()
    }));

    let client = ControlClient::new(
        &format!("http://127.0.0.1:{control}"),
        &ClientIdentity::default(),
    );
    let all = wait_for("all four healthy", async || {
        let all = client.services().await.ok()?;
        (all.len() == 4 && all.iter().all(|s| s.healthy)).then_some(all)
    })
    .await;
    let pids: Vec<u32> = all.iter().map(|s| s.pid.expect("pid")).collect();
    assert!(dir.path().join("bulwark-up.pid").exists());

    stop_tx.send(()).expect("signal shutdown");
    tokio::time::timeout(DEADLINE, up)
        .await
        .expect("up returns")
        .expect("task")
        .expect("clean shutdown");
    for pid in pids {
        assert!(!alive(pid), "pid {pid} survived shutdown");
    }
    // Gateways were stopped while the replicas still answered.
    for gw in ["app_ap", "app_stubborn"] {
        let text = log_text(dir.path(), gw);
        let line = text
            .lines()
            .find(|l| l.contains("SHUTDOWN_EVENT"))
            .expect("shutdown logged");
        assert!(line.contains("\"dep_reachable\": true"), "{gw}: {line}");
    }
    assert!(
        !dir.path().join("bulwark-up.pid").exists(),
        "lock file removed"
    );
    assert!(client.services().await.is_err(), "control API closed");
}
