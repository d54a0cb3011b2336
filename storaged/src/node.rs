//! What the node is and what it has seen of the cluster, shared by the membership loop and
//! the RPC server (one thread, so `RefCell`).

use std::cell::RefCell;
use std::time::Instant;

use anyhow::Result;
use sheep_core::epoch::{EpochLog, EpochRecord, NodeInfo};
use sheep_core::group::SessionId;

use crate::store_dir::{StoreConfig, StoreDir};

pub struct Node {
    pub info: NodeInfo,
    pub store: StoreDir,
    pub started: Instant,
    state: RefCell<State>,
}

struct State {
    config: StoreConfig,
    epochs: EpochLog,
    /// The epoch files on disk could not be read: the first sync rewrites them all.
    epochs_unreadable: bool,
    session: SessionId,
}

/// A copy of the node's state for the `status` call.
pub struct Status {
    pub cluster_id: String,
    pub epoch: u32,
    pub session: SessionId,
}

impl Node {
    /// `epochs`: the history read from the store, `None` if it could not be read (it is
    /// then rebuilt from the group's at the first sync).
    pub fn new(info: NodeInfo, store: StoreDir, config: StoreConfig, epochs: Option<EpochLog>) -> Node {
        let state = State {
            config,
            epochs_unreadable: epochs.is_none(),
            epochs: epochs.unwrap_or_default(),
            session: 0,
        };
        Node { info, store, started: Instant::now(), state: RefCell::new(state) }
    }

    pub fn status(&self) -> Status {
        let s = self.state.borrow();
        Status { cluster_id: s.config.cluster_id.clone(), epoch: s.epochs.current(), session: s.session }
    }

    pub fn epochs(&self) -> Vec<EpochRecord> {
        self.state.borrow().epochs.records().to_vec()
    }

    pub fn cluster_id(&self) -> String {
        self.state.borrow().config.cluster_id.clone()
    }

    pub fn session(&self) -> SessionId {
        self.state.borrow().session
    }

    /// 0: not joined.
    pub fn set_session(&self, id: SessionId) {
        self.state.borrow_mut().session = id;
    }

    /// Records that the store belongs to `cluster_id` from now on (written to `config`).
    pub fn adopt_cluster(&self, cluster_id: &str) -> Result<()> {
        let mut s = self.state.borrow_mut();
        if s.config.cluster_id == cluster_id {
            return Ok(());
        }
        let cfg = StoreConfig { cluster_id: cluster_id.to_string(), ..s.config.clone() };
        self.store.save_config(&cfg)?;
        s.config = cfg;
        Ok(())
    }

    /// A new epoch history begins (after a format): the old one is forgotten.
    pub fn reset_epochs(&self) -> Result<()> {
        self.store.clear_epochs()?;
        let mut s = self.state.borrow_mut();
        s.epochs = EpochLog::default();
        s.epochs_unreadable = false;
        Ok(())
    }

    /// Adds the next epoch to the history, on disk first. `Ok(false)`: it does not follow
    /// the known history (the caller resynchronises).
    pub fn record_epoch(&self, rec: &EpochRecord) -> Result<bool> {
        let mut s = self.state.borrow_mut();
        let mut next = s.epochs.clone();
        if next.record(rec.clone()).is_err() {
            return Ok(false);
        }
        if next != s.epochs {
            self.store.save_epoch(rec)?;
            s.epochs = next;
        }
        Ok(true)
    }

    /// Brings the local history in line with the group's whole history `remote`.
    pub fn sync_epochs(&self, remote: &[EpochRecord]) -> Result<()> {
        let local = self.epochs();
        let unreadable = self.state.borrow().epochs_unreadable;
        match if unreadable { Sync::Replace } else { reconcile(&local, remote) } {
            Sync::Keep => Ok(()),
            Sync::Append(from) => {
                for rec in &remote[from..] {
                    if !self.record_epoch(rec)? {
                        anyhow::bail!("epoch {} does not follow the local history", rec.epoch);
                    }
                }
                Ok(())
            }
            Sync::Replace => {
                self.reset_epochs()?;
                for rec in remote {
                    if !self.record_epoch(rec)? {
                        anyhow::bail!("the group's epoch history has a gap at epoch {}", rec.epoch);
                    }
                }
                Ok(())
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Sync {
    /// The local history already holds the remote one (which may lag behind).
    Keep,
    /// The remote history extends the local one from this index.
    Append(usize),
    /// They disagree (a new format): take the remote one.
    Replace,
}

/// How to bring a local history in line with a remote one.
pub fn reconcile(local: &[EpochRecord], remote: &[EpochRecord]) -> Sync {
    let common = local.len().min(remote.len());
    if local[..common] != remote[..common] {
        Sync::Replace
    } else if remote.len() > local.len() {
        Sync::Append(local.len())
    } else {
        Sync::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(epoch: u32, t: u64) -> EpochRecord {
        EpochRecord { epoch, time_ms: t, nodes: Vec::new() }
    }

    #[test]
    fn reconciles_histories() {
        let a = [rec(1, 1), rec(2, 2), rec(3, 3)];
        assert_eq!(reconcile(&a[..2], &a), Sync::Append(2));
        assert_eq!(reconcile(&[], &a), Sync::Append(0));
        assert_eq!(reconcile(&a, &a[..2]), Sync::Keep);
        assert_eq!(reconcile(&a, &a), Sync::Keep);
        assert_eq!(reconcile(&a, &[rec(1, 9)]), Sync::Replace);
        assert_eq!(reconcile(&a, &[]), Sync::Keep);
    }

    #[test]
    fn records_and_replaces_on_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StoreDir::open(tmp.path()).unwrap();
        let cfg = store.claim("n1").unwrap();
        let node = Node::new(NodeInfo::default_for_test(), store, cfg, None);
        std::fs::write(node.store.path().join("epoch/7"), "junk").unwrap();
        node.sync_epochs(&[rec(1, 1), rec(2, 2)]).unwrap();
        assert!(!node.record_epoch(&rec(4, 4)).unwrap());
        assert!(node.record_epoch(&rec(3, 3)).unwrap());
        assert_eq!(node.store.load_epochs().unwrap().current(), 3);
        node.sync_epochs(&[rec(1, 7)]).unwrap();
        assert_eq!(node.epochs(), vec![rec(1, 7)]);
        assert_eq!(node.store.load_epochs().unwrap().records(), &[rec(1, 7)]);
        node.adopt_cluster("c9").unwrap();
        assert_eq!(node.store.load_config().unwrap().unwrap().cluster_id, "c9");
    }

    trait ForTest {
        fn default_for_test() -> Self;
    }
    impl ForTest for NodeInfo {
        fn default_for_test() -> Self {
            NodeInfo { id: "n1".into(), addr: "n1".into(), zone: 0, weight: 1 }
        }
    }
}
