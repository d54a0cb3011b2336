//! What the node is and what it has seen of the cluster, shared by the membership loop and
//! the RPC server (one thread, so `RefCell`).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use sheep_client::group::GroupClient;
use sheep_client::vdi::{CallLimits, StorePool};
use sheep_core::epoch::{Epoch, EpochLog, EpochRecord, NodeInfo};
use sheep_core::group::{SessionId, DEFAULT_COPIES};
use sheep_core::namespace::VdiEntry;
use sheep_core::object::{ObjectId, VdiId};
use sheep_core::placement::PlacementRing;
use tokio::sync::watch;

use crate::disk_health::DiskHealth;
use crate::fence::{Fenced, Fences};
use crate::metrics::StoreMetrics;
use crate::objects::ObjectStore;
use crate::recovery_progress::Progress;
use crate::store_dir::{StoreConfig, StoreDir};

pub struct Node {
    pub info: NodeInfo,
    pub store: StoreDir,
    pub objects: Arc<ObjectStore>,
    /// Calls to other storage nodes (recovery and repair pull objects from them).
    pub peers: StorePool,
    pub started: Instant,
    /// Recovery's progress and plan, shared with the request path (objects asked for by
    /// clients are recovered at once).
    pub recovery: RefCell<Progress>,
    /// Bumped whenever recovery makes a plan: requests waiting for one look again.
    plans_tx: watch::Sender<u64>,
    /// One task at a time recovers an object: a turn per object being recovered, so that
    /// no second pull lands over writes made after the first (see `recovery::recover_one`).
    pub pulls: RefCell<HashMap<ObjectId, Arc<tokio::sync::Mutex<()>>>>,
    /// Whether the disk failed (then every object request is refused).
    pub disk: DiskHealth,
    /// What the node counts for Prometheus (served with `--metrics`).
    pub metrics: StoreMetrics,
    /// The newest epoch every node of which recovered (groupd's `clean_epoch`): recovery
    /// looks for newer copies from there on.
    clean_epoch: std::cell::Cell<Epoch>,
    state: RefCell<State>,
    /// The newest epoch applied: requests from a newer epoch wait on it.
    epoch_tx: watch::Sender<Epoch>,
    /// Bumped when the recovery loop must start a new pass (new epoch, new session, new
    /// VDI list).
    kick_tx: watch::Sender<u64>,
    view: RefCell<ClusterView>,
    ring: RefCell<Option<(Epoch, Rc<EpochRing>)>>,
    /// The newest lock of every VDI name: writes with a stale token are refused.
    fences: RefCell<Fences>,
    /// groupd, to learn the name of a VDI the view does not know yet (set by main).
    group: RefCell<Option<Rc<GroupClient>>>,
    /// One VDI list asked of groupd at a time, however many writes need it.
    refreshing: tokio::sync::Mutex<()>,
}

/// How long a VDI id that groupd's list did not have stays unknown before a write asks again.
const UNKNOWN_VID_RECHECK: Duration = Duration::from_secs(10);

/// An epoch's node list and its placement ring.
pub struct EpochRing {
    pub record: EpochRecord,
    pub ring: PlacementRing,
}

impl EpochRing {
    /// The nodes holding `oid` in this epoch.
    pub fn replicas(&self, oid: ObjectId, copies: usize) -> Vec<&NodeInfo> {
        self.ring.replicas(oid, copies)
    }
}

/// What the node knows of the cluster's configuration and VDI namespace.
#[derive(Debug, Default)]
struct ClusterView {
    copies: Option<u8>,
    vdi_copies: HashMap<VdiId, u8>,
    /// The name of every live VDI: locks (and fencing) are by name.
    vdi_names: HashMap<VdiId, String>,
    /// VDI ids groupd's list did not have, and when it was asked.
    unknown: HashMap<VdiId, Instant>,
    deleted: HashSet<VdiId>,
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
    pub fn new(
        info: NodeInfo,
        store: StoreDir,
        objects: Arc<ObjectStore>,
        config: StoreConfig,
        epochs: Option<EpochLog>,
        metrics: StoreMetrics,
    ) -> Node {
        let state =
            State { config, epochs_unreadable: epochs.is_none(), epochs: epochs.unwrap_or_default(), session: 0 };
        let (epoch_tx, _) = watch::channel(state.epochs.current());
        metrics.set_epoch(state.epochs.current());
        let (kick_tx, _) = watch::channel(0);
        Node {
            info,
            store,
            objects,
            peers: StorePool::new(CallLimits::BULK),
            started: Instant::now(),
            recovery: RefCell::new(Progress::default()),
            plans_tx: watch::channel(0).0,
            pulls: RefCell::default(),
            disk: DiskHealth::new(),
            metrics,
            clean_epoch: std::cell::Cell::new(0),
            state: RefCell::new(state),
            epoch_tx,
            kick_tx,
            view: RefCell::default(),
            ring: RefCell::new(None),
            fences: RefCell::default(),
            group: RefCell::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// The groupd client the write path asks for VDIs it does not know.
    pub fn set_group(&self, client: Rc<GroupClient>) {
        *self.group.borrow_mut() = Some(client);
    }

    /// The lock table the write path checks (see `fence`).
    pub fn fences(&self) -> std::cell::RefMut<'_, Fences> {
        self.fences.borrow_mut()
    }

    /// The name of the VDI `vid`, from the view; `None` if the view does not know it.
    pub fn vdi_name(&self, vid: VdiId) -> Option<String> {
        self.view.borrow().vdi_names.get(&vid).cloned()
    }

    /// The fencing rule for a write to an object of VDI `vid` with lock token `fence`. A VDI
    /// the view does not know (its creation not seen yet, or the node just started) is
    /// looked up in groupd's list once; still unknown, the write is accepted: no lock can be
    /// tied to it.
    pub async fn check_fence(&self, vid: VdiId, fence: u64) -> Result<(), Fenced> {
        let name = match self.vdi_name(vid) {
            Some(n) => Some(n),
            None => self.refresh_for(vid).await,
        };
        match name {
            Some(name) => self.fences.borrow_mut().check(&name, fence),
            None => Ok(()),
        }
    }

    /// Asks groupd for the VDI list (unless `vid` was asked for recently), then the name.
    async fn refresh_for(&self, vid: VdiId) -> Option<String> {
        let recent = |v: &ClusterView| v.unknown.get(&vid).is_some_and(|t| t.elapsed() < UNKNOWN_VID_RECHECK);
        if recent(&self.view.borrow()) {
            return None;
        }
        let client = self.group.borrow().clone()?;
        let _one = self.refreshing.lock().await;
        // Another write may have refreshed meanwhile.
        if let Some(n) = self.vdi_name(vid) {
            return Some(n);
        }
        if recent(&self.view.borrow()) {
            return None;
        }
        match client.vdi_list().await {
            Ok((vdis, deleted)) => self.set_vdis(&vdis, &deleted),
            Err(e) => tracing::debug!("cannot list the VDIs to check a write's lock token: {e}"),
        }
        let name = self.vdi_name(vid);
        if name.is_none() {
            self.view.borrow_mut().unknown.insert(vid, Instant::now());
        }
        name
    }

    /// The newest epoch this node has applied (0: none yet).
    pub fn epoch(&self) -> Epoch {
        *self.epoch_tx.borrow()
    }

    pub fn watch_epoch(&self) -> watch::Receiver<Epoch> {
        self.epoch_tx.subscribe()
    }

    fn epoch_changed(&self) {
        let current = self.state.borrow().epochs.current();
        self.epoch_tx.send_if_modified(|e| std::mem::replace(e, current) != current);
        self.metrics.set_epoch(current);
    }

    /// Recovery made a plan (see `Progress::planned`).
    pub fn plan_made(&self) {
        self.plans_tx.send_modify(|n| *n += 1);
    }

    pub fn watch_plans(&self) -> watch::Receiver<u64> {
        self.plans_tx.subscribe()
    }

    /// Asks the recovery loop for a new pass.
    pub fn kick_recovery(&self) {
        self.kick_tx.send_modify(|n| *n += 1);
    }

    pub fn watch_kicks(&self) -> watch::Receiver<u64> {
        self.kick_tx.subscribe()
    }

    /// The ring of `epoch` (cached for the newest one asked), `None` for an unknown epoch.
    pub fn ring(&self, epoch: Epoch) -> Option<Rc<EpochRing>> {
        if let Some((e, r)) = &*self.ring.borrow() {
            if *e == epoch {
                return Some(r.clone());
            }
        }
        let record = self.state.borrow().epochs.get(epoch)?.clone();
        let ring = Rc::new(EpochRing { ring: PlacementRing::new(&record.nodes), record });
        *self.ring.borrow_mut() = Some((epoch, ring.clone()));
        Some(ring)
    }

    /// The nodes of `epoch` (none if the local history does not have it).
    pub fn epoch_nodes(&self, epoch: Epoch) -> Vec<NodeInfo> {
        self.state.borrow().epochs.get(epoch).map(|r| r.nodes.clone()).unwrap_or_default()
    }

    /// An epoch's placement ring, built anew (not cached: recovery looks at several).
    pub fn ring_of(&self, epoch: Epoch) -> Option<EpochRing> {
        let record = self.state.borrow().epochs.get(epoch)?.clone();
        Some(EpochRing { ring: PlacementRing::new(&record.nodes), record })
    }

    pub fn clean_epoch(&self) -> Epoch {
        self.clean_epoch.get()
    }

    /// Every node of `epoch` recovered (it never goes back).
    pub fn set_clean_epoch(&self, epoch: Epoch) {
        self.clean_epoch.set(self.clean_epoch.get().max(epoch));
    }

    /// How many copies the objects of `vid` have: the VDI's own, else the cluster's.
    pub fn copies_of(&self, vid: VdiId) -> usize {
        let v = self.view.borrow();
        let copies = v.vdi_copies.get(&vid).copied().or(v.copies).unwrap_or(DEFAULT_COPIES);
        usize::from(copies.max(1))
    }

    /// The fewest copies any VDI (or the cluster's default) has.
    pub fn min_copies(&self) -> usize {
        let v = self.view.borrow();
        let cluster = v.copies.unwrap_or(DEFAULT_COPIES);
        usize::from(v.vdi_copies.values().copied().fold(cluster, u8::min).max(1))
    }

    pub fn set_cluster_copies(&self, copies: u8) {
        self.view.borrow_mut().copies = Some(copies);
    }

    pub fn vdi_created(&self, vdi: &VdiEntry) {
        let mut v = self.view.borrow_mut();
        v.vdi_copies.insert(vdi.vid, vdi.copies);
        v.vdi_names.insert(vdi.vid, vdi.name.clone());
        v.unknown.remove(&vdi.vid);
    }

    /// Records a deleted VDI; true if it was not known as deleted yet.
    pub fn vdi_deleted(&self, vid: VdiId) -> bool {
        let mut v = self.view.borrow_mut();
        v.vdi_copies.remove(&vid);
        v.vdi_names.remove(&vid);
        v.deleted.insert(vid)
    }

    /// Takes the namespace as groupd lists it.
    pub fn set_vdis(&self, vdis: &[VdiEntry], deleted: &[VdiId]) {
        let mut v = self.view.borrow_mut();
        v.vdi_copies = vdis.iter().map(|e| (e.vid, e.copies)).collect();
        v.vdi_names = vdis.iter().map(|e| (e.vid, e.name.clone())).collect();
        let ClusterView { unknown, vdi_names, .. } = &mut *v;
        unknown.retain(|vid, _| !vdi_names.contains_key(vid));
        v.deleted.extend(deleted.iter().copied());
    }

    pub fn deleted_vdis(&self) -> HashSet<VdiId> {
        self.view.borrow().deleted.clone()
    }

    pub fn is_deleted(&self, vid: VdiId) -> bool {
        self.view.borrow().deleted.contains(&vid)
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
        drop(s);
        // A new cluster: nothing of the old namespace applies.
        *self.view.borrow_mut() = ClusterView::default();
        *self.ring.borrow_mut() = None;
        self.epoch_changed();
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
            drop(s);
            self.epoch_changed();
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
        let objects = Arc::new(ObjectStore::open(tmp.path()).unwrap());
        let node = Node::new(NodeInfo::default_for_test(), store, objects, cfg, None, StoreMetrics::new().0);
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
