//! Behaviour of the store through its public API, on real directories.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use bulwark_core::Version;
use bulwark_storage::{
    Appendfsync, FORMAT_MARKER, MAX_PENDING, PrepareStatus, StorageError, Store, StoreConfig,
};
use bytes::Bytes;

fn v(ms: u64) -> Version {
    Version {
        physical_ms: ms,
        logical: 0,
        writer: 1,
    }
}

fn open(dir: &Path, policy: Appendfsync) -> Store {
    Store::open(StoreConfig::new(dir, policy, 7)).unwrap().0
}

#[tokio::test]
async fn put_is_last_write_wins_including_tombstones() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path(), Appendfsync::Everysec);

    let (r, t) = s.put(b"k", v(10), Some(b"ten")).unwrap();
    s.ack(t).await.unwrap();
    assert!(r.applied);
    assert_eq!(r.committed, Some(v(10)));

    // Older and equal versions do not apply and report the committed version.
    let (r, t) = s.put(b"k", v(5), Some(b"five")).unwrap();
    assert!(t.is_none());
    assert_eq!((r.applied, r.committed), (false, Some(v(10))));
    let (r, _) = s.put(b"k", v(10), Some(b"again")).unwrap();
    assert!(!r.applied);
    assert_eq!(s.get(b"k").await.unwrap().as_deref(), Some(&b"ten"[..]));

    // A newer tombstone deletes; an older write cannot resurrect the key.
    let (r, t) = s.put(b"k", v(20), None).unwrap();
    s.ack(t).await.unwrap();
    assert!(r.applied);
    assert_eq!(s.get(b"k").await.unwrap(), None);
    assert_eq!(s.dbsize(), 0);
    let (r, _) = s.put(b"k", v(15), Some(b"late")).unwrap();
    assert!(!r.applied);
    let state = s.get_state(b"k").await.unwrap();
    let rec = state.committed.unwrap();
    assert_eq!((rec.version, rec.value), (v(20), None));
}

#[tokio::test]
async fn prepare_commit_abort_follow_the_protocol() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path(), Appendfsync::No);

    let r = s.prepare(b"k", v(10), "db_g1", Some(b"a")).await.unwrap();
    assert_eq!((r.status, r.committed), (PrepareStatus::Ok, None));
    // Pending writes are invisible to reads of the committed value.
    assert_eq!(s.get(b"k").await.unwrap(), None);
    let st = s.get_state(b"k").await.unwrap();
    assert_eq!(st.pending.len(), 1);
    assert_eq!(st.pending[0].version, v(10));
    assert_eq!(st.pending[0].coordinator, "db_g1");

    assert!(s.commit(b"k", v(10)).await.unwrap());
    assert_eq!(s.get(b"k").await.unwrap().as_deref(), Some(&b"a"[..]));
    assert!(s.get_state(b"k").await.unwrap().pending.is_empty());
    // Committing again, or something never prepared, answers 0.
    assert!(!s.commit(b"k", v(10)).await.unwrap());
    assert!(!s.commit(b"k", v(99)).await.unwrap());

    // STALE at or below the committed version.
    let r = s.prepare(b"k", v(10), "db_g1", Some(b"b")).await.unwrap();
    assert_eq!((r.status, r.committed), (PrepareStatus::Stale, Some(v(10))));

    // Abort, then a late commit of the same version answers 0 and changes nothing.
    s.prepare(b"k", v(30), "db_g2", Some(b"c")).await.unwrap();
    assert!(s.abort(b"k", v(30)).await.unwrap());
    assert!(!s.abort(b"k", v(30)).await.unwrap());
    assert!(!s.commit(b"k", v(30)).await.unwrap());
    assert_eq!(s.get(b"k").await.unwrap().as_deref(), Some(&b"a"[..]));

    // Committing an older pending version after a newer commit removes it but does not
    // roll the committed record back.
    s.prepare(b"k", v(40), "db_g1", Some(b"old")).await.unwrap();
    s.prepare(b"k", v(50), "db_g1", None).await.unwrap();
    assert!(s.commit(b"k", v(50)).await.unwrap());
    assert!(s.commit(b"k", v(40)).await.unwrap());
    let st = s.get_state(b"k").await.unwrap();
    assert_eq!(st.committed.unwrap().version, v(50));
    assert!(st.pending.is_empty());
    assert_eq!(s.get(b"k").await.unwrap(), None, "v50 was a tombstone");
}

#[tokio::test]
async fn prepare_is_busy_at_sixteen_pending_and_idempotent_when_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path(), Appendfsync::Everysec);
    for i in 0..MAX_PENDING as u64 {
        let r = s.prepare(b"k", v(100 + i), "c", Some(b"x")).await.unwrap();
        assert_eq!(r.status, PrepareStatus::Ok);
    }
    let r = s.prepare(b"k", v(500), "c", Some(b"x")).await.unwrap();
    assert_eq!(r.status, PrepareStatus::Busy);
    // A retry of a write already pending is accepted (it does not need a new slot).
    let r = s.prepare(b"k", v(100), "c", Some(b"x")).await.unwrap();
    assert_eq!(r.status, PrepareStatus::Ok);
    // Other keys are unaffected; pending lists are per key and ordered by version.
    assert_eq!(
        s.prepare(b"k2", v(1), "c", None).await.unwrap().status,
        PrepareStatus::Ok
    );
    let st = s.get_state(b"k").await.unwrap();
    assert_eq!(st.pending.len(), MAX_PENDING);
    assert!(st.pending.windows(2).all(|w| w[0].version < w[1].version));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_prepares_and_commits_on_one_key_stay_consistent() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path(), Appendfsync::Always);
    let mut tasks = Vec::new();
    for task in 0..16u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut committed = Vec::new();
            for i in 0..20u64 {
                let ver = Version {
                    physical_ms: 1000 + i,
                    logical: 0,
                    writer: task as u32,
                };
                let r = s
                    .prepare(b"hot", ver, "db_g1", Some(format!("{task}-{i}").as_bytes()))
                    .await
                    .unwrap();
                match r.status {
                    PrepareStatus::Ok => {
                        if i % 3 == 0 {
                            assert!(s.abort(b"hot", ver).await.unwrap());
                        } else {
                            assert!(s.commit(b"hot", ver).await.unwrap());
                            committed.push(ver);
                        }
                    }
                    PrepareStatus::Stale => assert!(r.committed.unwrap() >= ver),
                    PrepareStatus::Busy => {}
                }
                // Plain writes to other keys interleave with the protocol.
                let t = s.set(format!("k{task}").as_bytes(), b"v").unwrap();
                s.ack(t).await.unwrap();
            }
            committed
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let st = s.get_state(b"hot").await.unwrap();
    assert!(st.pending.is_empty(), "every prepare was decided");
    let max = all.into_iter().max().unwrap();
    let rec = st.committed.unwrap();
    assert_eq!(rec.version, max, "the newest committed version wins");
    assert_eq!(
        rec.value.unwrap(),
        Bytes::from(format!("{}-{}", max.writer, max.physical_ms - 1000))
    );
    assert_eq!(s.dbsize(), 17);
}

#[tokio::test]
async fn plain_set_del_exists_dbsize() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path(), Appendfsync::Always);
    // A gateway write far in the future: plain SET still supersedes it.
    let _ = s
        .put(b"a", v(u64::from(u32::MAX) * 1000), Some(b"gw"))
        .unwrap();
    let t = s.set(b"a", b"plain").unwrap();
    s.ack(t).await.unwrap();
    assert_eq!(s.get(b"a").await.unwrap().as_deref(), Some(&b"plain"[..]));
    let writer = s
        .get_state(b"a")
        .await
        .unwrap()
        .committed
        .unwrap()
        .version
        .writer;
    assert_eq!(writer, 7, "plain writes carry the node's writer id");

    let t = s.set(b"b", b"2").unwrap();
    s.ack(t).await.unwrap();
    assert_eq!(s.dbsize(), 2);
    let keys = [
        Bytes::from("a"),
        Bytes::from("b"),
        Bytes::from("zz"),
        Bytes::from("a"),
    ];
    assert_eq!(s.exists(&keys).await.unwrap(), 3);
    let (n, t) = s.del(&keys).unwrap();
    s.ack(t).await.unwrap();
    assert_eq!(n, 2);
    assert_eq!(s.dbsize(), 0);
    assert_eq!(s.exists(&keys).await.unwrap(), 0);

    let _ = s.set(b"c", b"3").unwrap();
    s.prepare(b"c", v(u64::MAX >> 17), "x", None).await.unwrap();
    s.flushall().await.unwrap();
    assert_eq!(s.dbsize(), 0);
    assert_eq!(s.get_state(b"c").await.unwrap(), Default::default());
}

#[tokio::test]
async fn data_survives_close_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    for policy in [Appendfsync::Always, Appendfsync::Everysec, Appendfsync::No] {
        let dir = tmp.path().join(policy.as_str());
        let s = open(&dir, policy);
        let t = s.set(b"plain", b"1").unwrap();
        s.ack(t).await.unwrap();
        let (_, t) = s.put(b"lww", v(5), Some(b"2")).unwrap();
        s.ack(t).await.unwrap();
        s.prepare(b"p", v(6), "db_g3", Some(b"3")).await.unwrap();
        s.close().unwrap();
        assert!(matches!(s.set(b"x", b"y"), Err(StorageError::Closed)));
        drop(s);

        let (s, report) = Store::open(StoreConfig::new(&dir, policy, 7)).unwrap();
        assert!(!report.created);
        assert_eq!((report.live_keys, report.pending), (2, 1));
        assert_eq!(report.journal_tail_discarded_bytes, 0);
        assert_eq!(s.get(b"plain").await.unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(s.get(b"lww").await.unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(
            s.get_state(b"p").await.unwrap().pending[0].coordinator,
            "db_g3"
        );
        assert_eq!(s.dbsize(), 2);
        s.close().unwrap();
    }
}

#[tokio::test]
async fn unknown_storage_format_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path(), Appendfsync::No);
    s.close().unwrap();
    drop(s);
    {
        let db = fjall::Database::builder(tmp.path().join("db"))
            .open()
            .unwrap();
        let meta = db
            .keyspace("meta", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        assert_eq!(
            &meta.get("format").unwrap().unwrap()[..],
            FORMAT_MARKER.as_bytes()
        );
        meta.insert("format", "bulwark-storage/v99").unwrap();
        db.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    let err = Store::open(StoreConfig::new(tmp.path(), Appendfsync::No, 1)).unwrap_err();
    match err {
        StorageError::UnknownFormat { found, .. } => assert_eq!(found, "bulwark-storage/v99"),
        other => panic!("expected UnknownFormat, got {other}"),
    }
}

#[tokio::test]
async fn snapshot_round_trip_and_corruption_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(&tmp.path().join("a"), Appendfsync::Everysec);
    for i in 0..500u32 {
        let t = s
            .set(format!("key{i}").as_bytes(), &i.to_be_bytes())
            .unwrap();
        s.ack(t).await.unwrap();
    }
    let _ = s.put(b"dead", v(3), None).unwrap();
    s.prepare(b"key1", v(u64::MAX >> 17), "db_g2", Some(b"pend"))
        .await
        .unwrap();
    let snap = tmp.path().join("dump.bwsnap");
    let info = s.save(&snap).unwrap();
    assert_eq!(info.records, 502);
    assert_eq!(s.stats().changes_since_save, 0);

    // Restore into a different, non-empty store: it ends up identical to the source.
    let other = open(&tmp.path().join("b"), Appendfsync::Always);
    let _ = other.set(b"stray", b"x").unwrap();
    other.restore(&snap).unwrap();
    assert_eq!(other.dbsize(), 500);
    assert_eq!(other.get(b"stray").await.unwrap(), None);
    assert_eq!(
        other.get(b"key42").await.unwrap().as_deref(),
        Some(&42u32.to_be_bytes()[..])
    );
    assert_eq!(
        other.get_state(b"dead").await.unwrap(),
        s.get_state(b"dead").await.unwrap()
    );
    assert_eq!(
        other.get_state(b"key1").await.unwrap(),
        s.get_state(b"key1").await.unwrap()
    );

    // BGSAVE writes the same thing in the background.
    let bg = tmp.path().join("bg.bwsnap");
    s.bgsave(bg.clone()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s.stats().bgsave_in_progress {
        assert!(
            std::time::Instant::now() < deadline,
            "bgsave did not finish"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(s.stats().last_bgsave_ok);
    assert_eq!(std::fs::read(&bg).unwrap(), std::fs::read(&snap).unwrap());

    // A flipped byte is caught by the checksum and nothing is changed.
    let mut bytes = std::fs::read(&snap).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    let bad = tmp.path().join("bad.bwsnap");
    std::fs::write(&bad, &bytes).unwrap();
    assert!(matches!(
        other.restore(&bad),
        Err(StorageError::BadSnapshot { .. })
    ));
    assert_eq!(other.dbsize(), 500);
    // So is a truncated file and a future format.
    std::fs::write(&bad, &std::fs::read(&snap).unwrap()[..100]).unwrap();
    assert!(matches!(
        other.restore(&bad),
        Err(StorageError::BadSnapshot { .. })
    ));
    let mut future = std::fs::read(&snap).unwrap();
    future[11] = 2;
    std::fs::write(&bad, &future).unwrap();
    let err = other.restore(&bad).unwrap_err().to_string();
    assert!(err.contains("format 2"), "{err}");
}

#[tokio::test]
async fn torn_journal_tail_is_discarded_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path(), Appendfsync::Always);
    let t = s.set(b"first", b"durable").unwrap();
    s.ack(t).await.unwrap();
    s.close().unwrap();
    drop(s);
    let journal = newest_journal(&tmp.path().join("db"));
    let end1 = data_end(&journal);

    let s = open(tmp.path(), Appendfsync::Always);
    let t = s.set(b"second", &[0xAB; 300]).unwrap();
    s.ack(t).await.unwrap();
    s.close().unwrap();
    drop(s);
    let journal2 = newest_journal(&tmp.path().join("db"));
    assert_eq!(
        journal, journal2,
        "the test expects the second write in the same journal"
    );
    let end2 = data_end(&journal);
    assert!(end2 > end1 + 300);

    // Simulate a crash in the middle of writing the second batch: cut the file there.
    let cut = end1 + (end2 - end1) / 2;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .unwrap();
    f.set_len(cut).unwrap();
    drop(f);

    let (s, report) = Store::open(StoreConfig::new(tmp.path(), Appendfsync::Always, 7)).unwrap();
    assert_eq!(
        s.get(b"first").await.unwrap().as_deref(),
        Some(&b"durable"[..])
    );
    assert_eq!(s.get(b"second").await.unwrap(), None);
    assert!(report.journal_tail_discarded_bytes > 0, "{report:?}");
    assert!(
        report.journal_tail_discarded_bytes <= end2 - end1,
        "{report:?}"
    );
}

fn newest_journal(db: &Path) -> std::path::PathBuf {
    std::fs::read_dir(db)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jnl"))
        .max_by_key(|p| {
            p.file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok())
        })
        .unwrap()
}

fn data_end(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| i as u64 + 1)
}

/// A [`bulwark_storage::SyncGate`] that, once armed, holds the committer before its next
/// fsync until released, and tells the test it is holding it.
#[derive(Default)]
struct Gate {
    armed: std::sync::atomic::AtomicBool,
    /// (entered, released)
    state: std::sync::Mutex<(bool, bool)>,
    cv: std::sync::Condvar,
}

impl Gate {
    fn pass(&self) {
        if !self.armed.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let mut st = self.state.lock().unwrap();
        st.0 = true;
        self.cv.notify_all();
        while !st.1 {
            st = self.cv.wait(st).unwrap();
        }
    }

    fn arm(&self) {
        self.armed.store(true, std::sync::atomic::Ordering::Release);
    }

    fn release(&self) {
        self.armed
            .store(false, std::sync::atomic::Ordering::Release);
        self.state.lock().unwrap().1 = true;
        self.cv.notify_all();
    }

    fn entered(&self) -> bool {
        self.state.lock().unwrap().0
    }
}

/// Polls a future exactly once.
async fn poll_once<F: std::future::Future + Unpin>(f: &mut F) -> std::task::Poll<F::Output> {
    std::future::poll_fn(|cx| std::task::Poll::Ready(std::pin::Pin::new(&mut *f).poll(cx))).await
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// The durable-read rule (ARCHITECTURE, "Invariants"): a read must not show a commit
/// before the commit's fsync, even under `everysec`, while plain SETs stay policy-bound.
#[tokio::test]
async fn reads_wait_for_the_fsync_of_the_protocol_change_they_observe() {
    let tmp = tempfile::tempdir().unwrap();
    let gate = std::sync::Arc::new(Gate::default());
    let hook = std::sync::Arc::clone(&gate);
    let mut config = StoreConfig::new(tmp.path(), Appendfsync::Everysec, 7);
    config.sync_gate = Some(std::sync::Arc::new(move || hook.pass()));
    let (s, _) = Store::open(config).unwrap();
    s.prepare(b"k", v(10), "db_g1", Some(b"new")).await.unwrap();
    let t = s.set(b"plain", b"1").unwrap();
    s.ack(t).await.unwrap();

    gate.arm();
    let commit = tokio::spawn({
        let s = s.clone();
        async move { s.commit(b"k", v(10)).await.unwrap() }
    });
    // The commit is applied in memory (a deferred read sees it)…
    until("commit applied in memory", || {
        s.get_state_deferred(b"k").0.committed.is_some()
    })
    .await;
    // …and the committer is held before an fsync, so nothing newer can become durable.
    until("committer held at the gate", || gate.entered()).await;
    let fsyncs_before = s.stats().fsyncs;

    let mut get = Box::pin(s.get(b"k"));
    let mut state = Box::pin(s.get_state(b"k"));
    let keys = [Bytes::from("k")];
    let mut exists = Box::pin(s.exists(&keys));
    assert!(
        poll_once(&mut get).await.is_pending(),
        "GET showed an undurable commit"
    );
    assert!(
        poll_once(&mut state).await.is_pending(),
        "BW.GET showed an undurable commit"
    );
    assert!(
        poll_once(&mut exists).await.is_pending(),
        "EXISTS showed an undurable commit"
    );
    assert!(s.get_state_deferred(b"k").1.needs_fsync());
    assert!(s.fence().needs_fsync(), "DBSIZE must wait too");
    assert!(!commit.is_finished());

    // Plain writes follow the policy: their effects are readable without any fsync.
    let t = s.set(b"plain", b"2").unwrap();
    assert!(!t.needs_fsync());
    s.ack(t).await.unwrap();
    match poll_once(&mut Box::pin(s.get(b"plain"))).await {
        std::task::Poll::Ready(Ok(Some(v))) => assert_eq!(&v[..], b"2"),
        other => panic!("a plain GET of a plain SET must not wait: {other:?}"),
    }
    assert_eq!(
        s.stats().fsyncs,
        fsyncs_before,
        "no fsync completed meanwhile"
    );

    gate.release();
    let deadline = std::time::Duration::from_secs(10);
    let value = tokio::time::timeout(deadline, get).await.unwrap().unwrap();
    assert!(
        s.stats().fsyncs > fsyncs_before,
        "the read completed only after an fsync"
    );
    assert_eq!(value.as_deref(), Some(&b"new"[..]));
    let st = tokio::time::timeout(deadline, state)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st.committed.unwrap().version, v(10));
    assert_eq!(
        tokio::time::timeout(deadline, exists)
            .await
            .unwrap()
            .unwrap(),
        1
    );
    assert!(commit.await.unwrap());
    // Once durable, reads of the key need no wait at all.
    assert!(s.get_deferred(b"k").1.is_none());
}

/// Every key's full replica state, in order.
async fn dump(s: &Store, keys: &[String]) -> Vec<bulwark_core::ReplicaState> {
    let mut out = Vec::new();
    for k in keys {
        out.push(s.get_state(k.as_bytes()).await.unwrap());
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The in-memory index is rebuilt from the log alike after a clean close, after a
/// (simulated) process crash, and from a snapshot.
#[tokio::test]
async fn index_is_rebuilt_identically_after_reopen_crash_and_restore() {
    let tmp = tempfile::tempdir().unwrap();
    for policy in [Appendfsync::Always, Appendfsync::Everysec] {
        let base = tmp.path().join(policy.as_str());
        let s = open(&base.join("live"), policy);
        let keys: Vec<String> = (0..300).map(|i| format!("key{i}")).collect();
        for (i, k) in keys.iter().enumerate() {
            let k = k.as_bytes();
            let i = i as u64;
            match i % 6 {
                0 => {
                    let t = s.set(k, format!("plain{i}").as_bytes()).unwrap();
                    s.ack(t).await.unwrap();
                }
                1 => {
                    let (_, t) = s.put(k, v(100 + i), Some(b"lww")).unwrap();
                    s.ack(t).await.unwrap();
                    let (_, t) = s.put(k, v(50), Some(b"older")).unwrap();
                    s.ack(t).await.unwrap();
                }
                2 => {
                    s.prepare(k, v(100 + i), "db_g2", Some(b"2pc"))
                        .await
                        .unwrap();
                    assert!(s.commit(k, v(100 + i)).await.unwrap());
                }
                3 => {
                    s.prepare(k, v(100 + i), "db_g1", Some(b"x")).await.unwrap();
                    s.prepare(k, v(200 + i), "db_g3", None).await.unwrap();
                    assert!(s.abort(k, v(100 + i)).await.unwrap());
                }
                4 => {
                    let t = s.set(k, b"doomed").unwrap();
                    s.ack(t).await.unwrap();
                    let (n, t) = s.del(&[Bytes::copy_from_slice(k)]).unwrap();
                    s.ack(t).await.unwrap();
                    assert_eq!(n, 1);
                }
                _ => {
                    let (_, t) = s.put(k, v(100 + i), None).unwrap();
                    s.ack(t).await.unwrap();
                }
            }
        }
        let expected = dump(&s, &keys).await;
        let stats = s.stats();
        assert!(stats.memory_bytes > 300 * 16, "{stats:?}");

        // A process crash keeps what reached the OS, which every acknowledged write has:
        // copy the files as they are while the store is still running.
        copy_dir(&base.join("live"), &base.join("crashed"));
        let (c, report) = Store::open(StoreConfig::new(base.join("crashed"), policy, 7)).unwrap();
        assert_eq!(report.pending, 50, "{report:?}");
        assert_eq!(dump(&c, &keys).await, expected, "{policy}: after a crash");
        assert_eq!(c.dbsize(), s.dbsize());
        assert_eq!(c.stats().memory_bytes, stats.memory_bytes);
        c.close().unwrap();
        drop(c);

        // Snapshot, restore into a store with other data, then reopen that one.
        let snap = base.join("dump.bwsnap");
        s.save(&snap).unwrap();
        let r = open(&base.join("restored"), policy);
        let t = r.set(b"key1", b"stray").unwrap();
        r.ack(t).await.unwrap();
        r.prepare(b"key2", v(1 << 40), "db_g9", None).await.unwrap();
        r.restore(&snap).unwrap();
        assert_eq!(dump(&r, &keys).await, expected, "{policy}: after restore");
        assert_eq!(r.stats().memory_bytes, stats.memory_bytes);
        r.close().unwrap();
        drop(r);
        let r = open(&base.join("restored"), policy);
        assert_eq!(
            dump(&r, &keys).await,
            expected,
            "{policy}: restored, reopened"
        );
        r.close().unwrap();

        s.close().unwrap();
        drop(s);
        let s = open(&base.join("live"), policy);
        assert_eq!(dump(&s, &keys).await, expected, "{policy}: after close");
        assert_eq!(s.stats().memory_bytes, stats.memory_bytes);
        s.close().unwrap();
    }
}

#[tokio::test]
async fn writes_that_add_data_are_refused_above_max_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::new(tmp.path(), Appendfsync::No, 7);
    config.max_memory_bytes = Some(8 << 10);
    let (s, _) = Store::open(config).unwrap();
    s.prepare(b"p", v(5), "db_g1", Some(b"pending"))
        .await
        .unwrap();
    let mut stored = 0;
    let err = loop {
        match s.set(format!("k{stored}").as_bytes(), &[7; 100]) {
            Ok(t) => s.ack(t).await.unwrap(),
            Err(e) => break e,
        }
        stored += 1;
        assert!(stored < 1000, "the limit was never enforced");
    };
    assert!(matches!(err, StorageError::OutOfMemory { .. }), "{err}");
    assert!(stored > 10);
    assert!(matches!(
        s.prepare(b"q", v(6), "db_g1", None).await,
        Err(StorageError::OutOfMemory { .. })
    ));
    // The protocol can still finish, and deleting is allowed.
    assert!(s.commit(b"p", v(5)).await.unwrap());
    let before = s.stats();
    assert_eq!(before.max_memory_bytes, Some(8 << 10));
    assert!(before.memory_bytes > 8 << 10);
    let (n, t) = s.del(&[Bytes::from("k0")]).unwrap();
    s.ack(t).await.unwrap();
    assert_eq!(n, 1);
    assert!(
        s.stats().memory_bytes < before.memory_bytes,
        "the value was freed"
    );
}

#[tokio::test]
async fn repair_overwrites_newer_or_differing_copies_only() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path(), Appendfsync::No);
    // Missing key: applies.
    let (r, _) = s.repair(b"k", v(10), Some(b"good")).unwrap();
    assert!(r.applied);
    // Same version, same bytes: nothing to do.
    let (r, t) = s.repair(b"k", v(10), Some(b"good")).unwrap();
    assert!(!r.applied && t.is_none());
    // Same version, different bytes (a corrupt copy): replaced, where BW.PUT refuses.
    let (r, _) = s.put(b"k", v(10), Some(b"evil")).unwrap();
    assert!(!r.applied);
    let (r, _) = s.repair(b"k", v(10), Some(b"fixed")).unwrap();
    assert!(r.applied);
    assert_eq!(s.get(b"k").await.unwrap().as_deref(), Some(&b"fixed"[..]));
    // Older versions never apply; a newer tombstone does.
    let (r, _) = s.repair(b"k", v(9), Some(b"old")).unwrap();
    assert_eq!((r.applied, r.committed), (false, Some(v(10))));
    let (r, _) = s.repair(b"k", v(11), None).unwrap();
    assert!(r.applied);
    assert_eq!(s.get(b"k").await.unwrap(), None);
    // Pending writes are untouched by repair.
    s.prepare(b"p", v(20), "db_g1", Some(b"x")).await.unwrap();
    let _ = s.repair(b"p", v(15), Some(b"y")).unwrap();
    let state = s.get_state(b"p").await.unwrap();
    assert_eq!(state.pending.len(), 1);
    assert_eq!(state.committed.unwrap().version, v(15));
}

#[tokio::test]
async fn digest_reflects_committed_records_and_lists_buckets() {
    use bulwark_core::ae::{self, Digest};

    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = open(a_dir.path(), Appendfsync::No);
    let b = open(b_dir.path(), Appendfsync::No);
    assert_eq!(
        a.digest(),
        Digest::default(),
        "an empty store has the zero digest"
    );

    // The same records, written in a different order and by different paths, give the
    // same digest; pending writes do not count.
    for i in 0..200u64 {
        let _ = a
            .put(
                format!("k{i}").as_bytes(),
                v(i + 1),
                Some(format!("v{i}").as_bytes()),
            )
            .unwrap();
    }
    let _ = a.put(b"gone", v(5), None).unwrap();
    for i in (0..200u64).rev() {
        let _ = b
            .repair(
                format!("k{i}").as_bytes(),
                v(i + 1),
                Some(format!("v{i}").as_bytes()),
            )
            .unwrap();
    }
    b.prepare(b"gone", v(4), "db_g1", Some(b"x")).await.unwrap();
    let _ = b.repair(b"gone", v(5), None).unwrap();
    b.prepare(b"undecided", v(9), "db_g1", Some(b"x"))
        .await
        .unwrap();
    assert_eq!(a.digest(), b.digest());

    // One differing record shows up in exactly its bucket, and listing that bucket
    // finds it with its version and hash on each side.
    let _ = b.repair(b"k7", v(8), Some(b"corrupt")).unwrap();
    let (da, db) = (a.digest(), b.digest());
    assert_eq!(Digest::differing(&[&da, &db]), vec![ae::bucket(b"k7")]);
    let bucket = ae::bucket(b"k7");
    let on_a = a.bucket_entries(&[bucket], 1000);
    let on_b = b.bucket_entries(&[bucket], 1000);
    let find = |list: &[ae::AeEntry]| list.iter().find(|e| &e.key[..] == b"k7").cloned().unwrap();
    let (ea, eb) = (find(&on_a), find(&on_b));
    assert_eq!((ea.version, eb.version), (v(8), v(8)));
    assert_ne!(ea.hash, eb.hash);
    assert_eq!(ea.hash, ae::record_hash(b"k7", v(8), Some(b"v7")));
    assert!(on_a.iter().all(|e| ae::bucket(&e.key) == bucket));
    let gone = a.bucket_entries(&[ae::bucket(b"gone")], 1000);
    assert!(gone.iter().any(|e| &e.key[..] == b"gone" && e.tombstone));
    // The listing is bounded.
    let all: Vec<u16> = (0..ae::AE_BUCKETS as u16).collect();
    assert_eq!(a.bucket_entries(&all, 10).len(), 10);
    assert_eq!(a.bucket_entries(&all, 1000).len(), 201);
}
