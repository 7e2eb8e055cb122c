//! What the controller knows about the cluster it breaks: names, ports and the proxied
//! links between gateways and replicas. `bulwark up` builds it from its topology.

use serde::{Deserialize, Serialize};

/// One service the controller may target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Service name (`db_g1`, `app_ap`).
    pub name: String,
    /// Its port on 127.0.0.1 (a replica's direct port, a gateway's HTTP port).
    pub port: u16,
}

/// A proxied link from a gateway to a replica: the gateway connects to `listen`, the proxy
/// forwards to the replica's own port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// The gateway (client side).
    pub gateway: String,
    /// The replica (server side).
    pub replica: String,
    /// Port the proxy listens on for this link.
    pub listen: u16,
    /// The replica's port.
    pub upstream: u16,
}

impl Link {
    /// The proxy's name in the Toxiproxy API: `app_ap.db_g2`.
    pub fn proxy_name(&self) -> String {
        format!("{}.{}", self.gateway, self.replica)
    }
}

/// What kind of storage the replicas are (data faults differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaBackend {
    /// `bulwark node`.
    Bulwark,
    /// `redis-server` with the `bulwark` function library.
    Redis,
}

/// The cluster as the controller sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterMap {
    /// Gateways, in topology order.
    pub gateways: Vec<Node>,
    /// Replicas, in topology order.
    pub replicas: Vec<Node>,
    /// Every supervised service name (gateways, replicas, the proxy).
    pub services: Vec<String>,
    /// Replica storage kind.
    pub backend: Option<ReplicaBackend>,
    /// Base URL of the Toxiproxy API of the fault proxy, when `up` runs one.
    pub proxy_api: Option<String>,
    /// The proxied links (empty when gateways reach replicas directly).
    pub links: Vec<Link>,
    /// TLS to the replicas (under `up --tls`), for data faults.
    #[serde(skip)]
    pub replica_tls: Option<bulwark_replica::ReplicaTls>,
    /// Whether the gateways serve HTTPS (under `up --tls`).
    #[serde(default)]
    pub https: bool,
}

impl ClusterMap {
    /// Whether `name` is a supervised service.
    pub fn has_service(&self, name: &str) -> bool {
        self.services.iter().any(|s| s == name)
    }

    /// The gateway called `name`.
    pub fn gateway(&self, name: &str) -> Option<&Node> {
        self.gateways.iter().find(|n| n.name == name)
    }

    /// The replica called `name`.
    pub fn replica(&self, name: &str) -> Option<&Node> {
        self.replicas.iter().find(|n| n.name == name)
    }

    /// Gateways and replicas: the nodes a partition shape ranges over by default.
    pub fn partition_nodes(&self) -> Vec<String> {
        self.gateways
            .iter()
            .chain(&self.replicas)
            .map(|n| n.name.clone())
            .collect()
    }
}
