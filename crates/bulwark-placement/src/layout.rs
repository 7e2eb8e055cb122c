//! The layout: which nodes exist, their weights and zones, N, and its version — as
//! persisted (JSON, `format: 1`) and validated. See docs/design/sharding.md, section 2.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

/// The persisted format this code writes and reads.
pub const FORMAT: u32 = 1;
/// Virtual nodes per node of weight 1 (seed 002).
pub const DEFAULT_VNODES: u16 = 150;
/// N when the layout does not say: three replicas, or every node when there are fewer.
pub const DEFAULT_REPLICATION: usize = 3;
/// Most virtual nodes per node of weight 1.
pub const MAX_VNODES: u16 = 4096;
/// Largest weight (a node 100 times the size of a weight-1 node).
pub const MAX_WEIGHT: f64 = 100.0;
/// Most tokens on one ring, so a typo in a weight cannot make routing tables huge.
pub const MAX_TOKENS: usize = 1 << 20;
/// Most nodes in one layout (node ids are `u16`).
pub const MAX_NODES: usize = 1024;

/// One storage node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Its name (`db_g3`): what its tokens are derived from, so it must never change.
    pub name: String,
    /// Where its RESP listener is (`host:port`).
    pub addr: String,
    /// Relative capacity: a node of weight 2 gets twice the tokens of a node of weight 1.
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// Failure domain (rack, availability zone); replicas go to distinct zones first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

fn default_weight() -> f64 {
    1.0
}

impl NodeSpec {
    /// A node of weight 1 and no zone.
    pub fn new(name: impl Into<String>, addr: impl Into<String>) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            addr: addr.into(),
            weight: default_weight(),
            zone: None,
        }
    }
}

/// One ring's worth of configuration: the nodes, N and the virtual-node count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// N: replicas per key.
    pub replication_factor: usize,
    /// Virtual nodes per node of weight 1.
    #[serde(default = "default_vnodes")]
    pub vnodes: u16,
    /// The nodes, in the order operators listed them (not significant for placement).
    pub nodes: Vec<NodeSpec>,
}

fn default_vnodes() -> u16 {
    DEFAULT_VNODES
}

impl Placement {
    /// The placement of `nodes` with the default N and virtual-node count.
    pub fn with_defaults(nodes: Vec<NodeSpec>) -> Placement {
        Placement {
            replication_factor: DEFAULT_REPLICATION.min(nodes.len()),
            vnodes: DEFAULT_VNODES,
            nodes,
        }
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Tokens node `spec` owns on this ring.
    pub fn tokens_of(&self, spec: &NodeSpec) -> usize {
        ((f64::from(self.vnodes) * spec.weight).round() as usize).max(1)
    }

    /// Checks everything a ring needs; the error says what is wrong.
    pub fn validate(&self) -> Result<(), LayoutError> {
        if self.nodes.is_empty() {
            return Err(LayoutError::NoNodes);
        }
        if self.nodes.len() > MAX_NODES {
            return Err(LayoutError::TooManyNodes(self.nodes.len()));
        }
        if !(1..=MAX_VNODES).contains(&self.vnodes) {
            return Err(LayoutError::Vnodes(self.vnodes));
        }
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        let mut tokens = 0usize;
        for n in &self.nodes {
            check_name("node name", &n.name)?;
            if let Some(zone) = &n.zone {
                check_name("zone", zone)?;
            }
            check_addr(&n.name, &n.addr)?;
            if !(n.weight > 0.0 && n.weight <= MAX_WEIGHT) {
                return Err(LayoutError::Weight {
                    node: n.name.clone(),
                    weight: n.weight,
                });
            }
            if !names.insert(n.name.as_str()) {
                return Err(LayoutError::DuplicateName(n.name.clone()));
            }
            if !addrs.insert(n.addr.as_str()) {
                return Err(LayoutError::DuplicateAddr(n.addr.clone()));
            }
            tokens += self.tokens_of(n);
        }
        if tokens > MAX_TOKENS {
            return Err(LayoutError::TooManyTokens(tokens));
        }
        let n = self.replication_factor;
        if n == 0 || n > self.nodes.len() {
            return Err(LayoutError::Replication {
                n,
                nodes: self.nodes.len(),
            });
        }
        Ok(())
    }
}

fn check_name(what: &'static str, s: &str) -> Result<(), LayoutError> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(LayoutError::Name {
            what,
            value: s.to_owned(),
        })
    }
}

fn check_addr(node: &str, addr: &str) -> Result<(), LayoutError> {
    let bad = || LayoutError::Addr {
        node: node.to_owned(),
        addr: addr.to_owned(),
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(char::is_whitespace) || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(())
}

/// Where data lives now: one ring, or two while data moves from one to the other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LayoutState {
    /// One ring; every key on its preference list of `Placement`.
    Stable(Placement),
    /// Data is moving: writes reach both rings' replica sets, quorums are needed in both.
    Transition {
        /// The ring data is moving from (it still holds every acknowledged write).
        from: Placement,
        /// The ring data is moving to.
        to: Placement,
    },
}

/// A versioned layout, as persisted and served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    /// The persisted format ([`FORMAT`]).
    pub format: u32,
    /// Strictly increases with every change; replica calls carry it (fencing).
    pub version: u64,
    /// The ring or rings.
    pub state: LayoutState,
}

impl Layout {
    /// Version 1 of a stable layout.
    pub fn stable(placement: Placement) -> Result<Layout, LayoutError> {
        let layout = Layout {
            format: FORMAT,
            version: 1,
            state: LayoutState::Stable(placement),
        };
        layout.validate()?;
        Ok(layout)
    }

    /// Parses and validates a persisted layout.
    pub fn from_json(text: &str) -> Result<Layout, LayoutError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let layout: Layout =
            serde::Deserialize::deserialize(de).map_err(|e| LayoutError::Parse(e.to_string()))?;
        layout.validate()?;
        Ok(layout)
    }

    /// The persisted text (pretty, so an operator can read it).
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks the format and every ring.
    pub fn validate(&self) -> Result<(), LayoutError> {
        if self.format != FORMAT {
            return Err(LayoutError::Format(self.format));
        }
        if self.version == 0 {
            return Err(LayoutError::Version);
        }
        match &self.state {
            LayoutState::Stable(p) => p.validate(),
            LayoutState::Transition { from, to } => {
                from.validate()?;
                to.validate()?;
                check_transition(from, to, &[])
            }
        }
    }

    /// The ring data is routed by for writes' target and for the coordinator: the stable
    /// ring, or the transition's `to`.
    pub fn target(&self) -> &Placement {
        match &self.state {
            LayoutState::Stable(p) | LayoutState::Transition { to: p, .. } => p,
        }
    }

    /// Whether data is moving.
    pub fn in_transition(&self) -> bool {
        matches!(self.state, LayoutState::Transition { .. })
    }
}

/// Checks that moving from `from` to `to` can keep every key: nodes that leave without
/// being drained (listed in `undrained`) must be fewer than `from`'s N, or some segment
/// could lose every copy; a node that stays keeps its address.
pub fn check_transition(
    from: &Placement,
    to: &Placement,
    undrained: &[&str],
) -> Result<(), LayoutError> {
    for n in &to.nodes {
        if let Some(old) = from.node(&n.name)
            && old.addr != n.addr
        {
            return Err(LayoutError::AddrChanged(n.name.clone()));
        }
    }
    let lost: Vec<&str> = undrained
        .iter()
        .copied()
        .filter(|name| from.node(name).is_some() && to.node(name).is_none())
        .collect();
    if lost.len() >= from.replication_factor {
        return Err(LayoutError::TooManyRemoved {
            removed: lost.iter().map(|s| (*s).to_owned()).collect(),
            n: from.replication_factor,
        });
    }
    Ok(())
}

/// Why a layout or a change to it is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LayoutError {
    /// Not JSON of the layout's shape.
    #[error("not a layout: {0}")]
    Parse(String),
    /// A format this code does not know.
    #[error("layout format {0} is not supported (this version reads format {FORMAT})")]
    Format(u32),
    /// Version 0.
    #[error("layout version must be at least 1")]
    Version,
    /// No nodes.
    #[error("a layout needs at least one node")]
    NoNodes,
    /// More than [`MAX_NODES`].
    #[error("{0} nodes: at most {MAX_NODES} are supported")]
    TooManyNodes(usize),
    /// `vnodes` out of range.
    #[error("vnodes {0}: must be between 1 and {MAX_VNODES}")]
    Vnodes(u16),
    /// A bad node name or zone.
    #[error("{what} {value:?}: use 1 to 64 letters, digits, '_', '-' or '.'")]
    Name {
        /// `node name` or `zone`.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// A bad address.
    #[error("node {node}: address {addr:?} is not host:port")]
    Addr {
        /// The node.
        node: String,
        /// The address.
        addr: String,
    },
    /// Weight out of range.
    #[error("node {node}: weight {weight} must be above 0 and at most {MAX_WEIGHT}")]
    Weight {
        /// The node.
        node: String,
        /// The weight.
        weight: f64,
    },
    /// Two nodes with one name.
    #[error("node {0} is listed twice")]
    DuplicateName(String),
    /// Two nodes with one address.
    #[error("address {0} is listed for two nodes")]
    DuplicateAddr(String),
    /// Too many tokens.
    #[error("the ring would have {0} tokens (at most {MAX_TOKENS}): lower vnodes or weights")]
    TooManyTokens(usize),
    /// N impossible.
    #[error("replication factor {n} cannot be placed on {nodes} node(s): use 1 to {nodes}")]
    Replication {
        /// The requested N.
        n: usize,
        /// Nodes in the layout.
        nodes: usize,
    },
    /// A node kept its name but not its address.
    #[error("node {0} changes its address: remove it and add it under a new name")]
    AddrChanged(String),
    /// N or more nodes removed without draining.
    #[error(
        "removing {removed:?} at once without draining could lose every copy of some keys (N = {n}): drain them, or remove fewer than {n} at a time"
    )]
    TooManyRemoved {
        /// The nodes.
        removed: Vec<String>,
        /// N.
        n: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: usize) -> NodeSpec {
        NodeSpec::new(format!("db_g{i}"), format!("127.0.0.1:{}", 6400 + i))
    }

    fn nodes(m: usize) -> Vec<NodeSpec> {
        (1..=m).map(node).collect()
    }

    #[test]
    fn defaults_follow_the_node_count() {
        assert_eq!(Placement::with_defaults(nodes(2)).replication_factor, 2);
        assert_eq!(Placement::with_defaults(nodes(6)).replication_factor, 3);
        assert_eq!(Placement::with_defaults(nodes(6)).vnodes, 150);
    }

    #[test]
    fn round_trips_through_json_and_refuses_unknown_fields() {
        let layout = Layout::stable(Placement::with_defaults(nodes(4))).unwrap();
        let text = layout.to_json();
        assert_eq!(Layout::from_json(&text).unwrap(), layout);
        let extra = text.replacen("\"version\"", "\"versoin\": 1, \"version\"", 1);
        assert!(matches!(
            Layout::from_json(&extra),
            Err(LayoutError::Parse(e)) if e.contains("versoin")
        ));
        let newer = text.replacen("\"format\": 1", "\"format\": 2", 1);
        assert_eq!(Layout::from_json(&newer), Err(LayoutError::Format(2)));
    }

    #[test]
    fn bad_layouts_are_refused_with_the_reason() {
        let check = |edit: &dyn Fn(&mut Placement)| {
            let mut p = Placement::with_defaults(nodes(4));
            edit(&mut p);
            p.validate().unwrap_err()
        };
        assert_eq!(
            check(&|p| p.replication_factor = 5),
            LayoutError::Replication { n: 5, nodes: 4 }
        );
        assert_eq!(
            check(&|p| p.replication_factor = 0),
            LayoutError::Replication { n: 0, nodes: 4 }
        );
        assert_eq!(
            check(&|p| p.nodes[1].name = "db_g1".into()),
            LayoutError::DuplicateName("db_g1".into())
        );
        assert_eq!(
            check(&|p| p.nodes[1].addr = p.nodes[0].addr.clone()),
            LayoutError::DuplicateAddr("127.0.0.1:6401".into())
        );
        assert!(matches!(
            check(&|p| p.nodes[0].weight = 0.0),
            LayoutError::Weight { .. }
        ));
        assert!(matches!(
            check(&|p| p.nodes[0].weight = f64::NAN),
            LayoutError::Weight { .. }
        ));
        assert!(matches!(
            check(&|p| p.nodes[0].addr = "no-port".into()),
            LayoutError::Addr { .. }
        ));
        assert!(matches!(
            check(&|p| p.nodes[0].name = "a b".into()),
            LayoutError::Name { .. }
        ));
        assert_eq!(check(&|p| p.vnodes = 0), LayoutError::Vnodes(0));
        assert_eq!(check(&|p| p.nodes.clear()), LayoutError::NoNodes);
        let mut ok = Placement::with_defaults(nodes(2));
        ok.nodes[0].addr = "[::1]:6401".into();
        ok.validate().unwrap();
    }

    #[test]
    fn removing_n_undrained_nodes_at_once_is_refused() {
        let from = Placement::with_defaults(nodes(6));
        let mut to = from.clone();
        to.nodes.retain(|n| n.name != "db_g5" && n.name != "db_g6");
        check_transition(&from, &to, &["db_g5", "db_g6"]).unwrap();
        to.nodes.retain(|n| n.name != "db_g4");
        let e = check_transition(&from, &to, &["db_g4", "db_g5", "db_g6"]).unwrap_err();
        assert!(e.to_string().contains("drain them"), "{e}");
        // Drained nodes (not listed as undrained) may all leave at once.
        check_transition(&from, &to, &[]).unwrap();
        let mut moved = from.clone();
        moved.nodes[0].addr = "127.0.0.1:7000".into();
        assert_eq!(
            check_transition(&from, &moved, &[]),
            Err(LayoutError::AddrChanged("db_g1".into()))
        );
    }
}
