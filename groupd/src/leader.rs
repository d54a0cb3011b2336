//! What only the master does: expire sessions whose lease ran out, add joining groupd
//! instances as learners and promote caught-up learners to voters while there are fewer
//! voters than the cluster's `voters`. A join reaches the master through [`Node::add_member`]
//! (here, not in `node.rs`: node.rs is below this module and does not call into it).

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use openraft::{BasicNode, ChangeMembers, ServerState};
use sheep_core::group::{Op, DEFAULT_VOTERS};
use sheep_rpc::error::{refusal, ErrorCode};
use tokio::time::Instant;

use crate::forward;
use crate::node::{left, no_master, Node, Route, SUBMIT_DEADLINE};
use crate::propose::COMMIT_TIMEOUT;
use crate::types::{now_mono_ms, ClientWriteError, NodeId, RaftError};

/// How often the master checks leases.
const LEASE_TICK: Duration = Duration::from_millis(200);
/// A check this much later than due means the master itself was held up (stopped, starved
/// of CPU): the time past it counts against no lease.
const HELD_UP: Duration = Duration::from_millis(1000);
/// Before it expires anyone, the master lets the requests waiting on its sockets in this
/// long: a keepalive that arrived while it was busy is no missed keepalive.
const EXPIRY_GRACE: Duration = Duration::from_millis(300);
/// How often the master looks for learners to promote.
const PROMOTE_EVERY: Duration = Duration::from_secs(1);
/// A learner this close to the leader's last log index counts as caught up.
const CAUGHT_UP_LAG: u64 = 50;

/// Why the master's side of `addMember` failed.
#[derive(Debug)]
pub enum AddMemberError {
    /// This groupd is no longer the master: the call is to be routed again.
    NotLeader,
    Failed(capnp::Error),
}

impl From<AddMemberError> for capnp::Error {
    fn from(e: AddMemberError) -> capnp::Error {
        match e {
            AddMemberError::NotLeader => no_master("this groupd is no longer the master"),
            AddMemberError::Failed(e) => e,
        }
    }
}

fn membership_error(what: &str, e: RaftError<ClientWriteError>) -> AddMemberError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => AddMemberError::NotLeader,
        e => AddMemberError::Failed(no_master(format!("{what}: {e}"))),
    }
}

/// Adds a groupd as a learner (the master's side of `addMember`). Idempotent.
pub async fn add_member(node: &Node, raft_id: NodeId, addr: &str) -> Result<(), AddMemberError> {
    if raft_id == 0 || addr.is_empty() {
        return Err(AddMemberError::Failed(refusal(ErrorCode::BadRequest, "addMember needs a raft id and an address")));
    }
    let known = {
        let m = node.raft.metrics();
        let m = m.borrow();
        m.membership_config.membership().get_node(&raft_id).map(|n| n.addr.clone())
    };
    match known {
        Some(a) if a == addr => {
            tracing::info!(raft_id, addr, "addMember: already a member");
        }
        Some(a) => {
            return Err(AddMemberError::Failed(refusal(
                ErrorCode::BadRequest,
                format!("raft id {raft_id} is already a member at {a}, not {addr}"),
            )))
        }
        None => {
            let _serial = node.membership_changes.lock().await;
            let res = tokio::time::timeout(
                COMMIT_TIMEOUT,
                node.raft.add_learner(raft_id, BasicNode { addr: addr.to_string() }, false),
            )
            .await
            .map_err(|_| AddMemberError::Failed(no_master("adding the member was not committed in time")))?;
            res.map_err(|e| membership_error("cannot add the member", e))?;
            tracing::info!(raft_id, addr, "addMember: added as a learner");
        }
    }
    {
        let mut order = node.join_order.borrow_mut();
        if !order.contains(&raft_id) {
            order.push(raft_id);
        }
    }
    node.promote_now.notify_one();
    Ok(())
}

impl Node {
    /// A groupd asks to join: handled by the master, forwarded to it by the others.
    pub async fn add_member(&self, raft_id: NodeId, addr: &str) -> Result<(), capnp::Error> {
        let deadline = Instant::now() + SUBMIT_DEADLINE;
        loop {
            match self.route(deadline).await? {
                Route::Local => match add_member(self, raft_id, addr).await {
                    Err(AddMemberError::NotLeader) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    r => return r.map_err(capnp::Error::from),
                },
                Route::Forward { addr: master, client } => {
                    let res = tokio::time::timeout(left(deadline), forward::add_member(&client, raft_id, addr)).await;
                    return match res {
                        Err(_) => Err(no_master(format!("the master at {master} did not answer in time"))),
                        Ok(Err(e)) => {
                            self.peers.note_error(&master, &e);
                            Err(forward::relay(e))
                        }
                        Ok(Ok(())) => Ok(()),
                    };
                }
            }
        }
    }
}

/// The master's loop: leases every [`LEASE_TICK`], promotions every [`PROMOTE_EVERY`]; on
/// every groupd, it also logs who the master is when that changes.
pub async fn run(node: Rc<Node>) {
    let mut was_leader = false;
    let mut had_quorum = false;
    let mut known_master = None;
    let mut next_promote = Instant::now();
    let mut last_check = now_mono_ms();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(LEASE_TICK) => {}
            _ = node.promote_now.notified() => { next_promote = Instant::now(); }
        }
        let now = now_mono_ms();
        let late = now.saturating_sub(last_check).saturating_sub(LEASE_TICK.as_millis() as u64);
        last_check = now;
        let master = node.raft.metrics().borrow().current_leader;
        if master != known_master {
            match node.members().into_iter().find(|m| Some(m.raft_id) == master) {
                Some(m) => tracing::info!(master = %m.addr, raft_id = m.raft_id, "master known"),
                None => tracing::info!("no master known"),
            }
            known_master = master;
        }
        let leader = node.is_leader();
        if leader != was_leader {
            // A new master grants every session a full lease; a former one forgets.
            node.leases.borrow_mut().clear();
            if leader {
                tracing::info!(raft_id = node.id, addr = %node.addr, "this groupd is now the master");
            } else {
                tracing::info!("this groupd is no longer the master");
            }
            was_leader = leader;
        }
        if !leader {
            had_quorum = false;
            continue;
        }
        // Keepalives could not reach a master cut off from the quorum: when it is back,
        // every session gets a full lease again, as with a new master.
        let quorum = node.is_leader_with_quorum();
        if quorum && !had_quorum {
            node.leases.borrow_mut().clear();
        }
        had_quorum = quorum;
        if late >= HELD_UP.as_millis() as u64 {
            tracing::warn!(late_ms = late, "the master was held up (stopped or starved of CPU): leases extended by it");
            node.leases.borrow_mut().held_up(late, now);
        }
        if quorum {
            expire_sessions(&node).await;
            // The grace and the closing take time of their own, which counts as no stall.
            last_check = now_mono_ms();
        }
        if Instant::now() >= next_promote {
            next_promote = Instant::now() + PROMOTE_EVERY;
            promote_learners(&node).await;
        }
    }
}

/// Sessions whose lease ran out by now.
fn out_of_lease(node: &Node) -> Vec<u64> {
    let now = now_mono_ms();
    let live: Vec<u64> = node.sm.state().sessions.keys().copied().collect();
    let mut leases = node.leases.borrow_mut();
    leases.sync(live, now);
    leases.expired(now)
}

async fn expire_sessions(node: &Node) {
    if out_of_lease(node).is_empty() {
        return;
    }
    // Let in what waits on the sockets (keepalives among it) before judging.
    tokio::time::sleep(EXPIRY_GRACE).await;
    if !node.is_leader() {
        return;
    }
    for session in out_of_lease(node) {
        tracing::info!(session, lease_ms = node.lease_ms, "session expired: no keepalive within its lease");
        match node.write_as_master(Op::CloseSession { session, expired: true }).await {
            Ok(_) => {}
            Err(e) => tracing::warn!(session, "cannot close the expired session: {}", e.extra),
        }
        if !node.is_leader() {
            return;
        }
    }
}

/// Promotes one caught-up learner if there are fewer voters than wanted.
async fn promote_learners(node: &Node) {
    let _serial = node.membership_changes.lock().await;
    let target = node.sm.state().config.as_ref().map_or(DEFAULT_VOTERS, |c| c.voters) as usize;
    let (candidate, joint) = {
        let m = node.raft.metrics();
        let m = m.borrow();
        if m.state != ServerState::Leader {
            return;
        }
        let membership = m.membership_config.membership();
        let joint = membership.get_joint_config().len() > 1;
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if voters.len() >= target && !joint {
            return;
        }
        let last = m.last_log_index.unwrap_or(0);
        let empty = BTreeMap::new();
        let matched = m.replication.as_ref().unwrap_or(&empty);
        let caught_up = |id: &NodeId| {
            let at = matched.get(id).and_then(|l| l.as_ref()).map_or(0, |l| l.index);
            at + CAUGHT_UP_LAG >= last
        };
        let learners: Vec<NodeId> = membership.learner_ids().collect();
        let order = node.join_order.borrow();
        let mut ordered: Vec<NodeId> = order.iter().copied().filter(|id| learners.contains(id)).collect();
        ordered.extend(learners.iter().copied().filter(|id| !order.contains(id)));
        (ordered.into_iter().find(|id| caught_up(id)), joint)
    };
    if joint {
        // A change left half done (e.g. by a leader change): finish it first.
        tracing::info!("completing an unfinished membership change");
        let change = ChangeMembers::AddVoterIds(BTreeSet::new());
        match tokio::time::timeout(COMMIT_TIMEOUT, node.raft.change_membership(change, false)).await {
            Ok(Ok(_)) => node.promote_now.notify_one(),
            Ok(Err(e)) => tracing::warn!("cannot complete the membership change: {e}"),
            Err(_) => tracing::warn!("completing the membership change was not committed in time"),
        }
        return;
    }
    let Some(id) = candidate else { return };
    tracing::info!(raft_id = id, target, "promoting a learner to voter");
    let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
    match tokio::time::timeout(COMMIT_TIMEOUT * 2, node.raft.change_membership(change, false)).await {
        Err(_) => tracing::warn!(raft_id = id, "promotion not committed in time; will retry"),
        Ok(Err(e)) => tracing::warn!(raft_id = id, "cannot promote: {e}"),
        Ok(Ok(_)) => {
            tracing::info!(raft_id = id, "promoted to voter");
            node.promote_now.notify_one();
        }
    }
}

/// Before a master stops for a cluster shutdown: waits (at most `limit`) until every voter
/// has the log up to `index`.
pub async fn wait_voters_have(node: &Node, index: u64, limit: Duration) {
    let mut metrics = node.raft.metrics();
    let wait = async {
        loop {
            let done = {
                let m = metrics.borrow_and_update();
                if m.state != ServerState::Leader {
                    return;
                }
                let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
                let matched = m.replication.clone().unwrap_or_default();
                voters
                    .iter()
                    .filter(|v| **v != node.id)
                    .all(|v| matched.get(v).and_then(|l| l.as_ref()).is_some_and(|l| l.index >= index))
            };
            if done || metrics.changed().await.is_err() {
                return;
            }
        }
    };
    if tokio::time::timeout(limit, wait).await.is_err() {
        tracing::warn!(index, "not every voter confirmed the shutdown entry in time; stopping anyway");
    }
}
