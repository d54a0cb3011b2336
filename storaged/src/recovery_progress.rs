//! Where recovery stands: its progress to one epoch (what the `recovery` call reports, and what
//! the object operations ask before answering that an object is missing), and the objects it
//! still has to pull with who holds them.

use std::collections::HashMap;

use sheep_core::epoch::Epoch;
use sheep_core::object::ObjectId;

/// Where a copy of an object is: a node's address, and 0 for a live copy or the last epoch
/// in which a stale copy was live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub addr: String,
    pub stale_epoch: u32,
}

/// Progress of recovery to one epoch, as the `recovery` call reports it.
#[derive(Debug, Default)]
pub struct Progress {
    pub epoch: Epoch,
    pub done: u64,
    pub total: u64,
    pub complete: bool,
    pub listed: bool,
    /// Objects still to pull, and who may give them (best first).
    pub(crate) pending: HashMap<ObjectId, Vec<Holder>>,
    /// groupd said every node of this epoch recovered: purge `.stale` once this node is
    /// complete for it too.
    pub(crate) purge_for: Option<Epoch>,
}

impl Progress {
    /// True while objects of `epoch` may still be missing here: a missing object may
    /// exist elsewhere and must be pulled before a client uses it.
    pub fn unsettled(&self, epoch: Epoch) -> bool {
        epoch != 0 && !(self.epoch == epoch && self.complete)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_settled_only_when_complete_for_the_epoch() {
        let mut p = Progress::default();
        assert!(!p.unsettled(0), "a node that never joined has nothing to recover");
        assert!(p.unsettled(1));
        p.epoch = 1;
        p.complete = true;
        assert!(!p.unsettled(1));
        assert!(p.unsettled(2));
    }
}
