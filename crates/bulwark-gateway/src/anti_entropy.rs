//! Anti-entropy (SPEC HARD-6; `docs/ARCHITECTURE.md`, "Anti-entropy"): periodic
//! comparison of the replicas' committed records, repairing every difference whether or
//! not anyone reads the key.
//!
//! A round fetches each reachable replica's digest ([`bulwark_core::ae::Digest`]), lists
//! the records of the buckets that differ, and plans each key with [`plan`] (a pure
//! function): the newest committed version wins; equal versions with different bytes are
//! corrupt copies, settled by a strict majority of their holders or reported as a
//! conflict. Repairs copy the winning record, read back from a replica that holds it,
//! with `BW.REPAIR`.
//!
//! The round uses clients of its own (one connection per replica, the anti-entropy
//! timeout), so a scan never queues behind or in front of the request path's pipelined
//! calls; it consults the request path's breakers only to skip replicas known to be down.

use std::collections::HashMap;
use std::time::Duration;

use bulwark_core::Version;
use bulwark_core::ae::{self, AeEntry, Digest};
use bulwark_obs::events::{AntiEntropyConflict, AntiEntropyRepair, AntiEntropyRound, Emit};
use bulwark_replica::{Dialect, ReplicaClient, ReplicaSpec, ReplicaTls};
use bytes::Bytes;
use futures::future::join_all;
use serde::Serialize;

use crate::replicas::ReplicaSet;
use crate::routing::Routing;

/// Buckets listed per call (a call's reply then holds about 1/16 of the key space at
/// most, when every bucket differs).
const BUCKETS_PER_CALL: usize = 256;

/// Settings of anti-entropy (`ANTI_ENTROPY_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AntiEntropyConfig {
    /// Time between rounds (±20 % jitter); `None` disables the periodic rounds (the admin
    /// endpoint still runs one on demand). `ANTI_ENTROPY_INTERVAL_SEC` (default 30, 0 off).
    pub interval: Option<Duration>,
    /// Bound on each digest, listing or repair call. `ANTI_ENTROPY_TIMEOUT_SEC` (default 5).
    pub timeout: Duration,
    /// Differing buckets examined per round; the rest wait for the next round.
    /// `ANTI_ENTROPY_MAX_BUCKETS` (default 512).
    pub max_buckets: usize,
    /// Keys repaired per round. `ANTI_ENTROPY_MAX_KEYS` (default 10000).
    pub max_keys: usize,
}

/// Why a replica needs a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// It does not hold the key at all.
    Missing,
    /// It holds an older version.
    Stale,
    /// It holds the same version with different bytes, against a majority.
    Corrupt,
}

impl Reason {
    /// Label in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Stale => "stale",
            Reason::Corrupt => "corrupt",
        }
    }
}

/// What one key needs, from the listings of the replicas that answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Every replica that answered holds the same record.
    InSync,
    /// Copy `(version, hash)` from `source` to each target.
    Repair {
        /// A replica holding the winning record.
        source: usize,
        /// The winning version.
        version: Version,
        /// The winning record's hash (checked again on the copy read from `source`).
        hash: u64,
        /// Replicas to write, with why.
        targets: Vec<(usize, Reason)>,
    },
    /// Replicas hold different bytes for the newest version and none has a strict
    /// majority: nothing is written.
    Conflict {
        /// The disputed version.
        version: Version,
        /// `(replica, hash)` of every holder.
        holders: Vec<(usize, u64)>,
    },
}

/// Plans one key. `responders` are the replicas whose listing succeeded; `present` holds,
/// for those that have the key, `(replica, version, hash)`.
pub fn plan(responders: &[usize], present: &[(usize, Version, u64)]) -> Plan {
    let Some(newest) = present.iter().map(|p| p.1).max() else {
        return Plan::InSync;
    };
    let holders: Vec<(usize, u64)> = present
        .iter()
        .filter(|p| p.1 == newest)
        .map(|p| (p.0, p.2))
        .collect();
    // Copies of the newest version, grouped by bytes (hash), largest group first.
    let mut groups: Vec<(u64, Vec<usize>)> = Vec::new();
    for (r, h) in &holders {
        match groups.iter_mut().find(|(g, _)| g == h) {
            Some((_, members)) => members.push(*r),
            None => groups.push((*h, vec![*r])),
        }
    }
    groups.sort_by_key(|g| std::cmp::Reverse(g.1.len()));
    let (hash, winners) = match groups.as_slice() {
        [only] => only.clone(),
        [first, ..] if 2 * first.1.len() > holders.len() => first.clone(),
        _ => {
            return Plan::Conflict {
                version: newest,
                holders,
            };
        }
    };
    let targets: Vec<(usize, Reason)> = responders
        .iter()
        .filter(|r| !winners.contains(r))
        .map(|r| {
            let reason = match present.iter().find(|p| p.0 == *r) {
                None => Reason::Missing,
                Some(p) if p.1 < newest => Reason::Stale,
                Some(_) => Reason::Corrupt,
            };
            (*r, reason)
        })
        .collect();
    if targets.is_empty() {
        return Plan::InSync;
    }
    Plan::Repair {
        source: winners[0],
        version: newest,
        hash,
        targets,
    }
}

/// What a round did, as `POST /v1/admin/anti-entropy` returns it and the round event logs.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct RoundSummary {
    /// `in_sync`, `repaired`, `conflict`, `incomplete` or `skipped`.
    pub result: &'static str,
    /// Replicas whose digests were compared.
    pub compared: Vec<String>,
    /// Replicas left out: breaker OPEN, or their digest call failed.
    pub skipped: Vec<String>,
    /// Digest buckets that differed.
    pub divergent_buckets: usize,
    /// Buckets listed key by key this round (at most `max_buckets`).
    pub buckets_examined: usize,
    /// Keys compared record by record.
    pub keys_compared: usize,
    /// Keys that needed repair beyond `max_keys`, left for the next round.
    pub keys_deferred: usize,
    /// Records written, per replica and reason.
    pub repaired: Vec<RepairCount>,
    /// Keys with conflicting copies and no majority.
    pub conflicts: usize,
    /// Calls that failed (the work they would have done is left for the next round).
    pub errors: usize,
    /// Wall time of the round.
    pub duration_ms: u64,
}

/// Records written to one replica for one reason.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RepairCount {
    /// The replica.
    pub node: String,
    /// Why.
    pub reason: Reason,
    /// How many records.
    pub count: usize,
}

impl RoundSummary {
    /// Records written in all.
    pub fn total_repaired(&self) -> usize {
        self.repaired.iter().map(|r| r.count).sum()
    }

    fn count(&mut self, node: &str, reason: Reason) {
        match self
            .repaired
            .iter_mut()
            .find(|r| r.node == node && r.reason == reason)
        {
            Some(r) => r.count += 1,
            None => self.repaired.push(RepairCount {
                node: node.to_owned(),
                reason,
                count: 1,
            }),
        }
    }
}

/// The anti-entropy task of one gateway.
#[derive(Debug)]
pub struct AntiEntropy {
    /// One client per replica (index-aligned with the gateway's replica set), with the
    /// anti-entropy timeout and a connection of its own.
    clients: Vec<ReplicaClient>,
    /// Settings.
    pub config: AntiEntropyConfig,
    /// One round at a time (periodic and on-demand rounds queue here).
    round: tokio::sync::Mutex<()>,
}

impl AntiEntropy {
    /// Clients for `replicas` (own connections, `config.timeout`, over `tls` if given).
    pub fn new(
        replicas: &[ReplicaSpec],
        dialect: Dialect,
        tls: Option<&ReplicaTls>,
        config: AntiEntropyConfig,
    ) -> Self {
        let clients = replicas
            .iter()
            .map(|spec| {
                ReplicaClient::with_tls(spec.clone(), dialect, config.timeout, tls.cloned())
            })
            .collect();
        AntiEntropy {
            clients,
            config,
            round: tokio::sync::Mutex::new(()),
        }
    }

    /// Runs one round over the replicas of `set` whose breakers are not OPEN, logs
    /// `ANTI_ENTROPY_ROUND` and returns its summary. Each key is compared and repaired
    /// only among the replicas that hold it (`routing`).
    pub async fn round(&self, set: &ReplicaSet, routing: &Routing, service: &str) -> RoundSummary {
        let _one_at_a_time = self.round.lock().await;
        let started = tokio::time::Instant::now();
        let mut summary = RoundSummary::default();
        self.run(set, routing, &mut summary).await;
        summary.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        summary.result = if summary.compared.len() < 2 {
            "skipped"
        } else if summary.conflicts > 0 {
            "conflict"
        } else if summary.errors > 0
            || summary.keys_deferred > 0
            || summary.buckets_examined < summary.divergent_buckets
        {
            "incomplete"
        } else if summary.total_repaired() > 0 {
            "repaired"
        } else {
            "in_sync"
        };
        AntiEntropyRound {
            service,
            result: summary.result,
            compared: &summary.compared.join(","),
            skipped: &summary.skipped.join(","),
            divergent_buckets: summary.divergent_buckets,
            keys_compared: summary.keys_compared,
            repaired: summary.total_repaired(),
            conflicts: summary.conflicts,
            errors: summary.errors,
            duration: started.elapsed(),
        }
        .emit();
        summary
    }

    async fn run(&self, set: &ReplicaSet, routing: &Routing, summary: &mut RoundSummary) {
        let mut candidates = Vec::new();
        for r in &set.replicas {
            if r.breaker.is_rejecting() {
                summary.skipped.push(r.name().to_owned());
            } else {
                candidates.push(r.index);
            }
        }
        let digests = join_all(candidates.iter().map(|&i| self.clients[i].digest())).await;
        let mut compared: Vec<(usize, Digest)> = Vec::new();
        for (i, d) in candidates.into_iter().zip(digests) {
            match d {
                Ok(d) => compared.push((i, d)),
                Err(e) => {
                    tracing::warn!(event = "ANTI_ENTROPY_ERROR", node = self.name(i), op = "digest", error = %e);
                    summary.errors += 1;
                    summary.skipped.push(self.name(i).to_owned());
                }
            }
        }
        summary.compared = compared
            .iter()
            .map(|(i, _)| self.name(*i).to_owned())
            .collect();
        if compared.len() < 2 {
            return;
        }
        let refs: Vec<&Digest> = compared.iter().map(|(_, d)| d).collect();
        let differing = Digest::differing(&refs);
        summary.divergent_buckets = differing.len();
        let replicas: Vec<usize> = compared.iter().map(|(i, _)| *i).collect();
        let mut keys_left = self.config.max_keys;
        let examined: Vec<u16> = differing
            .iter()
            .take(self.config.max_buckets)
            .copied()
            .collect();
        for chunk in examined.chunks(BUCKETS_PER_CALL) {
            summary.buckets_examined += chunk.len();
            keys_left = self
                .repair_buckets(&replicas, routing, chunk, keys_left, summary)
                .await;
        }
    }

    /// Lists `buckets` on every replica, plans each key and applies the plans; returns how
    /// many more keys this round may repair.
    async fn repair_buckets(
        &self,
        replicas: &[usize],
        routing: &Routing,
        buckets: &[u16],
        mut keys_left: usize,
        summary: &mut RoundSummary,
    ) -> usize {
        let listings = join_all(
            replicas
                .iter()
                .map(|&i| self.clients[i].bucket_entries(buckets)),
        )
        .await;
        let mut responders = Vec::new();
        let mut by_key: HashMap<Bytes, Vec<(usize, Version, u64)>> = HashMap::new();
        for (&i, listing) in replicas.iter().zip(listings) {
            match listing {
                Ok(entries) => {
                    responders.push(i);
                    for AeEntry {
                        key, version, hash, ..
                    } in entries
                    {
                        by_key.entry(key).or_default().push((i, version, hash));
                    }
                }
                Err(e) => {
                    tracing::warn!(event = "ANTI_ENTROPY_ERROR", node = self.name(i), op = "buckets", error = %e);
                    summary.errors += 1;
                }
            }
        }
        if responders.len() < 2 {
            return keys_left;
        }
        for (key, mut present) in by_key {
            // A sharded key is compared among its own replicas only: a replica that does
            // not hold it is neither a source nor a target.
            let owners = routing.replicas(&key);
            let holders: Vec<usize> = responders
                .iter()
                .copied()
                .filter(|i| owners.contains(i))
                .collect();
            if holders.len() < 2 {
                continue;
            }
            present.retain(|p| holders.contains(&p.0));
            summary.keys_compared += 1;
            match plan(&holders, &present) {
                Plan::InSync => {}
                Plan::Conflict { version, holders } => {
                    summary.conflicts += 1;
                    let holders: Vec<String> = holders
                        .iter()
                        .map(|(r, h)| format!("{}:{h:016x}", self.name(*r)))
                        .collect();
                    AntiEntropyConflict {
                        key: &String::from_utf8_lossy(&key),
                        version: &version.to_string(),
                        holders: &holders.join(","),
                    }
                    .emit();
                }
                Plan::Repair {
                    source,
                    version,
                    hash,
                    targets,
                } => {
                    if keys_left == 0 {
                        summary.keys_deferred += 1;
                        continue;
                    }
                    keys_left -= 1;
                    self.apply(&key, source, version, hash, &targets, summary)
                        .await;
                }
            }
        }
        keys_left
    }

    /// Reads the winning record back from `source` (a durable read) and writes it to each
    /// target with `BW.REPAIR`. Skips the key if `source` no longer holds exactly that
    /// record (it changed since the listing; the next round looks again).
    async fn apply(
        &self,
        key: &[u8],
        source: usize,
        version: Version,
        hash: u64,
        targets: &[(usize, Reason)],
        summary: &mut RoundSummary,
    ) {
        let record = match self.clients[source].get(key).await {
            Ok(state) => state.committed,
            Err(e) => {
                tracing::warn!(event = "ANTI_ENTROPY_ERROR", node = self.name(source), op = "get", error = %e);
                summary.errors += 1;
                return;
            }
        };
        let Some(record) = record.filter(|r| {
            r.version == version && ae::record_hash(key, r.version, r.value.as_deref()) == hash
        }) else {
            return;
        };
        let writes = targets
            .iter()
            .map(|(t, _)| self.clients[*t].repair(key, record.version, record.value.as_deref()));
        let results = join_all(writes).await;
        let key_text = String::from_utf8_lossy(key);
        let version_text = version.to_string();
        for ((t, reason), result) in targets.iter().zip(results) {
            match result {
                Ok(r) if r.applied => {
                    summary.count(self.name(*t), *reason);
                    AntiEntropyRepair {
                        node: self.name(*t),
                        key: &key_text,
                        version: &version_text,
                        reason: reason.as_str(),
                    }
                    .emit();
                }
                // Not applied: the target moved on to a newer version meanwhile.
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(event = "ANTI_ENTROPY_ERROR", node = self.name(*t), op = "repair", error = %e);
                    summary.errors += 1;
                }
            }
        }
    }

    fn name(&self, replica: usize) -> &str {
        self.clients[replica].name()
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
    fn newest_version_wins_and_names_missing_and_stale_replicas() {
        let all = [0, 1, 2];
        assert_eq!(plan(&all, &[]), Plan::InSync);
        assert_eq!(
            plan(&all, &[(0, v(2), 9), (1, v(2), 9), (2, v(2), 9)]),
            Plan::InSync
        );
        assert_eq!(
            plan(&all, &[(1, v(1), 5), (2, v(3), 7)]),
            Plan::Repair {
                source: 2,
                version: v(3),
                hash: 7,
                targets: vec![(0, Reason::Missing), (1, Reason::Stale)],
            }
        );
        // Only replicas that answered are targets.
        assert_eq!(
            plan(&[1, 2], &[(2, v(3), 7)]),
            Plan::Repair {
                source: 2,
                version: v(3),
                hash: 7,
                targets: vec![(1, Reason::Missing)],
            }
        );
    }

    #[test]
    fn corrupt_copies_lose_to_a_strict_majority_or_are_a_conflict() {
        let all = [0, 1, 2];
        assert_eq!(
            plan(&all, &[(0, v(2), 9), (1, v(2), 6), (2, v(2), 9)]),
            Plan::Repair {
                source: 0,
                version: v(2),
                hash: 9,
                targets: vec![(1, Reason::Corrupt)],
            }
        );
        // Two holders, one copy each: no majority, nothing written — even to a stale
        // replica, since which bytes are right is unknown.
        assert_eq!(
            plan(&all, &[(0, v(2), 9), (1, v(2), 6), (2, v(1), 1)]),
            Plan::Conflict {
                version: v(2),
                holders: vec![(0, 9), (1, 6)],
            }
        );
        // Older versions do not vote: the majority is among holders of the newest.
        assert_eq!(
            plan(&[0, 1], &[(0, v(2), 9), (1, v(2), 6)]),
            Plan::Conflict {
                version: v(2),
                holders: vec![(0, 9), (1, 6)],
            }
        );
    }
}
