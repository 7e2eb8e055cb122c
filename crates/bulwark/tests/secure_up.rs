//! `bulwark up --auth --tls` end to end (SPEC OPS-4, CAP-8), with the clients users have:
//! curl with `--cacert`, Python's `ssl`, `redis-cli --tls`, and `bulwark ctl`/`chaos`/
//! `audit` finding the admin key and the CA in the data directory. The whole cluster runs
//! on TLS (HTTPS services, mutual TLS on every replica link, through the fault proxy); a
//! wrong CA and plaintext are refused; and a planted value and the API keys appear in no
//! log line and no metric.
//!
//! Its ports are the seed's shifted by `--port-offset 23000`, so it needs none of the
//! fixed ones: all below 32768, where the kernel never picks the local port of an
//! outgoing connection (a shift into the ephemeral range once found port 38474 taken by
//! another test's client socket), and apart from chaos.rs's `--port-offset 20000`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

const OFFSET: &str = "23000";
const AP: &str = "https://127.0.0.1:28001";
const CP: &str = "https://127.0.0.1:28002";
const SHOP: &str = "https://127.0.0.1:31080";
const NODE_PORT: &str = "29401";

fn bulwark(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env_remove("BULWARK_API_KEY")
        .env_remove("BULWARK_CA_FILE")
        .env_remove("BULWARK_CONTROL")
        .output()
        .expect("run bulwark")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `up` as a child; SIGINT on drop.
struct Up {
    child: Child,
    data: tempfile::TempDir,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Up {
    fn start() -> Up {
        let data = tempfile::tempdir().expect("temp dir");
        let child = Command::new(env!("CARGO_BIN_EXE_bulwark"))
            .args(["up", "--auth", "--tls", "--quiet", "--port-offset", OFFSET])
            .arg("--data-dir")
            .arg(data.path())
            .env_remove("DATA_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn bulwark up");
        let up = Up { child, data };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            // `ctl` reaches the control API over HTTPS with the recorded URL, the CA
            // and the admin key, all found in the data directory.
            let out = bulwark(up.dir(), &["ctl", "status", "--json"]);
            let services: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
            if !services.is_empty()
                && services
                    .iter()
                    .all(|s| s["state"] == "running" && s["healthy"] == true)
            {
                return up;
            }
            assert!(
                Instant::now() < deadline,
                "cluster not healthy: {}",
                text(&out)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn dir(&self) -> &Path {
        self.data.path()
    }

    fn file(&self, rel: &str) -> PathBuf {
        self.dir().join(rel)
    }

    fn key(&self, name: &str) -> String {
        std::fs::read_to_string(self.file(&format!("secrets/{name}.key")))
            .expect("key file")
            .trim()
            .to_owned()
    }

    fn ca(&self) -> String {
        self.file("tls/ca.pem").display().to_string()
    }
}

/// `curl -s` with `args`: (exit code, HTTP status or 0, body).
fn curl(args: &[&str]) -> (i32, u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs");
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = body.rsplit_once('\n').unwrap_or(("", "0"));
    (
        out.status.code().unwrap_or(-1),
        code.trim().parse().unwrap_or(0),
        body.to_owned(),
    )
}

fn bearer(key: &str) -> String {
    format!("Authorization: Bearer {key}")
}

/// Python's `ssl` module fetching `url` trusting `cafile` (the system's roots when
/// `None`): the status, or the error's name.
fn python_get(url: &str, cafile: Option<&str>) -> String {
    let script = r#"
import ssl, sys, urllib.request
url, ca = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
ctx = ssl.create_default_context(cafile=ca)
try:
    with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
        print(r.status)
except Exception as e:
    print(type(e).__name__, getattr(e, "reason", e))
"#;
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).arg(url);
    if let Some(ca) = cafile {
        cmd.arg(ca);
    }
    let out = cmd.output().expect("python3 runs");
    text(&out).trim().to_owned()
}

fn redis_cli(extra: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", NODE_PORT])
        .args(extra)
        .arg("PING")
        .output()
        .expect("redis-cli runs");
    text(&out)
}

#[test]
fn up_auth_tls_runs_the_whole_cluster_authenticated_and_encrypted() {
    let up = Up::start();
    let ca = up.ca();
    let (reader, writer, admin) = (up.key("reader"), up.key("writer"), up.key("admin"));
    let canary = format!("leak-canary-{}", std::process::id());

    // A CP write through HTTPS with the writer key: both replicas acknowledge it over
    // mutual TLS (through the fault proxy's links).
    let (rc, status, body) = curl(&[
        "--cacert",
        &ca,
        "-H",
        &bearer(&writer),
        "-H",
        "content-type: application/json",
        "-X",
        "PUT",
        &format!("{CP}/v1/kv/secure-key"),
        "-d",
        &format!(r#"{{"value":"{canary}"}}"#),
    ]);
    assert_eq!((rc, status), (0, 200), "{body}");
    let put: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        put["acked_by"],
        serde_json::json!(["db_g1", "db_g2"]),
        "{put}"
    );
    let (_, status, body) = curl(&[
        "--cacert",
        &ca,
        "-H",
        &bearer(&reader),
        &format!("{CP}/v1/kv/secure-key"),
    ]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&canary), "{body}");
    // The seed's write URL puts the value in the path: still never logged.
    let (_, status, body) = curl(&[
        "--cacert",
        &ca,
        "-H",
        &bearer(&writer),
        "-X",
        "POST",
        &format!("{AP}/write/seed-key/{canary}-path"),
    ]);
    assert!((200..300).contains(&status), "{status} {body}");
    // The reader key cannot write; no key is 401, over TLS as in the clear.
    let (_, status, _) = curl(&[
        "--cacert",
        &ca,
        "-H",
        &bearer(&reader),
        "-X",
        "POST",
        &format!("{AP}/write/k/v"),
    ]);
    assert_eq!(status, 403);
    let (_, status, _) = curl(&["--cacert", &ca, &format!("{AP}/v1/kv/secure-key")]);
    assert_eq!(status, 401);
    let (_, status, _) = curl(&["--cacert", &ca, &format!("{SHOP}/health")]);
    assert_eq!(status, 200, "the shop answers HTTPS");

    // Refused: no CA (the system's roots do not know ours), another CA, plaintext.
    let (rc, _, _) = curl(&[&format!("{AP}/health")]);
    assert_eq!(rc, 60, "curl without --cacert: certificate problem");
    let other = tempfile::tempdir().expect("temp dir");
    let other_ca = bulwark_tls::ca::LocalCa::open_or_create(other.path())
        .expect("other CA")
        .ca_file();
    let (rc, _, _) = curl(&[
        "--cacert",
        &other_ca.display().to_string(),
        &format!("{AP}/health"),
    ]);
    // 60 (certificate not verified) or 35 (handshake failed: same CA name, wrong key).
    assert!(rc == 60 || rc == 35, "curl trusting another CA: exit {rc}");
    let (rc, status, _) = curl(&["http://127.0.0.1:28001/health"]);
    assert!(
        rc != 0 && status == 0,
        "plaintext HTTP to a TLS port: {rc} {status}"
    );

    // Python's ssl: verified with the CA, refused without it.
    let ok = python_get(&format!("{AP}/health"), Some(&ca));
    assert!(ok.starts_with("200"), "{ok}");
    let refused = python_get(&format!("{AP}/health"), None);
    assert!(refused.contains("CERTIFICATE_VERIFY_FAILED"), "{refused}");

    // redis-cli --tls to a replica: a client certificate from the CA is required.
    let (cert, key) = (
        up.file("tls/up.pem").display().to_string(),
        up.file("tls/up-key.pem").display().to_string(),
    );
    let pong = redis_cli(&["--tls", "--cacert", &ca, "--cert", &cert, "--key", &key]);
    assert!(pong.contains("PONG"), "{pong}");
    let no_cert = redis_cli(&["--tls", "--cacert", &ca]);
    assert!(!no_cert.contains("PONG"), "{no_cert}");
    let plain = redis_cli(&[]);
    assert!(!plain.contains("PONG"), "{plain}");

    // The chaos controller reaches the gateways (admin key + chaos token) and the
    // replicas (its certificate) under --auth --tls.
    let out = bulwark(up.dir(), &["chaos", "enable"]);
    assert!(out.status.success(), "{}", text(&out));
    for fault in [
        r#"{"type":"clock_skew","gateway":"app_ap","offset_ms":1000}"#,
        r#"{"type":"corrupt","replica":"db_g2","key":"secure-key"}"#,
        r#"{"type":"latency","gateway":"app_cp","replica":"db_g1","latency_ms":20}"#,
    ] {
        let out = bulwark(up.dir(), &["chaos", "inject", fault, "--ttl", "3"]);
        assert!(out.status.success(), "{fault}: {}", text(&out));
    }

    // Nothing leaks: not the value (body or path), not a key, in any log or metric.
    let (_, status, metrics_ap) = curl(&[
        "--cacert",
        &ca,
        "-H",
        &bearer(&reader),
        &format!("{AP}/metrics"),
    ]);
    assert_eq!(status, 200);
    let (_, _, metrics_cp) = curl(&[
        "--cacert",
        &ca,
        "-H",
        &bearer(&reader),
        &format!("{CP}/metrics"),
    ]);
    // The write above is logged, by its route template.
    let logged = wait(|| {
        std::fs::read_to_string(up.file("logs/app_ap.log"))
            .is_ok_and(|l| l.contains("/write/{key}/{value}"))
    });
    assert!(logged, "REQUEST_COMPLETED with the route template");
    let mut haystacks = vec![
        ("metrics app_ap".to_owned(), metrics_ap),
        ("metrics app_cp".to_owned(), metrics_cp),
    ];
    for entry in std::fs::read_dir(up.file("logs")).expect("logs dir") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            let bytes = std::fs::read(&path).expect("read log");
            haystacks.push((
                path.display().to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
    }
    for (name, hay) in &haystacks {
        for (what, needle) in [
            ("the value", canary.as_str()),
            ("the reader key", reader.as_str()),
            ("the writer key", writer.as_str()),
            ("the admin key", admin.as_str()),
        ] {
            assert!(!hay.contains(needle), "{what} appears in {name}");
        }
    }

    // Every write, refusal and admin action is in the audit chain, which verifies.
    let audit = up.file("logs/audit.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["audit", "verify"])
        .arg(&audit)
        .output()
        .expect("audit verify");
    assert!(out.status.success(), "{}", text(&out));
}

fn wait(mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}
