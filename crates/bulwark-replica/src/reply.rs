//! Reply shapes of the replica protocol, shared by both dialects, and the version wire
//! form. Every function here takes a reply by value (so values move into `Bytes` without
//! a copy) and refuses anything that is not exactly the documented shape.

use bulwark_core::ae::{AE_BUCKETS, AeEntry, DIGEST_WIRE_LEN, Digest};
use bulwark_core::{PendingRef, Record, ReplicaState, Version};
use bytes::Bytes;
use redis::Value;

use crate::ReplicaError;

/// Outcome of `BW.PUT` (last-write-wins write).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutReply {
    /// Whether the write became the committed record (its version was newer).
    pub applied: bool,
    /// The replica's committed version after the call ([`Version::ZERO`] if none).
    pub committed: Version,
}

/// Outcome of `BW.PREPARE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrepareReply {
    /// Prepared (durably, on a node; per `appendfsync` on Redis).
    Ok,
    /// Refused: the replica already committed a version at least as new.
    Stale {
        /// The replica's committed version (the gateway's HLC must observe it).
        committed: Version,
    },
    /// Refused: the key already has the maximum number of pending writes.
    Busy,
}

fn protocol(what: &str, got: &Value) -> ReplicaError {
    // Debug of a Value can be large (a 1 MiB value); keep the message short.
    let mut shown = format!("{got:?}");
    if shown.len() > 120 {
        let cut = (0..=120)
            .rev()
            .find(|i| shown.is_char_boundary(*i))
            .unwrap_or(0);
        shown.truncate(cut);
        shown.push('…');
    }
    ReplicaError::Protocol(format!("expected {what}, got {shown}"))
}

/// The 24-byte wire form of a version, without allocating.
pub(crate) fn version_wire(v: Version) -> [u8; 24] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 24];
    let mut put = |start: usize, digits: usize, n: u64| {
        for i in 0..digits {
            let shift = 4 * (digits - 1 - i);
            out[start + i] = HEX[((n >> shift) & 0xf) as usize];
        }
    };
    put(0, 12, v.physical_ms);
    put(12, 4, u64::from(v.logical));
    put(16, 8, u64::from(v.writer));
    out
}

fn version_opt(v: Value, what: &str) -> Result<Option<Version>, ReplicaError> {
    let bytes = match v {
        Value::Nil => return Ok(None),
        Value::BulkString(b) => b,
        Value::SimpleString(s) => s.into_bytes(),
        other => return Err(protocol(what, &other)),
    };
    Version::try_from(bytes.as_slice())
        .map(Some)
        .map_err(|e| ReplicaError::Protocol(format!("{what}: {e}")))
}

fn flag(v: Value, what: &str) -> Result<bool, ReplicaError> {
    match v {
        Value::Int(0) => Ok(false),
        Value::Int(1) => Ok(true),
        other => Err(protocol(what, &other)),
    }
}

fn array<const N: usize>(v: Value, what: &str) -> Result<[Value; N], ReplicaError> {
    match v {
        Value::Array(items) if items.len() == N => items
            .try_into()
            .map_err(|_| ReplicaError::Protocol(format!("expected {what}"))),
        other => Err(protocol(what, &other)),
    }
}

fn text(v: Value, what: &str) -> Result<String, ReplicaError> {
    match v {
        Value::BulkString(b) => {
            String::from_utf8(b).map_err(|_| ReplicaError::Protocol(format!("{what}: not UTF-8")))
        }
        Value::SimpleString(s) => Ok(s),
        Value::Okay => Ok("OK".to_owned()),
        other => Err(protocol(what, &other)),
    }
}

/// `[committed_version|nil, value|nil, tombstone 0|1, [[pending_version, coordinator], …]]`
pub(crate) fn get(v: Value) -> Result<ReplicaState, ReplicaError> {
    let [version, value, tomb, pending] = array::<4>(v, "a 4-element BW.GET reply")?;
    let version = version_opt(version, "committed version")?;
    let tomb = flag(tomb, "tombstone flag 0|1")?;
    let committed = match (version, tomb, value) {
        (None, _, _) => None,
        (Some(version), true, _) => Some(Record {
            version,
            value: None,
        }),
        (Some(version), false, Value::BulkString(b)) => Some(Record {
            version,
            value: Some(Bytes::from(b)),
        }),
        (Some(_), false, other) => return Err(protocol("a committed value", &other)),
    };
    let Value::Array(items) = pending else {
        return Err(protocol("a pending list", &pending));
    };
    let mut pending = Vec::with_capacity(items.len());
    for item in items {
        let [version, coordinator] = array::<2>(item, "[pending_version, coordinator]")?;
        let version = version_opt(version, "pending version")?
            .ok_or_else(|| ReplicaError::Protocol("nil pending version".into()))?;
        let coordinator = text(coordinator, "coordinator")?;
        pending.push(PendingRef {
            version,
            coordinator,
        });
    }
    // The protocol lists pending writes oldest first; do not rely on every replica
    // sorting them.
    pending.sort_by_key(|p| p.version);
    Ok(ReplicaState { committed, pending })
}

/// `[applied 0|1, committed_version|nil]`
pub(crate) fn put(v: Value) -> Result<PutReply, ReplicaError> {
    let [applied, committed] = array::<2>(v, "a 2-element BW.PUT reply")?;
    Ok(PutReply {
        applied: flag(applied, "applied 0|1")?,
        committed: version_opt(committed, "committed version")?.unwrap_or(Version::ZERO),
    })
}

/// `["OK"|"STALE"|"BUSY", committed_version|nil]`
pub(crate) fn prepare(v: Value) -> Result<PrepareReply, ReplicaError> {
    let [status, committed] = array::<2>(v, "a 2-element BW.PREPARE reply")?;
    let status = text(status, "OK|STALE|BUSY")?;
    let committed = version_opt(committed, "committed version")?.unwrap_or(Version::ZERO);
    match status.as_str() {
        "OK" => Ok(PrepareReply::Ok),
        "STALE" => Ok(PrepareReply::Stale { committed }),
        "BUSY" => Ok(PrepareReply::Busy),
        _ => Err(ReplicaError::Protocol(format!(
            "expected OK|STALE|BUSY, got {:?}",
            status.chars().take(40).collect::<String>()
        ))),
    }
}

/// `1` or `0` (`BW.COMMIT`, `BW.ABORT`).
pub(crate) fn existed(v: Value) -> Result<bool, ReplicaError> {
    flag(v, "integer 0|1")
}

/// `BW.DIGEST`: one bulk string of [`DIGEST_WIRE_LEN`] bytes.
pub(crate) fn digest(v: Value) -> Result<Digest, ReplicaError> {
    match v {
        Value::BulkString(b) => Digest::from_wire(&b).ok_or_else(|| {
            ReplicaError::Protocol(format!(
                "expected a {DIGEST_WIRE_LEN}-byte digest, got {} bytes",
                b.len()
            ))
        }),
        other => Err(protocol("a digest bulk string", &other)),
    }
}

/// `[next_cursor, items]` of a chunked scan (`bw_digest`, `bw_buckets`).
pub(crate) fn page(v: Value) -> Result<(String, Value), ReplicaError> {
    let [cursor, items] = array::<2>(v, "[next_cursor, items]")?;
    let cursor = match cursor {
        Value::Int(n) => n.to_string(),
        other => text(other, "a cursor")?,
    };
    if cursor.is_empty() || !cursor.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ReplicaError::Protocol(format!("bad cursor {cursor:.40}")));
    }
    Ok((cursor, items))
}

fn hash16(v: Value, what: &str) -> Result<u64, ReplicaError> {
    let t = text(v, what)?;
    if t.len() != 16 {
        return Err(ReplicaError::Protocol(format!("{what}: {t:.40}")));
    }
    u64::from_str_radix(&t, 16).map_err(|_| ReplicaError::Protocol(format!("{what}: {t:.40}")))
}

/// `bw_digest`'s items: `[bucket, xor (16 hex digits), …]`, merged into `into`.
pub(crate) fn digest_chunk(items: Value, into: &mut Digest) -> Result<(), ReplicaError> {
    let Value::Array(items) = items else {
        return Err(protocol("a digest chunk", &items));
    };
    if items.len() % 2 != 0 {
        return Err(ReplicaError::Protocol("odd digest chunk".into()));
    }
    let mut it = items.into_iter();
    while let (Some(bucket), Some(hash)) = (it.next(), it.next()) {
        let bucket = match bucket {
            Value::Int(b) => u16::try_from(b)
                .ok()
                .filter(|b| usize::from(*b) < AE_BUCKETS),
            _ => None,
        }
        .ok_or_else(|| ReplicaError::Protocol("bad bucket in digest chunk".into()))?;
        into.add(bucket, hash16(hash, "bucket xor")?);
    }
    Ok(())
}

/// `[[key, version, tomb 0|1, hash (16 hex digits)], …]` (`BW.BUCKETS`, `bw_buckets`).
pub(crate) fn ae_entries(items: Value, into: &mut Vec<AeEntry>) -> Result<(), ReplicaError> {
    let Value::Array(items) = items else {
        return Err(protocol("a list of bucket entries", &items));
    };
    into.reserve(items.len());
    for item in items {
        let [key, version, tomb, hash] = array::<4>(item, "[key, version, tomb, hash]")?;
        let Value::BulkString(key) = key else {
            return Err(protocol("a key", &key));
        };
        into.push(AeEntry {
            key: Bytes::from(key),
            version: version_opt(version, "entry version")?
                .ok_or_else(|| ReplicaError::Protocol("nil entry version".into()))?,
            tombstone: flag(tomb, "tombstone flag 0|1")?,
            hash: hash16(hash, "record hash")?,
        });
    }
    Ok(())
}

/// `PONG` (simple or bulk string).
pub(crate) fn pong(v: Value) -> Result<(), ReplicaError> {
    match v {
        Value::SimpleString(s) if s == "PONG" => Ok(()),
        Value::BulkString(b) if b == b"PONG" => Ok(()),
        other => Err(protocol("PONG", &other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    const V1: &str = "000000000001000000000002";

    #[test]
    fn version_wire_matches_display() {
        let v = Version {
            physical_ms: 0xabc_def0_1234,
            logical: 0xbeef,
            writer: 0x0102_0304,
        };
        assert_eq!(&version_wire(v)[..], v.to_string().as_bytes());
        assert_eq!(
            &version_wire(Version::ZERO)[..],
            b"000000000000000000000000"
        );
    }

    #[test]
    fn parses_get_replies() {
        let v = Value::Array(vec![
            bulk(V1.as_bytes()),
            bulk(b"\x00val"),
            Value::Int(0),
            Value::Array(vec![Value::Array(vec![
                bulk(b"000000000002000000000001"),
                bulk(b"db_g1"),
            ])]),
        ]);
        let s = get(v).expect("valid");
        let c = s.committed.expect("committed");
        assert_eq!(c.version.to_string(), V1);
        assert_eq!(c.value.as_deref(), Some(&b"\x00val"[..]));
        assert_eq!(s.pending[0].coordinator, "db_g1");

        let tomb = Value::Array(vec![
            bulk(V1.as_bytes()),
            Value::Nil,
            Value::Int(1),
            Value::Array(vec![]),
        ]);
        assert_eq!(get(tomb).expect("valid").committed.expect("c").value, None);
        let empty = Value::Array(vec![
            Value::Nil,
            Value::Nil,
            Value::Int(0),
            Value::Array(vec![]),
        ]);
        assert_eq!(get(empty).expect("valid"), ReplicaState::default());
    }

    #[test]
    fn refuses_malformed_replies() {
        let bad = [
            Value::Int(1),
            Value::Array(vec![Value::Nil]),
            Value::Array(vec![
                bulk(b"nothex"),
                Value::Nil,
                Value::Int(1),
                Value::Array(vec![]),
            ]),
            Value::Array(vec![
                bulk(V1.as_bytes()),
                Value::Nil,
                Value::Int(0),
                Value::Array(vec![]),
            ]),
            Value::Array(vec![
                Value::Nil,
                Value::Nil,
                Value::Int(2),
                Value::Array(vec![]),
            ]),
            Value::Array(vec![Value::Nil, Value::Nil, Value::Int(0), Value::Int(0)]),
        ];
        for v in bad {
            assert!(
                matches!(get(v.clone()), Err(ReplicaError::Protocol(_))),
                "{v:?}"
            );
        }
        assert!(put(Value::Okay).is_err());
        let weird = Value::Array(vec![bulk(b"MAYBE"), Value::Nil]);
        assert!(matches!(prepare(weird), Err(ReplicaError::Protocol(_))));
        assert!(existed(Value::Int(5)).is_err());
    }

    #[test]
    fn parses_anti_entropy_replies() {
        let mut d = Digest::default();
        d.add(7, 0xdead_beef_0000_0001);
        assert_eq!(digest(bulk(&d.to_wire())).expect("valid"), d);
        assert!(digest(bulk(b"short")).is_err());

        let (cursor, items) =
            page(Value::Array(vec![bulk(b"17"), Value::Array(vec![])])).expect("page");
        assert_eq!(cursor, "17");
        assert_eq!(items, Value::Array(vec![]));
        assert!(page(Value::Array(vec![bulk(b"x1"), Value::Array(vec![])])).is_err());

        let mut merged = Digest::default();
        digest_chunk(
            Value::Array(vec![Value::Int(7), bulk(b"deadbeef00000001")]),
            &mut merged,
        )
        .expect("chunk");
        assert_eq!(merged, d);
        for bad in [
            Value::Array(vec![Value::Int(4096), bulk(b"deadbeef00000001")]),
            Value::Array(vec![Value::Int(1), bulk(b"xyz")]),
            Value::Array(vec![Value::Int(1)]),
        ] {
            assert!(digest_chunk(bad, &mut merged).is_err());
        }

        let mut entries = Vec::new();
        ae_entries(
            Value::Array(vec![Value::Array(vec![
                bulk(b"k\x00"),
                bulk(V1.as_bytes()),
                Value::Int(1),
                bulk(b"00000000000000ff"),
            ])]),
            &mut entries,
        )
        .expect("entries");
        assert_eq!(&entries[0].key[..], b"k\x00");
        assert!(entries[0].tombstone);
        assert_eq!(entries[0].hash, 0xff);
        assert!(ae_entries(Value::Array(vec![Value::Int(1)]), &mut entries).is_err());
    }

    #[test]
    fn parses_prepare_status_in_any_string_form() {
        let ok = Value::Array(vec![Value::Okay, Value::Nil]);
        assert_eq!(prepare(ok).expect("ok"), PrepareReply::Ok);
        let stale = Value::Array(vec![
            Value::SimpleString("STALE".into()),
            bulk(V1.as_bytes()),
        ]);
        assert!(
            matches!(prepare(stale), Ok(PrepareReply::Stale { committed }) if committed.to_string() == V1)
        );
        let busy = Value::Array(vec![bulk(b"BUSY"), Value::Nil]);
        assert_eq!(prepare(busy).expect("busy"), PrepareReply::Busy);
    }
}
