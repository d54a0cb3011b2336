//! Where recovery stands: its progress to one epoch (what the `recovery` call reports, and what
//! the object operations ask before answering that an object is missing), and the objects it
//! still has to pull with who holds them.

use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;

use sheep_core::epoch::Epoch;
use sheep_core::object::ObjectId;
use sheep_core::placement::PlacementRing;

pub use crate::recovery_plan::Holder;
use crate::recovery_plan::Plan;

/// Progress of recovery to one epoch, as the `recovery` call reports it.
#[derive(Debug, Default)]
pub struct Progress {
    pub epoch: Epoch,
    pub done: u64,
    pub total: u64,
    pub complete: bool,
    pub listed: bool,
    /// A pass of this epoch has made its plan (`pending` below). Before, no object may be
    /// used: a copy written now could be replaced by the one the plan pulls.
    pub(crate) planned: bool,
    /// Objects still to pull (who may give them, best first), or waiting for a node that
    /// may hold a newer copy: only `Plan::Pull` and `Plan::Wait`.
    pub(crate) pending: HashMap<ObjectId, Plan>,
    /// What the plan was made from, to plan objects nobody listed when they are asked for:
    /// the nodes that answered, the rings of the epochs from the clean one on, that epoch.
    pub(crate) answered: BTreeSet<String>,
    pub(crate) rings: Vec<(Epoch, Rc<PlacementRing>)>,
    pub(crate) clean: Epoch,
    /// Nodes that are down where some object may have all its replicas (see
    /// `recovery_plan::hidden_on`): recovery is not complete before one of them answers.
    pub(crate) hidden_on: Vec<String>,
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

    /// How many planned objects wait, and for which nodes (see `Plan::Wait`).
    pub fn waits(&self) -> (u64, BTreeSet<String>) {
        let mut nodes = BTreeSet::new();
        let mut objects = 0;
        for plan in self.pending.values() {
            if let Plan::Wait(n) = plan {
                objects += 1;
                nodes.extend(n.iter().cloned());
            }
        }
        (objects, nodes)
    }

    /// True if the plan of `epoch` has still to pull `oid` (missing here, or a newer copy
    /// is elsewhere).
    pub fn is_pending(&self, epoch: Epoch, oid: ObjectId) -> bool {
        self.epoch == epoch && !self.complete && self.pending.contains_key(&oid)
    }

    /// True while recovery to `epoch` has not planned yet: until it has, no copy here may be
    /// read or written (see [`Progress::planned`]).
    pub fn unplanned(&self, epoch: Epoch) -> bool {
        self.unsettled(epoch) && !(self.epoch == epoch && self.planned)
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

    #[test]
    fn objects_wait_until_the_epoch_is_planned() {
        let mut p = Progress { epoch: 2, ..Progress::default() };
        assert!(p.unplanned(2), "a pass of epoch 2 started, but has not planned");
        p.planned = true;
        assert!(!p.unplanned(2));
        assert!(p.unplanned(3), "a plan of an older epoch does not count");
        p.complete = true;
        p.planned = false;
        assert!(!p.unplanned(2), "complete: nothing left to plan");
    }
}
