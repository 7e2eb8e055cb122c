//! The glue between `up` and the chaos controller: the supervisor as
//! [`bulwark_chaos::Processes`], and the [`ClusterMap`] of a topology.

use std::sync::Arc;

use bulwark_chaos::{ClusterMap, Node, ProcessError, Processes, ReplicaBackend};
use futures::FutureExt as _;
use futures::future::BoxFuture;
use nix::sys::signal::Signal;

use crate::supervisor::{Action, ActionError, Supervisor};
use crate::topology::{ServiceKind, Topology};

/// The supervisor, seen by the chaos controller.
#[derive(Debug, Clone)]
pub struct SupervisedProcesses(pub Arc<Supervisor>);

fn convert(e: ActionError) -> ProcessError {
    match e {
        ActionError::UnknownService { name, .. } => ProcessError::Unknown(name),
        ActionError::NotRunning(name) => ProcessError::NotRunning(name),
        other => ProcessError::Failed(other.to_string()),
    }
}

impl Processes for SupervisedProcesses {
    fn pid(&self, service: &str) -> Result<Option<u32>, ProcessError> {
        self.0.status(service).map(|s| s.pid).map_err(convert)
    }

    fn signal<'a>(
        &'a self,
        service: &'a str,
        signal: Signal,
        only_pid: Option<u32>,
    ) -> BoxFuture<'a, Result<u32, ProcessError>> {
        async move {
            let pid = match only_pid {
                Some(p) => p,
                None => self
                    .pid(service)?
                    .ok_or_else(|| ProcessError::NotRunning(service.to_owned()))?,
            };
            self.0
                .act(service, Action::KillPid(signal, pid))
                .await
                .map_err(convert)?;
            Ok(pid)
        }
        .boxed()
    }

    fn start<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Result<(), ProcessError>> {
        async move {
            self.0
                .act(service, Action::Start)
                .await
                .map(drop)
                .map_err(convert)
        }
        .boxed()
    }

    fn restart<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Result<(), ProcessError>> {
        async move {
            self.0
                .act(service, Action::Restart)
                .await
                .map(drop)
                .map_err(convert)
        }
        .boxed()
    }
}

/// What the chaos controller may target in `topology`.
pub fn cluster_map(topology: &Topology) -> ClusterMap {
    let nodes = |kind: ServiceKind| -> Vec<Node> {
        topology
            .services
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| Node {
                name: s.name.clone(),
                port: s.port,
            })
            .collect()
    };
    ClusterMap {
        gateways: nodes(ServiceKind::Gateway),
        replicas: nodes(ServiceKind::Replica),
        services: topology.services.iter().map(|s| s.name.clone()).collect(),
        // Data faults speak each kind's protocol.
        backend: topology
            .services
            .iter()
            .find(|s| s.kind == ServiceKind::Replica)
            .map(|s| {
                if s.program.file_name().is_some_and(|n| n == "redis-server") {
                    ReplicaBackend::Redis
                } else {
                    ReplicaBackend::Bulwark
                }
            }),
        proxy_api: topology
            .services
            .iter()
            .find(|s| s.kind == ServiceKind::Proxy)
            .map(|s| s.url()),
        links: topology.links.clone(),
        // Data faults present `up`'s certificate to the replicas.
        replica_tls: topology.tls.as_ref().map(|t| bulwark_replica::ReplicaTls {
            ca: t.ca(),
            identity: Some((t.cert("up"), t.key("up"))),
        }),
        https: topology.tls.is_some(),
    }
}
