//! The in-memory index: every key's committed record and pending writes, as Redis keeps
//! its whole data set in memory.
//!
//! fjall stays the durable log (journal + LSM), written on every change and loaded into
//! the index at open; the index answers every read, so GET is a hash lookup and a write
//! needs no LSM read before it. A shard's mutex is held across the fjall write *and* the
//! index update, so for each key the journal order and the in-memory order are the same:
//! what a replay rebuilds after a crash is a prefix of what memory showed.

use std::collections::HashMap;
use std::ops::DerefMut;
use std::sync::{Mutex, MutexGuard};

use bulwark_core::Version;
use bytes::Bytes;
use fjall::Keyspace;

use crate::StorageError;
use crate::codec::{self, Committed};

/// Number of shards. A power of two well above the core count, so that connections
/// rarely wait for each other on unrelated keys.
pub(crate) const SHARDS: usize = 256;

/// Estimated bytes of bookkeeping per key beyond its key and value bytes: the hash-table
/// slot (key handle + entry), allocator headers, and the shared record allocation's
/// header. An estimate for `INFO used_memory` and `maxmemory`, not an exact figure.
const ENTRY_OVERHEAD: usize = std::mem::size_of::<(Bytes, Entry)>() + 48;

/// Estimated bytes per pending write beyond its value and coordinator name.
const PENDING_OVERHEAD: usize = std::mem::size_of::<PendingRec>() + 32;

/// One prepared write held in memory.
#[derive(Clone, Debug)]
pub(crate) struct PendingRec {
    /// The write's version (its identity within the key).
    pub version: Version,
    /// The coordinator replica named at prepare.
    pub coordinator: String,
    /// The value, or `None` for a tombstone.
    pub value: Option<Bytes>,
}

/// Everything the index knows about one key.
#[derive(Debug, Default)]
pub(crate) struct Entry {
    /// The committed record, if the key was ever committed.
    pub committed: Option<Committed>,
    /// Prepared writes, sorted by version (oldest first), at most `MAX_PENDING`.
    pub pending: Vec<PendingRec>,
    /// Journal sequence number of the last protocol change (prepare, commit, abort) to
    /// this key; 0 if none since open. A read must not reveal this state before that
    /// sequence number is fsynced (see `Store::get_deferred`).
    pub proto_seq: u64,
}

impl Entry {
    /// Estimated memory held for this entry under a key of `key_len` bytes.
    pub fn footprint(&self, key_len: usize) -> usize {
        let committed = self.committed.as_ref().map_or(0, |c| {
            c.value.as_ref().map_or(0, Bytes::len) + codec::COMMITTED_HEADER
        });
        let pending: usize = self
            .pending
            .iter()
            .map(|p| {
                PENDING_OVERHEAD + p.coordinator.len() + p.value.as_ref().map_or(0, Bytes::len)
            })
            .sum();
        ENTRY_OVERHEAD + key_len + committed + pending
    }

    /// Position of pending `version`, or where it would be inserted.
    pub fn find_pending(&self, version: Version) -> Result<usize, usize> {
        self.pending.binary_search_by(|p| p.version.cmp(&version))
    }
}

/// One shard: key → entry.
pub(crate) type Map = HashMap<Bytes, Entry>;

/// The sharded index.
pub(crate) struct Index {
    shards: Box<[Mutex<Map>]>,
}

/// FNV-1a: cheap and good enough to spread keys over shards (the maps themselves use
/// std's keyed SipHash, so a client cannot flood one map's buckets).
fn fnv1a(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The shard holding `key`.
pub(crate) fn shard_of(key: &[u8]) -> usize {
    (fnv1a(key) as usize) & (SHARDS - 1)
}

impl Index {
    /// An index over already loaded shards (`maps.len()` must be [`SHARDS`]).
    pub fn new(maps: Vec<Map>) -> Index {
        Index {
            shards: maps.into_iter().map(Mutex::new).collect(),
        }
    }

    /// Locks the shard holding `key`. Never held across an `.await`.
    pub fn shard(&self, key: &[u8]) -> MutexGuard<'_, Map> {
        self.shards[shard_of(key)]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Handles to the committed records of shard `shard` (keys and values are
    /// reference-counted: nothing is copied), taken under the shard's lock.
    pub fn committed_in_shard(&self, shard: usize) -> Vec<(Bytes, Committed)> {
        let map = self.shards[shard]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.iter()
            .filter_map(|(k, e)| e.committed.clone().map(|c| (k.clone(), c)))
            .collect()
    }

    /// Every shard, in order (no deadlock with single-shard holders).
    pub fn lock_all(&self) -> Vec<MutexGuard<'_, Map>> {
        self.shards
            .iter()
            .map(|m| m.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
            .collect()
    }
}

/// What [`load`] found.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub live_keys: u64,
    pub tombstones: u64,
    pub pending: u64,
    pub bytes: u64,
}

/// Fills `maps` (one per shard, cleared first) from the durable keyspaces.
pub(crate) fn load<G: DerefMut<Target = Map>>(
    committed: &Keyspace,
    pending: &Keyspace,
    maps: &mut [G],
) -> Result<Loaded, StorageError> {
    for m in maps.iter_mut() {
        m.clear();
    }
    let mut out = Loaded::default();
    for kv in committed.iter() {
        let (k, v) = kv.into_inner()?;
        let key = Bytes::from(k);
        let c = codec::decode_committed(&key, Bytes::from(v))?;
        match c.value {
            Some(_) => out.live_keys += 1,
            None => out.tombstones += 1,
        }
        maps[shard_of(&key)].entry(key).or_default().committed = Some(c);
    }
    for kv in pending.iter() {
        let (k, v) = kv.into_inner()?;
        let Some((key, version)) = codec::split_pending_key(&k) else {
            return Err(StorageError::CorruptRecord {
                key: String::from_utf8_lossy(&k).chars().take(80).collect(),
                reason: "bad pending key",
            });
        };
        let p = codec::decode_pending(key, Bytes::from(v))?;
        out.pending += 1;
        let entry = maps[shard_of(key)]
            .entry(Bytes::copy_from_slice(key))
            .or_default();
        // The keyspace iterates in key order, so versions arrive sorted; stay safe anyway.
        let at = entry.find_pending(version).unwrap_or_else(|i| i);
        entry.pending.insert(
            at,
            PendingRec {
                version,
                coordinator: p.coordinator,
                value: p.value,
            },
        );
    }
    out.bytes = maps
        .iter()
        .flat_map(|m| m.iter())
        .map(|(k, e)| e.footprint(k.len()) as u64)
        .sum();
    Ok(out)
}
