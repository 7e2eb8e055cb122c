//! The audit chain end to end: writers (several sharing one file, as processes do),
//! rotation, a torn tail, and the verifier against every kind of tampering.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use bulwark_audit::{AuditConfig, AuditLog, Record, verify};

fn record(i: u64, service: &str) -> Record {
    Record {
        at_ms: Record::now_ms(),
        service: service.into(),
        key_id: "writer".into(),
        role: "write",
        client: std::net::Ipv4Addr::LOCALHOST.into(),
        method: "PUT".into(),
        route: "/v1/kv/{key}".into(),
        resource: format!("key=k{i}"),
        status: 200,
        outcome: "success",
        request_id: format!("r{i}"),
    }
}

fn open(path: &Path, max_bytes: u64) -> AuditLog {
    AuditLog::open(AuditConfig {
        path: path.to_path_buf(),
        max_bytes,
        fsync_interval: Duration::from_millis(50),
    })
    .unwrap()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[tokio::test]
async fn two_writers_sharing_a_file_make_one_chain_across_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logs").join("audit.jsonl");
    let a = open(&path, 4096);
    let b = open(&path, 4096);
    let (ta, tb) = (a.clone(), b.clone());
    let wa = tokio::spawn(async move {
        for i in 0..200 {
            ta.append(record(i, "app_ap")).await;
        }
    });
    let wb = tokio::spawn(async move {
        for i in 0..200 {
            tb.append(record(i, "app_cp")).await;
        }
    });
    wa.await.unwrap();
    wb.await.unwrap();
    a.close().await;
    b.close().await;
    let summary = verify(&path).unwrap();
    assert_eq!(summary.lines, 400);
    assert_eq!((summary.first_seq, summary.last_seq), (Some(1), Some(400)));
    assert!(
        summary.files.len() > 3,
        "rotated by size: {:?}",
        summary.files
    );
    assert!(summary.files[0].ends_with("audit.000001.jsonl"));
    // A rotated file verifies on its own, from the start of the chain through it.
    let second = verify(&summary.files[1]).unwrap();
    assert_eq!(second.files.len(), 2);
    // No value, only names: every line parses and names its route template.
    for l in lines(&path) {
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["route"], "/v1/kv/{key}");
    }
}

#[tokio::test]
async fn a_reopened_log_continues_the_chain_and_cuts_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = open(&path, 1 << 20);
    for i in 0..3 {
        log.append(record(i, "app_ap")).await;
    }
    log.close().await;
    // A crash in the middle of a write leaves bytes without their newline.
    let mut text = std::fs::read(&path).unwrap();
    text.extend_from_slice(b"{\"v\":1,\"seq\":4,\"ts\":");
    std::fs::write(&path, text).unwrap();
    let log = open(&path, 1 << 20);
    log.append(record(3, "app_ap")).await;
    log.close().await;
    let s = verify(&path).unwrap();
    assert_eq!((s.lines, s.last_seq), (4, Some(4)));
}

#[tokio::test]
async fn tampering_is_named_at_the_first_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = open(&path, 1 << 20);
    for i in 0..6 {
        log.append(record(i, "app_ap")).await;
    }
    log.close().await;
    let good = lines(&path);
    assert!(verify(&path).is_ok());

    // An edited field: the line no longer matches its own hash.
    let mut edited = good.clone();
    edited[2] = edited[2].replace("\"status\":200", "\"status\":201");
    write_lines(&path, &edited);
    let e = verify(&path).unwrap_err();
    assert_eq!(e.line, 3, "{e}");
    assert!(e.reason.contains("edited"), "{e}");

    // An edited line whose own hash was recomputed: the next line's prev breaks.
    let v: serde_json::Value = serde_json::from_str(&good[2]).unwrap();
    let forged_body = good[2][..good[2].len() - 75].replace("\"status\":200", "\"status\":201");
    let forged = format!(
        "{forged_body},\"hash\":\"{}\"}}",
        sha256_hex(forged_body.as_bytes())
    );
    assert_ne!(forged, good[2], "{v}");
    let mut rehashed = good.clone();
    rehashed[2] = forged;
    write_lines(&path, &rehashed);
    let e = verify(&path).unwrap_err();
    assert_eq!(e.line, 4, "{e}");
    assert!(e.reason.contains("chain broken"), "{e}");

    // A removed line.
    let mut removed = good.clone();
    removed.remove(1);
    write_lines(&path, &removed);
    assert_eq!(verify(&path).unwrap_err().line, 2);

    // Two lines swapped.
    let mut swapped = good.clone();
    swapped.swap(3, 4);
    write_lines(&path, &swapped);
    assert_eq!(verify(&path).unwrap_err().line, 4);

    // The first line removed: the chain no longer starts from the genesis at seq 1, but
    // it may legitimately start later (older files pruned), so the file alone verifies…
    write_lines(&path, &good[1..]);
    let s = verify(&path).unwrap();
    assert_eq!(s.first_seq, Some(2));
    // …while a forged first line claiming seq 1 does not.
    let mut fake_first = good.clone();
    fake_first[0] = fake_first[0].replace("\"prev\":\"0000", "\"prev\":\"1111");
    write_lines(&path, &fake_first);
    let e = verify(&path).unwrap_err();
    assert_eq!(e.line, 1, "{e}");
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}
