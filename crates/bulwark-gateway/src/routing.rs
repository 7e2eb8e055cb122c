//! Which replicas hold a key: its preference list on the ring of `GatewayConfig::placement`
//! (docs/design/sharding.md). The protocols of `engine` run on that list unchanged.

use bulwark_placement::{LayoutError, Placement, Ring};

/// The ring, built once.
#[derive(Debug)]
pub struct Routing {
    ring: Ring,
    /// Every replica holds every key (N = number of replicas): then the list is the
    /// configured order for every key, exactly as before sharding, so the preferred
    /// coordinator and the AP read preference stay the first configured replica.
    everywhere: bool,
}

impl Routing {
    /// Builds the ring of `placement`, whose nodes are the replicas in index order.
    pub fn new(placement: &Placement) -> Result<Routing, LayoutError> {
        Ok(Routing {
            ring: Ring::new(placement)?,
            everywhere: placement.replication_factor == placement.nodes.len(),
        })
    }

    /// N: replicas per key.
    pub fn replication_factor(&self) -> usize {
        self.ring.replication_factor()
    }

    /// The replica indices holding `key`, preferred first.
    pub fn replicas(&self, key: &[u8]) -> Vec<usize> {
        if self.everywhere {
            return (0..self.ring.node_count()).collect();
        }
        self.ring
            .replicas(key)
            .iter()
            .map(|id| usize::from(*id))
            .collect()
    }

    /// Every distinct replica set of the ring (for readiness: can each set be written?).
    pub fn sets(&self) -> impl Iterator<Item = &[u16]> {
        (0..self.ring.segment_count()).map(|i| self.ring.list(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_placement::NodeSpec;

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
    fn every_replica_in_configured_order_when_n_is_all_of_them() {
        let r = Routing::new(&placement(3, 3)).unwrap();
        for key in [&b"a"[..], b"zz", b""] {
            assert_eq!(r.replicas(key), vec![0, 1, 2]);
            assert!(r.replicas(key).contains(&2));
        }
    }

    #[test]
    fn sharded_keys_get_n_of_the_replicas() {
        let r = Routing::new(&placement(6, 3)).unwrap();
        let mut seen = [0usize; 6];
        for i in 0..600 {
            let key = format!("k{i}");
            let set = r.replicas(key.as_bytes());
            assert_eq!(set.len(), 3);
            for idx in &set {
                seen[*idx] += 1;
            }
            assert_eq!(
                (0..6).filter(|i| set.contains(i)).count(),
                3,
                "three distinct replicas"
            );
        }
        // 1800 replicas over 6 nodes: every node holds some, none holds most.
        assert!(seen.iter().all(|c| (200..=400).contains(c)), "{seen:?}");
    }
}
