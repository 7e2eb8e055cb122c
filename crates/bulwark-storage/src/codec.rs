//! On-disk encodings of records. Every stored value starts with [`RECORD_V1`], so a later
//! format can be recognised (and an unknown one refused) record by record.
//!
//! * committed keyspace: `key` → `[format][flags][version: 14][value…]`
//! * pending keyspace: `[key_len: u32 BE][key][version: 14]` → `[format][flags][coord_len:
//!   u8][coordinator][value…]`. The length prefix makes `[key_len][key]` a prefix that no
//!   other key shares, so one prefix scan lists a key's pending writes, oldest first
//!   (versions are big-endian, so byte order is version order).

use bulwark_core::Version;
use bytes::Bytes;

use crate::StorageError;

/// Format byte of every record this build writes.
pub const RECORD_V1: u8 = 1;

/// Flag bit: the record is a tombstone (a deletion).
const FLAG_TOMBSTONE: u8 = 1;

/// Encoded size of a [`Version`]: 8 + 2 + 4 bytes, big-endian.
pub const VERSION_BYTES: usize = 14;

/// Bytes before the value in a committed record.
pub const COMMITTED_HEADER: usize = 2 + VERSION_BYTES;

pub fn put_version(out: &mut Vec<u8>, v: Version) {
    out.extend_from_slice(&v.physical_ms.to_be_bytes());
    out.extend_from_slice(&v.logical.to_be_bytes());
    out.extend_from_slice(&v.writer.to_be_bytes());
}

pub fn read_version(b: &[u8]) -> Option<Version> {
    let b = b.get(..VERSION_BYTES)?;
    Some(Version {
        physical_ms: u64::from_be_bytes(b[0..8].try_into().ok()?),
        logical: u16::from_be_bytes(b[8..10].try_into().ok()?),
        writer: u32::from_be_bytes(b[10..14].try_into().ok()?),
    })
}

fn corrupt(key: &[u8], reason: &'static str) -> StorageError {
    StorageError::CorruptRecord {
        key: String::from_utf8_lossy(key).chars().take(80).collect(),
        reason,
    }
}

/// A decoded committed record; `value` is a zero-copy slice of the stored bytes.
#[derive(Debug, Clone)]
pub struct Committed {
    pub version: Version,
    pub value: Option<Bytes>,
}

pub fn encode_committed(version: Version, value: Option<&[u8]>) -> Vec<u8> {
    let v = value.unwrap_or_default();
    let mut out = Vec::with_capacity(COMMITTED_HEADER + v.len());
    out.push(RECORD_V1);
    out.push(if value.is_none() { FLAG_TOMBSTONE } else { 0 });
    put_version(&mut out, version);
    out.extend_from_slice(v);
    out
}

pub fn decode_committed(key: &[u8], raw: Bytes) -> Result<Committed, StorageError> {
    let (&format, rest) = raw
        .split_first()
        .ok_or_else(|| corrupt(key, "empty record"))?;
    if format != RECORD_V1 {
        return Err(corrupt(key, "unknown record format byte"));
    }
    let (&flags, rest) = rest
        .split_first()
        .ok_or_else(|| corrupt(key, "truncated record"))?;
    let version = read_version(rest).ok_or_else(|| corrupt(key, "truncated version"))?;
    let value = (flags & FLAG_TOMBSTONE == 0).then(|| raw.slice(COMMITTED_HEADER..));
    Ok(Committed { version, value })
}

/// The pending keyspace's key for `(key, version)`.
pub fn pending_key(key: &[u8], version: Version) -> Vec<u8> {
    let mut out = pending_prefix(key);
    put_version(&mut out, version);
    out
}

/// The prefix shared by all pending records of `key` and no other key.
pub fn pending_prefix(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + key.len() + VERSION_BYTES);
    // Keys are bounded far below 4 GiB by the request limits; saturate rather than wrap.
    out.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// Splits a pending keyspace key into `(user key, version)`.
pub fn split_pending_key(raw: &[u8]) -> Option<(&[u8], Version)> {
    let len = u32::from_be_bytes(raw.get(..4)?.try_into().ok()?) as usize;
    let key = raw.get(4..4 + len)?;
    let version = read_version(raw.get(4 + len..)?)?;
    if raw.len() != 4 + len + VERSION_BYTES {
        return None;
    }
    Some((key, version))
}

/// A decoded pending record.
#[derive(Debug, Clone)]
pub struct Pending {
    pub coordinator: String,
    pub value: Option<Bytes>,
}

pub fn encode_pending(coordinator: &str, value: Option<&[u8]>) -> Vec<u8> {
    let v = value.unwrap_or_default();
    let coord = coordinator.as_bytes();
    let mut out = Vec::with_capacity(3 + coord.len() + v.len());
    out.push(RECORD_V1);
    out.push(if value.is_none() { FLAG_TOMBSTONE } else { 0 });
    out.push(coord.len() as u8);
    out.extend_from_slice(coord);
    out.extend_from_slice(v);
    out
}

pub fn decode_pending(key: &[u8], raw: Bytes) -> Result<Pending, StorageError> {
    if raw.len() < 3 {
        return Err(corrupt(key, "truncated pending record"));
    }
    if raw[0] != RECORD_V1 {
        return Err(corrupt(key, "unknown pending record format byte"));
    }
    let tomb = raw[1] & FLAG_TOMBSTONE != 0;
    let clen = raw[2] as usize;
    let coord = raw
        .get(3..3 + clen)
        .ok_or_else(|| corrupt(key, "truncated coordinator"))?;
    let coordinator = String::from_utf8_lossy(coord).into_owned();
    let value = (!tomb).then(|| raw.slice(3 + clen..));
    Ok(Pending { coordinator, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_refuse_unknown_formats() {
        let v = Version {
            physical_ms: 1_700_000_000_123,
            logical: 7,
            writer: 9,
        };
        let raw = Bytes::from(encode_committed(v, Some(b"val")));
        let c = decode_committed(b"k", raw).unwrap();
        assert_eq!((c.version, c.value.as_deref()), (v, Some(&b"val"[..])));
        let tomb = decode_committed(b"k", Bytes::from(encode_committed(v, None))).unwrap();
        assert_eq!(tomb.value, None);
        let mut future = encode_committed(v, Some(b"val"));
        future[0] = 2;
        assert!(decode_committed(b"k", Bytes::from(future)).is_err());

        let p = decode_pending(b"k", Bytes::from(encode_pending("db_g1", Some(b"")))).unwrap();
        assert_eq!(
            (p.coordinator.as_str(), p.value.as_deref()),
            ("db_g1", Some(&b""[..]))
        );
        assert_eq!(
            split_pending_key(&pending_key(b"key", v)),
            Some((&b"key"[..], v))
        );
    }

    #[test]
    fn pending_keys_sort_by_version_within_a_key() {
        let a = Version {
            physical_ms: 1,
            logical: 0xffff,
            writer: 0,
        };
        let b = Version {
            physical_ms: 2,
            logical: 0,
            writer: 0,
        };
        assert!(pending_key(b"k", a) < pending_key(b"k", b));
        assert!(!pending_key(b"kk", a).starts_with(&pending_prefix(b"k")));
    }
}
