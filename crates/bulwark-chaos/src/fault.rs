//! The fault model: every fault is a typed value, injected with a time to live.
//!
//! A fault is validated against the [`ClusterMap`] before anything is journaled, and
//! planned into [`Undo`] steps (what removing it takes) before it is applied; see
//! `docs/ARCHITECTURE.md`, "Journal and TTL invariants".

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::cluster::{ClusterMap, Link, ReplicaBackend};
use crate::partition::{self, Shape, ShapeArgs, Stream};
use crate::resource::{MAX_DISK_MB, MAX_MEMORY_MB, MAX_WORKERS};
use crate::toxiproxy::Toxic;

/// The longest a fault may live: a forgotten fault must not outlast a game day.
pub const MAX_TTL: Duration = Duration::from_secs(3600);
/// The largest clock skew (the gateway's own bound).
pub const MAX_SKEW_MS: i64 = 86_400_000;
/// The shortest crash-loop interval (faster would only test the supervisor's backoff).
pub const MIN_CRASH_INTERVAL_MS: u64 = 100;

/// One fault. The JSON form is tagged by `type`: `{"type":"pause","service":"db_g2"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// SIGKILL the service's process: a crash, which the supervisor restarts (with its
    /// backoff). Nothing to undo; the fault stays listed until its TTL.
    Kill {
        /// Service name.
        service: String,
    },
    /// SIGTERM: a clean stop, which the supervisor does not restart; the service is started
    /// again when the fault ends.
    Stop {
        /// Service name.
        service: String,
    },
    /// SIGSTOP until the fault ends, then SIGCONT: a hung process that keeps its sockets.
    Pause {
        /// Service name.
        service: String,
    },
    /// A graceful restart (SIGTERM, wait, start), once.
    Restart {
        /// Service name.
        service: String,
    },
    /// SIGKILL the service every `interval_ms` until the fault ends; the supervisor keeps
    /// restarting it with a growing backoff.
    CrashLoop {
        /// Service name.
        service: String,
        /// Time between kills (at least 100 ms).
        #[serde(default = "default_crash_interval")]
        interval_ms: u64,
    },
    /// Delay data on the selected links by `latency_ms` ± `jitter_ms` (Toxiproxy `latency`).
    Latency {
        /// Only links from this gateway (default: every gateway).
        #[serde(default)]
        gateway: Option<String>,
        /// Only links to this replica (default: every replica).
        #[serde(default)]
        replica: Option<String>,
        /// `downstream` (replies, the default) or `upstream` (requests).
        #[serde(default = "downstream")]
        stream: Stream,
        /// Added delay.
        latency_ms: u64,
        /// Random variation (±).
        #[serde(default)]
        jitter_ms: u64,
        /// Share of connections affected (0 to 1).
        #[serde(default = "one")]
        toxicity: f64,
    },
    /// Limit the selected links to `rate_kbps` KB/s (Toxiproxy `bandwidth`).
    Bandwidth {
        /// Only links from this gateway.
        #[serde(default)]
        gateway: Option<String>,
        /// Only links to this replica.
        #[serde(default)]
        replica: Option<String>,
        /// Direction.
        #[serde(default = "downstream")]
        stream: Stream,
        /// KB/s (1000 bytes).
        rate_kbps: u64,
        /// Share of connections affected.
        #[serde(default = "one")]
        toxicity: f64,
    },
    /// Reset connections (TCP RST) `timeout_ms` after their first data (Toxiproxy
    /// `reset_peer`).
    ResetPeer {
        /// Only links from this gateway.
        #[serde(default)]
        gateway: Option<String>,
        /// Only links to this replica.
        #[serde(default)]
        replica: Option<String>,
        /// Direction.
        #[serde(default = "downstream")]
        stream: Stream,
        /// Delay before the reset.
        #[serde(default)]
        timeout_ms: u64,
        /// Share of connections affected.
        #[serde(default = "one")]
        toxicity: f64,
    },
    /// Drop all data and close connections after `timeout_ms` (0: never; Toxiproxy
    /// `timeout`).
    Timeout {
        /// Only links from this gateway.
        #[serde(default)]
        gateway: Option<String>,
        /// Only links to this replica.
        #[serde(default)]
        replica: Option<String>,
        /// Direction.
        #[serde(default = "downstream")]
        stream: Stream,
        /// Milliseconds before closing (0: hang until the fault ends).
        #[serde(default)]
        timeout_ms: u64,
        /// Share of connections affected.
        #[serde(default = "one")]
        toxicity: f64,
    },
    /// Loss, as a TCP proxy can make it: each connection is black-holed (a `timeout` toxic
    /// with timeout 0) with `probability`, the others are untouched. Packets are not lost
    /// individually: TCP would retransmit them anyway.
    Loss {
        /// Only links from this gateway.
        #[serde(default)]
        gateway: Option<String>,
        /// Only links to this replica.
        #[serde(default)]
        replica: Option<String>,
        /// Direction.
        #[serde(default = "downstream")]
        stream: Stream,
        /// Share of connections lost (0 to 1).
        probability: f64,
    },
    /// Delay the close of connections by `delay_ms` (Toxiproxy `slow_close`).
    SlowClose {
        /// Only links from this gateway.
        #[serde(default)]
        gateway: Option<String>,
        /// Only links to this replica.
        #[serde(default)]
        replica: Option<String>,
        /// Direction.
        #[serde(default = "downstream")]
        stream: Stream,
        /// Milliseconds.
        delay_ms: u64,
        /// Share of connections affected.
        #[serde(default = "one")]
        toxicity: f64,
    },
    /// Close connections after `bytes` bytes (Toxiproxy `limit_data`).
    LimitData {
        /// Only links from this gateway.
        #[serde(default)]
        gateway: Option<String>,
        /// Only links to this replica.
        #[serde(default)]
        replica: Option<String>,
        /// Direction.
        #[serde(default = "downstream")]
        stream: Stream,
        /// Bytes passed before the close.
        bytes: u64,
        /// Share of connections affected.
        #[serde(default = "one")]
        toxicity: f64,
    },
    /// Skew a gateway's HLC clock source by `offset_ms` (through its guarded admin
    /// endpoint); reset to 0 when the fault ends.
    ClockSkew {
        /// The gateway (a writer).
        gateway: String,
        /// Milliseconds added to its clock (negative: behind), within ±1 day.
        offset_ms: i64,
    },
    /// Corrupt `key` on one replica: its value's bytes change, its version does not (the
    /// replicas then disagree on one version). With `restore` (default), the original
    /// value is put back when the fault ends, if the record was not rewritten meanwhile;
    /// without, the corruption stays for repair to find.
    Corrupt {
        /// The replica.
        replica: String,
        /// The key (it must hold a committed value there).
        key: String,
        /// The bytes written instead (default: `CORRUPTED`).
        #[serde(default)]
        value: Option<String>,
        /// Put the original back when the fault ends.
        #[serde(default = "yes")]
        restore: bool,
    },
    /// Lose `key` on one replica: its committed record is forgotten, without a tombstone.
    /// With `restore` (default), it is put back (last-write-wins) when the fault ends.
    DropKey {
        /// The replica.
        replica: String,
        /// The key.
        key: String,
        /// Put the record back when the fault ends.
        #[serde(default = "yes")]
        restore: bool,
    },
    /// Spin `workers` CPU threads in a burner process until the fault ends.
    CpuBurn {
        /// Threads (1 to 64).
        workers: u32,
    },
    /// Hold `megabytes` MiB of memory in a burner process until the fault ends.
    MemoryHog {
        /// MiB (1 to 8192).
        megabytes: u64,
    },
    /// Fill `megabytes` MiB of disk in `dir` until the fault ends (the file is deleted
    /// then).
    DiskFill {
        /// The directory (it must exist).
        dir: PathBuf,
        /// MiB (1 to 65536).
        megabytes: u64,
    },
    /// A network partition of the given shape over `nodes` (default: every gateway, then
    /// every replica, in topology order); see `crate::partition`.
    Partition {
        /// Jepsen's shape.
        shape: Shape,
        /// The nodes it ranges over.
        #[serde(default)]
        nodes: Option<Vec<String>>,
        /// `isolate`: the node cut off.
        #[serde(default)]
        node: Option<String>,
        /// `one_way`: senders whose traffic is dropped.
        #[serde(default)]
        from: Vec<String>,
        /// `one_way`: receivers that drop it.
        #[serde(default)]
        to: Vec<String>,
        /// `components`: the groups.
        #[serde(default)]
        components: Vec<Vec<String>>,
        /// Shuffle `nodes` with this seed first.
        #[serde(default)]
        seed: Option<u64>,
    },
}

fn default_crash_interval() -> u64 {
    1000
}

fn downstream() -> Stream {
    Stream::Downstream
}

fn one() -> f64 {
    1.0
}

fn yes() -> bool {
    true
}

/// A link fault's common parts.
struct LinkFault<'a> {
    gateway: &'a Option<String>,
    replica: &'a Option<String>,
    stream: Stream,
    toxicity: f64,
    kind: &'static str,
    attributes: Value,
}

/// A fault as a client asks for it: the fault, its time to live and the run it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRequest {
    /// What to break.
    pub fault: Fault,
    /// How long it lasts, in milliseconds (1 ms to one hour).
    pub ttl_ms: u64,
    /// The experiment run that asked for it; a run's rollback removes all of them.
    #[serde(default)]
    pub run: Option<String>,
}

/// A fault that does not fit the cluster or the limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FaultError {
    /// The offending field (`service`, `ttl_ms`, …).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl FaultError {
    fn new(field: &str, message: impl Into<String>) -> FaultError {
        FaultError {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

impl Fault {
    /// The kind, as in metrics and logs (`pause`, `crash_loop`).
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Kill { .. } => "kill",
            Fault::Stop { .. } => "stop",
            Fault::Pause { .. } => "pause",
            Fault::Restart { .. } => "restart",
            Fault::CrashLoop { .. } => "crash_loop",
            Fault::Latency { .. } => "latency",
            Fault::Bandwidth { .. } => "bandwidth",
            Fault::ResetPeer { .. } => "reset_peer",
            Fault::Timeout { .. } => "timeout",
            Fault::Loss { .. } => "loss",
            Fault::SlowClose { .. } => "slow_close",
            Fault::LimitData { .. } => "limit_data",
            Fault::Partition { .. } => "partition",
            Fault::ClockSkew { .. } => "clock_skew",
            Fault::Corrupt { .. } => "corrupt",
            Fault::DropKey { .. } => "drop_key",
            Fault::CpuBurn { .. } => "cpu_burn",
            Fault::MemoryHog { .. } => "memory_hog",
            Fault::DiskFill { .. } => "disk_fill",
        }
    }

    /// The common parts of a fault on links, or `None` for other faults.
    fn link_fault(&self) -> Option<LinkFault<'_>> {
        let lf = |gateway, replica, stream: &Stream, toxicity: &f64, kind, attributes| {
            Some(LinkFault {
                gateway,
                replica,
                stream: *stream,
                toxicity: *toxicity,
                kind,
                attributes,
            })
        };
        match self {
            Fault::Latency {
                gateway,
                replica,
                stream,
                latency_ms,
                jitter_ms,
                toxicity,
            } => lf(
                gateway,
                replica,
                stream,
                toxicity,
                "latency",
                json!({"latency": latency_ms, "jitter": jitter_ms}),
            ),
            Fault::Bandwidth {
                gateway,
                replica,
                stream,
                rate_kbps,
                toxicity,
            } => lf(
                gateway,
                replica,
                stream,
                toxicity,
                "bandwidth",
                json!({"rate": rate_kbps}),
            ),
            Fault::ResetPeer {
                gateway,
                replica,
                stream,
                timeout_ms,
                toxicity,
            } => lf(
                gateway,
                replica,
                stream,
                toxicity,
                "reset_peer",
                json!({"timeout": timeout_ms}),
            ),
            Fault::Timeout {
                gateway,
                replica,
                stream,
                timeout_ms,
                toxicity,
            } => lf(
                gateway,
                replica,
                stream,
                toxicity,
                "timeout",
                json!({"timeout": timeout_ms}),
            ),
            Fault::Loss {
                gateway,
                replica,
                stream,
                probability,
            } => lf(
                gateway,
                replica,
                stream,
                probability,
                "timeout",
                json!({"timeout": 0}),
            ),
            Fault::SlowClose {
                gateway,
                replica,
                stream,
                delay_ms,
                toxicity,
            } => lf(
                gateway,
                replica,
                stream,
                toxicity,
                "slow_close",
                json!({"delay": delay_ms}),
            ),
            Fault::LimitData {
                gateway,
                replica,
                stream,
                bytes,
                toxicity,
            } => lf(
                gateway,
                replica,
                stream,
                toxicity,
                "limit_data",
                json!({"bytes": bytes}),
            ),
            _ => None,
        }
    }

    /// The toxics this fault adds, as `(proxy, toxic)`, named after the fault's `id` so that
    /// they can be found (and re-added after a proxy restart) from the journal alone.
    pub fn toxics(
        &self,
        id: &str,
        cluster: &ClusterMap,
    ) -> Result<Vec<(String, Toxic)>, FaultError> {
        let toxic = |link: &Link, stream: Stream, kind: &str, toxicity: f64, attributes: &Value| {
            let attributes: Map<String, Value> =
                attributes.as_object().cloned().unwrap_or_default();
            (
                link.proxy_name(),
                Toxic {
                    name: format!("chaos-{id}-{}", stream.as_str()),
                    kind: kind.to_owned(),
                    stream: stream.as_str().to_owned(),
                    toxicity,
                    attributes,
                },
            )
        };
        if let Some(lf) = self.link_fault() {
            let links = select_links(cluster, lf.gateway, lf.replica)?;
            return Ok(links
                .iter()
                .map(|l| toxic(l, lf.stream, lf.kind, lf.toxicity, &lf.attributes))
                .collect());
        }
        if let Fault::Partition { .. } = self {
            let cuts = self.partition_cuts(cluster)?;
            return Ok(cuts
                .iter()
                .map(|(l, s)| toxic(l, *s, "timeout", 1.0, &json!({"timeout": 0})))
                .collect());
        }
        Ok(Vec::new())
    }

    /// The link directions a partition cuts.
    fn partition_cuts(&self, cluster: &ClusterMap) -> Result<Vec<(Link, Stream)>, FaultError> {
        let Fault::Partition {
            shape,
            nodes,
            node,
            from,
            to,
            components,
            seed,
        } = self
        else {
            return Ok(Vec::new());
        };
        if cluster.links.is_empty() {
            return Err(no_proxy());
        }
        let nodes = nodes.clone().unwrap_or_else(|| cluster.partition_nodes());
        let known = cluster.partition_nodes();
        if let Some(n) = nodes.iter().find(|n| !known.contains(n)) {
            return Err(FaultError::new(
                "nodes",
                format!(
                    "'{n}' is not a gateway or replica (known: {})",
                    known.join(", ")
                ),
            ));
        }
        let args = ShapeArgs {
            node: node.clone(),
            from: from.clone(),
            to: to.clone(),
            components: components.clone(),
            seed: *seed,
        };
        let grudge = partition::grudge(*shape, &nodes, &args)
            .map_err(|e| FaultError::new(e.field, e.message))?;
        let cuts = partition::cut_links(&grudge, &cluster.links);
        if cuts.is_empty() {
            return Err(FaultError::new(
                "shape",
                "this partition cuts no gateway-replica link (gateways only talk to replicas)",
            ));
        }
        Ok(cuts)
    }

    /// What it targets, for people (`db_g2`, `app_ap→db_g2`, `isolate db_g2`).
    pub fn target(&self) -> String {
        match self {
            Fault::Kill { service }
            | Fault::Stop { service }
            | Fault::Pause { service }
            | Fault::Restart { service }
            | Fault::CrashLoop { service, .. } => service.clone(),
            Fault::ClockSkew { gateway, offset_ms } => format!("{gateway} {offset_ms:+} ms"),
            Fault::Corrupt { replica, key, .. } | Fault::DropKey { replica, key, .. } => {
                format!("{replica} key {key}")
            }
            Fault::CpuBurn { workers } => format!("{workers} CPU worker(s)"),
            Fault::MemoryHog { megabytes } => format!("{megabytes} MiB of memory"),
            Fault::DiskFill { dir, megabytes } => format!("{megabytes} MiB in {}", dir.display()),
            Fault::Partition {
                shape,
                node,
                from,
                to,
                ..
            } => match shape {
                Shape::Isolate => format!("isolate {}", node.as_deref().unwrap_or("?")),
                Shape::OneWay => format!("{} -/-> {}", from.join(","), to.join(",")),
                other => serde_json::to_value(other)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            },
            _ => match self.link_fault() {
                Some(lf) => format!(
                    "{}->{} {}",
                    lf.gateway.as_deref().unwrap_or("*"),
                    lf.replica.as_deref().unwrap_or("*"),
                    lf.stream.as_str()
                ),
                None => String::new(),
            },
        }
    }

    /// The services this fault impacts directly (for the experiment report): the service
    /// of a process fault, the gateways and replicas of the links a network fault touches.
    pub fn services(&self, cluster: &ClusterMap) -> Vec<String> {
        if self.link_fault().is_some() || matches!(self, Fault::Partition { .. }) {
            let mut s: Vec<String> = self
                .toxics("x", cluster)
                .unwrap_or_default()
                .iter()
                .flat_map(|(proxy, _)| {
                    proxy
                        .split_once('.')
                        .map(|(g, r)| vec![g.to_owned(), r.to_owned()])
                        .unwrap_or_default()
                })
                .collect();
            s.sort();
            s.dedup();
            return s;
        }
        match self {
            Fault::ClockSkew { gateway, .. } => vec![gateway.clone()],
            Fault::CpuBurn { .. } | Fault::MemoryHog { .. } | Fault::DiskFill { .. } => {
                vec!["host".to_owned()]
            }
            Fault::Corrupt { replica, .. } | Fault::DropKey { replica, .. } => {
                vec![replica.clone()]
            }
            _ => vec![self.target()],
        }
    }

    /// Checks the fault against the cluster: its targets exist and its arguments are in
    /// range. Nothing is journaled or applied before this passes.
    pub fn validate(&self, cluster: &ClusterMap) -> Result<(), FaultError> {
        match self {
            Fault::Kill { service }
            | Fault::Stop { service }
            | Fault::Pause { service }
            | Fault::Restart { service } => check_service(cluster, service),
            Fault::CrashLoop {
                service,
                interval_ms,
            } => {
                check_service(cluster, service)?;
                if *interval_ms < MIN_CRASH_INTERVAL_MS {
                    return Err(FaultError::new(
                        "interval_ms",
                        format!("must be at least {MIN_CRASH_INTERVAL_MS}"),
                    ));
                }
                Ok(())
            }
            Fault::Partition { .. } => self.partition_cuts(cluster).map(drop),
            Fault::CpuBurn { workers } => {
                in_range("workers", u64::from(*workers), MAX_WORKERS.into())
            }
            Fault::MemoryHog { megabytes } => in_range("megabytes", *megabytes, MAX_MEMORY_MB),
            Fault::DiskFill { dir, megabytes } => {
                in_range("megabytes", *megabytes, MAX_DISK_MB)?;
                if !dir.is_absolute() || !dir.is_dir() {
                    return Err(FaultError::new(
                        "dir",
                        format!(
                            "'{}' is not an existing directory (an absolute path)",
                            dir.display()
                        ),
                    ));
                }
                Ok(())
            }
            Fault::Corrupt { replica, key, .. } | Fault::DropKey { replica, key, .. } => {
                if cluster.replica(replica).is_none() {
                    let known: Vec<&str> =
                        cluster.replicas.iter().map(|n| n.name.as_str()).collect();
                    return Err(FaultError::new(
                        "replica",
                        format!("unknown replica '{replica}' (known: {})", known.join(", ")),
                    ));
                }
                if key.is_empty() || key.len() > 1024 {
                    return Err(FaultError::new("key", "must be 1 to 1024 bytes"));
                }
                if cluster.backend.is_none() {
                    return Err(FaultError::new("replica", "the replicas' kind is unknown"));
                }
                Ok(())
            }
            Fault::ClockSkew { gateway, offset_ms } => {
                if cluster.gateway(gateway).is_none() {
                    let known: Vec<&str> =
                        cluster.gateways.iter().map(|n| n.name.as_str()).collect();
                    return Err(FaultError::new(
                        "gateway",
                        format!("unknown gateway '{gateway}' (known: {})", known.join(", ")),
                    ));
                }
                if offset_ms.abs() > MAX_SKEW_MS {
                    return Err(FaultError::new(
                        "offset_ms",
                        format!("must be within ±{MAX_SKEW_MS} (one day)"),
                    ));
                }
                Ok(())
            }
            _ => {
                if let Some(lf) = self.link_fault() {
                    if !(0.0..=1.0).contains(&lf.toxicity) {
                        let field = if matches!(self, Fault::Loss { .. }) {
                            "probability"
                        } else {
                            "toxicity"
                        };
                        return Err(FaultError::new(field, "must be between 0 and 1"));
                    }
                    select_links(cluster, lf.gateway, lf.replica)?;
                }
                Ok(())
            }
        }
    }
}

fn in_range(field: &str, v: u64, max: u64) -> Result<(), FaultError> {
    if (1..=max).contains(&v) {
        Ok(())
    } else {
        Err(FaultError::new(
            field,
            format!("must be between 1 and {max}"),
        ))
    }
}

fn no_proxy() -> FaultError {
    FaultError::new(
        "type",
        "network faults need the fault proxy between gateways and replicas (bulwark up runs it unless --no-chaos-proxy)",
    )
}

/// The links from `gateway` (all if `None`) to `replica` (all if `None`).
fn select_links(
    cluster: &ClusterMap,
    gateway: &Option<String>,
    replica: &Option<String>,
) -> Result<Vec<Link>, FaultError> {
    if cluster.links.is_empty() {
        return Err(no_proxy());
    }
    if let Some(g) = gateway
        && cluster.gateway(g).is_none()
    {
        let known: Vec<&str> = cluster.gateways.iter().map(|n| n.name.as_str()).collect();
        return Err(FaultError::new(
            "gateway",
            format!("unknown gateway '{g}' (known: {})", known.join(", ")),
        ));
    }
    if let Some(r) = replica
        && cluster.replica(r).is_none()
    {
        let known: Vec<&str> = cluster.replicas.iter().map(|n| n.name.as_str()).collect();
        return Err(FaultError::new(
            "replica",
            format!("unknown replica '{r}' (known: {})", known.join(", ")),
        ));
    }
    Ok(cluster
        .links
        .iter()
        .filter(|l| gateway.as_ref().is_none_or(|g| *g == l.gateway))
        .filter(|l| replica.as_ref().is_none_or(|r| *r == l.replica))
        .cloned()
        .collect())
}

fn check_service(cluster: &ClusterMap, service: &str) -> Result<(), FaultError> {
    if cluster.has_service(service) {
        Ok(())
    } else {
        Err(FaultError::new(
            "service",
            format!(
                "unknown service '{service}' (known: {})",
                cluster.services.join(", ")
            ),
        ))
    }
}

impl FaultRequest {
    /// Validates the fault and the TTL.
    pub fn validate(&self, cluster: &ClusterMap) -> Result<(), FaultError> {
        if self.ttl_ms == 0 || self.ttl_ms > MAX_TTL.as_millis() as u64 {
            return Err(FaultError::new(
                "ttl_ms",
                format!(
                    "must be between 1 and {} (one hour); got {}",
                    MAX_TTL.as_millis(),
                    self.ttl_ms
                ),
            ));
        }
        if let Some(run) = &self.run
            && (run.is_empty() || run.len() > 128)
        {
            return Err(FaultError::new("run", "must be 1 to 128 characters"));
        }
        self.fault.validate(cluster)
    }
}

/// One step of removing a fault. Steps are idempotent: undoing what is already gone is a
/// success, so a step may run again after a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Undo {
    /// Send `signal` to `pid`, only if it is still the process that started at
    /// `start_ticks` (pids are reused).
    Signal {
        /// Service the process belongs (belonged) to.
        service: String,
        /// Its pid.
        pid: u32,
        /// Its start time, from `/proc/<pid>/stat`.
        start_ticks: u64,
        /// Signal name (`SIGCONT`).
        signal: String,
    },
    /// Start the service through the supervisor if it is not running.
    Start {
        /// Service name.
        service: String,
    },
    /// Reset a gateway's clock skew to 0.
    ResetClock {
        /// Gateway name.
        gateway: String,
        /// Its HTTP port.
        port: u16,
    },
    /// Put the original value back into a corrupted record (only while it still has
    /// `version`).
    RestoreValue {
        /// Replica name.
        replica: String,
        /// Its port.
        port: u16,
        /// Its kind.
        backend: ReplicaBackend,
        /// The key.
        key: String,
        /// The record's version.
        version: String,
        /// The original value, base64.
        value_b64: String,
    },
    /// Put a dropped record back, last-write-wins.
    RestoreRecord {
        /// Replica name.
        replica: String,
        /// Its port.
        port: u16,
        /// Its kind.
        backend: ReplicaBackend,
        /// The key.
        key: String,
        /// The record's version.
        version: String,
        /// The value, base64; `None` for a tombstone.
        value_b64: Option<String>,
    },
    /// Stop the burner processes of a resource fault (found by the fault id on their
    /// command line) with SIGTERM; they clean up after themselves.
    StopBurner {
        /// The fault's id.
        fault_id: String,
    },
    /// Delete a file (a disk fill left by a burner that was killed).
    RemoveFile {
        /// The file.
        path: PathBuf,
    },
    /// Delete a toxic from a proxy of the fault proxy.
    DeleteToxic {
        /// Proxy name (`app_ap.db_g2`).
        proxy: String,
        /// Toxic name.
        toxic: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> ClusterMap {
        ClusterMap {
            services: vec!["db_g1".into(), "app_ap".into()],
            ..ClusterMap::default()
        }
    }

    #[test]
    fn json_form_is_tagged_by_type() {
        let f: Fault = serde_json::from_str(r#"{"type":"pause","service":"db_g1"}"#).unwrap();
        assert_eq!(
            f,
            Fault::Pause {
                service: "db_g1".into()
            }
        );
        let f: Fault = serde_json::from_str(r#"{"type":"crash_loop","service":"db_g1"}"#).unwrap();
        assert_eq!(f.kind(), "crash_loop");
        assert!(serde_json::from_str::<Fault>(r#"{"type":"melt","service":"db_g1"}"#).is_err());
        assert!(
            serde_json::from_str::<Fault>(r#"{"type":"pause","service":"db_g1","x":1}"#).is_err(),
            "unknown fields are refused"
        );
    }

    #[test]
    fn validation_names_the_field() {
        let c = cluster();
        let req = |fault, ttl_ms| FaultRequest {
            fault,
            ttl_ms,
            run: None,
        };
        let pause = Fault::Pause {
            service: "db_g1".into(),
        };
        assert!(req(pause.clone(), 1000).validate(&c).is_ok());
        assert_eq!(
            req(pause.clone(), 0).validate(&c).unwrap_err().field,
            "ttl_ms"
        );
        assert_eq!(
            req(pause, 3_600_001).validate(&c).unwrap_err().field,
            "ttl_ms"
        );
        let e = req(
            Fault::Kill {
                service: "db_g9".into(),
            },
            1000,
        )
        .validate(&c)
        .unwrap_err();
        assert_eq!(e.field, "service");
        assert!(e.message.contains("db_g1, app_ap"), "{e}");
        let e = req(
            Fault::CrashLoop {
                service: "db_g1".into(),
                interval_ms: 5,
            },
            1000,
        )
        .validate(&c)
        .unwrap_err();
        assert_eq!(e.field, "interval_ms");
    }
}
