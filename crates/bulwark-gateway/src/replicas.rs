//! The replica set: one client, one circuit breaker and one health record per replica.
//!
//! Every call to a replica goes through [`ReplicaSet::call`], which fails fast when the
//! replica's breaker is OPEN, reports the outcome to the breaker, records latency and
//! emits `DB_CONNECT_FAILURE` on failure. The client bounds each call with the network
//! timeout, so a replica that hangs costs at most that long.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use bulwark_obs::events::{DbConnectFailure, Emit};
use bulwark_obs::metrics::metrics;
use bulwark_replica::{ReplicaClient, ReplicaError};
use bulwark_resilience::breaker::{BreakerConfig, CircuitBreaker};

/// One replica as the gateway sees it.
#[derive(Debug)]
pub struct Replica {
    /// Position in the configured order (0 is the primary; `G{index+1}_Staleness_ms`).
    pub index: usize,
    /// The connection to it.
    pub client: ReplicaClient,
    /// Its circuit breaker (SPEC CAP-5).
    pub breaker: CircuitBreaker,
    /// Whether the last health probe or call succeeded; feeds readiness.
    reachable: AtomicBool,
}

impl Replica {
    /// The replica's configured name (`db_g1`).
    pub fn name(&self) -> &str {
        self.client.name()
    }

    /// Whether the last call or probe reached it.
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }
}

/// Why a call to a replica did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The breaker is OPEN: nothing was sent.
    #[error("circuit breaker OPEN")]
    BreakerOpen,
    /// The call was made and failed.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
}

impl CallError {
    /// Whether the request certainly never reached the replica, so it cannot have been
    /// applied. Anything that may have been sent (timeouts, broken replies) may have been.
    pub fn certainly_not_applied(&self) -> bool {
        matches!(
            self,
            CallError::BreakerOpen | CallError::Replica(ReplicaError::Unreachable(_))
        )
    }
}

/// All replicas of the gateway, in preference order.
#[derive(Debug)]
pub struct ReplicaSet {
    /// The replicas; index = position in `REPLICAS`.
    pub replicas: Vec<Replica>,
}

impl ReplicaSet {
    /// Builds the set from clients, one breaker per replica.
    pub fn new(clients: Vec<ReplicaClient>, breaker: BreakerConfig) -> Self {
        let replicas = clients
            .into_iter()
            .enumerate()
            .map(|(index, client)| Replica {
                index,
                breaker: CircuitBreaker::new(client.name().to_string(), breaker),
                client,
                reachable: AtomicBool::new(true),
            })
            .collect();
        ReplicaSet { replicas }
    }

    /// Number of replicas (N).
    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    /// Whether the set is empty (never, after config validation).
    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    /// Replicas among `indices` whose breaker would let a call through now.
    pub fn callable_among(&self, indices: &[usize]) -> usize {
        indices
            .iter()
            .filter(|i| !self.replicas[**i].breaker.is_rejecting())
            .count()
    }

    /// Calls `replica` with `op` through its breaker.
    pub async fn call<T, F>(
        &self,
        replica: &Replica,
        op: &'static str,
        f: F,
    ) -> Result<T, CallError>
    where
        F: Future<Output = Result<T, ReplicaError>>,
    {
        let permit = replica
            .breaker
            .try_acquire()
            .map_err(|_| CallError::BreakerOpen)?;
        let started = tokio::time::Instant::now();
        let result = f.await;
        metrics()
            .replica_call_latency
            .with_label_values(&[replica.name(), op])
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(v) => {
                permit.success();
                replica.reachable.store(true, Ordering::Relaxed);
                Ok(v)
            }
            Err(e) => {
                permit.failure();
                replica.reachable.store(false, Ordering::Relaxed);
                DbConnectFailure {
                    node: replica.name(),
                    op,
                    error: &e.to_string(),
                }
                .emit();
                Err(CallError::Replica(e))
            }
        }
    }
}
