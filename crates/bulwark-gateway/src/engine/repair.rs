//! Read repair and the resolution of undecided writes, in the background after a read.

use std::time::Duration;

use bulwark_core::{PendingRef, Record, Version};
use bulwark_replica::ReplicaClient;
use bytes::Bytes;

use super::{Answers, Engine};

impl Engine {
    /// Schedules read repair and resolution of undecided writes for `key` in the
    /// background, if there is anything to do and capacity to do it.
    pub(super) fn repair(&self, key: &[u8], answers: Answers) {
        let Some(work) = self.repair_work(key, answers) else {
            return;
        };
        let Ok(permit) = self.repairs.clone().try_acquire_owned() else {
            return;
        };
        let clients = self.clients();
        let in_doubt = self.config.in_doubt_timeout;
        tokio::spawn(async move {
            work.run(&clients, in_doubt).await;
            drop(permit);
        });
    }

    /// The repair a read's answers call for, if any: lagging replicas to bring up to the
    /// newest committed record, undecided writes to resolve.
    pub(super) fn repair_work(&self, key: &[u8], answers: Answers) -> Option<RepairWork> {
        let newest = answers
            .iter()
            .filter_map(|(_, s)| s.committed.clone())
            .max_by_key(|r| r.version);
        let lagging: Vec<usize> = answers
            .iter()
            .filter(|(_, s)| {
                newest
                    .as_ref()
                    .is_some_and(|n| s.committed_version() < n.version)
            })
            .map(|(i, _)| *i)
            .collect();
        let undecided: Vec<(usize, PendingRef)> = answers
            .iter()
            .flat_map(|(i, s)| s.pending.iter().map(|p| (*i, p.clone())))
            .collect();
        if lagging.is_empty() && undecided.is_empty() {
            return None;
        }
        Some(RepairWork {
            key: Bytes::copy_from_slice(key),
            newest,
            lagging,
            undecided,
            answers,
            now_ms: self.hlc.now_ms(),
        })
    }
}

/// Background repair of one key after a read.
pub(super) struct RepairWork {
    key: Bytes,
    newest: Option<Record>,
    lagging: Vec<usize>,
    undecided: Vec<(usize, PendingRef)>,
    answers: Answers,
    now_ms: u64,
}

impl RepairWork {
    pub(super) async fn run(self, clients: &[ReplicaClient], in_doubt: Duration) {
        // Read repair: bring lagging replicas up to the newest committed record.
        if let Some(newest) = &self.newest {
            for i in &self.lagging {
                let _ = clients[*i]
                    .put(&self.key, newest.version, newest.value.as_deref())
                    .await;
            }
        }
        // Resolution of undecided writes old enough to be in doubt. A decision taken at a
        // coordinator in this run applies to every other replica holding the same write
        // (the answers snapshot still shows it pending there).
        let in_doubt_ms = in_doubt.as_millis() as u64;
        let mut decided: Vec<(Version, bool)> = Vec::new();
        for (i, p) in &self.undecided {
            if p.version.age_ms(self.now_ms) < in_doubt_ms {
                continue;
            }
            let Some(c) = clients.iter().position(|c| c.name() == p.coordinator) else {
                continue;
            };
            let Some((_, coord)) = self.answers.iter().find(|(j, _)| *j == c) else {
                continue;
            };
            let coord_committed = coord.committed_version();
            let coord_pending = coord.pending.iter().any(|q| q.version == p.version);
            let earlier = decided
                .iter()
                .find(|(v, _)| *v == p.version)
                .map(|(_, c)| *c);
            let committed = if let Some(committed) = earlier {
                committed
            } else if coord_committed == p.version {
                true
            } else if coord_pending {
                // Still undecided at the coordinator: decide abort there first. If the
                // coordinator no longer has it (a late commit won), leave it for the
                // next read to see the decision.
                match clients[c].abort(&self.key, p.version).await {
                    Ok(true) => false,
                    _ => continue,
                }
            } else {
                // Committed and superseded (coordinator ≥ p), or aborted (coordinator < p
                // without it): either way the replica's pending record is obsolete.
                false
            };
            if earlier.is_none() {
                decided.push((p.version, committed));
            }
            if *i != c {
                let _ = if committed {
                    clients[*i].commit(&self.key, p.version).await
                } else {
                    clients[*i].abort(&self.key, p.version).await
                };
            }
        }
    }
}
