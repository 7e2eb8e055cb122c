//! Partition shapes as Jepsen names them, as pure functions: shape + node list → *grudge*
//! (for each node, the nodes it does not hear from) → the directions of the proxied links
//! to cut. See `docs/ARCHITECTURE.md`, "Partitions".

use std::collections::{BTreeMap, BTreeSet};

use rand::SeedableRng as _;
use rand::seq::SliceRandom as _;
use serde::{Deserialize, Serialize};

use crate::cluster::Link;

/// For each node, the nodes whose traffic it drops (Jepsen's grudge).
pub type Grudge = BTreeMap<String, BTreeSet<String>>;

/// Jepsen's partition shapes, plus one-way and explicit components.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// One node (`node`) against the rest (Jepsen's `split-one`).
    Isolate,
    /// The first ⌊n/2⌋ nodes against the others (Jepsen's `partition-halves`).
    Halves,
    /// Every node sees a majority, no two see the same one (Jepsen's `majorities-ring`).
    MajoritiesRing,
    /// Two halves, and a node in the middle both sides still see (Jepsen's `bridge`).
    Bridge,
    /// Traffic from the `from` nodes to the `to` nodes is dropped; the reverse flows.
    OneWay,
    /// Explicit `components`: nodes hear only nodes of their own component.
    Components,
}

/// Direction of a proxied link, in Toxiproxy's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Client (gateway) → server (replica): requests.
    Upstream,
    /// Server → client: replies.
    Downstream,
}

impl Stream {
    /// The API's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Upstream => "upstream",
            Stream::Downstream => "downstream",
        }
    }
}

/// What a shape needs besides the node list.
#[derive(Debug, Clone, Default)]
pub struct ShapeArgs {
    /// The node `isolate` cuts off.
    pub node: Option<String>,
    /// `one_way`: the senders whose traffic is dropped.
    pub from: Vec<String>,
    /// `one_way`: the receivers that drop it.
    pub to: Vec<String>,
    /// `components`: the groups.
    pub components: Vec<Vec<String>>,
    /// Shuffle the node list first with this seed (Jepsen shuffles; tests pin a seed).
    pub seed: Option<u64>,
}

/// A shape that cannot be drawn over these nodes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ShapeError {
    /// The argument at fault.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

fn bad(field: &'static str, message: impl Into<String>) -> ShapeError {
    ShapeError {
        field,
        message: message.into(),
    }
}

/// Each node hates every node outside its component (Jepsen's `complete-grudge`).
pub fn complete_grudge(components: &[Vec<String>]) -> Grudge {
    let all: BTreeSet<String> = components.iter().flatten().cloned().collect();
    let mut g = Grudge::new();
    for c in components {
        let mine: BTreeSet<String> = c.iter().cloned().collect();
        for n in c {
            g.insert(n.clone(), all.difference(&mine).cloned().collect());
        }
    }
    g
}

/// The grudge of `shape` over `nodes`.
pub fn grudge(shape: Shape, nodes: &[String], args: &ShapeArgs) -> Result<Grudge, ShapeError> {
    let known: BTreeSet<&String> = nodes.iter().collect();
    let check = |field: &'static str, list: &[String]| -> Result<(), ShapeError> {
        match list.iter().find(|n| !known.contains(n)) {
            Some(n) => Err(bad(
                field,
                format!("'{n}' is not one of the nodes ({})", nodes.join(", ")),
            )),
            None => Ok(()),
        }
    };
    let mut order = nodes.to_vec();
    if let Some(seed) = args.seed {
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    }
    let n = order.len();
    let at_least = |k: usize| -> Result<(), ShapeError> {
        if n < k {
            Err(bad(
                "nodes",
                format!("this shape needs at least {k} nodes; got {n}"),
            ))
        } else {
            Ok(())
        }
    };
    Ok(match shape {
        Shape::Isolate => {
            let node = args
                .node
                .clone()
                .ok_or_else(|| bad("node", "isolate needs the node to cut off"))?;
            check("node", std::slice::from_ref(&node))?;
            at_least(2)?;
            let rest: Vec<String> = order.iter().filter(|x| **x != node).cloned().collect();
            complete_grudge(&[vec![node], rest])
        }
        Shape::Halves => {
            at_least(2)?;
            let (a, b) = order.split_at(n / 2);
            complete_grudge(&[a.to_vec(), b.to_vec()])
        }
        Shape::Bridge => {
            at_least(3)?;
            let (a, b) = order.split_at(n / 2);
            let bridge = b[0].clone();
            let mut g = complete_grudge(&[a.to_vec(), b.to_vec()]);
            g.remove(&bridge); // the bridge snubs no one
            for hated in g.values_mut() {
                hated.remove(&bridge); // and no one snubs the bridge
            }
            g
        }
        Shape::MajoritiesRing => {
            at_least(3)?;
            let m = n / 2 + 1;
            let all: BTreeSet<String> = order.iter().cloned().collect();
            let ring: Vec<&String> = order.iter().chain(order.iter()).collect();
            let mut g = Grudge::new();
            for w in ring.windows(m).take(n) {
                let seen: BTreeSet<String> = w.iter().map(|s| (*s).clone()).collect();
                g.insert(w[m / 2].clone(), all.difference(&seen).cloned().collect());
            }
            g
        }
        Shape::OneWay => {
            if args.from.is_empty() || args.to.is_empty() {
                return Err(bad("from", "one_way needs non-empty from and to"));
            }
            check("from", &args.from)?;
            check("to", &args.to)?;
            let mut g = Grudge::new();
            for t in &args.to {
                g.entry(t.clone())
                    .or_default()
                    .extend(args.from.iter().filter(|f| *f != t).cloned());
            }
            g
        }
        Shape::Components => {
            if args.components.len() < 2 {
                return Err(bad("components", "needs at least two components"));
            }
            for c in &args.components {
                check("components", c)?;
            }
            let mut seen = BTreeSet::new();
            if let Some(dup) = args.components.iter().flatten().find(|x| !seen.insert(*x)) {
                return Err(bad("components", format!("'{dup}' is in two components")));
            }
            complete_grudge(&args.components)
        }
    })
}

/// The directions of `links` a grudge cuts: upstream (requests) of gateway g → replica r
/// when r does not hear g, downstream (replies) when g does not hear r.
pub fn cut_links(grudge: &Grudge, links: &[Link]) -> Vec<(Link, Stream)> {
    let hates = |who: &str, whom: &str| grudge.get(who).is_some_and(|h| h.contains(whom));
    let mut cuts = Vec::new();
    for l in links {
        if hates(&l.replica, &l.gateway) {
            cuts.push((l.clone(), Stream::Upstream));
        }
        if hates(&l.gateway, &l.replica) {
            cuts.push((l.clone(), Stream::Downstream));
        }
    }
    cuts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn links(gws: &[&str], reps: &[&str]) -> Vec<Link> {
        let mut v = Vec::new();
        for (gi, g) in gws.iter().enumerate() {
            for (ri, r) in reps.iter().enumerate() {
                v.push(Link {
                    gateway: (*g).into(),
                    replica: (*r).into(),
                    listen: 6400 + 100 * (gi as u16 + 1) + ri as u16 + 1,
                    upstream: 6401 + ri as u16,
                });
            }
        }
        v
    }

    fn cut_names(cuts: &[(Link, Stream)]) -> Vec<String> {
        cuts.iter()
            .map(|(l, s)| format!("{}:{}", l.proxy_name(), s.as_str()))
            .collect()
    }

    const GW: &[&str] = &["app_ap", "app_cp"];
    const DB: &[&str] = &["db_g1", "db_g2", "db_g3"];

    #[test]
    fn isolating_a_replica_cuts_both_directions_of_its_links_only() {
        let nodes = names(&["app_ap", "app_cp", "db_g1", "db_g2", "db_g3"]);
        let g = grudge(
            Shape::Isolate,
            &nodes,
            &ShapeArgs {
                node: Some("db_g2".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(g["db_g2"].len(), 4);
        assert_eq!(g["db_g1"], BTreeSet::from(["db_g2".to_owned()]));
        assert_eq!(
            cut_names(&cut_links(&g, &links(GW, DB))),
            [
                "app_ap.db_g2:upstream",
                "app_ap.db_g2:downstream",
                "app_cp.db_g2:upstream",
                "app_cp.db_g2:downstream"
            ]
        );
    }

    #[test]
    fn halves_cut_every_link_across_the_split() {
        // {app_ap, app_cp} | {db_g1, db_g2, db_g3}: every link crosses.
        let nodes = names(&["app_ap", "app_cp", "db_g1", "db_g2", "db_g3"]);
        let g = grudge(Shape::Halves, &nodes, &ShapeArgs::default()).unwrap();
        assert_eq!(cut_links(&g, &links(GW, DB)).len(), 12);
        // {app_ap, db_g1} | {app_cp, db_g2, db_g3}
        let nodes = names(&["app_ap", "db_g1", "app_cp", "db_g2", "db_g3"]);
        let g = grudge(Shape::Halves, &nodes, &ShapeArgs::default()).unwrap();
        let cut = cut_names(&cut_links(&g, &links(GW, DB)));
        assert_eq!(
            cut,
            [
                "app_ap.db_g2:upstream",
                "app_ap.db_g2:downstream",
                "app_ap.db_g3:upstream",
                "app_ap.db_g3:downstream",
                "app_cp.db_g1:upstream",
                "app_cp.db_g1:downstream"
            ]
        );
    }

    #[test]
    fn the_bridge_keeps_both_sides() {
        // {app_ap, db_g1} | {db_g2 (bridge), app_cp, db_g3}
        let nodes = names(&["app_ap", "db_g1", "db_g2", "app_cp", "db_g3"]);
        let g = grudge(Shape::Bridge, &nodes, &ShapeArgs::default()).unwrap();
        assert!(!g.contains_key("db_g2"));
        assert!(g.values().all(|h| !h.contains("db_g2")));
        let cut = cut_names(&cut_links(&g, &links(GW, DB)));
        assert_eq!(
            cut,
            [
                "app_ap.db_g3:upstream",
                "app_ap.db_g3:downstream",
                "app_cp.db_g1:upstream",
                "app_cp.db_g1:downstream"
            ]
        );
    }

    #[test]
    fn in_a_majorities_ring_every_node_sees_a_different_majority() {
        let nodes = names(&["a", "b", "c", "d", "e"]);
        let g = grudge(Shape::MajoritiesRing, &nodes, &ShapeArgs::default()).unwrap();
        let mut seen = BTreeSet::new();
        for n in &nodes {
            let hated = &g[n];
            assert_eq!(hated.len(), 2, "{n} sees 3 of 5");
            assert!(!hated.contains(n));
            assert!(
                seen.insert(hated.clone()),
                "no two nodes see the same majority"
            );
        }
        // a's window is (e a b): it does not hear c and d.
        assert_eq!(g["a"], BTreeSet::from(["c".to_owned(), "d".to_owned()]));
        // Symmetric for 5 nodes: a hates c exactly when c hates a.
        for (x, hated) in &g {
            for y in hated {
                assert!(g[y].contains(x));
            }
        }
    }

    #[test]
    fn one_way_cuts_only_the_direction_from_senders_to_receivers() {
        let nodes = names(&["app_ap", "app_cp", "db_g1", "db_g2", "db_g3"]);
        // Replies of db_g1 never reach the gateways; requests still arrive.
        let g = grudge(
            Shape::OneWay,
            &nodes,
            &ShapeArgs {
                from: names(&["db_g1"]),
                to: names(&["app_ap", "app_cp"]),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            cut_names(&cut_links(&g, &links(GW, DB))),
            ["app_ap.db_g1:downstream", "app_cp.db_g1:downstream"]
        );
        // Requests of app_cp never reach db_g3.
        let g = grudge(
            Shape::OneWay,
            &nodes,
            &ShapeArgs {
                from: names(&["app_cp"]),
                to: names(&["db_g3"]),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            cut_names(&cut_links(&g, &links(GW, DB))),
            ["app_cp.db_g3:upstream"]
        );
    }

    #[test]
    fn a_seed_shuffles_deterministically_and_bad_arguments_are_named() {
        let nodes = names(&["a", "b", "c", "d"]);
        let args = ShapeArgs {
            seed: Some(7),
            ..Default::default()
        };
        let g1 = grudge(Shape::Halves, &nodes, &args).unwrap();
        assert_eq!(g1, grudge(Shape::Halves, &nodes, &args).unwrap());
        assert!(g1.values().all(|h| h.len() == 2));
        let e = grudge(Shape::Isolate, &nodes, &ShapeArgs::default()).unwrap_err();
        assert_eq!(e.field, "node");
        let e = grudge(
            Shape::Isolate,
            &nodes,
            &ShapeArgs {
                node: Some("z".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.message.contains("'z'"), "{e}");
        assert_eq!(
            grudge(Shape::Bridge, &names(&["a", "b"]), &args)
                .unwrap_err()
                .field,
            "nodes"
        );
        let e = grudge(
            Shape::Components,
            &nodes,
            &ShapeArgs {
                components: vec![names(&["a", "b"]), names(&["b", "c"])],
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.message.contains("two components"), "{e}");
    }
}
