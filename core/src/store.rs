//! What a storage node reports about itself and its objects: the values storaged's messages
//! carry (`status`, `list`, `fetch`, `stat`, `recovery`), the same for the node that answers
//! and for whoever asks.

use crate::epoch::{Epoch, NodeInfo};
use crate::group::SessionId;
use crate::object::ObjectId;

/// What a node is and what it has seen of the cluster (`status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreStatus {
    pub node: NodeInfo,
    /// Empty while the store belongs to no cluster yet.
    pub cluster_id: String,
    /// The newest epoch the node has applied.
    pub epoch: Epoch,
    /// Its groupd session, 0 while not joined.
    pub session: SessionId,
    pub joined: bool,
    pub data_dir: String,
    pub uptime_ms: u64,
}

/// The node's store as a whole (`stat`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStat {
    /// Bytes of the file system holding the store.
    pub capacity: u64,
    /// Bytes used by objects.
    pub used: u64,
    /// Bytes still free on that file system.
    pub free: u64,
    /// Objects held, not counting stale ones.
    pub objects: u64,
    /// Which file system holds the store: equal for nodes that share one (so their capacity
    /// and free space are counted once), 0 when the node could not tell.
    pub filesystem: u64,
}

/// The version of an object copy: the epoch of the last write to it (high 32 bits) and a
/// count in that epoch (low 32 bits). Every write, zeroing or creation advances it; recovery
/// and repair carry it over with the data. Every replica of an epoch takes every
/// acknowledged write, so of two copies the higher version holds every write the lower one
/// holds (unacknowledged ones aside). 0: no version (a copy from before versions).
///
/// A write takes two steps: before it changes anything the copy gets an *unsettled* version
/// (odd count, [`write_started`]), once done the settled one after it ([`write_done`]). A
/// copy left unsettled (the node crashed mid-write) may hold any mix, block by block, of its
/// content before and after that write, so two unsettled copies of one version may differ:
/// recovery takes one of them and settles it at a version above any the write could have
/// reached ([`next_version`] in a later epoch).
pub type Version = u64;

/// The unsettled version a write in `epoch` to a copy at `current` sets first.
pub fn write_started(current: Version, epoch: Epoch) -> Version {
    if version_epoch(current) < epoch {
        (u64::from(epoch) << 32) | 1
    } else {
        debug_assert!(current & 0xffff_ffff < 0xffff_fffc, "2^32 writes in one epoch");
        // From an unsettled copy, past the version its interrupted write would have settled at.
        current + if is_settled(current) { 1 } else { 2 }
    }
}

/// The settled version of a write that started at `started`.
pub fn write_done(started: Version) -> Version {
    debug_assert!(!is_settled(started), "{started:#x} is not a started write");
    started + 1
}

/// True unless a write to the copy was cut off (an odd count).
pub fn is_settled(v: Version) -> bool {
    v & 1 == 0
}

/// The version after one more whole write (or a settling) in `epoch` of a copy at `current`.
pub fn next_version(current: Version, epoch: Epoch) -> Version {
    write_done(write_started(current, epoch))
}

/// The version of a copy at `v` once settled in `epoch`: `v` if it is settled, else one above
/// any version its cut-off write reached elsewhere.
pub fn settled_version(v: Version, epoch: Epoch) -> Version {
    if is_settled(v) {
        v
    } else {
        next_version(v, epoch)
    }
}

/// True if a copy at `v` took a write that completed in `epoch` or later (not cut off).
pub fn written_in(v: Version, epoch: Epoch) -> bool {
    is_settled(v) && v != 0 && version_epoch(v) >= epoch
}

/// The epoch in which a copy at `v` was last written.
pub fn version_epoch(v: Version) -> Epoch {
    (v >> 32) as Epoch
}

/// Every object a node holds (`list`): those in `obj/`, and those only in `.stale/` with the
/// last epoch in which each was live; and the version of each copy listed (of a live one if
/// the node has both).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    pub live: Vec<ObjectId>,
    pub stale_only: Vec<(ObjectId, Epoch)>,
    pub versions: std::collections::BTreeMap<ObjectId, Version>,
}

/// A whole object, verified, and where it came from (`fetch`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WholeObject {
    pub data: Vec<u8>,
    /// 0: a live copy (from `obj/`); else it came from `.stale/` and was last live in this
    /// epoch (at least 1).
    pub stale_epoch: Epoch,
    pub version: Version,
}

impl WholeObject {
    /// True if the copy came from `.stale/`: it may be older than a live one elsewhere.
    pub fn is_stale(&self) -> bool {
        self.stale_epoch != 0
    }
}

/// A node's recovery to an epoch (`recovery`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryStatus {
    /// The epoch being recovered to.
    pub epoch: Epoch,
    /// Objects recovered so far.
    pub done: u64,
    /// Objects the node must hold in that epoch (known once listed).
    pub total: u64,
    /// Everything held, and reported to groupd.
    pub complete: bool,
    /// The object lists of the old holders are complete.
    pub listed: bool,
    /// Objects that wait (a newer copy may be on a node that is down), and those nodes.
    pub waiting: u64,
    pub waiting_for: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_grow_within_an_epoch_and_jump_to_a_newer_one() {
        assert_eq!(next_version(0, 3), (3 << 32) | 2);
        assert_eq!(write_started((3 << 32) | 2, 3), (3 << 32) | 3);
        assert_eq!(write_done((3 << 32) | 3), (3 << 32) | 4);
        assert_eq!(next_version((3 << 32) | 8, 5), (5 << 32) | 2);
        assert!(next_version((3 << 32) | 8, 5) > (3 << 32) | 1000, "any write of a newer epoch is newer");
        // A request of an older epoch never makes it go back.
        assert_eq!(next_version((5 << 32) | 2, 4), (5 << 32) | 4);
        assert!(is_settled(0) && is_settled((5 << 32) | 2) && !is_settled((5 << 32) | 3));
    }

    #[test]
    fn a_settled_cut_off_copy_is_above_any_completion_of_its_write() {
        let before = (4 << 32) | 6;
        let started = write_started(before, 4);
        let completed_elsewhere = write_done(started);
        // Settled in the same epoch, or in a later one by recovery.
        assert!(next_version(started, 4) > completed_elsewhere);
        assert!(next_version(started, 5) > completed_elsewhere);
        assert!(is_settled(next_version(started, 4)));
        assert_eq!(settled_version(started, 5), next_version(started, 5));
        assert_eq!(settled_version(before, 5), before, "a settled copy keeps its version");
        // A write to an unsettled copy goes past what the cut-off write would have been.
        assert!(write_started(started, 4) > completed_elsewhere);
    }

    #[test]
    fn epochs_read_back() {
        assert_eq!(version_epoch((7 << 32) | 4), 7);
    }
}
