//! Consistency check and repair of VDIs (`sheepctl vdi check`, `sheepctl cluster check`).
//!
//! Every object of the VDIs in scope (the inode, and every written data object — objects
//! shared with a parent snapshot once, under their owner) must be held by exactly the
//! replicas the current epoch's ring names, each with a copy that passes its checksums, all
//! with the same content. A check runs in two phases:
//!
//! 1. **Scan**, without any lock: every replica's copy is fetched whole and digested
//!    ([`plan::Digest`]), a bounded number of objects at a time, and [`plan::decide`] says
//!    what is wrong. Nothing is written.
//! 2. **Repair** (unless `dry_run`), per owning VDI: take its lock in groupd (so no writer
//!    changes the objects meanwhile; a VDI locked by someone else is not repaired and the
//!    holder is named), look at each object again (a difference that was a write in flight
//!    is gone now), copy the winning content to the replicas that lack it, and verify.
//!
//! While any node's recovery is incomplete the check is skipped: recovery is about to move
//! and pull the very objects a check would call missing. Copies on nodes that should not
//! hold an object are reported, never removed (recovery purges them).
//!
//! One thing `dry_run` cannot prevent: a storage node asked for a copy that fails its
//! checksums repairs that copy from another replica by itself (storaged's rule for every
//! read), so a dry run may be followed by such repairs made by the nodes.

pub mod plan;
mod run;

use sheep_core::object::ObjectId;

pub use run::run;

/// What to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One VDI (its working version) and the objects it shares with its parents.
    Vdi(String),
    /// Every VDI of the cluster, snapshots included.
    Cluster,
}

#[derive(Clone, Copy, Debug)]
pub struct CheckOptions {
    /// Report only: no lock, no write.
    pub dry_run: bool,
    /// Objects checked at once (each holds one copy per replica in memory while checked).
    pub parallel: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions { dry_run: false, parallel: 4 }
    }
}

/// One replica of a problem object, as the scan found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaState {
    pub node: String,
    /// "ok (digest)", "missing", "corrupt", …
    pub seen: String,
    /// Holds the content that won (or would win).
    pub good: bool,
}

/// What was (or would be) done about an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing to repair (the object is listed for its extra copies only).
    None,
    /// `--dry-run`: this repair would be made.
    WouldRepair {
        source: String,
        targets: Vec<String>,
        tie: bool,
    },
    Repaired {
        source: String,
        targets: Vec<String>,
        tie: bool,
    },
    /// Different in the scan, consistent when looked at again under the VDI's lock (a
    /// write was in flight): nothing to repair.
    Settled,
    Unrepairable(String),
}

/// An object with something wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectProblem {
    pub oid: ObjectId,
    /// The owning VDI ("name" or "name@snapshot"; "vid XXXXXX" if it is not in the namespace).
    pub vdi: String,
    /// The data object's index; `None` for the inode.
    pub index: Option<u32>,
    /// The replicas in placement order (the primary first).
    pub replicas: Vec<ReplicaState>,
    /// Nodes holding a live copy though the ring does not name them.
    pub extra: Vec<String>,
    pub action: Action,
}

/// What a check found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub epoch: u32,
    pub dry_run: bool,
    /// VDIs whose objects were gathered.
    pub vdis: usize,
    /// Distinct objects checked.
    pub objects: usize,
    pub problems: Vec<ObjectProblem>,
    /// What kept parts of the check from running (a VDI whose inode is unreadable, a node
    /// that could not list its objects, an epoch change).
    pub errors: Vec<String>,
    /// Set when the check did not run at all, and why (recovery in progress).
    pub skipped: Option<String>,
}

impl Report {
    fn count(&self, f: impl Fn(&Action) -> bool) -> usize {
        self.problems.iter().filter(|p| f(&p.action)).count()
    }

    pub fn repaired(&self) -> usize {
        self.count(|a| matches!(a, Action::Repaired { .. }))
    }

    pub fn would_repair(&self) -> usize {
        self.count(|a| matches!(a, Action::WouldRepair { .. }))
    }

    pub fn unrepairable(&self) -> usize {
        self.count(|a| matches!(a, Action::Unrepairable(_)))
    }

    pub fn extra_copies(&self) -> usize {
        self.problems.iter().filter(|p| !p.extra.is_empty()).count()
    }

    /// True when the cluster is (now) consistent as far as this check could see: nothing
    /// left unrepaired, nothing skipped, and for a dry run nothing to repair. Extra copies
    /// do not count: recovery removes them.
    pub fn success(&self) -> bool {
        self.skipped.is_none() && self.errors.is_empty() && self.unrepairable() == 0 && self.would_repair() == 0
    }

    /// "checked 123 objects of 4 VDIs: 2 repaired, 0 unrepairable".
    pub fn summary(&self) -> String {
        if let Some(why) = &self.skipped {
            return format!("check skipped: {why}");
        }
        let mut s = format!("checked {} objects of {} VDIs (epoch {}): ", self.objects, self.vdis, self.epoch);
        if self.dry_run {
            s.push_str(&format!("{} to repair, {} unrepairable", self.would_repair(), self.unrepairable()));
        } else {
            s.push_str(&format!("{} repaired, {} unrepairable", self.repaired(), self.unrepairable()));
        }
        let extra = self.extra_copies();
        if extra > 0 {
            s.push_str(&format!(", {extra} with extra copies (left for recovery to remove)"));
        }
        if !self.errors.is_empty() {
            s.push_str(&format!(", {} error(s)", self.errors.len()));
        }
        s
    }
}

/// What a check can fail with before it has a report to give.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CheckError {
    #[error("there is no VDI named {0:?}")]
    NoVdi(String),
    #[error("the cluster has no storage nodes (epoch {0})")]
    NoNodes(u32),
    #[error(transparent)]
    Group(#[from] crate::group::Error),
}
