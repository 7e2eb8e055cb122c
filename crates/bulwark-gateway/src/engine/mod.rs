//! Replicated reads and writes: the consistency protocol of `docs/ARCHITECTURE.md`.
//!
//! This module knows nothing about HTTP. It turns "write this key in CP mode" into
//! replica calls and returns a typed outcome; `http` maps outcomes to status codes.
//! Here: the engine, its outcomes and what every path shares (routing a call, handoff,
//! probes, readiness); `ap` (AP writes), `two_phase` (CP and quorum writes), `read`, and
//! `repair` (read repair and the resolution of undecided writes).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bulwark_core::{Hlc, Record, ReplicaState, Version};
use bulwark_obs::events::{ApStaleRisk, CpAborted, Emit, WriteOutcomeUnknown};
use bulwark_obs::metrics::metrics;
use bulwark_replica::{ReplicaClient, ReplicaError};
use bulwark_resilience::retry::{RetryPolicy, backoff_delay};
use bytes::Bytes;
use futures::future::join_all;
use futures::stream::FuturesUnordered;
use tokio::sync::Semaphore;

use crate::anti_entropy::{AntiEntropy, RoundSummary};
use crate::config::GatewayConfig;
use crate::hints::Hints;
use crate::mode::Mode;
use crate::replicas::{CallError, ReplicaSet};
use crate::routing::Routing;

mod ap;
mod read;
mod repair;
mod two_phase;

/// Background repairs (read repair, resolution of undecided writes) running at once.
/// Beyond this, a read skips scheduling repair rather than queueing unbounded work.
const MAX_BACKGROUND_REPAIRS: usize = 64;

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
