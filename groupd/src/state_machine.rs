//! The Raft state machine: [`GroupState`] in memory, rebuilt at start from the last snapshot
//! (file `snapshot.bin` in the data directory) plus the committed log entries after it.
//!
//! `snapshot.bin`: `[meta length u32 LE][crc32 of the rest u32 LE][meta JSON][state JSON]`,
//! written atomically and durably before openraft may purge the log behind it.

use std::cell::{Ref, RefCell};
use std::fs;
use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};
use sheep_core::group::{Command, GroupState, Op, Reply};
use tokio::sync::watch;

use crate::log_store::write_durably;
use crate::types::{
    now_unix_ms, random_u64, Answer, Answers, Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

const SNAPSHOT_FILE: &str = "snapshot.bin";
/// A Shutdown entry older than this when it is applied does not stop this groupd (it is an
/// old one this groupd is catching up on, not a shutdown in progress).
const SHUTDOWN_FRESH_MS: u64 = 60_000;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SmData {
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
    pub state: GroupState,
}

struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

struct Inner {
    dir: PathBuf,
    data: RefCell<SmData>,
    snapshot: RefCell<Option<StoredSnapshot>>,
    /// The state's next event sequence number, for long-polling watchers.
    seq_tx: watch::Sender<u64>,
    /// The log index of the last applied entry, for waiters.
    applied_tx: watch::Sender<u64>,
    /// Set to the log index of a Shutdown entry applied while running.
    shutdown_tx: watch::Sender<Option<u64>>,
    /// Entries up to this index were on disk at start: applying them is a replay.
    replay_upto: u64,
}

/// The state machine handle; clones share one state.
#[derive(Clone)]
pub struct StateMachine {
    inner: Rc<Inner>,
}

fn encode_snapshot(meta: &SnapshotMeta, data: &[u8]) -> io::Result<Vec<u8>> {
    let meta_json = serde_json::to_vec(meta).map_err(io::Error::other)?;
    let mut h = crc32fast::Hasher::new();
    h.update(&meta_json);
    h.update(data);
    let mut out = Vec::with_capacity(8 + meta_json.len() + data.len());
    out.extend_from_slice(&(meta_json.len() as u32).to_le_bytes());
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(&meta_json);
    out.extend_from_slice(data);
    Ok(out)
}

fn decode_snapshot(bytes: &[u8]) -> Result<(SnapshotMeta, Vec<u8>), String> {
    if bytes.len() < 8 {
        return Err("too short".into());
    }
    let meta_len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let rest = &bytes[8..];
    if meta_len > rest.len() || crc32fast::hash(rest) != crc {
        return Err("checksum mismatch".into());
    }
    let meta: SnapshotMeta = serde_json::from_slice(&rest[..meta_len]).map_err(|e| e.to_string())?;
    Ok((meta, rest[meta_len..].to_vec()))
}

impl StateMachine {
    /// Loads the last snapshot from `dir`, if any. `replay_upto`: the last log index on disk
    /// at start (applying entries up to it never triggers a shutdown).
    pub fn open(dir: &Path, replay_upto: u64) -> anyhow::Result<StateMachine> {
        let path = dir.join(SNAPSHOT_FILE);
        let (data, snapshot) = match fs::read(&path) {
            Ok(bytes) => {
                let (meta, data) = decode_snapshot(&bytes)
                    .map_err(|e| anyhow::anyhow!("snapshot {} is corrupt: {e}", path.display()))?;
                let mut sm: SmData = serde_json::from_slice(&data)
                    .map_err(|e| anyhow::anyhow!("snapshot {} is corrupt: {e}", path.display()))?;
                sm.last_applied = meta.last_log_id;
                sm.last_membership = meta.last_membership.clone();
                (sm, Some(StoredSnapshot { meta, data }))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (SmData::default(), None),
            Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        };
        let next_seq = data.state.next_seq();
        let applied = data.last_applied.map_or(0, |l| l.index);
        Ok(StateMachine {
            inner: Rc::new(Inner {
                dir: dir.to_path_buf(),
                data: RefCell::new(data),
                snapshot: RefCell::new(snapshot),
                seq_tx: watch::Sender::new(next_seq),
                applied_tx: watch::Sender::new(applied),
                shutdown_tx: watch::Sender::new(None),
                replay_upto,
            }),
        })
    }

    /// The applied group state. Do not hold it across an await.
    pub fn state(&self) -> Ref<'_, GroupState> {
        Ref::map(self.inner.data.borrow(), |d| &d.state)
    }

    /// Watches the state's next event sequence number.
    pub fn subscribe_seq(&self) -> watch::Receiver<u64> {
        self.inner.seq_tx.subscribe()
    }

    /// Watches the index of the last applied log entry.
    pub fn subscribe_applied(&self) -> watch::Receiver<u64> {
        self.inner.applied_tx.subscribe()
    }

    /// Becomes `Some(log index)` when a cluster shutdown is applied while running.
    pub fn subscribe_shutdown(&self) -> watch::Receiver<Option<u64>> {
        self.inner.shutdown_tx.subscribe()
    }

    fn publish(&self) {
        let d = self.inner.data.borrow();
        // Sessions accepted and opened from now on are encrypted if the cluster says so.
        sheep_rpc::transport::set_cluster_secure(d.state.config.as_ref().is_some_and(|c| c.policy.secure));
        // The clients' keys this groupd takes (an `auth rm` refuses the next handshake).
        sheep_rpc::transport::set_known_clients(d.state.clients.values().map(|c| (c.name.clone(), c.generation)));
        let seq = d.state.next_seq();
        let applied = d.last_applied.map_or(0, |l| l.index);
        drop(d);
        self.inner.seq_tx.send_if_modified(|s| std::mem::replace(s, seq) != seq);
        self.inner.applied_tx.send_if_modified(|a| std::mem::replace(a, applied) != applied);
    }

    fn apply_one(&self, entry: Entry) -> Answers {
        let mut d = self.inner.data.borrow_mut();
        d.last_applied = Some(entry.log_id);
        match entry.payload {
            EntryPayload::Blank => vec![Ok(Reply::Done)],
            EntryPayload::Membership(m) => {
                d.last_membership = StoredMembership::new(Some(entry.log_id), m);
                vec![Ok(Reply::Done)]
            }
            EntryPayload::Normal(proposal) => {
                let index = entry.log_id.index;
                let cmds = proposal.commands();
                let mut answers = Vec::with_capacity(cmds.len());
                for (i, cmd) in cmds.iter().enumerate() {
                    answers.push(self.apply_command(&mut d.state, index, proposal.position(index, i), cmd));
                }
                answers
            }
        }
    }

    /// One command of the entry at `index`, at `position` in the total order.
    fn apply_command(&self, state: &mut GroupState, index: u64, position: u64, cmd: &Command) -> Answer {
        // A retried shutdown is answered from the record: the shutdown it names was applied
        // (and acted on) when it first came.
        let retry = state.is_retry(cmd);
        let answer = state.apply(position, cmd);
        if let Err(e) = &answer {
            if e.is_invariant() {
                // Refused alike by every groupd, with nothing changed: the cluster goes on,
                // but the state needs a look.
                tracing::error!(index, position, command = %command_for_log(cmd), "command refused: {e}");
            }
        }
        if matches!(cmd.op, Op::Shutdown) && answer.is_ok() && !retry {
            let age = now_unix_ms().saturating_sub(cmd.time_ms);
            if index > self.inner.replay_upto && age < SHUTDOWN_FRESH_MS {
                tracing::info!(index, "cluster shutdown applied");
                self.inner.shutdown_tx.send_replace(Some(index));
            } else {
                tracing::info!(index, age_ms = age, "an old cluster shutdown entry replayed; staying up");
            }
        }
        answer
    }
}

/// A command as the log shows it: its Debug form, cut short (an attribute value or a
/// broadcast payload can be large).
fn command_for_log(cmd: &Command) -> String {
    const MAX_CHARS: usize = 500;
    let mut text = format!("{cmd:?}");
    if let Some((cut, _)) = text.char_indices().nth(MAX_CHARS) {
        text.truncate(cut);
        text.push('…');
    }
    text
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (meta, data) = {
            let d = self.inner.data.borrow();
            let data = serde_json::to_vec(&*d).map_err(|e| StorageIOError::read_state_machine(&e))?;
            let snapshot_id = match d.last_applied {
                Some(l) => format!("{}-{}-{:x}", l.leader_id, l.index, random_u64()),
                None => format!("--{:x}", random_u64()),
            };
            let meta =
                SnapshotMeta { last_log_id: d.last_applied, last_membership: d.last_membership.clone(), snapshot_id };
            (meta, data)
        };
        let bytes = encode_snapshot(&meta, &data).map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        write_durably(&self.inner.dir, SNAPSHOT_FILE, &bytes)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        tracing::info!(last_log_id = ?meta.last_log_id, bytes = bytes.len(), "snapshot written");
        *self.inner.snapshot.borrow_mut() = Some(StoredSnapshot { meta: meta.clone(), data: data.clone() });
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let d = self.inner.data.borrow();
        Ok((d.last_applied, d.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Answers>, StorageError>
    where
        I: IntoIterator<Item = Entry>,
    {
        let answers: Vec<Answers> = entries.into_iter().map(|e| self.apply_one(e)).collect();
        self.publish();
        Ok(answers)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let mut sm: SmData =
            serde_json::from_slice(&data).map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        sm.last_applied = meta.last_log_id;
        sm.last_membership = meta.last_membership.clone();
        let bytes = encode_snapshot(meta, &data).map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        write_durably(&self.inner.dir, SNAPSHOT_FILE, &bytes)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        tracing::info!(last_log_id = ?meta.last_log_id, "snapshot installed from the leader");
        *self.inner.data.borrow_mut() = sm;
        *self.inner.snapshot.borrow_mut() = Some(StoredSnapshot { meta: meta.clone(), data });
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self
            .inner
            .snapshot
            .borrow()
            .as_ref()
            .map(|s| Snapshot { meta: s.meta.clone(), snapshot: Box::new(Cursor::new(s.data.clone())) }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::log_id;
    use sheep_core::group::{ClusterStatus, GroupError, Proposal};

    use super::*;

    fn batch(cmd: Command) -> Proposal {
        Proposal::Batch { batch: vec![cmd] }
    }

    fn normal(index: u64, op: Op) -> Entry {
        Entry { log_id: log_id(1, 1, index), payload: EntryPayload::Normal(batch(Command::new(now_unix_ms(), op))) }
    }

    fn format_op() -> Op {
        Op::Format {
            cluster_id: "c1".into(),
            copies: 3,
            object_size_shift: 22,
            voters: 3,
            force: false,
            policy: Default::default(),
        }
    }

    #[tokio::test]
    async fn snapshot_round_trips_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path(), 0).unwrap();
        let answers = sm.apply(vec![normal(1, format_op())]).await.unwrap().concat();
        assert!(matches!(answers[0], Ok(Reply::Formatted(_))));
        assert_eq!(*sm.subscribe_applied().borrow(), 1);
        sm.build_snapshot().await.unwrap();
        let mut again = StateMachine::open(dir.path(), 1).unwrap();
        assert_eq!(again.state().status, ClusterStatus::Running);
        assert_eq!(again.applied_state().await.unwrap().0, Some(log_id(1, 1, 1)));
        assert!(again.get_current_snapshot().await.unwrap().is_some());
    }

    #[tokio::test]
    async fn shutdown_triggers_only_for_new_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path(), 2).unwrap();
        let rx = sm.subscribe_shutdown();
        sm.apply(vec![normal(1, format_op()), normal(2, Op::Shutdown)]).await.unwrap();
        assert_eq!(*rx.borrow(), None, "a replayed shutdown does not stop groupd");
        let mut sm = StateMachine::open(dir.path(), 0).unwrap();
        let rx = sm.subscribe_shutdown();
        sm.apply(vec![normal(1, format_op()), normal(2, Op::Shutdown)]).await.unwrap();
        assert_eq!(*rx.borrow(), Some(2));
    }

    #[tokio::test]
    async fn a_batch_is_applied_in_order_with_one_answer_and_one_position_per_command() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path(), 0).unwrap();
        let open = Op::OpenSession {
            kind: sheep_core::group::SessionKind::Client { name: "a".into() },
            store_cluster: String::new(),
        };
        let answers = sm.apply(vec![normal(1, format_op()), normal(2, open)]).await.unwrap().concat();
        let Ok(Reply::Session(s)) = answers[1] else { panic!("{answers:?}") };
        let lock = || Command::new(now_unix_ms(), Op::Lock { session: s, vdi: "v".into() });
        let unlock = Command::new(now_unix_ms(), Op::Unlock { session: s, vdi: "v".into(), force: false });
        // An entry of a log written before batching: its lock's token is its index.
        let old = Entry { log_id: log_id(1, 1, 3), payload: EntryPayload::Normal(Proposal::One(lock())) };
        let batched = Entry {
            log_id: log_id(1, 1, 4),
            payload: EntryPayload::Normal(Proposal::Batch { batch: vec![unlock.clone(), lock(), unlock, lock()] }),
        };
        let answers = sm.apply(vec![old, batched]).await.unwrap();
        assert_eq!(answers.iter().map(Vec::len).collect::<Vec<_>>(), [1, 4], "{answers:?}");
        let token = |a: &Answer| match a {
            Ok(Reply::Locked(l)) => l.token,
            other => panic!("not a lock: {other:?}"),
        };
        let tokens = [token(&answers[0][0]), token(&answers[1][1]), token(&answers[1][3])];
        assert_eq!(tokens[0], 3);
        assert!(
            tokens.windows(2).all(|w| w[0] < w[1]),
            "two grants in one entry get distinct, newer tokens: {tokens:?}"
        );
        assert!(matches!(answers[1][0], Ok(Reply::Done)) && matches!(answers[1][2], Ok(Reply::Done)));
        assert_eq!(*sm.subscribe_applied().borrow(), 4);
    }

    #[tokio::test]
    async fn a_command_refused_for_a_broken_invariant_is_answered_and_applied_past() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path(), 0).unwrap();
        let client = |name: &str| Op::OpenSession {
            kind: sheep_core::group::SessionKind::Client { name: name.into() },
            store_cluster: String::new(),
        };
        sm.apply(vec![normal(1, format_op()), normal(2, client("a"))]).await.unwrap();
        // Damage the state as a damaged snapshot would: the next session id is in use.
        let damaged = {
            let mut v = serde_json::to_value(&*sm.state()).unwrap();
            v["next_session"] = serde_json::json!(1);
            serde_json::from_value::<GroupState>(v).unwrap()
        };
        sm.inner.data.borrow_mut().state = damaged;
        let answers = sm.apply(vec![normal(3, client("b")), normal(4, Op::Shutdown)]).await.unwrap().concat();
        assert!(matches!(&answers[0], Err(GroupError::Invariant { .. })), "{answers:?}");
        assert!(matches!(answers[1], Ok(Reply::Done)), "the next entry applies: {answers:?}");
        assert_eq!(*sm.subscribe_applied().borrow(), 4);
    }

    /// An entry naming client call `seq` of client 5.
    fn call(index: u64, op: Op, seq: u64) -> Entry {
        let request = Some(sheep_core::group::RequestId { client: 5, seq, first_pending: seq });
        Entry {
            log_id: log_id(1, 1, index),
            payload: EntryPayload::Normal(batch(Command { time_ms: now_unix_ms(), op, request })),
        }
    }

    #[tokio::test]
    async fn retries_are_answered_from_the_snapshot_and_a_retried_shutdown_stops_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path(), 0).unwrap();
        let create = Op::VdiCreate { name: "v".into(), size: 1 << 20, copies: 0, allow_fewer_zones: false };
        let first = sm.apply(vec![normal(1, format_op()), call(2, create.clone(), 1)]).await.unwrap().concat();
        assert!(matches!(first[1], Ok(Reply::Vdi(_))), "{first:?}");
        sm.build_snapshot().await.unwrap();
        // Restarted from the snapshot, the retry (at a later log position) answers the same.
        let mut sm = StateMachine::open(dir.path(), 2).unwrap();
        let retry = sm.apply(vec![call(3, create, 1)]).await.unwrap().concat();
        assert_eq!(retry[0], first[1]);
        assert_eq!(sm.state().vdis.list().count(), 1);
        let shutdown = sm.apply(vec![call(4, Op::Shutdown, 2)]).await.unwrap().concat();
        assert!(matches!(shutdown[0], Ok(Reply::Done)));
        assert_eq!(*sm.subscribe_shutdown().borrow(), Some(4));
        sm.build_snapshot().await.unwrap();
        let mut sm = StateMachine::open(dir.path(), 4).unwrap();
        let rx = sm.subscribe_shutdown();
        let retry = sm.apply(vec![call(5, Op::Shutdown, 2)]).await.unwrap().concat();
        assert!(matches!(retry[0], Ok(Reply::Done)), "answered as the first try: {retry:?}");
        assert_eq!(*rx.borrow(), None, "the shutdown was acted on when it first came");
    }

    #[test]
    fn long_commands_are_cut_short_in_the_log() {
        let cmd = Command::new(1, Op::Broadcast { session: 1, payload: vec![7; 10_000] });
        let text = command_for_log(&cmd);
        assert!(text.starts_with("Command { time_ms: 1, op: Broadcast"), "{text}");
        assert_eq!(text.chars().count(), 501);
    }

    #[test]
    fn a_corrupt_snapshot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SNAPSHOT_FILE), b"0123456789").unwrap();
        let err = StateMachine::open(dir.path(), 0).err().expect("must fail");
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
}
