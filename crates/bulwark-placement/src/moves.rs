//! What a change of ring moves: the position ranges whose replica set changes, each
//! with the nodes that hold it now (the sources) and the nodes that gain it.

use std::sync::Arc;

use crate::ring::{Ring, Segment};

/// One range whose replica set differs between two rings.
#[derive(Debug, Clone, PartialEq)]
pub struct Move {
    /// The positions, `(start, end]`.
    pub range: Segment,
    /// Its replica set on the ring data moves from (sorted names): the sources.
    pub from: Vec<Arc<str>>,
    /// Its replica set on the ring data moves to (sorted names).
    pub to: Vec<Arc<str>>,
}

impl Move {
    /// Nodes that receive the range.
    pub fn gaining(&self) -> impl Iterator<Item = &str> {
        self.to
            .iter()
            .filter(|n| !self.from.contains(n))
            .map(|n| &**n)
    }

    /// Nodes that no longer hold the range afterwards (their copies are deleted).
    pub fn losing(&self) -> impl Iterator<Item = &str> {
        self.from
            .iter()
            .filter(|n| !self.to.contains(n))
            .map(|n| &**n)
    }
}

fn names(ring: &Ring, pos: u64) -> Vec<Arc<str>> {
    let mut v: Vec<Arc<str>> = ring
        .replicas_at(pos)
        .iter()
        .map(|id| Arc::from(ring.name(*id)))
        .collect();
    v.sort_unstable();
    v
}

/// The ranges whose replica set (as a set: a new preference order alone moves nothing)
/// differs from `from` to `to`, adjacent ranges with the same sets merged, in position
/// order.
pub fn moves(from: &Ring, to: &Ring) -> Vec<Move> {
    let mut bounds: Vec<u64> = (0..from.segment_count())
        .map(|i| from.segment(i).end)
        .chain((0..to.segment_count()).map(|i| to.segment(i).end))
        .collect();
    bounds.sort_unstable();
    bounds.dedup();
    let mut out: Vec<Move> = Vec::new();
    for (k, end) in bounds.iter().copied().enumerate() {
        let start = bounds[if k == 0 { bounds.len() - 1 } else { k - 1 }];
        let (a, b) = (names(from, end), names(to, end));
        if a == b {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.range.end == start && last.from == a && last.to == b => {
                last.range.end = end;
            }
            _ => out.push(Move {
                range: Segment { start, end },
                from: a,
                to: b,
            }),
        }
    }
    out
}

/// The fraction of all key replicas of `to` that some node must receive: the sum over
/// moved ranges of (share of the circle × gaining nodes), over N.
pub fn moved_fraction(from: &Ring, to: &Ring) -> f64 {
    moves(from, to)
        .iter()
        .map(|m| m.range.fraction() * m.gaining().count() as f64)
        .sum::<f64>()
        / to.replication_factor() as f64
}
