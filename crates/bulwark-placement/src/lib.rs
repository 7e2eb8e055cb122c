//! Where keys live (SPEC HARD-4, SHARD-1): a consistent-hash ring of virtual nodes per
//! storage node (SHA-256 tokens, weights, zones), each key's preference list of N distinct
//! nodes, the versioned layout that is persisted and served, and the ranges a change of
//! layout moves. A pure function of (layout, key): no I/O, no clock, no randomness.
//! The protocol built on it is docs/design/sharding.md.

mod layout;
mod moves;
mod ring;

pub use layout::{
    DEFAULT_REPLICATION, DEFAULT_VNODES, FORMAT, Layout, LayoutError, LayoutState, MAX_NODES,
    MAX_TOKENS, MAX_VNODES, MAX_WEIGHT, NodeSpec, Placement, check_transition,
};
pub use moves::{Move, moved_fraction, moves};
pub use ring::{NodeId, Ring, Segment, position, token};
