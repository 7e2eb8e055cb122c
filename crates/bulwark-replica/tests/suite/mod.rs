//! The replica protocol's semantics (`docs/ARCHITECTURE.md`, "The replica protocol"),
//! written once and run against every backend by [`protocol_suite!`]: a real Redis with
//! the function library, and a `bulwark node`.

#![allow(dead_code)] // each test binary uses part of this module

use std::any::Any;
use std::time::Duration;

use bulwark_core::Version;
use bulwark_replica::{PrepareReply, PutReply, ReplicaClient};

/// Generous per-call timeout for semantics tests (fault tests use short ones).
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// A running backend and a client for it; the guard keeps the server alive.
pub struct Started {
    pub client: ReplicaClient,
    pub guard: Box<dyn Any + Send>,
}

/// Version `n` (writer 1), so tests read as "v(1) < v(2)".
pub fn v(n: u64) -> Version {
    Version {
        physical_ms: 1_700_000_000_000 + n,
        logical: 0,
        writer: 1,
    }
}

/// Every byte value, CR LF and NUL included: values must be binary-safe.
pub fn binary_value() -> Vec<u8> {
    let mut b: Vec<u8> = (0..=255u8).collect();
    b.extend_from_slice(b"\r\n\0$-1\r\n*2\r\n");
    b
}

/// Generates one `#[tokio::test]` per semantics case, each on a fresh backend from
/// `$start` (an async expression yielding [`Started`]).
#[macro_export]
macro_rules! protocol_suite {
    ($start:expr) => {
        $crate::protocol_suite!(@cases $start;
            missing_key_reads_empty,
            put_is_last_write_wins,
            tombstones_and_binary_values_round_trip,
            large_values_round_trip,
            prepare_is_invisible_until_commit,
            commit_and_abort_of_unknown_versions_answer_zero,
            aborted_write_cannot_commit,
            prepare_at_or_below_committed_is_stale,
            at_most_sixteen_pending_per_key,
            commit_of_older_pending_keeps_newer_committed,
            pending_writes_are_listed_oldest_first,
            keys_are_binary_safe_and_independent,
            concurrent_calls_share_one_connection,
            repair_replaces_missing_older_and_corrupt_copies,
            digest_and_buckets_match_the_reference_definition,
        );
    };
    (@cases $start:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let started: $crate::suite::Started = $start.await;
                $crate::suite::$case(&started.client).await;
                drop(started.guard);
            }
        )*
    };
}

pub async fn missing_key_reads_empty(c: &ReplicaClient) {
    c.ping().await.expect("ping");
    let s = c.get(b"never-written").await.expect("get");
    assert_eq!(s.committed, None);
    assert!(s.pending.is_empty());
    assert_eq!(s.committed_version(), Version::ZERO);
}

pub async fn put_is_last_write_wins(c: &ReplicaClient) {
    let r = c.put(b"k", v(2), Some(b"two")).await.expect("put v2");
    assert_eq!(
        r,
        PutReply {
            applied: true,
            committed: v(2)
        }
    );
    for older in [v(1), v(2)] {
        let r = c.put(b"k", older, Some(b"old")).await.expect("put older");
        assert_eq!(
            r,
            PutReply {
                applied: false,
                committed: v(2)
            },
            "{older}"
        );
    }
    let s = c.get(b"k").await.expect("get");
    let rec = s.committed.expect("committed");
    assert_eq!(
        (rec.version, rec.value.as_deref()),
        (v(2), Some(&b"two"[..]))
    );
    let r = c.put(b"k", v(3), Some(b"three")).await.expect("put v3");
    assert!(r.applied);
    assert_eq!(c.get(b"k").await.expect("get").committed_version(), v(3));
}

pub async fn tombstones_and_binary_values_round_trip(c: &ReplicaClient) {
    let value = binary_value();
    c.put(b"bin", v(1), Some(&value)).await.expect("put");
    let got = c
        .get(b"bin")
        .await
        .expect("get")
        .committed
        .expect("committed");
    assert_eq!(got.value.as_deref(), Some(value.as_slice()));

    c.put(b"bin", v(2), None).await.expect("delete");
    let got = c
        .get(b"bin")
        .await
        .expect("get")
        .committed
        .expect("tombstone");
    assert_eq!((got.version, got.value), (v(2), None));
    // A delayed older write must not resurrect a deleted key.
    let r = c.put(b"bin", v(1), Some(b"zombie")).await.expect("put");
    assert!(!r.applied);

    // An empty value is a value, not a tombstone.
    c.put(b"empty", v(1), Some(b"")).await.expect("put empty");
    let got = c
        .get(b"empty")
        .await
        .expect("get")
        .committed
        .expect("committed");
    assert_eq!(got.value.as_deref(), Some(&b""[..]));
}

pub async fn large_values_round_trip(c: &ReplicaClient) {
    let value: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    c.prepare(b"big", v(1), "db_x", Some(&value))
        .await
        .expect("prepare");
    assert!(c.commit(b"big", v(1)).await.expect("commit"));
    let got = c
        .get(b"big")
        .await
        .expect("get")
        .committed
        .expect("committed");
    assert_eq!(got.value.as_deref(), Some(value.as_slice()));
}

pub async fn prepare_is_invisible_until_commit(c: &ReplicaClient) {
    c.put(b"k", v(1), Some(b"one")).await.expect("put");
    let r = c
        .prepare(b"k", v(5), "db_g2", Some(b"five"))
        .await
        .expect("prepare");
    assert_eq!(r, PrepareReply::Ok);
    let s = c.get(b"k").await.expect("get");
    assert_eq!(
        s.committed.as_ref().and_then(|r| r.value.as_deref()),
        Some(&b"one"[..])
    );
    assert_eq!(s.pending.len(), 1);
    assert_eq!(
        (s.pending[0].version, s.pending[0].coordinator.as_str()),
        (v(5), "db_g2")
    );

    assert!(c.commit(b"k", v(5)).await.expect("commit"));
    let s = c.get(b"k").await.expect("get");
    let rec = s.committed.expect("committed");
    assert_eq!(
        (rec.version, rec.value.as_deref()),
        (v(5), Some(&b"five"[..]))
    );
    assert!(s.pending.is_empty());
    assert!(
        !c.commit(b"k", v(5)).await.expect("second commit"),
        "commit is not repeatable"
    );

    // A prepared tombstone commits as a deletion.
    c.prepare(b"k", v(6), "db_g2", None)
        .await
        .expect("prepare delete");
    assert!(c.commit(b"k", v(6)).await.expect("commit delete"));
    let rec = c
        .get(b"k")
        .await
        .expect("get")
        .committed
        .expect("tombstone");
    assert_eq!((rec.version, rec.value), (v(6), None));
}

pub async fn commit_and_abort_of_unknown_versions_answer_zero(c: &ReplicaClient) {
    assert!(!c.commit(b"nothing", v(1)).await.expect("commit"));
    assert!(!c.abort(b"nothing", v(1)).await.expect("abort"));
    assert_eq!(c.get(b"nothing").await.expect("get").committed, None);
}

pub async fn aborted_write_cannot_commit(c: &ReplicaClient) {
    assert_eq!(
        c.prepare(b"k", v(3), "db_g1", Some(b"x"))
            .await
            .expect("prepare"),
        PrepareReply::Ok
    );
    assert!(c.abort(b"k", v(3)).await.expect("abort"));
    assert!(!c.abort(b"k", v(3)).await.expect("abort again"));
    assert!(
        !c.commit(b"k", v(3)).await.expect("late commit"),
        "aborted write committed"
    );
    let s = c.get(b"k").await.expect("get");
    assert_eq!(s.committed, None);
    assert!(s.pending.is_empty());
}

pub async fn prepare_at_or_below_committed_is_stale(c: &ReplicaClient) {
    c.put(b"k", v(4), Some(b"four")).await.expect("put");
    for old in [v(3), v(4)] {
        let r = c
            .prepare(b"k", old, "db_g1", Some(b"x"))
            .await
            .expect("prepare");
        assert_eq!(r, PrepareReply::Stale { committed: v(4) }, "{old}");
    }
    assert!(c.get(b"k").await.expect("get").pending.is_empty());
}

pub async fn at_most_sixteen_pending_per_key(c: &ReplicaClient) {
    for i in 1..=16 {
        let r = c
            .prepare(b"k", v(i), "db_g1", Some(b"x"))
            .await
            .expect("prepare");
        assert_eq!(r, PrepareReply::Ok, "prepare #{i}");
    }
    let r = c
        .prepare(b"k", v(17), "db_g1", Some(b"x"))
        .await
        .expect("prepare 17");
    assert_eq!(r, PrepareReply::Busy);
    // Another key is not affected.
    let r = c
        .prepare(b"other", v(17), "db_g1", Some(b"x"))
        .await
        .expect("prepare other");
    assert_eq!(r, PrepareReply::Ok);
    // Resolving one frees a slot.
    assert!(c.abort(b"k", v(1)).await.expect("abort"));
    let r = c
        .prepare(b"k", v(17), "db_g1", Some(b"x"))
        .await
        .expect("prepare 17 again");
    assert_eq!(r, PrepareReply::Ok);
    assert_eq!(c.get(b"k").await.expect("get").pending.len(), 16);
}

pub async fn commit_of_older_pending_keeps_newer_committed(c: &ReplicaClient) {
    c.prepare(b"k", v(2), "db_g1", Some(b"two"))
        .await
        .expect("prepare");
    c.put(b"k", v(3), Some(b"three")).await.expect("put newer");
    assert!(
        c.commit(b"k", v(2)).await.expect("commit"),
        "pending existed"
    );
    let s = c.get(b"k").await.expect("get");
    let rec = s.committed.expect("committed");
    assert_eq!(
        (rec.version, rec.value.as_deref()),
        (v(3), Some(&b"three"[..]))
    );
    assert!(s.pending.is_empty());
}

pub async fn pending_writes_are_listed_oldest_first(c: &ReplicaClient) {
    for (n, coord) in [(9, "c9"), (3, "c3"), (6, "c6")] {
        c.prepare(b"k", v(n), coord, Some(b"x"))
            .await
            .expect("prepare");
    }
    let s = c.get(b"k").await.expect("get");
    let got: Vec<(Version, &str)> = s
        .pending
        .iter()
        .map(|p| (p.version, p.coordinator.as_str()))
        .collect();
    assert_eq!(got, [(v(3), "c3"), (v(6), "c6"), (v(9), "c9")]);
}

pub async fn keys_are_binary_safe_and_independent(c: &ReplicaClient) {
    let k1: &[u8] = b"a\r\nb\0c";
    let k2: &[u8] = b"a\r\nb\0d";
    c.put(k1, v(1), Some(b"1")).await.expect("put k1");
    c.put(k2, v(2), Some(b"2")).await.expect("put k2");
    assert_eq!(c.get(k1).await.expect("get").committed_version(), v(1));
    assert_eq!(c.get(k2).await.expect("get").committed_version(), v(2));
}

pub async fn concurrent_calls_share_one_connection(c: &ReplicaClient) {
    let tasks: Vec<_> = (0..200u64)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                let key = format!("key{i}");
                c.put(key.as_bytes(), v(i + 1), Some(key.as_bytes()))
                    .await?;
                c.get(key.as_bytes()).await
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let s = t.await.expect("task").expect("call");
        let rec = s.committed.expect("committed");
        assert_eq!(
            rec.value.as_deref(),
            Some(format!("key{i}").as_bytes()),
            "replies mixed up"
        );
    }
}

/// Keeps any value alive as a [`Started::guard`].
pub fn guard<T: Send + 'static>(t: T) -> Box<dyn Any + Send> {
    Box::new(t)
}

pub async fn repair_replaces_missing_older_and_corrupt_copies(c: &ReplicaClient) {
    let applied = |r: PutReply| r.applied;
    assert!(applied(
        c.repair(b"k", v(2), Some(b"good"))
            .await
            .expect("repair missing")
    ));
    assert!(!applied(
        c.repair(b"k", v(2), Some(b"good"))
            .await
            .expect("same copy")
    ));
    assert!(!applied(
        c.repair(b"k", v(1), Some(b"old")).await.expect("older")
    ));
    // BW.PUT refuses an equal version; BW.REPAIR replaces a copy whose bytes differ.
    assert!(!applied(
        c.put(b"k", v(2), Some(b"other")).await.expect("put equal")
    ));
    assert!(applied(
        c.repair(b"k", v(2), Some(b"fixed"))
            .await
            .expect("repair equal")
    ));
    let s = c.get(b"k").await.expect("get");
    assert_eq!(
        s.committed.expect("committed").value.as_deref(),
        Some(&b"fixed"[..])
    );
    // A tombstone of the same version differs from a value, and is repaired too.
    assert!(applied(
        c.repair(b"k", v(2), None)
            .await
            .expect("repair to tombstone")
    ));
    assert_eq!(
        c.get(b"k").await.expect("get").committed.expect("c").value,
        None
    );
    // Pending writes are left alone.
    assert_eq!(
        c.prepare(b"p", v(5), "db_g1", Some(b"x"))
            .await
            .expect("prepare"),
        PrepareReply::Ok
    );
    assert!(applied(
        c.repair(b"p", v(3), Some(b"y"))
            .await
            .expect("repair under pending")
    ));
    let s = c.get(b"p").await.expect("get");
    assert_eq!(s.pending.len(), 1);
    assert_eq!(s.committed_version(), v(3));
}

/// Both dialects compute exactly `bulwark_core::ae`'s digest: checked against the
/// reference computed here from the records written, over enough keys that a Redis
/// replica needs several SCAN chunks.
pub async fn digest_and_buckets_match_the_reference_definition(c: &ReplicaClient) {
    use bulwark_core::ae::{self, Digest};

    assert_eq!(c.digest().await.expect("empty digest"), Digest::default());
    let mut reference = Digest::default();
    let keys: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..2500u32)
        .map(|i| {
            let value = (i % 10 != 0).then(|| format!("value-{i}").into_bytes());
            (format!("key-{i}").into_bytes(), value)
        })
        .collect();
    for chunk in keys.chunks(250) {
        let puts = chunk
            .iter()
            .map(|(k, val)| c.put(k, v(u64::from(k.len() as u32)), val.as_deref()));
        for r in futures::future::join_all(puts).await {
            assert!(r.expect("put").applied);
        }
    }
    for (k, val) in &keys {
        reference.add_record(k, v(u64::from(k.len() as u32)), val.as_deref());
    }
    // A pending write and a binary key count as the protocol says (pending: not at all).
    c.prepare(b"undecided", v(9), "db_g1", Some(b"x"))
        .await
        .expect("prepare");
    let binary = binary_value();
    c.put(&binary, v(1), Some(&binary))
        .await
        .expect("binary put");
    reference.add_record(&binary, v(1), Some(&binary));

    let digest = c.digest().await.expect("digest");
    assert_eq!(digest, reference);

    let bucket = ae::bucket(b"key-7");
    let entries = c.bucket_entries(&[bucket]).await.expect("buckets");
    assert!(!entries.is_empty());
    assert!(entries.iter().all(|e| ae::bucket(&e.key) == bucket));
    let e = entries
        .iter()
        .find(|e| &e.key[..] == b"key-7")
        .expect("key-7 listed");
    assert_eq!(e.version, v(5));
    assert_eq!(e.hash, ae::record_hash(b"key-7", v(5), Some(b"value-7")));
    let tomb = ae::bucket(b"key-10");
    let entries = c.bucket_entries(&[tomb]).await.expect("buckets");
    assert!(
        entries
            .iter()
            .any(|e| &e.key[..] == b"key-10" && e.tombstone)
    );
    let all: Vec<u16> = (0..ae::AE_BUCKETS as u16).collect();
    assert_eq!(
        c.bucket_entries(&all).await.expect("all").len(),
        keys.len() + 1
    );
}
