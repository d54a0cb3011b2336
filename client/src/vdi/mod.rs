//! The VDI engine: a VDI's byte range as objects on the storage nodes.
//!
//! - [`Cluster`]: the current epoch and placement ring (following groupd's watch), and one
//!   connection per storage node.
//! - [`Vdi`]: an open VDI: `read`/`write` of any byte range (split by object, pieces in
//!   parallel), `flush`, `write_zeroes` (a `zero` request per written object: no data sent,
//!   nothing created). Writes go to every replica of the current epoch and are acked when
//!   all acked; reads go to one replica, then the next on error. On a stale epoch or a dead
//!   node the engine waits for the next epoch and retries, within [`VdiOptions::retry_for`].
//! - [`inode_object`]: how the inode is laid out as an object.
//! - [`lifecycle`]: snapshots (taken by the VDI's writer).
//! - [`reclaim`]: deletions (of a snapshot, a VDI, the VDI a rollback replaces) that remove
//!   the objects no live VDI references any more.

mod cluster;
mod engine;
mod error;
pub mod inode_object;
pub mod lifecycle;
pub mod range;
pub mod reclaim;
mod replicate;
pub mod sparse;
mod store;
pub mod tickets;

pub use cluster::{Cluster, View};
pub use engine::{Vdi, VdiOptions};
pub use error::{NodeError, VdiError};
pub use store::{CallLimits, StorePool};

#[cfg(test)]
mod tests;
