//! The consistent-hash ring of one [`Placement`]: tokens, segments and each segment's
//! preference list, computed once so that routing a key is a hash and a binary search.

use std::collections::HashSet;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::layout::{LayoutError, Placement};

/// A node's index on one ring (positions in its placement's `nodes`).
pub type NodeId = u16;

/// The span of the 64-bit hash circle, as a float (for shares).
const CIRCLE: f64 = 18_446_744_073_709_551_616.0;

/// Where `key` sits on the circle: the first 8 bytes of its SHA-256, big-endian.
pub fn position(key: &[u8]) -> u64 {
    first_u64(&Sha256::digest(key))
}

/// Token `i` of node `name`: the first 8 bytes of `SHA-256(name ‖ "#" ‖ i)`.
pub fn token(name: &str, i: usize) -> u64 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"#");
    h.update(i.to_string().as_bytes());
    first_u64(&h.finalize())
}

fn first_u64(digest: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(b)
}

/// One segment of the ring: the positions in `(start, end]` (wrapping past `u64::MAX`
/// when `start >= end`; a ring of one token has one segment, the whole circle).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Exclusive start: the previous token.
    pub start: u64,
    /// Inclusive end: this segment's token.
    pub end: u64,
}

impl Segment {
    /// Whether `pos` falls in the segment.
    pub fn contains(&self, pos: u64) -> bool {
        if self.start < self.end {
            pos > self.start && pos <= self.end
        } else {
            pos > self.start || pos <= self.end
        }
    }

    /// How much of the circle it covers, as a fraction in `(0, 1]`.
    pub fn fraction(&self) -> f64 {
        match self.end.wrapping_sub(self.start) {
            0 => 1.0,
            arc => arc as f64 / CIRCLE,
        }
    }
}

/// A built ring.
#[derive(Debug, Clone)]
pub struct Ring {
    /// Node names by id.
    names: Vec<Arc<str>>,
    /// N.
    n: usize,
    /// Segment ends, ascending and distinct.
    tokens: Vec<u64>,
    /// Segment `i`'s preference list is `lists[i * n .. (i + 1) * n]`.
    lists: Vec<NodeId>,
}

impl Ring {
    /// Builds the ring of a placement (validated first).
    pub fn new(placement: &Placement) -> Result<Ring, LayoutError> {
        placement.validate()?;
        let names: Vec<Arc<str>> = placement
            .nodes
            .iter()
            .map(|n| Arc::from(n.name.as_str()))
            .collect();
        let mut owned: Vec<(u64, NodeId)> = Vec::new();
        for (id, spec) in placement.nodes.iter().enumerate() {
            let id = id as NodeId;
            owned.extend((0..placement.tokens_of(spec)).map(|i| (token(&spec.name, i), id)));
        }
        // Equal tokens (never seen with SHA-256, but possible): the node whose name sorts
        // first keeps it, so the ring does not depend on the order nodes are listed in.
        owned.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| names[usize::from(a.1)].cmp(&names[usize::from(b.1)]))
        });
        owned.dedup_by_key(|(t, _)| *t);
        let n = placement.replication_factor;
        let zones: Vec<Option<&str>> = placement.nodes.iter().map(|s| s.zone.as_deref()).collect();
        let mut lists = Vec::with_capacity(owned.len() * n);
        for i in 0..owned.len() {
            lists.extend(preference_list(&owned, i, n, &zones, names.len()));
        }
        Ok(Ring {
            names,
            n,
            tokens: owned.iter().map(|(t, _)| *t).collect(),
            lists,
        })
    }

    /// N.
    pub fn replication_factor(&self) -> usize {
        self.n
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.names.len()
    }

    /// The name of node `id`.
    pub fn name(&self, id: NodeId) -> &str {
        &self.names[usize::from(id)]
    }

    /// The id of the node named `name`.
    pub fn id(&self, name: &str) -> Option<NodeId> {
        self.names
            .iter()
            .position(|n| &**n == name)
            .map(|i| i as NodeId)
    }

    /// The index of the segment holding `pos`.
    pub fn segment_of(&self, pos: u64) -> usize {
        let i = self.tokens.partition_point(|t| *t < pos);
        if i == self.tokens.len() { 0 } else { i }
    }

    /// Segment `i`.
    pub fn segment(&self, i: usize) -> Segment {
        let prev = if i == 0 { self.tokens.len() - 1 } else { i - 1 };
        Segment {
            start: self.tokens[prev],
            end: self.tokens[i],
        }
    }

    /// Number of segments (tokens).
    pub fn segment_count(&self) -> usize {
        self.tokens.len()
    }

    /// Segment `i`'s preference list.
    pub fn list(&self, i: usize) -> &[NodeId] {
        &self.lists[i * self.n..(i + 1) * self.n]
    }

    /// The preference list of the position `pos`.
    pub fn replicas_at(&self, pos: u64) -> &[NodeId] {
        self.list(self.segment_of(pos))
    }

    /// The preference list of `key`: its replica set, preferred coordinator first.
    pub fn replicas(&self, key: &[u8]) -> &[NodeId] {
        self.replicas_at(position(key))
    }

    /// Each node's share of all key replicas (by id; they sum to 1): the fraction of the
    /// circle whose preference list holds it, divided by N.
    pub fn shares(&self) -> Vec<f64> {
        let mut shares = vec![0.0; self.names.len()];
        for i in 0..self.tokens.len() {
            let f = self.segment(i).fraction();
            for id in self.list(i) {
                shares[usize::from(*id)] += f / self.n as f64;
            }
        }
        shares
    }
}

/// The preference list of segment `i`: from its token clockwise, the first `n` distinct
/// nodes, taking a node only if its zone is not in the list yet; if a turn leaves the list
/// short, the nodes skipped for their zone fill it, in ring order.
fn preference_list(
    owned: &[(u64, NodeId)],
    i: usize,
    n: usize,
    zones: &[Option<&str>],
    nodes: usize,
) -> Vec<NodeId> {
    let mut list: Vec<NodeId> = Vec::with_capacity(n);
    let mut skipped: Vec<NodeId> = Vec::new();
    let mut seen = HashSet::with_capacity(nodes);
    let mut used_zones: HashSet<&str> = HashSet::new();
    for j in 0..owned.len() {
        if list.len() == n || seen.len() == nodes {
            break;
        }
        let id = owned[(i + j) % owned.len()].1;
        if !seen.insert(id) {
            continue;
        }
        match zones[usize::from(id)] {
            Some(z) if used_zones.contains(z) => skipped.push(id),
            zone => {
                if let Some(z) = zone {
                    used_zones.insert(z);
                }
                list.push(id);
            }
        }
    }
    let missing = n - list.len();
    list.extend(skipped.into_iter().take(missing));
    list
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::NodeSpec;

    fn placement(m: usize, n: usize) -> Placement {
        let nodes = (1..=m)
            .map(|i| NodeSpec::new(format!("db_g{i}"), format!("127.0.0.1:{}", 6400 + i)))
            .collect();
        Placement {
            replication_factor: n,
            ..Placement::with_defaults(nodes)
        }
    }

    #[test]
    fn positions_and_tokens_are_fixed_functions_of_their_input() {
        // SHA-256("a") = ca978112ca1bbdca…
        assert_eq!(position(b"a"), 0xca97_8112_ca1b_bdca);
        assert_eq!(token("db_g1", 0), token("db_g1", 0));
        assert_ne!(token("db_g1", 0), token("db_g1", 1));
    }

    #[test]
    fn segments_cover_the_circle_once() {
        let ring = Ring::new(&placement(4, 3)).unwrap();
        let total: f64 = (0..ring.segment_count())
            .map(|i| ring.segment(i).fraction())
            .sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        for pos in [
            0,
            1,
            u64::MAX,
            position(b"k"),
            ring.tokens[0],
            ring.tokens[0] + 1,
        ] {
            let i = ring.segment_of(pos);
            assert!(ring.segment(i).contains(pos), "{pos} in {i}");
        }
    }

    #[test]
    fn two_or_three_nodes_put_every_key_everywhere() {
        for m in [1, 2, 3] {
            let ring = Ring::new(&Placement::with_defaults(placement(m, m).nodes)).unwrap();
            for key in [&b"a"[..], b"b", b"user:42"] {
                let mut got = ring.replicas(key).to_vec();
                got.sort_unstable();
                assert_eq!(got, (0..m as NodeId).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn zones_come_first() {
        let mut p = placement(6, 3);
        for (i, node) in p.nodes.iter_mut().enumerate() {
            node.zone = Some(["a", "a", "a", "a", "b", "c"][i].to_owned());
        }
        let ring = Ring::new(&p).unwrap();
        for i in 0..ring.segment_count() {
            let zones: HashSet<_> = ring
                .list(i)
                .iter()
                .map(|id| p.nodes[usize::from(*id)].zone.clone())
                .collect();
            assert_eq!(zones.len(), 3, "segment {i}: {:?}", ring.list(i));
        }
        // Two zones for N = 3: both zones, then the next node.
        for node in p.nodes.iter_mut() {
            node.zone = Some(if node.name == "db_g6" { "b" } else { "a" }.to_owned());
        }
        let ring = Ring::new(&p).unwrap();
        for i in 0..ring.segment_count() {
            let list = ring.list(i);
            assert_eq!(list.len(), 3);
            assert!(list.contains(&5), "segment {i}: {list:?}");
        }
    }
}
