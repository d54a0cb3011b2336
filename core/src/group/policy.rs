//! The cluster's policy (set at format): how few copies a write may land on, how long
//! writes are held below that, whether fewer zones than copies are accepted, and whether
//! every session is encrypted.

use serde::{Deserialize, Serialize};

use crate::epoch::NodeInfo;

/// How long writes are held by default while an object has fewer replicas than the minimum.
pub const DEFAULT_HOLD_MS: u64 = 60_000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// A write is acknowledged only once at least this many replicas hold it; 0: the
    /// default, copies − ⌊copies/2⌋ (2 of 3, 1 of 2), as Ceph's `min_size`.
    pub min_copies: u8,
    /// How long a write is held while fewer replicas than the minimum exist, before it
    /// fails; 0: [`DEFAULT_HOLD_MS`].
    pub hold_ms: u64,
    /// VDIs may keep more copies than there are zones (then some copies share a zone, or
    /// are missing: the VDI is under-replicated).
    pub allow_fewer_zones: bool,
    /// Every connection of the cluster's daemons is encrypted (`cluster format --secure`),
    /// not only integrity-checked.
    #[serde(default)]
    pub secure: bool,
}

impl Policy {
    /// The minimum of replicas of a VDI of `copies` copies.
    pub fn min_copies_for(&self, copies: u8) -> u8 {
        match self.min_copies {
            0 => copies - copies / 2,
            m => m.min(copies),
        }
    }

    pub fn hold_ms(&self) -> u64 {
        if self.hold_ms == 0 {
            DEFAULT_HOLD_MS
        } else {
            self.hold_ms
        }
    }
}

/// Distinct zones among `nodes`.
pub fn zones(nodes: &[NodeInfo]) -> usize {
    let mut z: Vec<u32> = nodes.iter().map(|n| n.zone).collect();
    z.sort_unstable();
    z.dedup();
    z.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_minimum_is_a_majority_of_the_copies() {
        let p = Policy::default();
        assert_eq!([1, 2, 3, 4, 5].map(|c| p.min_copies_for(c)), [1, 1, 2, 2, 3]);
        let p = Policy { min_copies: 3, ..Policy::default() };
        assert_eq!([2, 3, 5].map(|c| p.min_copies_for(c)), [2, 3, 3], "never more than the copies");
        assert_eq!(Policy::default().hold_ms(), DEFAULT_HOLD_MS);
        let n = |zone| NodeInfo { id: format!("n{zone}"), addr: String::new(), zone, weight: 1 };
        assert_eq!(zones(&[n(1), n(2), n(1)]), 2);
        assert_eq!(zones(&[]), 0);
    }
}
