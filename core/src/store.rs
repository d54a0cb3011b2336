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
}

/// Every object a node holds (`list`): those in `obj/`, and those only in `.stale/` with the
/// last epoch in which each was live (of several stale copies, the highest epoch is the
/// newest).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    pub live: Vec<ObjectId>,
    pub stale_only: Vec<(ObjectId, Epoch)>,
}

/// A whole object, verified, and where it came from (`fetch`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WholeObject {
    pub data: Vec<u8>,
    /// 0: a live copy (from `obj/`); else it came from `.stale/` and was last live in this
    /// epoch (at least 1).
    pub stale_epoch: Epoch,
}

impl WholeObject {
    /// True if the copy came from `.stale/`: it may be older than a live one elsewhere.
    pub fn is_stale(&self) -> bool {
        self.stale_epoch != 0
    }
}

/// A node's recovery to an epoch (`recovery`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
}
