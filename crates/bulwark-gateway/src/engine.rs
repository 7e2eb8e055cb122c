//! Replicated reads and writes: the consistency protocol of `docs/ARCHITECTURE.md`.
//!
//! This module knows nothing about HTTP. It turns "write this key in CP mode" into
//! replica calls and returns a typed outcome; `http` maps outcomes to status codes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bulwark_core::{Hlc, PendingRef, Record, ReplicaState, Version};
use bulwark_obs::events::{ApStaleRisk, CpAborted, Emit, RywViolation, WriteOutcomeUnknown};
use bulwark_obs::metrics::metrics;
use bulwark_replica::{PrepareReply, PutReply, ReplicaClient, ReplicaError};
use bulwark_resilience::retry::{RetryPolicy, backoff_delay};
use bytes::Bytes;
use futures::StreamExt as _;
use futures::future::join_all;
use futures::stream::FuturesUnordered;
use tokio::sync::Semaphore;

use crate::anti_entropy::{AntiEntropy, RoundSummary};
use crate::config::GatewayConfig;
use crate::hints::Hints;
use crate::mode::Mode;
use crate::replicas::{CallError, Replica, ReplicaSet};
use crate::routing::Routing;
use crate::staleness::{self, Observation};

/// Background repairs (read repair, resolution of undecided writes) running at once.
/// Beyond this, a read skips scheduling repair rather than queueing unbounded work.
const MAX_BACKGROUND_REPAIRS: usize = 64;

/// Times a CP/quorum write is retried with a fresh version after a replica reported a
/// newer committed version (`STALE`) or too many undecided writes (`BUSY`).
const MAX_WRITE_ATTEMPTS: usize = 3;

/// Writes whose slowest replica calls may finish after the client was answered (see
/// [`Stragglers`]). Beyond this, a write waits for all its calls, as if no early answer
/// were allowed, rather than leaving unbounded work behind.
const MAX_STRAGGLING_WRITES: usize = 4096;

/// Hints delivered per replica per handoff round.
const HANDOFF_BATCH: usize = 256;

/// Backoff between handoff attempts to a replica that keeps failing: exponential from
/// 100 ms to 5 s with full jitter, so gateways do not hammer a recovering replica in step.
fn handoff_backoff() -> RetryPolicy {
    RetryPolicy::new(u32::MAX, Duration::from_millis(100), Duration::from_secs(5))
}

/// Per-replica handoff pacing.
#[derive(Debug, Clone, Copy)]
struct HandoffPace {
    /// Consecutive failed handoff rounds.
    failures: u32,
    /// No attempt before this instant.
    next_at: tokio::time::Instant,
}

/// One call to one replica that owns everything it needs, so that it can finish after the
/// request that started it has been answered: `(replica index, result)`.
type ReplicaCall<T> = Pin<Box<dyn Future<Output = (usize, Result<T, CallError>)> + Send>>;

/// Replica calls of a write still in flight when the client was answered: an AP write's
/// slower replicas once one acknowledged and `AP_ACK_WAIT_MS` passed, or a quorum write's
/// prepares beyond the W it needed (Dynamo and Cassandra answer after W, too). They are
/// finished in the background, bounded by the replica timeout; a failure among them is
/// handed off like any missed write.
type Stragglers<T> = FuturesUnordered<ReplicaCall<T>>;

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

/// The outcome of a replicated write.
#[derive(Debug, Clone)]
pub enum WriteOutcome {
    /// The write is committed (and durable on the replicas in `acked`).
    Committed {
        /// Its version.
        version: Version,
        /// Replicas that acknowledged it.
        acked: Vec<String>,
        /// Replicas that missed it and will receive it by hinted handoff.
        behind: Vec<String>,
        /// Replicas whose calls were still in flight when the write was answered (they
        /// finish in the background; a failure then queues a hint and logs
        /// `AP_STALE_RISK`).
        pending: Vec<String>,
        /// The replica that decided the commit (CP and quorum).
        coordinator: Option<String>,
    },
    /// The write was not applied anywhere and never will be (HTTP 503 `CP_ABORTED`).
    Aborted {
        /// The version it would have had.
        version: Version,
        /// Acknowledgements received.
        acked: usize,
        /// Acknowledgements required.
        required: usize,
        /// Why.
        reason: String,
    },
    /// Nothing could be sent: every replica's breaker is OPEN or refused the
    /// connection (AP, HTTP 503 `UNAVAILABLE`); the write was not applied.
    Unavailable {
        /// Why.
        reason: String,
    },
    /// The write may or may not have been applied (HTTP 504, `outcome: unknown`).
    Unknown {
        /// Its version, so the client can look for it.
        version: Version,
        /// Why the outcome cannot be known.
        reason: String,
    },
}

/// One replica's part in a read.
#[derive(Debug, Clone)]
pub struct ReplicaView {
    /// Its position in `REPLICAS` (the seed's `G1`, `G2`, … count from 1).
    pub index: usize,
    /// Replica name.
    pub name: String,
    /// Whether it answered.
    pub reachable: bool,
    /// Its committed version, if it answered and holds the key.
    pub version: Option<Version>,
    /// Staleness in ms, when known.
    pub staleness_ms: Option<u64>,
    /// Why it did not answer.
    pub error: Option<String>,
}

/// The result of a read.
#[derive(Debug, Clone)]
pub struct ReadResult {
    /// The committed record returned (`None`: the key does not exist).
    pub record: Option<Record>,
    /// The replica the value came from.
    pub source: Option<String>,
    /// The view of each replica holding the key, preferred first.
    pub replicas: Vec<ReplicaView>,
    /// `Consistency_Status`.
    pub status: &'static str,
    /// Whether the read honoured the session's own writes (`RYW_Consistent`).
    pub ryw_consistent: bool,
}

/// Why a read could not be answered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// Too few replicas answered, or an undecided write could not be resolved.
    #[error("{0}")]
    Unavailable(String),
}

/// The replicated key-value engine of one gateway.
#[derive(Debug)]
pub struct Engine {
    /// Settings.
    pub config: GatewayConfig,
    /// The replicas with their breakers.
    pub set: Arc<ReplicaSet>,
    /// Which replicas hold which key.
    pub routing: Arc<Routing>,
    /// This gateway's clock; versions every write.
    pub hlc: Hlc,
    /// Writes replicas missed.
    pub hints: Arc<Hints>,
    /// Bounds background repair work.
    repairs: Arc<Semaphore>,
    /// Handoff backoff per replica (index-aligned with `set.replicas`).
    handoff_pace: std::sync::Mutex<Vec<HandoffPace>>,
    /// Background comparison and repair of every replica's records (HARD-6).
    pub anti_entropy: AntiEntropy,
    /// Bounds the writes whose straggling calls run in the background.
    stragglers: Arc<Semaphore>,
}

/// `(replica index, its answer)` for the replicas that answered a read.
type Answers = Vec<(usize, ReplicaState)>;

impl Engine {
    /// Builds the engine: clients for every replica, breakers, the ring, clock, hint
    /// queues.
    pub fn new(config: GatewayConfig) -> Result<Self, bulwark_config::ConfigError> {
        let routing = Routing::new(&config.placement).map_err(|e| {
            bulwark_config::ConfigError::invalid("REPLICAS", "<the replica list>", e.to_string())
        })?;
        let clients = config
            .replicas
            .iter()
            .map(|spec| {
                ReplicaClient::with_tls(
                    spec.clone(),
                    config.backend,
                    config.network_timeout,
                    config.replica_tls.clone(),
                )
            })
            .collect();
        let set = ReplicaSet::new(clients, config.breaker);
        let n = set.len();
        let names = set.replicas.iter().map(|r| r.name().to_string()).collect();
        let anti_entropy = AntiEntropy::new(
            &config.replicas,
            config.backend,
            config.replica_tls.as_ref(),
            config.anti_entropy.clone(),
        );
        Ok(Engine {
            routing: Arc::new(routing),
            anti_entropy,
            stragglers: Arc::new(Semaphore::new(MAX_STRAGGLING_WRITES)),
            hlc: Hlc::new(config.writer_id, Default::default()),
            hints: Arc::new(Hints::new(names, config.max_hints)),
            set: Arc::new(set),
            config,
            repairs: Arc::new(Semaphore::new(MAX_BACKGROUND_REPAIRS)),
            handoff_pace: std::sync::Mutex::new(vec![
                HandoffPace {
                    failures: 0,
                    next_at: tokio::time::Instant::now(),
                };
                n
            ]),
        })
    }

    fn names(&self, idx: impl IntoIterator<Item = usize>) -> Vec<String> {
        idx.into_iter()
            .map(|i| self.set.replicas[i].name().to_string())
            .collect()
    }

    /// Writes `value` (`None` deletes) under `mode`, waiting for `w` acknowledgements
    /// (the request's `?w=`, already checked to be within `1..=N`; `None`: the mode's).
    pub async fn write(
        &self,
        key: &[u8],
        value: Option<Bytes>,
        mode: Mode,
        w: Option<usize>,
        request_id: &str,
    ) -> WriteOutcome {
        let n = self.routing.replication_factor();
        let required = w.unwrap_or_else(|| mode.write_quorum(n)).clamp(1, n);
        let outcome = match mode {
            Mode::Ap => self.write_ap(key, value, required, request_id).await,
            Mode::Cp | Mode::Quorum => self.write_2pc(key, value, required).await,
        };
        let key_text = String::from_utf8_lossy(key);
        match &outcome {
            WriteOutcome::Committed {
                version, behind, ..
            } => {
                metrics()
                    .quorum_outcomes
                    .with_label_values(&[mode.as_str(), "committed"])
                    .inc();
                if !behind.is_empty() {
                    ApStaleRisk {
                        request_id,
                        key: &key_text,
                        version: &version.to_string(),
                        behind,
                    }
                    .emit();
                }
            }
            WriteOutcome::Aborted {
                version,
                acked,
                required,
                reason,
            } => CpAborted {
                request_id,
                mode: mode.as_str(),
                key: &key_text,
                version: &version.to_string(),
                acked: *acked,
                required: *required,
                reason,
            }
            .emit(),
            WriteOutcome::Unknown { version, reason } => WriteOutcomeUnknown {
                request_id,
                mode: mode.as_str(),
                key: &key_text,
                version: &version.to_string(),
                reason,
            }
            .emit(),
            WriteOutcome::Unavailable { .. } => {
                metrics()
                    .quorum_outcomes
                    .with_label_values(&[mode.as_str(), "unavailable"])
                    .inc();
            }
        }
        outcome
    }

    /// Starts `call(client)` on each of `replicas` through its breaker, as owned futures.
    fn call_on<T, Fut>(
        &self,
        replicas: &[usize],
        op: &'static str,
        call: impl Fn(ReplicaClient) -> Fut,
    ) -> FuturesUnordered<ReplicaCall<T>>
    where
        T: Send + 'static,
        Fut: Future<Output = Result<T, ReplicaError>> + Send + 'static,
    {
        replicas
            .iter()
            .map(|&i| {
                let r = &self.set.replicas[i];
                let (set, fut) = (self.set.clone(), call(r.client.clone()));
                Box::pin(async move { (i, set.call(&set.replicas[i], op, fut).await) })
                    as ReplicaCall<T>
            })
            .collect()
    }

    /// AP: last-write-wins put to every replica of the key; success when `required` (W,
    /// 1 unless the request asked for more) acknowledge, 504 unknown when fewer but some
    /// did. The answer waits at most `AP_ACK_WAIT_MS` after the W-th acknowledgement for
    /// the other replicas (so that a stopped replica is reported `behind` at once, while a slow or
    /// hung one does not hold the answer back); calls still in flight then are reported
    /// `pending` and finished in the background.
    async fn write_ap(
        &self,
        key: &[u8],
        value: Option<Bytes>,
        required: usize,
        request_id: &str,
    ) -> WriteOutcome {
        let version = self.hlc.now();
        let owners = self.routing.replicas(key);
        let key = Bytes::copy_from_slice(key);
        let mut calls = self.call_on(&owners, "put", |c| {
            let (key, value) = (key.clone(), value.clone());
            async move { c.put(&key, version, value.as_deref()).await }
        });
        let mut results: Vec<Option<Result<PutReply, CallError>>> =
            (0..self.set.len()).map(|_| None).collect();
        let mut answer_by: Option<tokio::time::Instant> = None;
        let mut oks = 0;
        loop {
            let next = match answer_by {
                None => calls.next().await,
                Some(at) => match tokio::time::timeout_at(at, calls.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
            };
            let Some((i, result)) = next else { break };
            oks += usize::from(result.is_ok());
            if oks >= required && answer_by.is_none() {
                answer_by = Some(tokio::time::Instant::now() + self.config.ap_ack_wait);
            }
            results[i] = Some(result);
        }
        let mut acked = Vec::new();
        let mut behind = Vec::new();
        let mut pending = Vec::new();
        let mut maybe_applied = false;
        let mut errors = Vec::new();
        for &i in &owners {
            match results[i].take() {
                Some(Ok(reply)) => {
                    self.hlc.observe(reply.committed);
                    acked.push(i);
                }
                Some(Err(e)) => {
                    maybe_applied |= !e.certainly_not_applied();
                    errors.push(format!("{}: {e}", self.set.replicas[i].name()));
                    self.hints.add(i, &key, version, value.clone());
                    behind.push(i);
                }
                None => pending.push(i),
            }
        }
        if acked.is_empty() {
            let reason = format!("no replica acknowledged ({})", errors.join("; "));
            return if maybe_applied {
                WriteOutcome::Unknown { version, reason }
            } else {
                WriteOutcome::Unavailable { reason }
            };
        }
        if acked.len() < required {
            // Applied where it was acknowledged (and handed off to the rest), but not by
            // the W the request asked for: the client must not count it as W-durable.
            return WriteOutcome::Unknown {
                version,
                reason: format!(
                    "{} of the {required} replicas the request asked for acknowledged ({}); the write is on {} and is handed off to the others",
                    acked.len(),
                    errors.join("; "),
                    self.names(acked).join(", ")
                ),
            };
        }
        if !calls.is_empty() {
            match self.stragglers.clone().try_acquire_owned() {
                Ok(permit) => {
                    let (set, hints) = (self.set.clone(), self.hints.clone());
                    let request_id = request_id.to_owned();
                    tokio::spawn(async move {
                        while let Some((i, result)) = calls.next().await {
                            if result.is_err() {
                                hints.add(i, &key, version, value.clone());
                                ApStaleRisk {
                                    request_id: &request_id,
                                    key: &String::from_utf8_lossy(&key),
                                    version: &version.to_string(),
                                    behind: &[set.replicas[i].name().to_owned()],
                                }
                                .emit();
                            }
                        }
                        drop(permit);
                    });
                }
                Err(_) => {
                    // Too many writes already straggling: finish this one inline.
                    pending.clear();
                    while let Some((i, result)) = calls.next().await {
                        match result {
                            Ok(_) => acked.push(i),
                            Err(_) => {
                                self.hints.add(i, &key, version, value.clone());
                                behind.push(i);
                            }
                        }
                    }
                    acked.sort_unstable();
                    behind.sort_unstable();
                }
            }
        }
        WriteOutcome::Committed {
            version,
            acked: self.names(acked),
            behind: self.names(behind),
            pending: self.names(pending),
            coordinator: None,
        }
    }

    /// CP and quorum: two-phase commit decided at the coordinator replica.
    async fn write_2pc(&self, key: &[u8], value: Option<Bytes>, required: usize) -> WriteOutcome {
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
    /// [`MAX_STRAGGLING_WRITES`] permit is free (else before returning), applying the
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

    /// The answer for `key` of each of `owners`, in their order; errors for the ones that
    /// did not answer.
    async fn read_all(
        &self,
        key: &[u8],
        owners: &[usize],
    ) -> Vec<(usize, Result<ReplicaState, CallError>)> {
        let calls = owners.iter().map(|&i| {
            let r = &self.set.replicas[i];
            async move { (i, self.set.call(r, "get", r.client.get(key)).await) }
        });
        join_all(calls).await
    }

    async fn read_answers(&self, key: &[u8]) -> Option<Answers> {
        let answers: Answers = self
            .read_all(key, &self.routing.replicas(key))
            .await
            .into_iter()
            .filter_map(|(i, r)| r.ok().map(|s| (i, s)))
            .collect();
        (!answers.is_empty()).then_some(answers)
    }

    /// Reads `key` under `mode`. `required` is the session's own latest write of the key
    /// (read-your-writes), if any.
    ///
    /// `r` is the request's `?r=` (answers needed, already checked to be within
    /// `1..=N`; `None`: the mode's). With more than one answer needed, AP returns the
    /// newest of them rather than the preferred replica's.
    pub async fn read(
        &self,
        key: &[u8],
        mode: Mode,
        r: Option<usize>,
        required: Option<Version>,
        request_id: &str,
    ) -> Result<ReadResult, ReadError> {
        let owners = self.routing.replicas(key);
        let results = self.read_all(key, &owners).await;
        let now_ms = self.hlc.now_ms();
        let mut answers: Answers = Vec::new();
        let mut errors: Vec<Option<String>> = Vec::new();
        for (i, r) in results {
            match r {
                Ok(state) => {
                    if let Some(c) = &state.committed {
                        self.hlc.observe(c.version);
                    }
                    answers.push((i, state));
                    errors.push(None);
                }
                Err(e) => errors.push(Some(e.to_string())),
            }
        }
        let needed = r
            .unwrap_or_else(|| mode.read_quorum(owners.len()))
            .clamp(1, owners.len());
        if answers.len() < needed {
            let failed: Vec<String> = owners
                .iter()
                .zip(&errors)
                .filter_map(|(&i, e)| {
                    e.as_ref()
                        .map(|e| format!("{}: {e}", self.set.replicas[i].name()))
                })
                .collect();
            return Err(ReadError::Unavailable(format!(
                "{} of {} replicas answered; {mode} reads need {needed} ({})",
                answers.len(),
                owners.len(),
                failed.join("; ")
            )));
        }

        // Choose what to return.
        let best = answers
            .iter()
            .filter_map(|(i, s)| s.committed.as_ref().map(|c| (*i, c)))
            .max_by_key(|(i, c)| (c.version, std::cmp::Reverse(*i)));
        let (source, record) = match mode {
            Mode::Ap if needed > 1 => {
                best.map_or((answers[0].0, None), |(i, c)| (i, Some(c.clone())))
            }
            Mode::Ap => {
                // The preferred (first) answering replica, unless it misses the session's
                // own write and another one has it (SPEC CAP-7).
                let satisfies =
                    |s: &ReplicaState| required.is_none_or(|v| s.committed_version() >= v);
                let pick = answers
                    .iter()
                    .find(|(_, s)| satisfies(s))
                    .map(|(i, s)| (*i, s.committed.clone()));
                match pick {
                    Some(p) => p,
                    None => best.map_or((answers[0].0, None), |(i, c)| (i, Some(c.clone()))),
                }
            }
            Mode::Cp | Mode::Quorum => {
                let max = best.map(|(_, c)| c.version).unwrap_or(Version::ZERO);
                self.check_undecided(&answers, max)?;
                best.map_or((answers[0].0, None), |(i, c)| (i, Some(c.clone())))
            }
        };

        // Staleness of every replica.
        let observations: Vec<Observation> = owners
            .iter()
            .map(|&i| Observation {
                held: answers
                    .iter()
                    .find(|(j, _)| *j == i)
                    .map(|(_, s)| s.committed_version()),
                missed: self
                    .hints
                    .get(i, key)
                    .map(|h| vec![h.oldest, h.latest])
                    .unwrap_or_default(),
            })
            .collect();
        let stale = staleness::compute(&observations, now_ms);
        let status = staleness::status(&stale, self.config.max_staleness_ms);
        let m = metrics();
        let replicas = owners
            .iter()
            .map(|&i| &self.set.replicas[i])
            .zip(&stale)
            .zip(observations.iter().map(|o| o.held))
            .zip(errors)
            .map(|(((r, s), held), error)| {
                if let Some(ms) = s.ms {
                    m.data_staleness_ms
                        .with_label_values(&[r.name()])
                        .set(ms as i64);
                }
                ReplicaView {
                    index: r.index,
                    name: r.name().to_string(),
                    reachable: s.reachable,
                    version: held.filter(|v| *v != Version::ZERO),
                    staleness_ms: s.ms,
                    error,
                }
            })
            .collect();

        let returned = record.as_ref().map_or(Version::ZERO, |r| r.version);
        let ryw_consistent = required.is_none_or(|v| returned >= v);
        if !ryw_consistent {
            RywViolation {
                request_id,
                mode: mode.as_str(),
                key: &String::from_utf8_lossy(key),
                required: &required.unwrap_or_default().to_string(),
                seen: &returned.to_string(),
            }
            .emit();
        }
        self.repair(key, answers);
        Ok(ReadResult {
            record,
            source: Some(self.set.replicas[source].name().to_string()),
            replicas,
            status,
            ryw_consistent,
        })
    }

    /// For a CP/quorum read returning version `max`: every undecided write above `max`
    /// must be known not to be committed, which only its coordinator can tell.
    fn check_undecided(&self, answers: &Answers, max: Version) -> Result<(), ReadError> {
        for (_, state) in answers {
            for p in state.pending.iter().filter(|p| p.version > max) {
                let coordinator = self
                    .set
                    .replicas
                    .iter()
                    .position(|r| r.name() == p.coordinator);
                let coordinator_answered =
                    coordinator.is_some_and(|c| answers.iter().any(|(i, _)| *i == c));
                // If the coordinator answered, its committed version is ≤ max < p (max is
                // over all answers), so p was not committed when it answered.
                if !coordinator_answered {
                    return Err(ReadError::Unavailable(format!(
                        "an undecided write (version {}) cannot be resolved: its coordinator {} did not answer",
                        p.version, p.coordinator
                    )));
                }
            }
        }
        Ok(())
    }

    /// Schedules read repair and resolution of undecided writes for `key` in the
    /// background, if there is anything to do and capacity to do it.
    fn repair(&self, key: &[u8], answers: Answers) {
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
    fn repair_work(&self, key: &[u8], answers: Answers) -> Option<RepairWork> {
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

    fn clients(&self) -> Vec<ReplicaClient> {
        self.set.replicas.iter().map(|r| r.client.clone()).collect()
    }

    /// Delivers queued hints to every replica whose breaker allows a call. Returns how
    /// many were delivered.
    pub async fn handoff_round(&self) -> usize {
        let mut delivered = 0;
        for r in &self.set.replicas {
            let now = tokio::time::Instant::now();
            if self.pace(r.index).next_at > now {
                continue;
            }
            let batch = self.hints.batch(r.index, HANDOFF_BATCH);
            let mut failed = false;
            for (key, hint) in batch {
                match self
                    .set
                    .call(
                        r,
                        "put",
                        r.client.put(&key, hint.latest, hint.value.as_deref()),
                    )
                    .await
                {
                    Ok(_) => {
                        self.hints.delivered(r.index, &key, hint.latest);
                        delivered += 1;
                    }
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            let mut paces = self.handoff_pace.lock().unwrap_or_else(|e| e.into_inner());
            let pace = &mut paces[r.index];
            if failed {
                let delay = backoff_delay(&handoff_backoff(), pace.failures, rand::random::<f64>());
                pace.failures = pace.failures.saturating_add(1);
                pace.next_at = now + delay;
            } else {
                pace.failures = 0;
            }
        }
        delivered
    }

    fn pace(&self, replica: usize) -> HandoffPace {
        self.handoff_pace.lock().unwrap_or_else(|e| e.into_inner())[replica]
    }

    /// Pings every replica through its breaker (health probe; also the half-open probe
    /// that closes a breaker when the replica is back without any client traffic).
    pub async fn probe(&self) {
        let calls = self
            .set
            .replicas
            .iter()
            .map(|r| self.set.call(r, "ping", r.client.ping()));
        join_all(calls).await;
    }

    /// Whether the gateway can serve writes in its default mode (readiness): every
    /// replica set of the ring has enough reachable replicas for a write.
    pub fn ready(&self) -> bool {
        let up: Vec<bool> = self
            .set
            .replicas
            .iter()
            .map(|r| r.reachable() && !r.breaker.is_rejecting())
            .collect();
        let needed = self
            .config
            .mode
            .write_quorum(self.routing.replication_factor());
        self.routing
            .sets()
            .all(|set| set.iter().filter(|id| up[usize::from(**id)]).count() >= needed)
    }

    /// Runs one anti-entropy round now (after any round in progress) and returns what
    /// it did.
    pub async fn anti_entropy_round(&self) -> RoundSummary {
        self.anti_entropy
            .round(&self.set, &self.routing, &self.config.name)
            .await
    }

    /// Delivers hints until none are left or `deadline` passes (graceful shutdown).
    pub async fn flush_hints(&self, deadline: Duration) -> usize {
        let until = tokio::time::Instant::now() + deadline;
        while self.hints.total() > 0 && tokio::time::Instant::now() < until {
            if self.handoff_round().await == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.hints.total()
    }
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

/// Background repair of one key after a read.
struct RepairWork {
    key: Bytes,
    newest: Option<Record>,
    lagging: Vec<usize>,
    undecided: Vec<(usize, PendingRef)>,
    answers: Answers,
    now_ms: u64,
}

impl RepairWork {
    async fn run(self, clients: &[ReplicaClient], in_doubt: Duration) {
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
