//! CP and quorum writes: two-phase commit decided at the coordinator replica.

use bulwark_core::Version;
use bulwark_replica::PrepareReply;
use bytes::Bytes;
use futures::StreamExt as _;
use futures::future::join_all;

use super::{Engine, Stragglers, WriteOutcome};
use crate::replicas::{CallError, Replica};

/// Times a CP/quorum write is retried with a fresh version after a replica reported a
/// newer committed version (`STALE`) or too many undecided writes (`BUSY`).
const MAX_WRITE_ATTEMPTS: usize = 3;

/// What a two-phase write decided, for the prepares that answered after it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decision {
    /// Committed at the coordinator: commit late prepares.
    Commit,
    /// Aborted: abort late prepares.
    Abort,
    /// The coordinator's answer was lost: resolvers decide.
    Undecided,
}

/// The replicas of a two-phase write, as its commit needs them.
struct Participants<'a> {
    /// The key's replica set.
    owners: &'a [usize],
    /// Those whose prepare succeeded.
    acked: Vec<usize>,
    /// Those whose prepare was still in flight.
    pending: Vec<usize>,
}

impl Engine {
    /// CP and quorum: two-phase commit decided at the coordinator replica.
    pub(super) async fn write_2pc(
        &self,
        key: &[u8],
        value: Option<Bytes>,
        required: usize,
    ) -> WriteOutcome {
        let owners = self.routing.replicas(key);
        let mut attempt = 1;
        loop {
            // Fail fast, without touching the network, when the breakers already say the
            // quorum cannot be reached (SPEC CAP-5).
            let callable = self.set.callable_among(&owners);
            let Some(coordinator) = owners
                .iter()
                .map(|&i| &self.set.replicas[i])
                .find(|r| !r.breaker.is_rejecting())
            else {
                return WriteOutcome::Aborted {
                    version: self.hlc.now(),
                    acked: 0,
                    required,
                    reason: "every replica's circuit breaker is OPEN".into(),
                };
            };
            if callable < required {
                let open: Vec<_> = owners
                    .iter()
                    .map(|&i| &self.set.replicas[i])
                    .filter(|r| r.breaker.is_rejecting())
                    .map(|r| r.name())
                    .collect();
                return WriteOutcome::Aborted {
                    version: self.hlc.now(),
                    acked: 0,
                    required,
                    reason: format!("circuit breaker OPEN for {}", open.join(", ")),
                };
            }
            let version = self.hlc.now();
            let started = tokio::time::Instant::now();
            let coord_name = coordinator.name();
            let key_owned = Bytes::copy_from_slice(key);
            let mut calls = self.call_on(&owners, "prepare", |c| {
                let (key, value) = (key_owned.clone(), value.clone());
                let coordinator = coord_name.to_owned();
                async move {
                    c.prepare(&key, version, &coordinator, value.as_deref())
                        .await
                }
            });
            // Prepares are gathered until W of them, the coordinator's included, succeed
            // (then the rest are stragglers) or until all have answered.
            let mut results: Vec<Option<Result<PrepareReply, CallError>>> =
                (0..self.set.len()).map(|_| None).collect();
            while let Some((i, result)) = calls.next().await {
                results[i] = Some(result);
                let ok = |r: &Option<Result<PrepareReply, CallError>>| {
                    matches!(r, Some(Ok(PrepareReply::Ok)))
                };
                if results.iter().filter(|r| ok(r)).count() >= required
                    && ok(&results[coordinator.index])
                {
                    break;
                }
            }
            let mut acked = Vec::new();
            let mut pending = Vec::new();
            let mut to_abort = Vec::new();
            let mut retryable = false;
            let mut call_errors = 0;
            let mut hard_failures = Vec::new();
            for &i in &owners {
                let name = self.set.replicas[i].name();
                let Some(res) = results[i].take() else {
                    pending.push(i);
                    continue;
                };
                match res {
                    Ok(PrepareReply::Ok) => acked.push(i),
                    Ok(PrepareReply::Stale { committed }) => {
                        self.hlc.observe(committed);
                        retryable = true;
                        hard_failures.push(format!("{name}: holds newer version {committed}"));
                    }
                    Ok(PrepareReply::Busy) => {
                        retryable = true;
                        hard_failures.push(format!("{name}: too many undecided writes"));
                    }
                    Err(e) => {
                        call_errors += 1;
                        if !e.certainly_not_applied() {
                            to_abort.push(i);
                        }
                        hard_failures.push(format!("{name}: {e}"));
                    }
                }
            }
            let coordinator_acked = acked.contains(&coordinator.index);
            let in_time = started.elapsed() < self.config.prepare_deadline();
            if acked.len() >= required && coordinator_acked && in_time {
                let outcome = self
                    .commit(
                        key,
                        value.clone(),
                        version,
                        coordinator,
                        Participants {
                            owners: &owners,
                            acked,
                            pending,
                        },
                        required,
                    )
                    .await;
                let decision = match outcome {
                    WriteOutcome::Committed { .. } => Decision::Commit,
                    WriteOutcome::Aborted { .. } => Decision::Abort,
                    WriteOutcome::Unknown { .. } | WriteOutcome::Unavailable { .. } => {
                        Decision::Undecided
                    }
                };
                self.finish_prepares(calls, key_owned, version, value, decision)
                    .await;
                return outcome;
            }
            to_abort.extend(&acked);
            self.abort_everywhere(key, version, &to_abort).await;
            self.finish_prepares(calls, key_owned, version, value.clone(), Decision::Abort)
                .await;
            let reason = if !in_time {
                "prepare phase exceeded its deadline".to_string()
            } else if !coordinator_acked && acked.len() >= required {
                format!("coordinator {coord_name} did not acknowledge")
            } else {
                format!(
                    "{} of {required} replicas prepared ({})",
                    acked.len(),
                    hard_failures.join("; ")
                )
            };
            let outcome = WriteOutcome::Aborted {
                version,
                acked: acked.len(),
                required,
                reason,
            };
            // A STALE or BUSY refusal is not a failure of the replica: retry with a newer
            // version (the clock observed the newer one) after tidying undecided writes.
            if !retryable || call_errors > 0 || attempt == MAX_WRITE_ATTEMPTS {
                return outcome;
            }
            attempt += 1;
            if let Some(work) = self
                .read_answers(key)
                .await
                .and_then(|a| self.repair_work(key, a))
            {
                work.run(&self.clients(), self.config.in_doubt_timeout)
                    .await;
            }
        }
    }

    /// Commits at the coordinator (the linearization point), then at the others.
    async fn commit(
        &self,
        key: &[u8],
        value: Option<Bytes>,
        version: Version,
        coordinator: &Replica,
        participants: Participants<'_>,
        required: usize,
    ) -> WriteOutcome {
        let Participants {
            owners,
            acked,
            pending,
        } = participants;
        match self
            .set
            .call(
                coordinator,
                "commit",
                coordinator.client.commit(key, version),
            )
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                self.abort_everywhere(key, version, &acked).await;
                return WriteOutcome::Aborted {
                    version,
                    acked: acked.len(),
                    required,
                    reason: format!(
                        "coordinator {} no longer held the prepared write (aborted by a resolver)",
                        coordinator.name()
                    ),
                };
            }
            Err(e) if e.certainly_not_applied() => {
                // The commit never left this gateway, and only this gateway ever commits
                // the write at its coordinator: deciding abort is still ours to do.
                self.abort_everywhere(key, version, &acked).await;
                return WriteOutcome::Aborted {
                    version,
                    acked: acked.len(),
                    required,
                    reason: format!(
                        "commit could not be sent to coordinator {}: {e}",
                        coordinator.name()
                    ),
                };
            }
            Err(e) => {
                return WriteOutcome::Unknown {
                    version,
                    reason: format!(
                        "commit at coordinator {} failed: {e}; a resolver will decide",
                        coordinator.name()
                    ),
                };
            }
        }
        // Committed: the coordinator's durable commit is the decision. The others already
        // hold the write durably (prepared); their commits only spread the decision, so
        // the client does not wait for them. A commit that fails leaves a pending record
        // that resolution completes, and a hint delivers the value meanwhile.
        let others: Vec<usize> = acked
            .iter()
            .copied()
            .filter(|i| *i != coordinator.index)
            .collect();
        let behind: Vec<usize> = owners
            .iter()
            .copied()
            .filter(|i| !acked.contains(i) && !pending.contains(i))
            .collect();
        for i in &behind {
            self.hints.add(*i, key, version, value.clone());
        }
        if !others.is_empty() {
            let (set, hints) = (self.set.clone(), self.hints.clone());
            let key = Bytes::copy_from_slice(key);
            tokio::spawn(async move {
                let calls = others.iter().map(|i| {
                    let r = &set.replicas[*i];
                    set.call(r, "commit", r.client.commit(&key, version))
                });
                let results = join_all(calls).await;
                for (i, res) in others.iter().zip(results) {
                    if !matches!(res, Ok(true)) {
                        hints.add(*i, &key, version, value.clone());
                    }
                }
            });
        }
        WriteOutcome::Committed {
            version,
            acked: self.names(acked),
            behind: self.names(behind),
            pending: self.names(pending),
            coordinator: Some(coordinator.name().to_string()),
        }
    }

    /// Finishes a two-phase write's straggling prepares, in the background when a
    /// [`MAX_STRAGGLING_WRITES`](super::MAX_STRAGGLING_WRITES) permit is free (else before returning), applying the
    /// write's decision: a late successful prepare is committed (or aborted) like the
    /// others; a failed one, for a committed write, gets a hint. An undecided write is
    /// left to resolvers, as for the replicas that were waited for.
    async fn finish_prepares(
        &self,
        mut calls: Stragglers<PrepareReply>,
        key: Bytes,
        version: Version,
        value: Option<Bytes>,
        decision: Decision,
    ) {
        if calls.is_empty() {
            return;
        }
        let commit = match decision {
            Decision::Commit => true,
            Decision::Abort => false,
            Decision::Undecided => return,
        };
        let (set, hints) = (self.set.clone(), self.hints.clone());
        let permit = self.stragglers.clone().try_acquire_owned();
        let finish = async move {
            while let Some((i, result)) = calls.next().await {
                let r = &set.replicas[i];
                let prepared = matches!(result, Ok(PrepareReply::Ok));
                match (prepared, commit) {
                    (true, true) => {
                        let done = set.call(r, "commit", r.client.commit(&key, version)).await;
                        if !matches!(done, Ok(true)) {
                            hints.add(i, &key, version, value.clone());
                        }
                    }
                    (true, false) => {
                        let _ = set.call(r, "abort", r.client.abort(&key, version)).await;
                    }
                    (false, true) => {
                        hints.add(i, &key, version, value.clone());
                    }
                    (false, false) => {}
                }
            }
        };
        match permit {
            Ok(permit) => {
                tokio::spawn(async move {
                    finish.await;
                    drop(permit);
                });
            }
            Err(_) => finish.await,
        }
    }

    /// Best-effort abort of `version` on the given replicas. Correctness does not depend
    /// on it (only the writer commits, and it has decided not to); it frees the pending
    /// slots now rather than after the in-doubt timeout.
    async fn abort_everywhere(&self, key: &[u8], version: Version, replicas: &[usize]) {
        let calls = replicas.iter().map(|i| {
            let r = &self.set.replicas[*i];
            self.set.call(r, "abort", r.client.abort(key, version))
        });
        join_all(calls).await;
    }
}
