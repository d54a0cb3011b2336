//! The group's data types: commands, events, replies, errors, sessions, locks and the
//! cluster's configuration — what the state machine (`super`) takes and gives, and what
//! the codec puts on the wire. No logic of the state machine here.

use serde::{Deserialize, Serialize};

use super::policy::Policy;
use crate::epoch::{Epoch, EpochRecord, NodeInfo};
use crate::namespace::{NamespaceError, VdiEntry};

pub type SessionId = u64;

/// How many events a groupd keeps for watchers that fall behind. Older ones are dropped;
/// a watcher asking for them is told to resynchronise from `info`.
pub const EVENTS_KEPT: usize = 100_000;

pub const DEFAULT_COPIES: u8 = 3;
pub const DEFAULT_OBJECT_SIZE_SHIFT: u8 = 22; // 4 MiB
pub const DEFAULT_VOTERS: u8 = 3;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    pub cluster_id: String,
    pub created_ms: u64,
    pub copies: u8,
    pub object_size_shift: u8,
    pub voters: u8,
    #[serde(default)]
    pub policy: Policy,
}

impl ClusterConfig {
    pub fn object_size(&self) -> u64 {
        1u64 << self.object_size_shift
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterStatus {
    Unformatted,
    Running,
    /// Shut down: waiting until every node of the last epoch has joined again.
    Shutdown,
    /// The last storage node of the epoch left by crashing: no epoch is made without storage
    /// nodes (the newest copies are on the nodes of the last epoch), so the cluster waits for
    /// every node of the last epoch to come back, as after a shutdown, or `recover force`.
    /// Sessions and locks stay; object I/O waits, then fails after its bounded time.
    Halted,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionKind {
    Storage(NodeInfo),
    Client { name: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: SessionId,
    pub kind: SessionKind,
    pub opened_ms: u64,
    /// A storage node whose disk failed: why. The session lives on (the node is shown with
    /// its reason) but the node is out of the data membership: no epoch names it.
    #[serde(default)]
    pub failed: Option<String>,
}

impl Session {
    pub fn node(&self) -> Option<&NodeInfo> {
        match &self.kind {
            SessionKind::Storage(n) => Some(n),
            SessionKind::Client { .. } => None,
        }
    }
    pub fn name(&self) -> String {
        match &self.kind {
            SessionKind::Storage(n) => format!("storaged {}", n.id),
            SessionKind::Client { name } => name.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    pub vdi: String,
    pub session: SessionId,
    /// Fencing token: the position in the total order of the command that granted the lock
    /// ([`Proposal::position`]). Strictly increasing across grants, so a storage node can
    /// refuse an older holder's writes.
    pub token: u64,
}

/// A command: one change of the group state, ordered by the Raft log (several may share an
/// entry: [`Proposal`]). `time_ms` is stamped by the master.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub time_ms: u64,
    pub op: Op,
    /// The client call this is, so that a retried call applies once (`None`: the master's
    /// own commands, and callers that send no id).
    #[serde(default)]
    pub request: Option<RequestId>,
}

impl Command {
    /// A command that no client call names.
    pub fn new(time_ms: u64, op: Op) -> Command {
        Command { time_ms, op, request: None }
    }
}

/// What one Raft log entry carries: the commands the master had waiting when the entry was
/// proposed, applied in their order (group commit: one append, one fsync and one round to the
/// voters for all of them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Proposal {
    Batch {
        batch: Vec<Command>,
    },
    /// An entry of a log written before commands were batched: one command.
    One(Command),
}

/// Commands per log entry, at most.
pub const MAX_BATCH: usize = 256;
/// Positions per log entry: a batch's commands are numbered within its entry.
const POSITIONS_PER_ENTRY: u64 = 1 << 16;
const _: () = assert!(MAX_BATCH as u64 <= POSITIONS_PER_ENTRY);

impl Proposal {
    pub fn commands(&self) -> &[Command] {
        match self {
            Proposal::Batch { batch } => batch,
            Proposal::One(cmd) => std::slice::from_ref(cmd),
        }
    }

    /// The position in the total order of command `i` of this entry at `log_index`: unique and
    /// increasing along the log (what fencing tokens and the request table are made of). An
    /// old single-command entry keeps the position it had when it was first applied (its
    /// index), so a replayed log gives the same state; a batch's are `index << 16 | i`, above
    /// every index, and no single-command entry is written any more.
    pub fn position(&self, log_index: u64, i: usize) -> u64 {
        debug_assert!(i < self.commands().len());
        match self {
            Proposal::One(_) => log_index,
            Proposal::Batch { .. } => log_index.saturating_mul(POSITIONS_PER_ENTRY) | i as u64,
        }
    }
}

/// Names one call of one client: every try of the call carries the same id, and the group
/// applies it at most once (see `group::dedupe`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestId {
    /// Chosen at random by the client when it starts; never 0.
    pub client: u64,
    /// The call's number among the client's calls, from 1.
    pub seq: u64,
    /// The lowest number of the client's calls still waiting for an answer (this one
    /// included): the client sends none of the lower ones again, so their answers may go.
    pub first_pending: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Format {
        cluster_id: String,
        copies: u8,
        object_size_shift: u8,
        voters: u8,
        force: bool,
        #[serde(default)]
        policy: Policy,
    },
    /// `store_cluster`: the cluster id a storage node's store already belongs to ("" if new).
    OpenSession {
        kind: SessionKind,
        store_cluster: String,
    },
    CloseSession {
        session: SessionId,
        expired: bool,
    },
    Broadcast {
        session: SessionId,
        payload: Vec<u8>,
    },
    Lock {
        session: SessionId,
        vdi: String,
    },
    Unlock {
        session: SessionId,
        vdi: String,
        force: bool,
    },
    Shutdown,
    RecoverForce,
    /// `copies` 0: the cluster's default.
    VdiCreate {
        name: String,
        size: u64,
        copies: u8,
        /// More copies than the current epoch has zones are accepted (else refused).
        #[serde(default)]
        allow_fewer_zones: bool,
    },
    /// Deletes the VDI (with its snapshots), or only its snapshot `tag`.
    VdiDelete {
        name: String,
        #[serde(default)]
        tag: Option<String>,
    },
    /// Freezes the working VDI as snapshot `tag`. While the VDI is locked, only the lock's
    /// session may: the holder is the writer, and it snapshots between two of its writes.
    VdiSnapshot {
        session: SessionId,
        name: String,
        tag: String,
    },
    VdiClone {
        name: String,
        tag: String,
        new_name: String,
    },
    /// Refused while the VDI is locked (attached).
    VdiRollback {
        name: String,
        tag: String,
    },
    /// Grows the working VDI.
    VdiResize {
        name: String,
        size: u64,
    },
    /// Sets (`Some`) or deletes (`None`) an attribute; `exclusive`: fail if it exists.
    VdiSetAttr {
        name: String,
        key: String,
        value: Option<Vec<u8>>,
        exclusive: bool,
    },
    /// A storage node holds every object it owns in `epoch`.
    RecoveryDone {
        session: SessionId,
        epoch: Epoch,
    },
    /// A storage node's disk failed (`reason`): it leaves the data membership at once.
    NodeFailed {
        session: SessionId,
        reason: String,
    },
    /// A new client (`sheepctl auth add`).
    AuthAdd {
        name: String,
        caps: crate::auth::caps::Caps,
    },
    /// New capabilities for a client.
    AuthCaps {
        name: String,
        caps: crate::auth::caps::Caps,
    },
    /// Revokes a client.
    AuthRm {
        name: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Formatted(ClusterConfig),
    Joined(Session),
    Left {
        session: SessionId,
        expired: bool,
    },
    Epoch(EpochRecord),
    Broadcast {
        session: SessionId,
        payload: Vec<u8>,
    },
    Locked(Lock),
    Unlocked {
        vdi: String,
        session: SessionId,
        forced: bool,
    },
    Shutdown,
    /// Every storage node left: the cluster waits for the last epoch's (see [`ClusterStatus::Halted`]).
    Halted,
    /// A storage node's disk failed: it left the data membership (a new epoch follows).
    NodeFailed {
        session: SessionId,
        node: String,
        reason: String,
    },
    Resumed,
    VdiCreated(VdiEntry),
    /// The VDI's objects may be removed (nothing reads them any more).
    VdiDeleted(VdiEntry),
    /// Deleted, but a live VDI still reads its objects: they stay.
    VdiRetired(VdiEntry),
    /// `snapshot` is the frozen former working VDI; `working` goes on from it.
    VdiSnapshotted {
        snapshot: VdiEntry,
        working: VdiEntry,
    },
    VdiResized(VdiEntry),
    Recovered {
        node: String,
        epoch: Epoch,
    },
    /// Every node of `epoch` has recovered: stale copies may be purged.
    RecoveryComplete(Epoch),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub time_ms: u64,
    pub kind: EventKind,
}

/// The answer to a command, returned to the proposer once it is applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Done,
    Formatted(ClusterConfig),
    Session(SessionId),
    Seq(u64),
    Locked(Lock),
    Vdi(VdiEntry),
    Snapshot { snapshot: VdiEntry, working: VdiEntry },
    Client(crate::auth::clients::ClientEntry),
}

/// A refused command. Refusals are part of the total order too: every groupd refuses the
/// same command the same way, and the state is unchanged by it. The messages are for people;
/// the wire code of each refusal is given by `sheep_rpc::error`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum GroupError {
    #[error("the cluster is not formatted (run `sheepctl cluster format`)")]
    NotFormatted,
    #[error("the cluster is already formatted (id {0}); use --force to format it anew")]
    AlreadyFormatted(String),
    #[error("this store belongs to cluster {store}, but the cluster is {cluster}; its data is left untouched")]
    WrongCluster { store: String, cluster: String },
    #[error("session {0} does not exist (expired or closed)")]
    NoSession(SessionId),
    #[error("VDI {vdi} is locked by session {session} ({holder})")]
    LockHeld { vdi: String, session: SessionId, holder: String },
    #[error("VDI {vdi} is not locked by session {session}")]
    NotLocked { vdi: String, session: SessionId },
    #[error("the cluster is shut down")]
    ShutDown,
    #[error("{0}")]
    BadRequest(String),
    /// A late copy of a call the client has finished with (its answer came, or it gave up):
    /// refused, so that it never applies after the client moved on.
    #[error("request {seq} of client {client:x} is older than the client's pending calls; it was not applied")]
    StaleRequest { client: u64, seq: u64 },
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    /// The replicated state breaks one of its own invariants (a bug, or a state restored
    /// from a damaged snapshot). Every replica holds the same state, so every replica refuses
    /// the same command this way instead of panicking at the same log index forever.
    #[error("the group state is inconsistent ({what}); the command was refused and changed nothing")]
    Invariant { what: String },
}

impl GroupError {
    /// A refusal caused by a broken invariant of the state, not by the command: worth an
    /// error in the log of whoever applies it.
    pub fn is_invariant(&self) -> bool {
        matches!(self, GroupError::Invariant { .. } | GroupError::Namespace(NamespaceError::Invariant { .. }))
    }
}

impl SessionKind {
    pub fn is_storage(&self) -> bool {
        matches!(self, SessionKind::Storage(_))
    }
}

/// A groupd instance as `info` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMember {
    pub raft_id: u64,
    pub addr: String,
    pub role: MemberRole,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberRole {
    /// The Raft leader: orders every change.
    Master,
    /// A voter ready to take over.
    Submaster,
    /// Non-voting: follows the log, serves reads, forwards writes.
    Member,
}

#[cfg(test)]
mod proposal_tests {
    use super::*;

    fn cmd(t: u64) -> Command {
        Command::new(t, Op::Shutdown)
    }

    #[test]
    fn an_entry_written_before_batching_reads_as_one_command() {
        let old = serde_json::to_vec(&cmd(7)).unwrap();
        let p: Proposal = serde_json::from_slice(&old).unwrap();
        assert_eq!(p, Proposal::One(cmd(7)));
        assert_eq!(p.position(41, 0), 41, "replayed as it was first applied");
    }

    #[test]
    fn a_batch_round_trips_and_its_positions_follow_the_log() {
        let p = Proposal::Batch { batch: vec![cmd(1), cmd(2), cmd(3)] };
        let back: Proposal = serde_json::from_slice(&serde_json::to_vec(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.commands().len(), 3);
        // Unique and increasing along the log, past every old single-command position.
        let full = Proposal::Batch { batch: (0..MAX_BATCH as u64).map(cmd).collect() };
        let mut seen = vec![Proposal::One(cmd(0)).position(1_000, 0)];
        for index in [1_001u64, 1_002, 5_000] {
            for i in 0..MAX_BATCH {
                seen.push(full.position(index, i));
            }
        }
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "positions increase");
    }
}
