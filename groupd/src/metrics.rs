//! groupd's Prometheus gauges (`sheep_group_…`): this groupd's Raft role and log positions,
//! and the size of the group state it applied. [`follow`] sets them on the event loop each
//! time the Raft metrics or the applied state change; a scrape only reads the atomics.

use std::sync::atomic::AtomicU64;

use openraft::{RaftMetrics, ServerState};
use sheep_core::group::GroupState;
use sheep_metrics::{Family, Gauge, Labels, Registry};

use crate::state_machine::StateMachine;
use crate::types::{Node, NodeId, Raft};

/// Counts and positions are u64 in groupd, so their gauges are too (no casts).
type U64Gauge = Gauge<u64, AtomicU64>;

/// Every state openraft has, with its `role` label: all five series are always present, so
/// a query sees a 0 rather than no series for the states this groupd is not in.
const ROLES: [(ServerState, &str); 5] = [
    (ServerState::Leader, "leader"),
    (ServerState::Follower, "follower"),
    (ServerState::Candidate, "candidate"),
    (ServerState::Learner, "learner"),
    (ServerState::Shutdown, "shutdown"),
];

/// The gauges, registered once; clones share the same atomics.
#[derive(Clone)]
pub struct GroupMetrics {
    /// One gauge per entry of [`ROLES`], looked up once so that an update takes no lock on
    /// the family.
    roles: [Gauge; 5],
    term: U64Gauge,
    /// openraft 0.9's metrics have no commit index: this is the last *applied* log index,
    /// which is committed, and trails the commit index by the entries still being applied.
    commit_index: U64Gauge,
    last_log_index: U64Gauge,
    applied_seq: U64Gauge,
    epoch: U64Gauge,
    sessions: U64Gauge,
    locks: U64Gauge,
    storage_nodes: U64Gauge,
    members: U64Gauge,
}

impl GroupMetrics {
    pub fn register(registry: &mut Registry) -> GroupMetrics {
        let role_family = Family::<Labels, Gauge>::default();
        let roles = ROLES.map(|(_, role)| role_family.get_or_create(&vec![("role", role.to_string())]).clone());
        let metrics = GroupMetrics {
            roles,
            term: U64Gauge::default(),
            commit_index: U64Gauge::default(),
            last_log_index: U64Gauge::default(),
            applied_seq: U64Gauge::default(),
            epoch: U64Gauge::default(),
            sessions: U64Gauge::default(),
            locks: U64Gauge::default(),
            storage_nodes: U64Gauge::default(),
            members: U64Gauge::default(),
        };
        let group = registry.sub_registry_with_prefix("group");
        group.register("role", "This groupd's Raft state: 1 for the one it is in, 0 for the others", role_family);
        group.register("term", "This groupd's current Raft term", metrics.term.clone());
        group.register(
            "commit_index",
            "The last Raft log index this groupd applied (committed; openraft 0.9 reports no commit index)",
            metrics.commit_index.clone(),
        );
        group.register(
            "last_log_index",
            "The last Raft log index in this groupd's log",
            metrics.last_log_index.clone(),
        );
        group.register(
            "applied_seq",
            "Sequence number of the last event of the group state this groupd applied (info's applied_seq)",
            metrics.applied_seq.clone(),
        );
        group.register("epoch", "The current epoch in the applied group state (0: none yet)", metrics.epoch.clone());
        group.register("sessions", "Sessions open in the applied group state", metrics.sessions.clone());
        group.register("locks", "VDI locks held in the applied group state", metrics.locks.clone());
        group.register("storage_nodes", "Storage nodes in the current epoch", metrics.storage_nodes.clone());
        group.register("members", "groupd instances in the Raft membership this groupd knows", metrics.members.clone());
        metrics
    }

    /// Sets every gauge from `raft` and the applied `state`: constant work (counts of maps
    /// and vectors), so it may run on every change.
    pub fn update(&self, raft: &RaftMetrics<NodeId, Node>, state: &GroupState) {
        for ((role, _), gauge) in ROLES.iter().zip(&self.roles) {
            gauge.set(i64::from(*role == raft.state));
        }
        self.term.set(raft.current_term);
        self.commit_index.set(raft.last_applied.map_or(0, |l| l.index));
        self.last_log_index.set(raft.last_log_index.unwrap_or(0));
        // As `info` reports it: events are numbered from 1, so 0 is "none applied".
        self.applied_seq.set(state.next_seq().saturating_sub(1));
        self.epoch.set(u64::from(state.epochs.current()));
        self.sessions.set(state.sessions.len() as u64);
        self.locks.set(state.locks.len() as u64);
        self.storage_nodes.set(state.epochs.latest().map_or(0, |r| r.nodes.len() as u64));
        self.members.set(raft.membership_config.nodes().count() as u64);
    }
}

/// Keeps `metrics` current until Raft stops. Driven by two watches rather than a timer: the
/// Raft metrics (term, role, log and applied positions, membership) and the state machine's
/// applied index, which moves with every apply and snapshot install as soon as the state has
/// changed, so a new session or lock shows at once whenever openraft reports its metrics.
pub async fn follow(metrics: GroupMetrics, raft: Raft, sm: StateMachine) {
    let mut raft_metrics = raft.metrics();
    let mut applied = sm.subscribe_applied();
    loop {
        {
            // Both borrows end before the await: neither watch nor the state is held across it.
            let m = raft_metrics.borrow_and_update();
            applied.mark_unchanged();
            metrics.update(&m, &sm.state());
        }
        tokio::select! {
            r = raft_metrics.changed() => if r.is_err() { break },
            r = applied.changed() => if r.is_err() { break },
        }
    }
    // Raft is gone: say so rather than leave its last role standing.
    let mut last = raft_metrics.borrow().clone();
    last.state = ServerState::Shutdown;
    metrics.update(&last, &sm.state());
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use sheep_core::epoch::NodeInfo;
    use sheep_core::group::{Command, Op, Reply, SessionKind};

    use super::*;

    fn registered() -> (Registry, GroupMetrics) {
        let mut registry = sheep_metrics::daemon_registry("groupd");
        let metrics = GroupMetrics::register(&mut registry);
        (registry, metrics)
    }

    fn line(text: &str, series: &str) -> Option<u64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn exactly_the_current_role_is_one() {
        let (registry, metrics) = registered();
        for (state, name) in ROLES {
            let mut raft = RaftMetrics::new_initial(1);
            raft.state = state;
            metrics.update(&raft, &GroupState::default());
            let text = sheep_metrics::encode(&registry);
            for (_, other) in ROLES {
                let value = line(&text, &format!("sheep_group_role{{role=\"{other}\"}}"));
                assert_eq!(value, Some(u64::from(other == name)), "in {name}, role {other}:\n{text}");
            }
        }
    }

    #[test]
    fn an_update_sets_every_gauge_from_raft_and_the_applied_state() {
        let (registry, metrics) = registered();
        let mut state = GroupState::default();
        // Positions 1, 2, … as the log would give them.
        let mut position = 0;
        let mut apply = |op: Op| {
            position += 1;
            state.apply(position, &Command::new(position * 10, op))
        };
        let format = Op::Format {
            cluster_id: "c1".into(),
            copies: 1,
            object_size_shift: 22,
            voters: 1,
            force: false,
            policy: Default::default(),
        };
        assert!(matches!(apply(format), Ok(Reply::Formatted(_))));
        let node = NodeInfo { id: "127.0.0.1:7001".into(), addr: "127.0.0.1:7001".into(), zone: 1, weight: 1 };
        let storage = Op::OpenSession { kind: SessionKind::Storage(node), store_cluster: String::new() };
        assert!(matches!(apply(storage), Ok(Reply::Session(_))));
        let open = Op::OpenSession { kind: SessionKind::Client { name: "a".into() }, store_cluster: String::new() };
        let Ok(Reply::Session(session)) = apply(open) else { panic!("no session") };
        assert!(matches!(apply(Op::Lock { session, vdi: "v".into() }), Ok(Reply::Locked(_))));

        let mut raft = RaftMetrics::new_initial(7);
        raft.state = ServerState::Leader;
        raft.current_term = 3;
        raft.last_log_index = Some(12);
        raft.last_applied = Some(openraft::testing::log_id(3, 7, 11));
        let nodes = BTreeMap::from([(7, Node::new("127.0.0.1:1")), (8, Node::new("127.0.0.1:2"))]);
        let membership = openraft::Membership::new(vec![BTreeSet::from([7])], nodes);
        raft.membership_config = std::sync::Arc::new(openraft::StoredMembership::new(None, membership));
        metrics.update(&raft, &state);

        let text = sheep_metrics::encode(&registry);
        let expect = [
            ("sheep_group_role{role=\"leader\"}", 1),
            ("sheep_group_term", 3),
            ("sheep_group_commit_index", 11),
            ("sheep_group_last_log_index", 12),
            ("sheep_group_applied_seq", state.info().applied_seq),
            // The format's epoch 1 had no node; the storage node's join made epoch 2.
            ("sheep_group_epoch", 2),
            ("sheep_group_sessions", 2),
            ("sheep_group_locks", 1),
            ("sheep_group_storage_nodes", 1),
            ("sheep_group_members", 2),
        ];
        for (series, value) in expect {
            assert_eq!(line(&text, series), Some(value), "{series}:\n{text}");
        }
        assert!(state.info().applied_seq > 0, "the format, joins and lock were events");
    }
}
