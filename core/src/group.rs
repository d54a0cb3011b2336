//! The group state machine: what every groupd applies, in the one total order.
//!
//! It is deterministic: the same commands in the same order give the same state on every
//! groupd. Time never comes from the clock here; the master stamps it into each command.
//! Every applied command appends one or more [`Event`]s with consecutive sequence numbers,
//! which is what watchers see.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::epoch::{Epoch, EpochLog, NodeInfo};
use crate::namespace::Namespace;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    pub config: Option<ClusterConfig>,
    pub status: ClusterStatus,
    pub sessions: BTreeMap<SessionId, Session>,
    pub epochs: EpochLog,
    pub locks: BTreeMap<String, Lock>,
    pub vdis: Namespace,
    /// Nodes of the current epoch that reported their recovery done.
    pub recovered: std::collections::BTreeSet<String>,
    /// The newest epoch every node of which reported its recovery done: every object was
    /// then held by all its replicas at its newest version, so storage nodes look for newer
    /// copies in this epoch and later ones only.
    #[serde(default)]
    pub clean_epoch: Epoch,
    next_session: SessionId,
    /// Sequence number the next event gets; events are numbered from 1.
    next_seq: u64,
    /// The newest events, oldest first; at most [`EVENTS_KEPT`].
    events: VecDeque<Event>,
    /// The answers of recent client calls, so that a retried call applies once.
    #[serde(default)]
    requests: RequestTable,
    /// The clients other than `client.admin`, by name.
    #[serde(default)]
    pub clients: BTreeMap<String, crate::auth::clients::ClientEntry>,
    /// The generation the last added client got.
    #[serde(default)]
    next_client_generation: u64,
}

impl Default for GroupState {
    fn default() -> Self {
        GroupState {
            config: None,
            status: ClusterStatus::Unformatted,
            sessions: BTreeMap::new(),
            epochs: EpochLog::default(),
            locks: BTreeMap::new(),
            vdis: Namespace::default(),
            recovered: Default::default(),
            clean_epoch: 0,
            next_session: 1,
            next_seq: 1,
            events: VecDeque::new(),
            requests: RequestTable::default(),
            clients: BTreeMap::new(),
            next_client_generation: 0,
        }
    }
}

impl GroupState {
    /// Applies one command at `position` in the total order ([`Proposal::position`]: used for
    /// fencing tokens and by the request table). A refused command changes nothing: every
    /// refusal is decided before the first change.
    ///
    /// A command naming a client call that was applied already is not applied again: it
    /// answers what the call answered then, refusal included (see [`dedupe`]).
    pub fn apply(&mut self, position: u64, cmd: &Command) -> Result<Reply, GroupError> {
        self.check_event_numbering()?;
        let Some(request) = &cmd.request else { return self.apply_op(position, cmd) };
        if let Some(answer) = self.requests.check(position, request)? {
            return answer;
        }
        let answer = self.apply_op(position, cmd);
        self.requests.record(position, request, &answer);
        answer
    }

    /// True if `cmd` names a client call applied already: applying it answers from the
    /// record and changes nothing else.
    pub fn is_retry(&self, cmd: &Command) -> bool {
        cmd.request.as_ref().is_some_and(|r| self.requests.seen(r))
    }

    /// Events are numbered consecutively and the next one follows the newest kept: what
    /// lets a watcher resume with no gap and no duplicate. [`Self::emit`] keeps it, so this
    /// only fails on a state that was damaged before this command.
    fn check_event_numbering(&self) -> Result<(), GroupError> {
        match self.events.back() {
            Some(last) if last.seq.checked_add(1) != Some(self.next_seq) => Err(GroupError::Invariant {
                what: format!("the newest event is {} but the next sequence number is {}", last.seq, self.next_seq),
            }),
            _ => Ok(()),
        }
    }

    fn apply_op(&mut self, position: u64, cmd: &Command) -> Result<Reply, GroupError> {
        let t = cmd.time_ms;
        match &cmd.op {
            Op::Format { cluster_id, copies, object_size_shift, voters, force, policy } => {
                self.format(t, cluster_id, *copies, *object_size_shift, *voters, *force, *policy)
            }
            Op::OpenSession { kind, store_cluster } => self.open_session(t, kind, store_cluster),
            Op::CloseSession { session, expired } => {
                self.close_session(t, *session, *expired)?;
                Ok(Reply::Done)
            }
            Op::Broadcast { session, payload } => {
                self.session(*session)?;
                let seq = self.emit(t, EventKind::Broadcast { session: *session, payload: payload.clone() });
                Ok(Reply::Seq(seq))
            }
            Op::Lock { session, vdi } => self.lock(t, position, *session, vdi),
            Op::Unlock { session, vdi, force } => self.unlock(t, *session, vdi, *force),
            Op::Shutdown => self.shutdown(t),
            Op::RecoverForce => self.recover_force(t),
            Op::VdiCreate { name, size, copies, allow_fewer_zones } => {
                let config = self.running_config()?;
                let copies = if *copies == 0 { config.copies } else { *copies };
                self.enough_zones(copies, *allow_fewer_zones || config.policy.allow_fewer_zones)?;
                let shift = config.object_size_shift;
                let entry = self.vdis.create(name, *size, copies, shift, t)?;
                self.emit(t, EventKind::VdiCreated(entry.clone()));
                Ok(Reply::Vdi(entry))
            }
            Op::VdiDelete { name, tag } => {
                self.running()?;
                let (deleted, deletion) = match tag {
                    None => {
                        self.not_locked(name)?;
                        self.vdis.delete(name)?
                    }
                    Some(tag) => self.vdis.delete_snapshot(name, tag)?,
                };
                self.emit_deletion(t, deletion);
                Ok(Reply::Vdi(deleted))
            }
            Op::VdiSnapshot { session, name, tag } => {
                self.running()?;
                if let Some(l) = self.locks.get(name) {
                    if l.session != *session {
                        return Err(self.lock_held(l));
                    }
                }
                let (snapshot, working) = self.vdis.take_snapshot(name, tag, t)?;
                self.emit(t, EventKind::VdiSnapshotted { snapshot: snapshot.clone(), working: working.clone() });
                Ok(Reply::Snapshot { snapshot, working })
            }
            Op::VdiClone { name, tag, new_name } => {
                self.running()?;
                let entry = self.vdis.clone_snapshot(name, tag, new_name, t)?;
                self.emit(t, EventKind::VdiCreated(entry.clone()));
                Ok(Reply::Vdi(entry))
            }
            Op::VdiRollback { name, tag } => {
                self.running()?;
                self.not_locked(name)?;
                let (working, deletion) = self.vdis.rollback(name, tag, t)?;
                self.emit_deletion(t, deletion);
                self.emit(t, EventKind::VdiCreated(working.clone()));
                Ok(Reply::Vdi(working))
            }
            Op::VdiResize { name, size } => {
                self.running()?;
                let entry = self.vdis.resize(name, *size)?;
                self.emit(t, EventKind::VdiResized(entry.clone()));
                Ok(Reply::Vdi(entry))
            }
            Op::VdiSetAttr { name, key, value, exclusive } => {
                self.running()?;
                self.vdis.set_attr(name, key, value.as_deref(), *exclusive)?;
                Ok(Reply::Done)
            }
            Op::RecoveryDone { session, epoch } => self.recovery_done(t, *session, *epoch),
            Op::NodeFailed { session, reason } => self.node_failed(t, *session, reason),
            Op::AuthAdd { name, caps } => self.auth_add(name, caps),
            Op::AuthCaps { name, caps } => self.auth_caps(name, caps),
            Op::AuthRm { name } => self.auth_rm(name),
        }
    }

    fn lock_held(&self, l: &Lock) -> GroupError {
        let holder = self.sessions.get(&l.session).map(|s| s.name()).unwrap_or_default();
        GroupError::LockHeld { vdi: l.vdi.clone(), session: l.session, holder }
    }

    /// Refuses while VDI `name` is locked (attached somewhere).
    fn not_locked(&self, name: &str) -> Result<(), GroupError> {
        match self.locks.get(name) {
            Some(l) => Err(self.lock_held(l)),
            None => Ok(()),
        }
    }

    fn emit_deletion(&mut self, t: u64, d: crate::namespace::Deletion) {
        for e in &d.removed {
            if !d.collectable.iter().any(|c| c.vid == e.vid) {
                self.emit(t, EventKind::VdiRetired(e.clone()));
            }
        }
        for e in d.collectable {
            self.emit(t, EventKind::VdiDeleted(e));
        }
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Events with `seq >= from`, at most `max`. `Err(oldest)` if `from` was dropped already.
    pub fn events_from(&self, from: u64, max: usize) -> Result<Vec<Event>, u64> {
        let oldest = self.events.front().map_or(self.next_seq, |e| e.seq);
        if from < oldest && from < self.next_seq {
            return Err(oldest);
        }
        let skip = from.saturating_sub(oldest) as usize;
        Ok(self.events.iter().skip(skip).take(max).cloned().collect())
    }

    /// The sessions of storage nodes in the data membership (not failed).
    pub fn storage_sessions(&self) -> impl Iterator<Item = (&Session, &NodeInfo)> {
        self.sessions.values().filter(|s| s.failed.is_none()).filter_map(|s| s.node().map(|n| (s, n)))
    }

    /// Nodes of the last epoch that have no live session (while shut down: who we wait for).
    pub fn missing_nodes(&self) -> Vec<NodeInfo> {
        let Some(last) = self.epochs.latest() else { return Vec::new() };
        last.nodes.iter().filter(|n| !self.storage_sessions().any(|(_, live)| live.id == n.id)).cloned().collect()
    }

    fn emit(&mut self, time_ms: u64, kind: EventKind) -> u64 {
        let seq = self.next_seq;
        debug_assert!(self.events.back().is_none_or(|last| last.seq + 1 == seq), "event numbers are consecutive");
        self.next_seq += 1;
        self.events.push_back(Event { seq, time_ms, kind });
        while self.events.len() > EVENTS_KEPT {
            self.events.pop_front();
        }
        seq
    }

    fn session(&self, id: SessionId) -> Result<&Session, GroupError> {
        self.sessions.get(&id).ok_or(GroupError::NoSession(id))
    }

    /// The storage nodes with live sessions, in a stable order (by node id).
    fn live_nodes(&self) -> Vec<NodeInfo> {
        let mut nodes: Vec<NodeInfo> = self.storage_sessions().map(|(_, n)| n.clone()).collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        nodes
    }

    /// Starts a new epoch if the live node list differs from the last epoch's. Never an empty
    /// one after an epoch with storage nodes: the cluster halts instead.
    fn maybe_new_epoch(&mut self, t: u64) {
        let nodes = self.live_nodes();
        let Some(last) = self.epochs.latest() else {
            self.push_epoch(t, nodes);
            return;
        };
        if last.nodes == nodes {
            return;
        }
        if nodes.is_empty() && !last.nodes.is_empty() {
            self.status = ClusterStatus::Halted;
            self.emit(t, EventKind::Halted);
            return;
        }
        self.push_epoch(t, nodes);
    }

    fn push_epoch(&mut self, t: u64, nodes: Vec<NodeInfo>) {
        let rec = self.epochs.push(t, nodes);
        self.recovered.clear();
        self.emit(t, EventKind::Epoch(rec));
    }

    #[allow(clippy::too_many_arguments, reason = "one per field of Op::Format, and the time")]
    fn format(
        &mut self,
        t: u64,
        cluster_id: &str,
        copies: u8,
        object_size_shift: u8,
        voters: u8,
        force: bool,
        policy: Policy,
    ) -> Result<Reply, GroupError> {
        if let Some(c) = &self.config {
            if !force {
                return Err(GroupError::AlreadyFormatted(c.cluster_id.clone()));
            }
        }
        if copies == 0 || copies > 31 {
            return Err(GroupError::BadRequest(format!("copies must be 1..=31, not {copies}")));
        }
        if !(20..=32).contains(&object_size_shift) {
            return Err(GroupError::BadRequest(format!(
                "object size must be a power of two from 1 MiB to 4 GiB, not 2^{object_size_shift}"
            )));
        }
        if voters != 3 && voters != 5 && voters != 1 {
            return Err(GroupError::BadRequest(format!("voters must be 1, 3 or 5, not {voters}")));
        }
        if cluster_id.is_empty() {
            return Err(GroupError::BadRequest("empty cluster id".into()));
        }
        if policy.min_copies > copies {
            return Err(GroupError::BadRequest(format!(
                "min copies {} is more than the {copies} copies",
                policy.min_copies
            )));
        }
        self.enough_zones(copies, policy.allow_fewer_zones)?;
        let config = ClusterConfig {
            cluster_id: cluster_id.to_string(),
            created_ms: t,
            copies,
            object_size_shift,
            voters,
            policy,
        };
        // A new format forgets the old cluster's history: epochs count from 1 again, and
        // storage nodes with live sessions carry on as the new cluster's first epoch.
        self.config = Some(config.clone());
        self.status = ClusterStatus::Running;
        self.epochs = EpochLog::default();
        self.locks.clear();
        self.vdis = Namespace::default();
        self.emit(t, EventKind::Formatted(config.clone()));
        self.maybe_new_epoch(t);
        Ok(Reply::Formatted(config))
    }

    fn open_session(&mut self, t: u64, kind: &SessionKind, store_cluster: &str) -> Result<Reply, GroupError> {
        // Session ids are handed out in increasing order and never twice: the new id must be
        // free (else the new session would replace a live one and inherit its locks).
        let id = self.next_session;
        let after = match id.checked_add(1) {
            Some(after) if !self.sessions.contains_key(&id) => after,
            _ => return Err(GroupError::Invariant { what: format!("the next session id {id} is not free") }),
        };
        if let SessionKind::Storage(node) = kind {
            if node.id.is_empty() || node.weight == 0 {
                return Err(GroupError::BadRequest("a storage node needs an id and a weight > 0".into()));
            }
            match &self.config {
                Some(c) if !store_cluster.is_empty() && store_cluster != c.cluster_id => {
                    return Err(GroupError::WrongCluster {
                        store: store_cluster.to_string(),
                        cluster: c.cluster_id.clone(),
                    })
                }
                None if !store_cluster.is_empty() => {
                    return Err(GroupError::WrongCluster {
                        store: store_cluster.to_string(),
                        cluster: "unformatted".into(),
                    })
                }
                _ => {}
            }
            // A node that restarts before its old session expired (or failed) replaces it.
            let old: Vec<SessionId> =
                self.sessions.values().filter(|s| s.node().is_some_and(|n| n.id == node.id)).map(|s| s.id).collect();
            for old_id in old {
                self.drop_session(t, old_id, true);
            }
            // A restarted node quarantines what it held: it recovers again in this epoch.
            self.recovered.remove(&node.id);
        }
        self.next_session = after;
        let session = Session { id, kind: kind.clone(), opened_ms: t, failed: None };
        self.sessions.insert(id, session.clone());
        self.emit(t, EventKind::Joined(session));
        if kind.is_storage() {
            self.membership_changed(t);
        }
        Ok(Reply::Session(id))
    }

    fn close_session(&mut self, t: u64, id: SessionId, expired: bool) -> Result<(), GroupError> {
        let was_storage = self.session(id)?.node().is_some();
        self.drop_session(t, id, expired);
        if was_storage {
            self.membership_changed(t);
        }
        Ok(())
    }

    /// Removes a session and releases its locks.
    fn drop_session(&mut self, t: u64, id: SessionId, expired: bool) {
        let released: Vec<String> = self.locks.values().filter(|l| l.session == id).map(|l| l.vdi.clone()).collect();
        for vdi in released {
            self.locks.remove(&vdi);
            self.emit(t, EventKind::Unlocked { vdi, session: id, forced: false });
        }
        self.sessions.remove(&id);
        self.emit(t, EventKind::Left { session: id, expired });
    }

    fn membership_changed(&mut self, t: u64) {
        match self.status {
            ClusterStatus::Unformatted => {}
            ClusterStatus::Running => self.maybe_new_epoch(t),
            ClusterStatus::Shutdown | ClusterStatus::Halted => {
                if self.missing_nodes().is_empty() {
                    self.status = ClusterStatus::Running;
                    self.emit(t, EventKind::Resumed);
                    // Nodes that were not in the last epoch and joined meanwhile make a new
                    // epoch; a plain restart of the same nodes makes none.
                    self.maybe_new_epoch(t);
                }
            }
        }
    }

    fn lock(&mut self, t: u64, position: u64, session: SessionId, vdi: &str) -> Result<Reply, GroupError> {
        self.running()?;
        self.session(session)?;
        if vdi.is_empty() {
            return Err(GroupError::BadRequest("empty VDI name".into()));
        }
        if let Some(l) = self.locks.get(vdi) {
            if l.session == session {
                return Ok(Reply::Locked(l.clone()));
            }
            return Err(self.lock_held(l));
        }
        let lock = Lock { vdi: vdi.into(), session, token: position };
        self.locks.insert(vdi.into(), lock.clone());
        self.emit(t, EventKind::Locked(lock.clone()));
        Ok(Reply::Locked(lock))
    }

    fn unlock(&mut self, t: u64, session: SessionId, vdi: &str, force: bool) -> Result<Reply, GroupError> {
        match self.locks.get(vdi) {
            Some(l) if l.session == session || force => {
                let holder = l.session;
                self.locks.remove(vdi);
                self.emit(t, EventKind::Unlocked { vdi: vdi.into(), session: holder, forced: force });
                Ok(Reply::Done)
            }
            _ => Err(GroupError::NotLocked { vdi: vdi.into(), session }),
        }
    }

    fn shutdown(&mut self, t: u64) -> Result<Reply, GroupError> {
        self.running()?;
        // Every session ends with the shutdown and no epoch is made for it: on restart the
        // cluster waits for the last epoch's nodes and resumes in that same epoch.
        self.status = ClusterStatus::Shutdown;
        self.sessions.clear();
        self.locks.clear();
        self.emit(t, EventKind::Shutdown);
        Ok(Reply::Done)
    }

    fn recover_force(&mut self, t: u64) -> Result<Reply, GroupError> {
        match self.status {
            ClusterStatus::Unformatted => Err(GroupError::NotFormatted),
            // Running, some objects may wait for nodes that are down (every replica of them
            // was there): going on without them makes this epoch the clean one, so storage
            // nodes take the newest copies there are and stop waiting.
            ClusterStatus::Running => {
                let Some(current) = self.epochs.latest().map(|e| e.epoch) else { return Err(GroupError::NotFormatted) };
                if self.clean_epoch >= current {
                    return Err(GroupError::BadRequest(
                        "the cluster is running and recovered; there is nothing to recover".into(),
                    ));
                }
                self.clean_epoch = current;
                self.emit(t, EventKind::RecoveryComplete(current));
                Ok(Reply::Done)
            }
            ClusterStatus::Shutdown | ClusterStatus::Halted => {
                if self.live_nodes().is_empty() {
                    return Err(GroupError::BadRequest(
                        "no storage node is back yet; start at least one before recover force".into(),
                    ));
                }
                self.status = ClusterStatus::Running;
                self.emit(t, EventKind::Resumed);
                self.maybe_new_epoch(t);
                // The missing nodes' copies are given up: nobody waits for them.
                if let Some(current) = self.epochs.latest().map(|e| e.epoch) {
                    self.clean_epoch = current;
                    self.emit(t, EventKind::RecoveryComplete(current));
                }
                Ok(Reply::Done)
            }
        }
    }

    fn running_config(&self) -> Result<ClusterConfig, GroupError> {
        self.running()?;
        self.config.clone().ok_or(GroupError::NotFormatted)
    }

    fn recovery_done(&mut self, t: u64, session: SessionId, epoch: Epoch) -> Result<Reply, GroupError> {
        let node = self
            .session(session)?
            .node()
            .cloned()
            .ok_or_else(|| GroupError::BadRequest("only a storage node reports recovery".into()))?;
        let Some(current) = self.epochs.latest().cloned() else { return Err(GroupError::NotFormatted) };
        // A report for an older epoch is outdated: the node recovers again for the new one.
        if epoch != current.epoch || !current.nodes.iter().any(|n| n.id == node.id) {
            return Ok(Reply::Done);
        }
        if self.recovered.insert(node.id.clone()) {
            self.emit(t, EventKind::Recovered { node: node.id, epoch });
            let all = current.nodes.iter().all(|n| self.recovered.contains(&n.id));
            if all {
                self.clean_epoch = epoch;
                self.emit(t, EventKind::RecoveryComplete(epoch));
            }
        }
        Ok(Reply::Done)
    }

    fn node_failed(&mut self, t: u64, session: SessionId, reason: &str) -> Result<Reply, GroupError> {
        let s = self.sessions.get_mut(&session).ok_or(GroupError::NoSession(session))?;
        let Some(node) = s.node().map(|n| n.id.clone()) else {
            return Err(GroupError::BadRequest("only a storage node reports a failed disk".into()));
        };
        if s.failed.is_some() {
            return Ok(Reply::Done);
        }
        s.failed = Some(reason.to_string());
        self.emit(t, EventKind::NodeFailed { session, node, reason: reason.to_string() });
        self.membership_changed(t);
        Ok(Reply::Done)
    }

    /// Refuses `copies` copies while the storage nodes up now span fewer zones, unless
    /// allowed. With no storage node yet there is nothing to judge.
    fn enough_zones(&self, copies: u8, allowed: bool) -> Result<(), GroupError> {
        let nodes = self.live_nodes();
        let zones = policy::zones(&nodes);
        if allowed || nodes.is_empty() || zones >= usize::from(copies) {
            return Ok(());
        }
        Err(GroupError::BadRequest(format!(
            "{copies} copies need {copies} zones, and the storage nodes span {zones}: start nodes in more zones, \
             or accept under-replicated objects with --allow-fewer-zones"
        )))
    }

    fn running(&self) -> Result<(), GroupError> {
        match self.status {
            ClusterStatus::Unformatted => Err(GroupError::NotFormatted),
            ClusterStatus::Shutdown => Err(GroupError::ShutDown),
            // Halted: group commands go on (locks, the namespace); object I/O waits for nodes.
            ClusterStatus::Running | ClusterStatus::Halted => Ok(()),
        }
    }
}

pub mod clients;
pub mod dedupe;
pub mod holder;
mod info;
pub mod policy;
mod types;
pub use dedupe::{Answer, RequestTable};
pub use info::{ClusterInfo, LockInfo};
pub use policy::Policy;
pub use types::*;

#[cfg(test)]
#[path = "group_tests.rs"]
mod tests;
