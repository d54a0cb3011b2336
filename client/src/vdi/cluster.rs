//! [`Cluster`]: what the VDI engine knows of the cluster: the current epoch and its
//! placement ring (kept up to date by following groupd's watch), deleted VDIs, and the
//! connections to storage nodes.

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::time::Duration;

use sheep_core::epoch::EpochRecord;
use sheep_core::group::{EventKind, Policy};
use sheep_core::object::VdiId;
use sheep_core::placement::PlacementRing;
use sheep_rpc::error::ErrorCode;
use tokio::time::Instant;

use super::store::{CallLimits, StorePool};
use super::VdiError;
use crate::group::{GroupClient, Watcher};

/// The epoch the engine sends with every request, and its ring.
#[derive(Clone)]
pub struct View {
    pub epoch: u32,
    pub ring: Rc<PlacementRing>,
}

struct Shared {
    view: RefCell<View>,
    /// The cluster's replication policy (how few replicas a write may land on).
    policy: std::cell::Cell<Policy>,
    deleted: RefCell<HashSet<VdiId>>,
    /// The current epoch, for waiters.
    epoch_tx: tokio::sync::watch::Sender<u32>,
}

impl Shared {
    fn apply_epoch(&self, rec: &EpochRecord) {
        if rec.epoch > self.view.borrow().epoch {
            tracing::debug!("epoch {} with {} nodes", rec.epoch, rec.nodes.len());
            *self.view.borrow_mut() = View { epoch: rec.epoch, ring: Rc::new(PlacementRing::new(&rec.nodes)) };
            self.epoch_tx.send_replace(rec.epoch);
        }
    }
}

/// The cluster as the engine uses it. Not `Send`: use it inside a `LocalSet` and share it
/// with `Rc`. Dropping it stops following the watch.
pub struct Cluster {
    group: Rc<GroupClient>,
    pool: StorePool,
    shared: Rc<Shared>,
    follower: tokio::task::JoinHandle<()>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl Cluster {
    /// Reads the cluster's current epoch from groupd, then follows its watch for new epochs.
    pub async fn connect(group: Rc<GroupClient>, limits: CallLimits) -> Result<Rc<Cluster>, VdiError> {
        let info = group.info().await?;
        let view = match info.epochs.last() {
            Some(rec) => View { epoch: rec.epoch, ring: Rc::new(PlacementRing::new(&rec.nodes)) },
            None => View { epoch: 0, ring: Rc::new(PlacementRing::new(&[])) },
        };
        let (epoch_tx, _) = tokio::sync::watch::channel(view.epoch);
        let policy = std::cell::Cell::new(info.config.map(|c| c.policy).unwrap_or_default());
        let shared =
            Rc::new(Shared { view: RefCell::new(view), policy, deleted: RefCell::new(HashSet::new()), epoch_tx });
        let follower = tokio::task::spawn_local(follow(group.clone(), shared.clone(), info.applied_seq + 1));
        let pool = StorePool::new(limits);
        pool.set_ticket_source(super::tickets::source_for(&group));
        Ok(Rc::new(Cluster { group, pool, shared, follower }))
    }

    /// A cluster fixed at one epoch of `nodes`, not following any watch (tests, tools).
    pub fn fixed(
        group: Rc<GroupClient>,
        epoch: u32,
        nodes: &[sheep_core::epoch::NodeInfo],
        limits: CallLimits,
    ) -> Rc<Cluster> {
        let view = View { epoch, ring: Rc::new(PlacementRing::new(nodes)) };
        let (epoch_tx, _) = tokio::sync::watch::channel(epoch);
        let policy = std::cell::Cell::new(Policy::default());
        let shared =
            Rc::new(Shared { view: RefCell::new(view), policy, deleted: RefCell::new(HashSet::new()), epoch_tx });
        let follower = tokio::task::spawn_local(async {});
        let pool = StorePool::new(limits);
        pool.set_ticket_source(super::tickets::source_for(&group));
        Rc::new(Cluster { group, pool, shared, follower })
    }

    pub fn group(&self) -> &Rc<GroupClient> {
        &self.group
    }

    pub fn pool(&self) -> &StorePool {
        &self.pool
    }

    /// The current epoch and ring.
    pub fn view(&self) -> View {
        self.shared.view.borrow().clone()
    }

    pub fn epoch(&self) -> u32 {
        self.shared.view.borrow().epoch
    }

    /// The cluster's replication policy, as of the last format seen.
    pub fn policy(&self) -> Policy {
        self.shared.policy.get()
    }

    /// True once the watch showed `vid` deleted.
    pub fn is_deleted(&self, vid: VdiId) -> bool {
        self.shared.deleted.borrow().contains(&vid)
    }

    /// The storage nodes of the current epoch that have not finished recovering to it, as
    /// `addr (done of total objects)`. Recovery moves objects between nodes, so what is on a
    /// node may not be what it will hold. A node that does not answer is left out: the
    /// caller's own calls to it fail and say so.
    pub async fn recovering(&self) -> Vec<String> {
        let view = self.view();
        let addrs: Vec<String> = view.ring.nodes().iter().map(|n| n.addr.clone()).collect();
        let all = futures::future::join_all(addrs.iter().map(|a| self.pool.recovery(a))).await;
        addrs
            .iter()
            .zip(all)
            .filter_map(|(a, r)| match r {
                Ok(s) if s.complete && s.epoch >= view.epoch => None,
                Ok(s) => Some(format!("{a} ({} of {} objects)", s.done, s.total)),
                Err(e) => {
                    tracing::debug!("recovery status of {a}: {e}");
                    None
                }
            })
            .collect()
    }

    /// Waits until the epoch is newer than `epoch`, or `until`. Returns the current epoch.
    pub async fn wait_newer(&self, epoch: u32, until: Instant) -> u32 {
        let mut rx = self.shared.epoch_tx.subscribe();
        let _ = tokio::time::timeout_at(until, rx.wait_for(|e| *e > epoch)).await;
        self.epoch()
    }
}

/// Follows the watch from `from`: new epochs replace the view; deleted VDIs are noted.
/// Runs until aborted; errors are retried after a pause (a `compacted` log is skipped by
/// re-reading the current state).
async fn follow(group: Rc<GroupClient>, shared: Rc<Shared>, from: u64) {
    let mut watcher = Watcher::new(group.clone(), from, 256, Duration::from_secs(2));
    loop {
        match watcher.next_batch().await {
            Ok(events) => {
                for e in events {
                    match &e.kind {
                        EventKind::Epoch(rec) => shared.apply_epoch(rec),
                        EventKind::Formatted(c) => shared.policy.set(c.policy),
                        EventKind::VdiDeleted(v) => {
                            shared.deleted.borrow_mut().insert(v.vid);
                        }
                        _ => {}
                    }
                }
            }
            Err(e) => {
                tracing::debug!("watch: {e}");
                if e.is_code(ErrorCode::Compacted) {
                    if let Ok(info) = group.info().await {
                        if let Some(rec) = info.epochs.last() {
                            shared.apply_epoch(rec);
                        }
                        watcher.seek(info.applied_seq + 1);
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}
