//! The placement ring: which nodes hold the replicas of an object, computed from an epoch's
//! node list alone so that every process agrees without asking anyone.
//!
//! Consistent hashing with virtual nodes: a node of weight `w` has `w × vnodes_per_weight`
//! points on a 64-bit ring; an object's replicas are the first distinct nodes met walking
//! clockwise from the object's position, skipping nodes whose zone already holds a replica.
//! Adding or removing one node of N moves about 1/N of the objects, and only to or from it.
//!
//! Positions are FNV-1a-64 hashes put through splitmix64's finalizer (see [`ring_hash`]).

use crate::epoch::NodeInfo;
use crate::object::{fnv1a64, ObjectId};

/// Points per unit of weight: a node of weight 1 has 128 points.
pub const DEFAULT_VNODES_PER_WEIGHT: u32 = 128;

/// A node's points are capped here (weight 512 at the default), so that a mistyped weight
/// cannot make every process build a ring of billions of points; the group should refuse
/// such weights when a node joins.
pub const MAX_POINTS_PER_NODE: u32 = 1 << 16;

/// A position on the ring: `fnv1a64(bytes)`, then splitmix64's finalizer.
///
/// Why the finalizer: FNV-1a's last multiply carries the last input bytes only upwards, so
/// inputs that differ in their last bytes (node ids "…:7001", "…:7002"; object indexes 0, 1,
/// 2, …) land close together on the ring and a few nodes take most of the objects. The
/// finalizer is a bijection that spreads every input bit over the whole word.
pub fn ring_hash(bytes: &[u8]) -> u64 {
    let mut z = fnv1a64(bytes);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Where an object sits on the ring: the hash of its id's 8 little-endian bytes.
pub fn object_position(oid: ObjectId) -> u64 {
    ring_hash(&oid.raw().to_le_bytes())
}

/// Where a node's virtual node `i` sits: the hash of its id's bytes, then `i` as u32 LE.
pub fn vnode_position(node_id: &str, i: u32) -> u64 {
    let mut bytes = Vec::with_capacity(node_id.len() + 4);
    bytes.extend_from_slice(node_id.as_bytes());
    bytes.extend_from_slice(&i.to_le_bytes());
    ring_hash(&bytes)
}

/// One virtual node. Sorting by (position, node) breaks ties by node id, because `nodes` is
/// sorted by id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct RingPoint {
    position: u64,
    node: u32,
}

#[derive(Clone, Debug)]
pub struct PlacementRing {
    /// Sorted by id, without duplicates: indexes into it are the same on every process.
    nodes: Vec<NodeInfo>,
    points: Vec<RingPoint>,
    /// Distinct zones among the nodes that have points.
    zones: usize,
}

impl PlacementRing {
    /// The ring of an epoch's node list, with the default number of points per weight.
    pub fn new(nodes: &[NodeInfo]) -> PlacementRing {
        PlacementRing::with_vnodes(nodes, DEFAULT_VNODES_PER_WEIGHT)
    }

    /// The order of `nodes` does not matter. A node listed twice counts once (the smallest
    /// entry by `NodeInfo`'s order, so the choice does not depend on the input order either).
    /// A node of weight 0 gets no points and holds nothing; a node gets at most
    /// `MAX_POINTS_PER_NODE` points.
    pub fn with_vnodes(nodes: &[NodeInfo], vnodes_per_weight: u32) -> PlacementRing {
        let mut nodes = nodes.to_vec();
        nodes.sort();
        nodes.dedup_by(|later, earlier| later.id == earlier.id);
        assert!(nodes.len() <= u32::MAX as usize, "too many nodes for a ring");

        let points_of = |node: &NodeInfo| node.weight.saturating_mul(vnodes_per_weight).min(MAX_POINTS_PER_NODE);
        let total: usize = nodes.iter().map(|n| points_of(n) as usize).sum();
        let mut points = Vec::with_capacity(total);
        for (index, node) in nodes.iter().enumerate() {
            let node_points =
                (0..points_of(node)).map(|i| RingPoint { position: vnode_position(&node.id, i), node: index as u32 });
            points.extend(node_points);
        }
        points.sort_unstable();

        let mut zones: Vec<u32> = nodes.iter().filter(|n| points_of(n) > 0).map(|n| n.zone).collect();
        zones.sort_unstable();
        zones.dedup();
        PlacementRing { nodes, points, zones: zones.len() }
    }

    /// The ring's nodes, sorted by id; `replica_indexes` returns indexes into this.
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// True when no node can hold anything (no nodes, or all of weight 0).
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The number of distinct zones that can hold replicas.
    pub fn zones(&self) -> usize {
        self.zones
    }

    /// How many replicas an object asking for `copies` really gets: one per zone at most.
    pub fn effective_copies(&self, copies: usize) -> usize {
        copies.min(self.zones)
    }

    /// The nodes holding `oid`, primary first: `effective_copies(copies)` nodes in distinct
    /// zones. The list for fewer copies is always a prefix of the list for more.
    pub fn replicas(&self, oid: ObjectId, copies: usize) -> Vec<&NodeInfo> {
        self.replica_indexes(oid, copies).into_iter().map(|i| &self.nodes[i]).collect()
    }

    /// Like `replicas`, as indexes into `nodes()`.
    pub fn replica_indexes(&self, oid: ObjectId, copies: usize) -> Vec<usize> {
        let wanted = self.effective_copies(copies);
        let mut chosen: Vec<usize> = Vec::with_capacity(wanted);
        if wanted == 0 {
            return chosen;
        }
        let start = self.first_point_at_or_after(object_position(oid));
        // Every zone has a point, so the walk finds `wanted` zones within one turn.
        let turn = self.points[start..].iter().chain(&self.points[..start]);
        for point in turn {
            let node = point.node as usize;
            let zone = self.nodes[node].zone;
            if chosen.iter().all(|&c| self.nodes[c].zone != zone) {
                chosen.push(node);
                if chosen.len() == wanted {
                    break;
                }
            }
        }
        debug_assert_eq!(chosen.len(), wanted, "one turn of the ring meets every zone");
        chosen
    }

    /// The node holding the first replica of `oid`; `None` on an empty ring.
    pub fn primary(&self, oid: ObjectId) -> Option<&NodeInfo> {
        self.replicas(oid, 1).into_iter().next()
    }

    /// Index of the first point clockwise from `position`, wrapping past the top.
    fn first_point_at_or_after(&self, position: u64) -> usize {
        debug_assert!(!self.points.is_empty());
        let i = self.points.partition_point(|p| p.position < position);
        if i == self.points.len() {
            0
        } else {
            i
        }
    }
}

#[cfg(test)]
#[path = "placement_tests.rs"]
mod tests;
