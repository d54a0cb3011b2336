//! One groupd: its Raft, its applied state, its connections and (while master) its lease
//! table. State-changing calls go through [`Node::submit`]: committed here if this groupd is
//! the master, forwarded to the master otherwise.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Duration;

use openraft::ServerState;
use sheep_core::group::{ClusterInfo, GroupMember, MemberRole, Op, Reply, RequestId};
use sheep_core::lease::LeaseTable;
use sheep_rpc::error::{self, refusal, ErrorCode};
use sheep_rpc::groupd_capnp::groupd;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::forward::{self, Outcome};
use crate::network::Peers;
use crate::propose::{Failure, Proposer, COMMIT_TIMEOUT};
use crate::state_machine::StateMachine;
use crate::types::{new_cluster_id, now_mono_ms, now_unix_ms, NodeId, Raft};

/// The longest a state-changing call may take here, forwarding and waiting for an election
/// included (below the 5 s call timeout of the project's groupd client, so that it gets a
/// `noMaster` answer and retries rather than a timeout).
pub const SUBMIT_DEADLINE: Duration = Duration::from_millis(4500);
/// After a forwarded write, how long we wait to have applied it here too.
const CATCH_UP: Duration = Duration::from_secs(1);

pub struct Node {
    pub id: NodeId,
    /// This groupd's API address, as others reach it.
    pub addr: String,
    pub raft: Raft,
    /// The master's writes, batched into log entries.
    pub proposer: Proposer,
    pub sm: StateMachine,
    pub peers: Rc<Peers>,
    pub lease_ms: u32,
    /// How long the tickets this groupd gives clients are valid: the bound on a revocation
    /// at storage nodes.
    pub ticket_ms: u32,
    /// A leader whose last acknowledgement by a quorum is older than this (ms) is not trusted
    /// as master.
    pub quorum_ms: u64,
    /// Sessions' last keepalives; meaningful only while master.
    pub leases: RefCell<LeaseTable>,
    /// Raft ids in the order they asked to join (first joiners become voters first).
    pub join_order: RefCell<Vec<NodeId>>,
    /// Wakes the leader loop to look for learners to promote.
    pub promote_now: Notify,
    /// Held during a membership change, so that two never interleave.
    pub membership_changes: tokio::sync::Mutex<()>,
}

/// Where a state-changing call goes.
pub enum Route {
    Local,
    Forward { addr: String, client: groupd::Client },
}

/// Why a local write did not answer.
enum WriteFail {
    /// This groupd is not (or no longer) the leader: route again.
    NotLeader,
    Error(capnp::Error),
}

/// The time left until `deadline` for a forwarded call (at least a little).
pub fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(300))
}

pub fn no_master(msg: impl std::fmt::Display) -> capnp::Error {
    refusal(ErrorCode::NoMaster, msg)
}

impl Node {
    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    /// True if this groupd is the leader and a quorum of voters acknowledged it recently
    /// (a leader cut off from the others must not accept keepalives nor expire sessions).
    pub fn is_leader_with_quorum(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.millis_since_quorum_ack.is_some_and(|ms| ms <= self.quorum_ms)
    }

    /// Finds the master: this groupd, or a connected client of it. Waits for an election or a
    /// reconnection until `deadline`.
    pub async fn route(&self, deadline: Instant) -> Result<Route, capnp::Error> {
        let mut metrics = self.raft.metrics();
        let mut last_problem = "no master is known (an election may be in progress)".to_string();
        loop {
            let (leader, addr, running, quorum) = {
                let m = metrics.borrow_and_update();
                let addr = m
                    .current_leader
                    .and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.addr.clone()));
                let leader = if m.state == ServerState::Leader { Some(self.id) } else { m.current_leader };
                let quorum = m.millis_since_quorum_ack.is_some_and(|ms| ms <= self.quorum_ms);
                (leader, addr, m.running_state.is_ok(), quorum)
            };
            if !running {
                return Err(no_master("this groupd's raft has stopped"));
            }
            match (leader, addr) {
                (Some(l), _) if l == self.id && quorum => return Ok(Route::Local),
                (Some(l), _) if l == self.id => {
                    last_problem = "this groupd is the master but no quorum of voters answers it".into()
                }
                (Some(_), Some(addr)) => match self.peers.client(&addr).await {
                    Ok(client) => return Ok(Route::Forward { addr, client }),
                    Err(e) => last_problem = format!("the master at {addr} is unreachable: {e}"),
                },
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(no_master(last_problem));
            }
            let wait = Duration::from_millis(100).min(deadline.saturating_duration_since(Instant::now()));
            let _ = tokio::time::timeout(wait, metrics.changed()).await;
        }
    }

    /// Orders `op` in the total order (here or at the master) and returns its outcome.
    /// `request`: the client call it is; however often it is submitted (a client's retries,
    /// or ours below after a leadership change), the group applies it once.
    pub async fn submit(&self, op: Op, request: Option<RequestId>) -> Result<Outcome, capnp::Error> {
        let deadline = Instant::now() + SUBMIT_DEADLINE;
        loop {
            match self.route(deadline).await? {
                Route::Local => match self.write_local(op.clone(), request).await {
                    Ok(o) => return Ok(o),
                    Err(WriteFail::Error(e)) => return Err(e),
                    Err(WriteFail::NotLeader) => {
                        if Instant::now() >= deadline {
                            return Err(no_master("leadership changed during the call; no new master yet"));
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Route::Forward { addr, client } => {
                    let before = self.raft.metrics().borrow().last_log_index.unwrap_or(0);
                    let res =
                        tokio::time::timeout(left(deadline), forward::forward(&client, &op, request.as_ref())).await;
                    return match res {
                        Err(_) => Err(no_master(format!("the master at {addr} did not answer in time"))),
                        Ok(Err(e)) => {
                            self.peers.note_error(&addr, &e);
                            Err(forward::relay(e))
                        }
                        Ok(Ok(o)) => {
                            self.catch_up(before).await;
                            Ok(o)
                        }
                    };
                }
            }
        }
    }

    /// Waits (briefly) until this groupd has applied a write it forwarded, so that a read here
    /// right after it sees it. The master answered once a quorum had the entry, which need
    /// not include this groupd: first its log grows past `before` (its last entry when the
    /// write left; the entries the master sends next run up to the write's at least, but for
    /// one already on its way), then what the log holds is applied.
    async fn catch_up(&self, before: u64) {
        let mut metrics = self.raft.metrics();
        let mut applied = self.sm.subscribe_applied();
        let caught_up = async {
            let target = loop {
                let last = metrics.borrow_and_update().last_log_index.unwrap_or(0);
                if last > before {
                    break last;
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            };
            let _ = applied.wait_for(|&a| a >= target).await;
        };
        let _ = tokio::time::timeout(CATCH_UP, caught_up).await;
    }

    /// Commits `op` as the leader.
    async fn write_local(&self, mut op: Op, request: Option<RequestId>) -> Result<Outcome, WriteFail> {
        if let Op::Format { cluster_id, .. } = &mut op {
            if cluster_id.is_empty() {
                *cluster_id = new_cluster_id();
            }
        }
        let is_open = matches!(op, Op::OpenSession { .. });
        let cmd = sheep_core::group::Command { time_ms: now_unix_ms(), op, request };
        let reply = match self.proposer.propose(cmd).await {
            Ok(answer) => answer.map_err(|e| WriteFail::Error(error::group_error(&e)))?,
            Err(Failure::NotLeader) => return Err(WriteFail::NotLeader),
            Err(Failure::Timeout) => {
                return Err(WriteFail::Error(no_master(format!(
                    "the write was not committed within {} s (no quorum of voters?)",
                    COMMIT_TIMEOUT.as_secs()
                ))))
            }
            Err(Failure::Busy) => return Err(WriteFail::Error(no_master("the master has too many writes waiting"))),
            Err(Failure::Raft(e)) => return Err(WriteFail::Error(no_master(format!("raft: {e}")))),
        };
        let mut out = Outcome { reply, lease_ms: self.lease_ms, holder: String::new() };
        if let Reply::Locked(l) = &out.reply {
            out.holder = self.sm.state().sessions.get(&l.session).map(|s| s.name()).unwrap_or_default();
        }
        if is_open {
            // Start the new session's lease now, before its first keepalive.
            let live: Vec<u64> = self.sm.state().sessions.keys().copied().collect();
            self.leases.borrow_mut().sync(live, now_mono_ms());
        }
        Ok(out)
    }

    /// Commits `op` only if this groupd is the master (used by the master's own loops).
    pub async fn write_as_master(&self, op: Op) -> Result<Outcome, capnp::Error> {
        match self.write_local(op, None).await {
            Ok(o) => Ok(o),
            Err(WriteFail::NotLeader) => Err(no_master("this groupd is no longer the master")),
            Err(WriteFail::Error(e)) => Err(e),
        }
    }

    /// A session's keepalive: recorded by the master, forwarded to it by the others.
    pub async fn keepalive(&self, session: u64) -> Result<(), capnp::Error> {
        let deadline = Instant::now() + SUBMIT_DEADLINE;
        match self.route(deadline).await? {
            Route::Local => self.touch(session),
            Route::Forward { addr, client } => {
                let res = tokio::time::timeout(left(deadline), forward::keepalive(&client, session)).await;
                match res {
                    Err(_) => Err(no_master(format!("the master at {addr} did not answer in time"))),
                    Ok(Err(e)) => {
                        self.peers.note_error(&addr, &e);
                        Err(forward::relay(e))
                    }
                    Ok(Ok(())) => Ok(()),
                }
            }
        }
    }

    fn touch(&self, session: u64) -> Result<(), capnp::Error> {
        let now = now_mono_ms();
        let mut leases = self.leases.borrow_mut();
        if leases.touch(session, now) {
            return Ok(());
        }
        // A session the table has not seen yet (just opened, or a new master): sync first.
        let live: Vec<u64> = self.sm.state().sessions.keys().copied().collect();
        leases.sync(live, now);
        if leases.touch(session, now) {
            Ok(())
        } else {
            Err(error::group_error(&sheep_core::group::GroupError::NoSession(session)))
        }
    }

    /// The groupd instances as this groupd sees them.
    pub fn members(&self) -> Vec<GroupMember> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| GroupMember {
                raft_id: *id,
                addr: node.addr.clone(),
                role: if m.current_leader == Some(*id) && voters.contains(id) {
                    MemberRole::Master
                } else if voters.contains(id) {
                    MemberRole::Submaster
                } else {
                    MemberRole::Member
                },
            })
            .collect()
    }

    /// `info`: the applied state, the members and this groupd's address.
    pub fn info(&self) -> ClusterInfo {
        let mut info = self.sm.state().info();
        info.members = self.members();
        info.answered_by = self.addr.clone();
        info
    }
}
