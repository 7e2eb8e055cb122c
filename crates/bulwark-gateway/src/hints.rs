//! Hinted handoff (SPEC CAP-4, HARD-6): writes a replica missed, kept by the gateway and
//! delivered when the replica is reachable again.
//!
//! Under last-write-wins only the newest missed write of a key needs delivering, so a
//! hint per (replica, key) keeps the newest version and value, plus the oldest missed
//! version for staleness (SPEC CAP-6). The queue is bounded (`MAX_HINTS` keys per
//! replica); when full, new hints are refused and counted, and the replica is left to
//! read repair. Hints live in memory: a gateway crash loses them (the write itself is
//! durable on the replicas that acknowledged it).

use std::collections::HashMap;
use std::sync::Mutex;

use bulwark_core::Version;
use bulwark_obs::metrics::metrics;
use bytes::Bytes;

/// The newest missed write of one key for one replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hint {
    /// Oldest version of this key the replica missed (for staleness).
    pub oldest: Version,
    /// Newest version of this key the replica missed (the one to deliver).
    pub latest: Version,
    /// The value at `latest`, `None` for a deletion.
    pub value: Option<Bytes>,
}

/// Hints for every replica.
#[derive(Debug)]
pub struct Hints {
    /// Replica names, index-aligned with `queues`, for metric labels.
    names: Vec<String>,
    /// Per replica: key → hint. A std mutex, never held across an await.
    queues: Vec<Mutex<HashMap<Bytes, Hint>>>,
    /// Keys per replica beyond which hints are refused.
    max_keys: usize,
}

impl Hints {
    /// Empty queues for the named replicas.
    pub fn new(names: Vec<String>, max_keys: usize) -> Self {
        let queues = names.iter().map(|_| Mutex::new(HashMap::new())).collect();
        Hints {
            names,
            queues,
            max_keys,
        }
    }

    fn queue(&self, replica: usize) -> std::sync::MutexGuard<'_, HashMap<Bytes, Hint>> {
        self.queues[replica]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Records that `replica` missed `key` at `version`. Returns false if the queue is
    /// full and the hint was refused.
    pub fn add(&self, replica: usize, key: &[u8], version: Version, value: Option<Bytes>) -> bool {
        let mut q = self.queue(replica);
        let len = q.len();
        let accepted = match q.get_mut(key) {
            Some(h) => {
                h.oldest = h.oldest.min(version);
                if version > h.latest {
                    h.latest = version;
                    h.value = value;
                }
                true
            }
            None if len < self.max_keys => {
                q.insert(
                    Bytes::copy_from_slice(key),
                    Hint {
                        oldest: version,
                        latest: version,
                        value,
                    },
                );
                true
            }
            None => false,
        };
        self.publish(replica, &q);
        accepted
    }

    /// The hint for `key` on `replica`, if any.
    pub fn get(&self, replica: usize, key: &[u8]) -> Option<Hint> {
        self.queue(replica).get(key).cloned()
    }

    /// Up to `max` hints to deliver to `replica`.
    pub fn batch(&self, replica: usize, max: usize) -> Vec<(Bytes, Hint)> {
        self.queue(replica)
            .iter()
            .take(max)
            .map(|(k, h)| (k.clone(), h.clone()))
            .collect()
    }

    /// Removes the hint for `key` if the replica now holds a version at least `delivered`
    /// (a newer hint that arrived meanwhile stays).
    pub fn delivered(&self, replica: usize, key: &[u8], delivered: Version) {
        let mut q = self.queue(replica);
        if q.get(key).is_some_and(|h| h.latest <= delivered) {
            q.remove(key);
        }
        self.publish(replica, &q);
    }

    /// Hints queued for `replica`.
    pub fn depth(&self, replica: usize) -> usize {
        self.queue(replica).len()
    }

    /// Hints queued for all replicas.
    pub fn total(&self) -> usize {
        (0..self.queues.len()).map(|r| self.depth(r)).sum()
    }

    /// Updates `hint_queue_depth` for `replica` (O(1): called on every change).
    fn publish(&self, replica: usize, q: &HashMap<Bytes, Hint>) {
        metrics()
            .hint_queue_depth
            .with_label_values(&[self.names[replica].as_str()])
            .set(q.len() as i64);
    }

    /// Updates `replication_lag_ms` (age of the oldest missed write) for every replica at
    /// `now_ms`. Scans the queues, so it runs on the handoff tick, not per write.
    pub fn publish_lag(&self, now_ms: u64) {
        let m = metrics();
        for (replica, name) in self.names.iter().enumerate() {
            let oldest = self
                .queue(replica)
                .values()
                .map(|h| h.oldest.physical_ms)
                .min();
            let lag = oldest.map_or(0, |ms| now_ms.saturating_sub(ms));
            m.replication_lag_ms
                .with_label_values(&[name.as_str()])
                .set(i64::try_from(lag).unwrap_or(i64::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(ms: u64) -> Version {
        Version {
            physical_ms: ms,
            logical: 0,
            writer: 1,
        }
    }

    #[test]
    fn keeps_oldest_for_staleness_and_newest_for_delivery() {
        let h = Hints::new(vec!["a".into()], 10);
        assert!(h.add(0, b"k", v(2), Some(Bytes::from_static(b"two"))));
        assert!(h.add(0, b"k", v(1), Some(Bytes::from_static(b"one"))));
        assert!(h.add(0, b"k", v(3), None));
        let hint = h.get(0, b"k").unwrap();
        assert_eq!((hint.oldest, hint.latest, hint.value), (v(1), v(3), None));
    }

    #[test]
    fn delivery_of_an_older_version_keeps_a_newer_hint() {
        let h = Hints::new(vec!["a".into()], 10);
        h.add(0, b"k", v(5), None);
        h.delivered(0, b"k", v(4));
        assert_eq!(h.depth(0), 1);
        h.delivered(0, b"k", v(5));
        assert_eq!(h.depth(0), 0);
    }

    #[test]
    fn bounded_per_replica() {
        let h = Hints::new(vec!["a".into()], 2);
        assert!(h.add(0, b"k1", v(1), None));
        assert!(h.add(0, b"k2", v(1), None));
        assert!(!h.add(0, b"k3", v(1), None));
        assert!(
            h.add(0, b"k1", v(2), None),
            "updating an existing key is always allowed"
        );
        assert_eq!(h.total(), 2);
    }
}
