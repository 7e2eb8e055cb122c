//! The hard paths of the CP two-phase commit (`docs/ARCHITECTURE.md`, "Consistency modes
//! and the commit rule"), made deterministic by a [`RespProxy`] in front of each replica
//! that loses, refuses or delays *specific* replica commands. Every scenario runs against
//! `bulwark node`s and against real `redis-server`s.
//!
//! The gateways run with a 0.2 s network timeout and a 1 s in-doubt timeout, so a
//! resolver may act on an undecided write one second after its version was stamped.
//! Nothing resolves an undecided write except a gateway read (or a write that hit BUSY):
//! the tests inspect the replicas directly (not through the proxies) between steps.

#[macro_use]
mod common;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bulwark_core::{ReplicaState, Version};
use bulwark_replica::{Dialect, PrepareReply, ReplicaClient, ReplicaSpec};
use bulwark_testkit::{Action, RespProxy, Rule, wait_for};
use common::*;
use serde_json::Value;

both_backends!(
    commit_reply_lost_at_the_coordinator_is_unknown_then_visible_everywhere,
    commit_that_never_reaches_the_coordinator_is_unknown_then_aborted,
    prepare_timeout_aborts_and_the_write_is_never_visible,
    commit_arriving_after_the_in_doubt_timeout_finds_the_write_aborted,
    sixteen_orphaned_writes_from_lost_commits_do_not_block_the_key,
    sixteen_orphaned_prepares_do_not_block_the_key,
    two_cp_gateways_racing_on_one_key_agree,
    quorum_answers_at_w_and_commits_the_late_prepare_in_the_background,
    ap_answers_without_waiting_for_a_slow_replica,
);

/// Generous bound for anything that waits on the in-doubt timeout (1 s) plus resolution.
const DEADLINE: Duration = Duration::from_secs(20);
/// Maximum pending writes per key (the replica protocol's limit).
const MAX_PENDING: usize = 16;

/// Two replicas, each behind its own proxy, and direct clients that bypass the proxies.
struct Rig {
    backend: Backend,
    _cluster: TestCluster,
    /// `proxies[i]` fronts `db_g{i+1}`.
    proxies: Vec<RespProxy>,
    /// `direct[i]` talks to `db_g{i+1}` itself, not through its proxy.
    direct: Vec<ReplicaClient>,
}

impl Rig {
    async fn start(backend: Backend) -> Rig {
        Rig::with_replicas(backend, 2).await
    }

    async fn with_replicas(backend: Backend, n: usize) -> Rig {
        let cluster = TestCluster::start(backend, n).await;
        let mut proxies = Vec::new();
        let mut direct = Vec::new();
        for r in &cluster.replicas {
            proxies.push(RespProxy::start(r.addr()).await);
            direct.push(ReplicaClient::new(
                ReplicaSpec {
                    name: r.name.clone(),
                    addr: r.addr(),
                },
                dialect(backend),
                Duration::from_secs(5),
            ));
        }
        Rig {
            backend,
            _cluster: cluster,
            proxies,
            direct,
        }
    }

    /// `db_g1=<proxy 1>,db_g2=<proxy 2>`.
    fn replicas_setting(&self) -> String {
        self.proxies
            .iter()
            .enumerate()
            .map(|(i, p)| format!("db_g{}={}", i + 1, p.addr()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A gateway in `mode` over the proxies, with the tight timeouts these tests rely on
    /// (tight, but not so tight that a slow fsync on a busy disk looks like a fault: a
    /// node fsyncs every prepare, and a shared CI disk has shown 200 ms ones).
    async fn gateway(&self, mode: &str, extra: &[(&str, &str)]) -> TestGateway {
        let mut s: Vec<(&str, String)> = vec![
            ("MODE", mode.into()),
            ("REPLICAS", self.replicas_setting()),
            ("BACKEND", self.backend.as_str().into()),
            (
                "SECRET_KEY",
                "test-secret-key-shared-by-all-gateways".into(),
            ),
            ("NETWORK_TIMEOUT_SEC", "0.5".into()),
            ("IN_DOUBT_TIMEOUT_MS", "2500".into()),
        ];
        s.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        TestGateway::start(&s).await
    }

    /// The proxy pattern of replica operation `op` (`prepare`, `commit`, `abort`, …) in
    /// this backend's dialect.
    fn op(&self, op: &str) -> String {
        match self.backend {
            Backend::Bulwark => format!("BW.{}", op.to_ascii_uppercase()),
            Backend::Redis => format!("FCALL bw_{op}"),
        }
    }

    /// Sets `action` for replica operation `op` at `db_g{replica+1}`'s proxy.
    fn on(&self, replica: usize, op: &str, action: Action) {
        self.proxies[replica].set_rule(Rule::new(self.op(op), action));
    }

    fn forward_everything(&self) {
        for p in &self.proxies {
            p.clear_rules();
        }
    }

    /// What replica `i` holds for `key`, read directly.
    async fn state(&self, i: usize, key: &str) -> ReplicaState {
        self.direct[i]
            .get(key.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("db_g{} cannot be read: {e}", i + 1))
    }

    /// Whether no replica holds an undecided write for `key`.
    async fn no_pending(&self, key: &str) -> bool {
        for i in 0..self.direct.len() {
            if !self.state(i, key).await.pending.is_empty() {
                return false;
            }
        }
        true
    }
}

fn dialect(backend: Backend) -> Dialect {
    match backend {
        Backend::Bulwark => Dialect::Bulwark,
        Backend::Redis => Dialect::Redis,
    }
}

fn version_of(body: &Value, field: &Value) -> Version {
    field
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no version in {body}"))
}

fn pending_versions(s: &ReplicaState) -> Vec<Version> {
    s.pending.iter().map(|p| p.version).collect()
}

/// A CP read through `gw` must not be the forbidden value; returns `(status, body)`.
async fn read_never(c: &reqwest::Client, gw: &TestGateway, key: &str, forbidden: &str) -> Value {
    let (status, body) = get(c, format!("{}/read/{key}", gw.url)).await;
    assert_ne!(
        body["value"], forbidden,
        "a write that was not committed is visible (HTTP {status}): {body}"
    );
    body
}

/// (a) The coordinator applies the commit but its reply is lost: the writer cannot know,
/// so 504 `unknown`; the write *is* committed (at its coordinator), so every later CP read
/// returns it, and the other replica converges on it.
async fn commit_reply_lost_at_the_coordinator_is_unknown_then_visible_everywhere(backend: Backend) {
    let rig = Rig::start(backend).await;
    let gw = rig.gateway("cp", &[]).await;
    let c = client();
    rig.on(0, "commit", Action::DropReply);
    let (status, body) = post(&c, format!("{}/write/LOST_REPLY/V1", gw.url)).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["outcome"], "unknown", "{body}");
    assert_eq!(body["error"]["code"], "OUTCOME_UNKNOWN", "{body}");
    let version = version_of(&body, &body["error"]["version"]);
    assert_eq!(rig.proxies[0].counts(&rig.op("commit")), 1);
    assert_eq!(
        rig.proxies[1].counts(&rig.op("commit")),
        0,
        "nothing is committed elsewhere before the coordinator decided"
    );

    // The coordinator did commit it (the reply was lost, not the command).
    let g1 = rig.state(0, "LOST_REPLY").await;
    assert_eq!(g1.committed_version(), version, "{g1:?}");
    assert!(g1.pending.is_empty(), "{g1:?}");
    let g2 = rig.state(1, "LOST_REPLY").await;
    assert_eq!(pending_versions(&g2), vec![version], "{g2:?}");

    rig.forward_everything();
    let (status, body) = get(&c, format!("{}/read/LOST_REPLY", gw.url)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["value"], "V1");
    assert_eq!(version_of(&body, &body["version"]), version);

    // db_g2 converges: read repair gives it the value, resolution (after the in-doubt
    // timeout) commits its pending record. Every read meanwhile returns V1.
    let converged = wait_for(DEADLINE, || {
        let (c, url) = (c.clone(), format!("{}/read/LOST_REPLY", gw.url));
        let rig = &rig;
        async move {
            let (_, body) = get(&c, url).await;
            assert_eq!(body["value"], "V1", "{body}");
            let g2 = rig.state(1, "LOST_REPLY").await;
            g2.committed_version() == version && g2.pending.is_empty()
        }
    })
    .await;
    assert!(
        converged,
        "db_g2 never converged: {:?}",
        rig.state(1, "LOST_REPLY").await
    );
    let g2 = rig.state(1, "LOST_REPLY").await;
    assert_eq!(
        g2.committed.and_then(|r| r.value).as_deref(),
        Some(&b"V1"[..])
    );
}

/// (b) The commit never reaches the coordinator: the writer still cannot know (504
/// `unknown`), the write is in fact not committed, reads never return it, and resolution
/// aborts the orphaned pending records after the in-doubt timeout.
async fn commit_that_never_reaches_the_coordinator_is_unknown_then_aborted(backend: Backend) {
    let rig = Rig::start(backend).await;
    let gw = rig.gateway("cp", &[]).await;
    let ap = rig.gateway("ap", &[]).await;
    let c = client();
    let (status, body) = post(&c, format!("{}/write/NO_COMMIT/V0", gw.url)).await;
    assert_eq!(status, 200, "{body}");
    let v0 = version_of(&body, &body["version"]);

    rig.on(0, "commit", Action::Refuse);
    let (status, body) = post(&c, format!("{}/write/NO_COMMIT/V1", gw.url)).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["outcome"], "unknown", "{body}");
    let v1 = version_of(&body, &body["error"]["version"]);
    assert_eq!(rig.proxies[0].received(&rig.op("commit")), 2);
    assert_eq!(
        rig.proxies[0].counts(&rig.op("commit")),
        1,
        "only V0's commit passed"
    );
    rig.forward_everything();

    // Orphans on both replicas, naming db_g1 as their coordinator (no read has run yet,
    // so nothing could have resolved them).
    for i in 0..2 {
        let s = rig.state(i, "NO_COMMIT").await;
        assert_eq!(s.committed_version(), v0, "db_g{}: {s:?}", i + 1);
        assert_eq!(pending_versions(&s), vec![v1], "db_g{}: {s:?}", i + 1);
        assert_eq!(s.pending[0].coordinator, "db_g1");
    }

    // Reads return V0 throughout; resolution eventually removes the orphans.
    let resolved = wait_for(DEADLINE, || {
        let c = c.clone();
        let (rig, gw, ap) = (&rig, &gw, &ap);
        async move {
            let body = read_never(&c, gw, "NO_COMMIT", "V1").await;
            assert_eq!(body["value"], "V0", "{body}");
            read_never(&c, ap, "NO_COMMIT", "V1").await;
            rig.no_pending("NO_COMMIT").await
        }
    })
    .await;
    assert!(
        resolved,
        "orphans never resolved: db_g1 {:?}, db_g2 {:?}",
        rig.state(0, "NO_COMMIT").await,
        rig.state(1, "NO_COMMIT").await
    );
    for i in 0..2 {
        assert_eq!(rig.state(i, "NO_COMMIT").await.committed_version(), v0);
    }
    // Resolution aborted V1 (the late commit, had it come, now finds nothing to commit).
    assert!(
        !rig.direct[0]
            .commit(b"NO_COMMIT", v1)
            .await
            .expect("commit")
    );
    let body = read_never(&c, &gw, "NO_COMMIT", "V1").await;
    assert_eq!(body["value"], "V0", "{body}");

    // The key is not stuck: a new CP write commits.
    let (status, body) = post(&c, format!("{}/write/NO_COMMIT/V2", gw.url)).await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = get(&c, format!("{}/read/NO_COMMIT", gw.url)).await;
    assert_eq!(body["value"], "V2", "{body}");
}

/// (c) The prepare at db_g2 times out (applied there, reply lost): 503 `CP_ABORTED`, and
/// the write is never visible, through CP or AP reads, before or after resolution and
/// read repair. The aborts are refused too, so the prepared records stay behind as
/// orphans (db_g1's is at the coordinator itself) for resolution to clean up.
async fn prepare_timeout_aborts_and_the_write_is_never_visible(backend: Backend) {
    let rig = Rig::start(backend).await;
    let gw = rig.gateway("cp", &[]).await;
    let ap = rig.gateway("ap", &[]).await;
    let c = client();
    let (status, body) = post(&c, format!("{}/write/SLOW_PREPARE/V0", gw.url)).await;
    assert_eq!(status, 200, "{body}");
    let v0 = version_of(&body, &body["version"]);

    rig.on(1, "prepare", Action::DropReply);
    rig.on(0, "abort", Action::Refuse);
    rig.on(1, "abort", Action::Refuse);
    let (status, body) = post(&c, format!("{}/write/SLOW_PREPARE/V1", gw.url)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "CP_ABORTED", "{body}");
    assert_eq!(body["error"]["outcome"], "not_applied", "{body}");
    let v1 = version_of(&body, &body["error"]["version"]);
    assert_eq!(rig.proxies[1].counts(&rig.op("prepare")), 2);
    assert_eq!(rig.proxies[0].counts(&rig.op("commit")), 1, "V0's only");
    assert!(
        rig.proxies[0].received(&rig.op("abort")) >= 1
            && rig.proxies[1].received(&rig.op("abort")) >= 1,
        "the writer tried to abort both"
    );
    rig.forward_everything();
    for i in 0..2 {
        let s = rig.state(i, "SLOW_PREPARE").await;
        assert_eq!(s.committed_version(), v0, "db_g{}: {s:?}", i + 1);
        assert_eq!(pending_versions(&s), vec![v1], "db_g{}: {s:?}", i + 1);
    }

    let resolved = wait_for(DEADLINE, || {
        let c = c.clone();
        let (rig, gw, ap) = (&rig, &gw, &ap);
        async move {
            let body = read_never(&c, gw, "SLOW_PREPARE", "V1").await;
            assert_eq!(body["value"], "V0", "{body}");
            read_never(&c, ap, "SLOW_PREPARE", "V1").await;
            rig.no_pending("SLOW_PREPARE").await
        }
    })
    .await;
    assert!(
        resolved,
        "orphans never resolved: db_g1 {:?}, db_g2 {:?}",
        rig.state(0, "SLOW_PREPARE").await,
        rig.state(1, "SLOW_PREPARE").await
    );
    // After resolution and read repair have had their turn: still V0 everywhere.
    for _ in 0..5 {
        let body = read_never(&c, &gw, "SLOW_PREPARE", "V1").await;
        assert_eq!(body["value"], "V0", "{body}");
        read_never(&c, &ap, "SLOW_PREPARE", "V1").await;
    }
    for i in 0..2 {
        let s = rig.state(i, "SLOW_PREPARE").await;
        assert_eq!(s.committed_version(), v0, "db_g{}: {s:?}", i + 1);
    }
}

/// How long the proxy holds the late commit of scenario (f): far beyond the in-doubt
/// timeout (1 s), so that reads resolve the write before the commit arrives.
const LATE_COMMIT: Duration = Duration::from_secs(8);

/// (f) The commit reaches the coordinator only long after the in-doubt timeout (a slow
/// link): the writer answers 504 `unknown`; meanwhile reads resolve the undecided write
/// by aborting it *at its coordinator*, so the late commit finds nothing to commit
/// (`BW.COMMIT` answers 0) and the write is never visible.
async fn commit_arriving_after_the_in_doubt_timeout_finds_the_write_aborted(backend: Backend) {
    let rig = Rig::start(backend).await;
    let gw = rig.gateway("cp", &[]).await;
    let c = client();
    let (status, body) = post(&c, format!("{}/write/LATE_COMMIT/V0", gw.url)).await;
    assert_eq!(status, 200, "{body}");
    let v0 = version_of(&body, &body["version"]);

    rig.on(0, "commit", Action::Delay(LATE_COMMIT));
    let (status, body) = post(&c, format!("{}/write/LATE_COMMIT/V1", gw.url)).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["outcome"], "unknown", "{body}");
    let v1 = version_of(&body, &body["error"]["version"]);
    // Later commands pass at once; the delayed commit stays held on its old connection.
    rig.forward_everything();

    let resolved = wait_for(DEADLINE, || {
        let c = c.clone();
        let (rig, gw) = (&rig, &gw);
        async move {
            let body = read_never(&c, gw, "LATE_COMMIT", "V1").await;
            assert_eq!(body["value"], "V0", "{body}");
            rig.state(0, "LATE_COMMIT").await.pending.is_empty()
        }
    })
    .await;
    assert!(
        resolved,
        "the undecided write was never resolved at its coordinator"
    );
    assert_eq!(
        rig.proxies[0].counts(&rig.op("commit")),
        1,
        "precondition: resolution must act before the late commit arrives ({LATE_COMMIT:?})"
    );

    // The late commit arrives, and changes nothing.
    let arrived = wait_for(DEADLINE, || {
        let n = rig.proxies[0].counts(&rig.op("commit"));
        async move { n == 2 }
    })
    .await;
    assert!(arrived, "the delayed commit was never forwarded");
    let resolved_everywhere = wait_for(DEADLINE, || {
        let c = c.clone();
        let (rig, gw) = (&rig, &gw);
        async move {
            let body = read_never(&c, gw, "LATE_COMMIT", "V1").await;
            assert_eq!(body["value"], "V0", "{body}");
            rig.no_pending("LATE_COMMIT").await
        }
    })
    .await;
    assert!(resolved_everywhere, "db_g2 kept the undecided write");
    for i in 0..2 {
        let s = rig.state(i, "LATE_COMMIT").await;
        assert_eq!(s.committed_version(), v0, "db_g{}: {s:?}", i + 1);
    }
    assert!(
        !rig.direct[1]
            .commit(b"LATE_COMMIT", v1)
            .await
            .expect("commit")
    );
}

/// CP writes to `key` through `gw` until one answers 200; returns every status seen.
async fn write_until_committed(
    c: &reqwest::Client,
    gw: &TestGateway,
    key: &str,
    value: &str,
) -> (bool, Vec<(u16, String)>) {
    let seen = RefCell::new(Vec::new());
    let ok = wait_for(DEADLINE, || {
        let seen = &seen;
        let (c, url) = (c.clone(), format!("{}/write/{key}/{value}", gw.url));
        async move {
            let (status, body) = post(&c, url).await;
            let reason = body["error"]["message"].as_str().unwrap_or("").to_string();
            seen.borrow_mut().push((status, reason));
            status == 200
        }
    })
    .await;
    (ok, seen.into_inner())
}

/// (d) Sixteen writes whose commit never reached the coordinator leave sixteen orphans
/// on each replica — the most a key may hold — so the next prepare hits BUSY. The gateway
/// must resolve them (abort through their coordinator once in doubt) and commit.
async fn sixteen_orphaned_writes_from_lost_commits_do_not_block_the_key(backend: Backend) {
    let rig = Rig::start(backend).await;
    // Breakers would open after three refused commits and move the coordinator; this
    // scenario is about the pending limit, not the breakers.
    let gw = rig.gateway("cp", &[("CB_FAILURE_THRESHOLD", "1000")]).await;
    let c = client();
    rig.on(0, "commit", Action::Refuse);
    for i in 0..MAX_PENDING {
        let (status, body) = post(&c, format!("{}/write/CROWDED/LOST{i}", gw.url)).await;
        assert_eq!(status, 504, "write {i}: {body}");
    }
    rig.forward_everything();
    for i in 0..2 {
        let s = rig.state(i, "CROWDED").await;
        assert_eq!(s.pending.len(), MAX_PENDING, "db_g{}: {s:?}", i + 1);
    }

    let (ok, seen) = write_until_committed(&c, &gw, "CROWDED", "FRESH").await;
    eprintln!(
        "CROWDED (lost commits), {backend:?}: {} attempts: {seen:?}",
        seen.len()
    );
    assert!(
        ok,
        "no CP write committed within {DEADLINE:?}; statuses: {seen:?}; db_g1 {:?}; db_g2 {:?}",
        rig.state(0, "CROWDED").await,
        rig.state(1, "CROWDED").await
    );
    let (_, body) = get(&c, format!("{}/read/CROWDED", gw.url)).await;
    assert_eq!(body["value"], "FRESH", "{body}");
    let clean = wait_for(DEADLINE, || {
        let (c, url) = (c.clone(), format!("{}/read/CROWDED", gw.url));
        let rig = &rig;
        async move {
            let (_, body) = get(&c, url).await;
            assert_eq!(body["value"], "FRESH", "{body}");
            rig.no_pending("CROWDED").await
        }
    })
    .await;
    assert!(clean, "orphans left behind");
}

/// (d') The same limit reached by sixteen prepares that no writer will ever decide
/// (their writer died after the prepare phase), old enough to be in doubt already: the
/// very next CP write finds the key full at both replicas and must get through.
async fn sixteen_orphaned_prepares_do_not_block_the_key(backend: Backend) {
    let rig = Rig::start(backend).await;
    let gw = rig.gateway("cp", &[]).await;
    let c = client();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64;
    for n in 0..MAX_PENDING {
        let version = Version {
            physical_ms: now_ms - 60_000,
            logical: n as u16,
            writer: 0xdead,
        };
        for r in &rig.direct {
            let reply = r
                .prepare(b"FULL", version, "db_g1", Some(b"ORPHAN"))
                .await
                .expect("prepare");
            assert_eq!(reply, PrepareReply::Ok);
        }
    }
    let (ok, seen) = write_until_committed(&c, &gw, "FULL", "FRESH").await;
    eprintln!(
        "FULL (orphaned prepares), {backend:?}: {} attempts: {seen:?}",
        seen.len()
    );
    assert!(
        ok,
        "no CP write committed within {DEADLINE:?}; statuses: {seen:?}; db_g1 {:?}; db_g2 {:?}",
        rig.state(0, "FULL").await,
        rig.state(1, "FULL").await
    );
    let (_, body) = get(&c, format!("{}/read/FULL", gw.url)).await;
    assert_eq!(body["value"], "FRESH", "{body}");
}

/// (e) Two CP gateways write one key concurrently, round after round, while both read
/// it. Every 200 write has its own version; no read ever returns a 503'd write; every
/// read after a 200 write returns it or something newer; the two gateways end up
/// returning the same record.
async fn two_cp_gateways_racing_on_one_key_agree(backend: Backend) {
    let rig = Rig::start(backend).await;
    // No faults here: a longer network timeout keeps a loaded machine from turning slow
    // calls into aborts (the properties must hold either way, but the read checks below
    // want answers).
    let relaxed = [
        ("NETWORK_TIMEOUT_SEC", "1"),
        ("IN_DOUBT_TIMEOUT_MS", "5000"),
    ];
    let a = rig
        .gateway("cp", &[relaxed[0], relaxed[1], ("GATEWAY_ID", "1")])
        .await;
    let b = rig
        .gateway("cp", &[relaxed[0], relaxed[1], ("GATEWAY_ID", "2")])
        .await;
    let c = client();
    let mut committed: HashMap<String, Version> = HashMap::new();
    let mut aborted: HashSet<String> = HashSet::new();
    let mut unknown: HashSet<String> = HashSet::new();
    let mut reads: Vec<Value> = Vec::new();
    let mut newest_acked = Version::ZERO;
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    for round in 0..40 {
        let (va, vb) = (format!("A{round}"), format!("B{round}"));
        let ((sa, ba), (sb, bb), (_, ra), (_, rb)) = tokio::join!(
            post(&c, format!("{}/write/RACE/{va}", a.url)),
            post(&c, format!("{}/write/RACE/{vb}", b.url)),
            get(&c, format!("{}/read/RACE", a.url)),
            get(&c, format!("{}/read/RACE", b.url)),
        );
        reads.push(ra);
        reads.push(rb);
        for (status, body, value) in [(sa, ba, va), (sb, bb, vb)] {
            *statuses.entry(status).or_default() += 1;
            match status {
                200 => {
                    let v = version_of(&body, &body["version"]);
                    assert!(
                        !committed.values().any(|seen| *seen == v),
                        "two 200 writes share version {v}"
                    );
                    newest_acked = newest_acked.max(v);
                    committed.insert(value, v);
                }
                503 => {
                    assert_eq!(body["error"]["code"], "CP_ABORTED", "{body}");
                    aborted.insert(value);
                }
                504 => {
                    unknown.insert(value);
                }
                other => panic!("unexpected HTTP {other}: {body}"),
            }
        }
        // After both writes answered: every CP read returns the newest 200 write or
        // something newer, from either gateway.
        for gw in [&a, &b] {
            let (status, body) = get(&c, format!("{}/read/RACE", gw.url)).await;
            if committed.is_empty() {
                continue;
            }
            assert_eq!(status, 200, "{body}");
            assert!(
                version_of(&body, &body["version"]) >= newest_acked,
                "a CP read returned an older version than an acknowledged write: {body}"
            );
            reads.push(body);
        }
    }
    eprintln!("RACE, {backend:?}: statuses {statuses:?}");
    assert!(!committed.is_empty(), "no write committed at all");
    for body in &reads {
        if let Some(value) = body["value"].as_str() {
            assert!(!aborted.contains(value), "a 503'd write was read: {body}");
            if let Some(v) = committed.get(value) {
                assert_eq!(
                    version_of(body, &body["version"]),
                    *v,
                    "a value was read under another version: {body}"
                );
            } else {
                assert!(unknown.contains(value), "a value nobody wrote: {body}");
            }
        }
    }
    // Both gateways settle on the same record.
    let agree = wait_for(DEADLINE, || {
        let c = c.clone();
        let (a, b) = (&a, &b);
        async move {
            let (_, x) = get(&c, format!("{}/read/RACE", a.url)).await;
            let (_, y) = get(&c, format!("{}/read/RACE", b.url)).await;
            x["value"] == y["value"] && x["version"] == y["version"] && x["version"].is_string()
        }
    })
    .await;
    assert!(agree, "the two gateways never agreed");
    let (_, body) = get(&c, format!("{}/read/RACE", a.url)).await;
    assert!(
        version_of(&body, &body["version"]) >= newest_acked,
        "{body}"
    );
}

/// A replica whose prepare is slow (but within the timeout) does not hold a quorum write
/// back: it is answered once W = 2 prepares and the coordinator's commit are in, with the
/// slow replica `pending`; the late prepare is then committed there in the background.
async fn quorum_answers_at_w_and_commits_the_late_prepare_in_the_background(backend: Backend) {
    let rig = Rig::with_replicas(backend, 3).await;
    let gw = rig
        .gateway(
            "quorum",
            &[
                ("NETWORK_TIMEOUT_SEC", "3"),
                ("IN_DOUBT_TIMEOUT_MS", "20000"),
            ],
        )
        .await;
    rig.on(2, "prepare", Action::Delay(Duration::from_millis(600)));
    let c = client();
    let (status, body) = post(&c, format!("{}/write/LATE/V1", gw.url)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["acked_by"],
        serde_json::json!(["db_g1", "db_g2"]),
        "{body}"
    );
    assert_eq!(body["pending"], serde_json::json!(["db_g3"]), "{body}");
    assert_eq!(body["behind"], serde_json::json!([]), "{body}");
    let version = version_of(&body, &body["version"]);

    let committed_late = wait_for(DEADLINE, || async {
        let s = rig.state(2, "LATE").await;
        s.committed_version() == version && s.pending.is_empty()
    })
    .await;
    assert!(committed_late, "db_g3: {:?}", rig.state(2, "LATE").await);
    assert_eq!(rig.proxies[2].counts(&rig.op("commit")), 1);
}

/// An AP write is answered after the first acknowledgement (and a short wait for the
/// others), not after the slowest replica; the slow put still lands.
async fn ap_answers_without_waiting_for_a_slow_replica(backend: Backend) {
    let rig = Rig::start(backend).await;
    let gw = rig
        .gateway(
            "ap",
            &[
                ("NETWORK_TIMEOUT_SEC", "3"),
                ("IN_DOUBT_TIMEOUT_MS", "20000"),
            ],
        )
        .await;
    rig.on(1, "put", Action::Delay(Duration::from_millis(600)));
    let c = client();
    let (status, body) = post(&c, format!("{}/write/SLOW_AP/V1", gw.url)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["acked_by"], serde_json::json!(["db_g1"]), "{body}");
    assert_eq!(body["pending"], serde_json::json!(["db_g2"]), "{body}");
    let version = version_of(&body, &body["version"]);
    let landed = wait_for(DEADLINE, || async {
        rig.state(1, "SLOW_AP").await.committed_version() == version
    })
    .await;
    assert!(landed, "the slow replica never applied the write");
}
