//! The chaos control plane (SPEC CHAOS-1, CHAOS-2, CTRL-1).
//!
//! * [`fault`]: every fault a typed value with a TTL, validated against the cluster, and
//!   its undo steps;
//! * [`journal`]: the rollback journal (durable before a fault takes effect);
//! * [`controller`]: applies and removes faults, enforces TTLs, the enable/disable switch,
//!   start-up recovery of a journal left by a dead controller;
//! * [`processes`]: the trait through which the supervisor of `bulwark up` is reached;
//! * [`api`]: the `/api/v1/chaos/*` routes; [`client`]: their client; [`cli`]: `bulwark
//!   chaos enable|disable|status|inject|remove`.
//!
//! The design and its invariants are in `docs/ARCHITECTURE.md`, "Chaos engineering".

#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod controller;
pub mod data;
pub mod experiment;
pub mod fault;
pub mod journal;
pub mod locate;
pub mod partition;
pub mod probes;
pub mod processes;
pub mod report;
pub mod resource;
pub mod runner;
pub mod tolerance;
pub mod toxiproxy;

pub use cluster::{ClusterMap, Link, Node, ReplicaBackend};
pub use controller::{ActiveFault, ChaosError, Controller, ControllerConfig, Recovered};
pub use fault::{Fault, FaultRequest};
pub use processes::{ProcessError, Processes};
