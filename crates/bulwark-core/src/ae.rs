//! The anti-entropy digest (SPEC HARD-6; `docs/ARCHITECTURE.md`, "Anti-entropy").
//!
//! Two replicas hold the same committed records exactly when (with overwhelming
//! probability) their [`Digest`]s are equal. A digest splits the key space into
//! [`AE_BUCKETS`] buckets and keeps, per bucket, the XOR of its records' hashes, so it can
//! be computed in any scan order and compared bucket by bucket: only the buckets that
//! differ need listing key by key.
//!
//! The definitions are part of the replica protocol: the Redis function library
//! (`bulwark.lua`) computes the same values with `redis.sha1hex`, and a test checks that a
//! `bulwark node` and a Redis holding the same records produce the same digest.

use std::fmt;

use bytes::Bytes;

use crate::Version;

/// Number of digest buckets: the first 12 bits of `SHA-1(key)` (3 hex digits in Lua).
pub const AE_BUCKETS: usize = 4096;

/// The bucket of `key`: the first 12 bits of `SHA-1(key)`.
pub fn bucket(key: &[u8]) -> u16 {
    let d = sha1_smol::Sha1::from(key).digest().bytes();
    (u16::from(d[0]) << 4) | (u16::from(d[1]) >> 4)
}

/// The hash of a committed record: the first 8 bytes (big-endian) of
/// `SHA-1(key ‖ 0 ‖ version-hex ‖ 0 ‖ '0'|'1' ‖ value)`, where `'1'` marks a tombstone
/// (whose value is empty).
pub fn record_hash(key: &[u8], version: Version, value: Option<&[u8]>) -> u64 {
    let mut h = sha1_smol::Sha1::new();
    h.update(key);
    h.update(&[0]);
    h.update(version.to_string().as_bytes());
    h.update(&[0]);
    match value {
        Some(v) => {
            h.update(b"0");
            h.update(v);
        }
        None => h.update(b"1"),
    }
    let d = h.digest().bytes();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_be_bytes(first)
}

/// One committed record as anti-entropy lists it (`BW.BUCKETS`, `bw_buckets`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AeEntry {
    /// The key.
    pub key: Bytes,
    /// Its committed version.
    pub version: Version,
    /// Whether the record is a tombstone.
    pub tombstone: bool,
    /// [`record_hash`] of the record.
    pub hash: u64,
}

/// One replica's digest: per bucket, the XOR of the hashes of its committed records.
#[derive(Clone, PartialEq, Eq)]
pub struct Digest {
    buckets: Box<[u64; AE_BUCKETS]>,
}

impl Default for Digest {
    fn default() -> Self {
        Digest {
            buckets: Box::new([0; AE_BUCKETS]),
        }
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nonzero = self.buckets.iter().filter(|b| **b != 0).count();
        f.debug_struct("Digest")
            .field("nonzero_buckets", &nonzero)
            .finish()
    }
}

/// Wire length of a digest: every bucket as 8 big-endian bytes.
pub const DIGEST_WIRE_LEN: usize = AE_BUCKETS * 8;

impl Digest {
    /// Adds a record whose hash is `hash` to `bucket` (XOR: adding twice removes it).
    pub fn add(&mut self, bucket: u16, hash: u64) {
        self.buckets[usize::from(bucket) % AE_BUCKETS] ^= hash;
    }

    /// Adds the committed record `(key, version, value)`.
    pub fn add_record(&mut self, key: &[u8], version: Version, value: Option<&[u8]>) {
        self.add(bucket(key), record_hash(key, version, value));
    }

    /// Merges another partial digest of disjoint records (e.g. a later scan chunk).
    pub fn merge(&mut self, other: &Digest) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a ^= *b;
        }
    }

    /// The value of one bucket.
    pub fn bucket(&self, bucket: u16) -> u64 {
        self.buckets[usize::from(bucket) % AE_BUCKETS]
    }

    /// Every bucket as 8 big-endian bytes, in bucket order (`BW.DIGEST`'s reply).
    pub fn to_wire(&self) -> Vec<u8> {
        self.buckets.iter().flat_map(|b| b.to_be_bytes()).collect()
    }

    /// Parses [`Digest::to_wire`]'s form; `None` unless exactly [`DIGEST_WIRE_LEN`] bytes.
    pub fn from_wire(wire: &[u8]) -> Option<Digest> {
        if wire.len() != DIGEST_WIRE_LEN {
            return None;
        }
        let mut d = Digest::default();
        for (slot, chunk) in d.buckets.iter_mut().zip(wire.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            *slot = u64::from_be_bytes(b);
        }
        Some(d)
    }

    /// Buckets whose value is not the same in every digest of `digests`, in order.
    pub fn differing(digests: &[&Digest]) -> Vec<u16> {
        let Some((first, rest)) = digests.split_first() else {
            return Vec::new();
        };
        (0..AE_BUCKETS)
            .filter(|&i| rest.iter().any(|d| d.buckets[i] != first.buckets[i]))
            .filter_map(|i| u16::try_from(i).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(ms: u64) -> Version {
        Version {
            physical_ms: ms,
            logical: 0,
            writer: 7,
        }
    }

    #[test]
    fn bucket_and_hash_match_the_lua_definitions() {
        // SHA-1("k") = 13fbd79c3d390e5d6585a21e11ff5ec1970cff0c: bucket 0x13f.
        assert_eq!(bucket(b"k"), 0x13f);
        // hashlib.sha1(b"k\x00000000000001000000000007\x000v").hexdigest()[:16], in
        // Python: computed independently of this crate.
        let expected = 0x70ef_bc3a_caab_bc20;
        assert_eq!(record_hash(b"k", v(1), Some(b"v")), expected);
        assert_ne!(
            record_hash(b"k", v(1), Some(b"")),
            record_hash(b"k", v(1), None),
            "an empty value and a tombstone differ"
        );
    }

    #[test]
    fn digests_are_order_independent_and_find_differences() {
        let mut a = Digest::default();
        let mut b = Digest::default();
        a.add_record(b"x", v(1), Some(b"1"));
        a.add_record(b"y", v(2), None);
        b.add_record(b"y", v(2), None);
        b.add_record(b"x", v(1), Some(b"1"));
        assert_eq!(a, b);
        assert!(Digest::differing(&[&a, &b]).is_empty());

        b.add_record(b"z", v(3), Some(b"3"));
        assert_eq!(Digest::differing(&[&a, &b]), vec![bucket(b"z")]);
        // Removing by adding again.
        b.add_record(b"z", v(3), Some(b"3"));
        assert_eq!(a, b);

        let wire = a.to_wire();
        assert_eq!(wire.len(), DIGEST_WIRE_LEN);
        assert_eq!(Digest::from_wire(&wire), Some(a.clone()));
        assert_eq!(Digest::from_wire(&wire[1..]), None);

        let mut merged = Digest::default();
        let mut part = Digest::default();
        part.add_record(b"x", v(1), Some(b"1"));
        merged.merge(&part);
        let mut part = Digest::default();
        part.add_record(b"y", v(2), None);
        merged.merge(&part);
        assert_eq!(merged, a);
    }
}
