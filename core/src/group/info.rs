//! What `info` answers: [`ClusterInfo`], the replicated state as one groupd applied it.

use serde::{Deserialize, Serialize};

use super::{ClusterConfig, ClusterStatus, GroupMember, GroupState, Lock, Session};
use crate::epoch::{EpochRecord, NodeInfo};

/// A lock with its holder's name, for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub lock: Lock,
    pub holder: String,
}

/// What `info` answers: the replicated state as the answering groupd has applied it, and
/// the group's membership as that groupd sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub status: ClusterStatus,
    pub config: Option<ClusterConfig>,
    pub members: Vec<GroupMember>,
    pub epochs: Vec<EpochRecord>,
    pub sessions: Vec<Session>,
    pub locks: Vec<LockInfo>,
    pub missing: Vec<NodeInfo>,
    /// See [`GroupState::clean_epoch`].
    #[serde(default)]
    pub clean_epoch: u32,
    pub applied_seq: u64,
    pub answered_by: String,
}

impl GroupState {
    /// The replicated part of [`ClusterInfo`]; the caller fills in members and its address.
    pub fn info(&self) -> ClusterInfo {
        ClusterInfo {
            status: self.status,
            config: self.config.clone(),
            members: Vec::new(),
            epochs: self.epochs.records().to_vec(),
            sessions: self.sessions.values().cloned().collect(),
            locks: self
                .locks
                .values()
                .map(|l| LockInfo {
                    lock: l.clone(),
                    holder: self.sessions.get(&l.session).map(|s| s.name()).unwrap_or_default(),
                })
                .collect(),
            missing: match self.status {
                ClusterStatus::Shutdown | ClusterStatus::Halted => self.missing_nodes(),
                ClusterStatus::Unformatted | ClusterStatus::Running => Vec::new(),
            },
            clean_epoch: self.clean_epoch,
            applied_seq: self.next_seq - 1,
            answered_by: String::new(),
        }
    }
}
