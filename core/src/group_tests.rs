//! The group state machine, driven by commands as the log would deliver them.

use super::*;
use crate::namespace::NamespaceError;

fn node(i: u32) -> NodeInfo {
    NodeInfo { id: format!("127.0.0.{i}:7001"), addr: format!("127.0.0.{i}:7001"), zone: i, weight: 1 }
}

/// Applies commands with increasing log indexes and times, like a Raft log would.
struct Log {
    state: GroupState,
    index: u64,
}

impl Log {
    fn new() -> Self {
        Log { state: GroupState::default(), index: 0 }
    }

    fn apply(&mut self, op: Op) -> Result<Reply, GroupError> {
        self.index += 1;
        let cmd = Command::new(self.index * 10, op);
        self.state.apply(self.index, &cmd)
    }

    fn format(&mut self) -> ClusterConfig {
        match self.apply(Op::Format {
            cluster_id: "abc".into(),
            copies: 3,
            object_size_shift: 22,
            voters: 3,
            force: false,
            // These tests join fewer nodes (zones) than copies.
            policy: Policy { allow_fewer_zones: true, ..Policy::default() },
        }) {
            Ok(Reply::Formatted(c)) => c,
            other => panic!("format: {other:?}"),
        }
    }

    fn join(&mut self, i: u32) -> SessionId {
        self.join_store(i, "").expect("join")
    }

    fn join_store(&mut self, i: u32, store: &str) -> Result<SessionId, GroupError> {
        match self.apply(Op::OpenSession { kind: SessionKind::Storage(node(i)), store_cluster: store.into() })? {
            Reply::Session(id) => Ok(id),
            other => panic!("join: {other:?}"),
        }
    }

    fn client(&mut self, name: &str) -> SessionId {
        match self
            .apply(Op::OpenSession { kind: SessionKind::Client { name: name.into() }, store_cluster: String::new() })
        {
            Ok(Reply::Session(id)) => id,
            other => panic!("client: {other:?}"),
        }
    }

    fn leave(&mut self, session: SessionId, expired: bool) {
        self.apply(Op::CloseSession { session, expired }).expect("leave");
    }

    fn epoch_nodes(&self) -> Vec<String> {
        self.state.epochs.latest().map(|e| e.nodes.iter().map(|n| n.id.clone()).collect()).unwrap_or_default()
    }
}

#[test]
fn format_makes_epoch_one_of_the_nodes_present() {
    let mut log = Log::new();
    log.join(1);
    log.join(2);
    assert_eq!(log.state.epochs.current(), 0, "no epoch before format");
    let c = log.format();
    assert_eq!(c.cluster_id, "abc");
    assert_eq!(log.state.status, ClusterStatus::Running);
    assert_eq!(log.state.epochs.current(), 1);
    assert_eq!(log.epoch_nodes().len(), 2);
}

#[test]
fn format_twice_needs_force_and_restarts_the_history() {
    let mut log = Log::new();
    log.format();
    log.join(1);
    assert_eq!(log.state.epochs.current(), 2);
    let again = log.apply(Op::Format {
        cluster_id: "def".into(),
        copies: 2,
        object_size_shift: 22,
        voters: 3,
        force: false,
        policy: Default::default(),
    });
    assert_eq!(again, Err(GroupError::AlreadyFormatted("abc".into())));
    assert_eq!(log.state.config.as_ref().unwrap().cluster_id, "abc", "a refused format changes nothing");
    log.apply(Op::Format {
        cluster_id: "def".into(),
        copies: 2,
        object_size_shift: 22,
        voters: 3,
        force: true,
        policy: Policy { allow_fewer_zones: true, ..Policy::default() },
    })
    .unwrap();
    assert_eq!(log.state.config.as_ref().unwrap().copies, 2);
    assert_eq!(log.state.epochs.current(), 1);
    assert_eq!(log.epoch_nodes(), vec![node(1).id]);
}

#[test]
fn format_refuses_bad_parameters() {
    let mut log = Log::new();
    for (copies, shift, voters) in [(0, 22, 3), (3, 12, 3), (3, 40, 3), (3, 22, 4)] {
        let r = log.apply(Op::Format {
            cluster_id: "x".into(),
            copies,
            object_size_shift: shift,
            voters,
            force: false,
            policy: Default::default(),
        });
        assert!(matches!(r, Err(GroupError::BadRequest(_))), "{copies} {shift} {voters}: {r:?}");
    }
    assert_eq!(log.state.status, ClusterStatus::Unformatted);
}

#[test]
fn every_join_and_leave_makes_one_new_epoch() {
    let mut log = Log::new();
    log.format();
    let a = log.join(1);
    let _b = log.join(2);
    let _c = log.join(3);
    assert_eq!(log.state.epochs.current(), 4, "empty epoch 1 at format, then one per join");
    log.leave(a, true);
    assert_eq!(log.state.epochs.current(), 5);
    assert_eq!(log.epoch_nodes(), vec![node(2).id, node(3).id]);
    log.join(1);
    assert_eq!(log.state.epochs.current(), 6);
    assert_eq!(log.epoch_nodes().len(), 3);
    // A client session is no membership change.
    log.client("ctl");
    assert_eq!(log.state.epochs.current(), 6);
}

#[test]
fn a_restarted_node_replaces_its_old_session_in_one_epoch() {
    let mut log = Log::new();
    log.format();
    let old = log.join(1);
    let before = log.state.epochs.current();
    let new = log.join(1);
    assert_ne!(old, new);
    assert!(!log.state.sessions.contains_key(&old));
    assert_eq!(log.state.epochs.current(), before, "same node list: no new epoch");
}

#[test]
fn foreign_store_is_refused_and_nothing_changes() {
    let mut log = Log::new();
    log.format();
    let before = log.state.clone();
    let r = log.join_store(1, "other");
    assert!(matches!(r, Err(GroupError::WrongCluster { .. })), "{r:?}");
    assert_eq!(log.state, before);
    assert!(log.join_store(2, "abc").is_ok(), "own cluster id is welcome");
}

#[test]
fn a_store_with_an_id_cannot_join_an_unformatted_cluster() {
    let mut log = Log::new();
    assert!(matches!(log.join_store(1, "old"), Err(GroupError::WrongCluster { .. })));
}

#[test]
fn events_are_numbered_without_gaps() {
    let mut log = Log::new();
    log.format();
    let s = log.join(1);
    log.client("x");
    log.apply(Op::Broadcast { session: s, payload: b"hi".to_vec() }).unwrap();
    let events = log.state.events_from(1, 100).unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert_eq!(log.state.next_seq(), seqs.len() as u64 + 1);
    assert_eq!(log.state.events_from(3, 2).unwrap().iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4]);
    assert!(log.state.events_from(log.state.next_seq(), 10).unwrap().is_empty());
}

#[test]
fn old_events_are_dropped_beyond_the_bound() {
    let mut log = Log::new();
    let s = log.client("x");
    for _ in 0..EVENTS_KEPT + 10 {
        log.apply(Op::Broadcast { session: s, payload: vec![] }).unwrap();
    }
    assert!(log.state.events_from(1, 1).is_err());
    let oldest = log.state.next_seq() - EVENTS_KEPT as u64;
    assert_eq!(log.state.events_from(oldest, 1).unwrap()[0].seq, oldest);
}

#[test]
fn broadcast_needs_a_live_session() {
    let mut log = Log::new();
    assert_eq!(log.apply(Op::Broadcast { session: 9, payload: vec![] }), Err(GroupError::NoSession(9)));
}

#[test]
fn locks_are_exclusive_fenced_and_released_with_the_session() {
    let mut log = Log::new();
    log.format();
    let a = log.client("a");
    let b = log.client("b");
    let la = match log.apply(Op::Lock { session: a, vdi: "v".into() }) {
        Ok(Reply::Locked(l)) => l,
        other => panic!("{other:?}"),
    };
    assert_eq!(la.token, log.index, "token is the granting log index");
    assert!(matches!(log.apply(Op::Lock { session: b, vdi: "v".into() }), Err(GroupError::LockHeld { .. })));
    assert!(matches!(
        log.apply(Op::Unlock { session: b, vdi: "v".into(), force: false }),
        Err(GroupError::NotLocked { .. })
    ));
    log.leave(a, true);
    let lb = match log.apply(Op::Lock { session: b, vdi: "v".into() }) {
        Ok(Reply::Locked(l)) => l,
        other => panic!("{other:?}"),
    };
    assert!(lb.token > la.token, "tokens only grow");
    log.apply(Op::Unlock { session: a, vdi: "v".into(), force: true }).unwrap();
    assert!(log.state.locks.is_empty());
}

#[test]
fn shutdown_then_every_node_back_resumes_in_the_same_epoch() {
    let mut log = Log::new();
    log.format();
    for i in 1..=3 {
        log.join(i);
    }
    let epoch = log.state.epochs.current();
    log.apply(Op::Shutdown).unwrap();
    assert_eq!(log.state.status, ClusterStatus::Shutdown);
    assert!(log.state.sessions.is_empty());
    assert_eq!(log.state.missing_nodes().len(), 3);
    // Back in another order.
    log.join(3);
    log.join(1);
    assert_eq!(log.state.status, ClusterStatus::Shutdown);
    assert_eq!(log.state.missing_nodes(), vec![node(2)]);
    log.join(2);
    assert_eq!(log.state.status, ClusterStatus::Running);
    assert_eq!(log.state.epochs.current(), epoch, "a plain restart makes no epoch");
}

#[test]
fn recover_force_goes_on_without_the_missing() {
    let mut log = Log::new();
    log.format();
    for i in 1..=3 {
        log.join(i);
    }
    let epoch = log.state.epochs.current();
    log.apply(Op::Shutdown).unwrap();
    assert!(matches!(log.apply(Op::RecoverForce), Err(GroupError::BadRequest(_))), "nobody back yet");
    log.join(1);
    log.join(2);
    log.apply(Op::RecoverForce).unwrap();
    assert_eq!(log.state.status, ClusterStatus::Running);
    assert_eq!(log.state.epochs.current(), epoch + 1);
    assert_eq!(log.epoch_nodes(), vec![node(1).id, node(2).id]);
    assert_eq!(log.state.clean_epoch, epoch + 1, "nobody waits for the missing node's copies");
    assert!(matches!(log.apply(Op::RecoverForce), Err(GroupError::BadRequest(_))), "running: nothing to do");
    // Running with a node gone, whose copies may be the only ones of some objects: forcing
    // makes the current epoch the clean one.
    let s3 = log.join(3);
    log.leave(s3, true);
    let current = log.state.epochs.current();
    assert!(log.state.clean_epoch < current);
    log.apply(Op::RecoverForce).unwrap();
    assert_eq!(log.state.clean_epoch, current);
    assert!(matches!(log.apply(Op::RecoverForce), Err(GroupError::BadRequest(_))), "recovered: nothing to do");
}

#[test]
fn nothing_but_sessions_while_shut_down() {
    let mut log = Log::new();
    log.format();
    log.join(1);
    log.apply(Op::Shutdown).unwrap();
    let c = log.client("x");
    assert_eq!(log.apply(Op::Lock { session: c, vdi: "v".into() }), Err(GroupError::ShutDown));
    assert_eq!(log.apply(Op::Shutdown), Err(GroupError::ShutDown));
}

#[test]
fn same_commands_give_same_state_everywhere() {
    // Determinism: two replicas applying the same log agree exactly (serialised form too).
    let ops = || {
        vec![
            Op::OpenSession { kind: SessionKind::Storage(node(1)), store_cluster: String::new() },
            Op::Format {
                cluster_id: "c".into(),
                copies: 3,
                object_size_shift: 22,
                voters: 3,
                force: false,
                policy: Default::default(),
            },
            Op::OpenSession { kind: SessionKind::Storage(node(2)), store_cluster: "c".into() },
            Op::OpenSession { kind: SessionKind::Client { name: "x".into() }, store_cluster: String::new() },
            Op::Lock { session: 3, vdi: "v".into() },
            Op::CloseSession { session: 1, expired: true },
        ]
    };
    let mut a = Log::new();
    let mut b = Log::new();
    for (x, y) in ops().into_iter().zip(ops()) {
        assert_eq!(a.apply(x), b.apply(y));
    }
    assert_eq!(a.state, b.state);
    let ja = serde_json::to_string(&a.state).unwrap();
    let back: GroupState = serde_json::from_str(&ja).unwrap();
    assert_eq!(back, b.state, "a snapshot restores the same state");
}

#[test]
fn info_lists_holders_and_missing_nodes() {
    let mut log = Log::new();
    log.format();
    log.join(1);
    let c = log.client("ublk-dev 7");
    log.apply(Op::Lock { session: c, vdi: "v".into() }).unwrap();
    let info = log.state.info();
    assert_eq!(info.locks[0].holder, "ublk-dev 7");
    assert!(info.missing.is_empty());
    assert_eq!(info.applied_seq, log.state.next_seq() - 1);
    log.apply(Op::Shutdown).unwrap();
    assert_eq!(log.state.info().missing, vec![node(1)]);
}

#[test]
fn vdis_are_created_with_cluster_defaults_and_deleted() {
    let mut log = Log::new();
    assert_eq!(
        log.apply(Op::VdiCreate { name: "a".into(), size: 1 << 20, copies: 0, allow_fewer_zones: false }),
        Err(GroupError::NotFormatted)
    );
    log.format();
    let a = match log.apply(Op::VdiCreate { name: "a".into(), size: 1 << 20, copies: 0, allow_fewer_zones: false }) {
        Ok(Reply::Vdi(e)) => e,
        other => panic!("{other:?}"),
    };
    assert_eq!((a.copies, a.object_size_shift), (3, 22));
    assert!(matches!(
        log.apply(Op::VdiCreate { name: "a".into(), size: 1 << 20, copies: 2, allow_fewer_zones: false }),
        Err(GroupError::Namespace(NamespaceError::Exists(_)))
    ));
    let c = log.client("ublk");
    log.apply(Op::Lock { session: c, vdi: "a".into() }).unwrap();
    assert!(matches!(log.apply(Op::VdiDelete { name: "a".into(), tag: None }), Err(GroupError::LockHeld { .. })));
    log.apply(Op::Unlock { session: c, vdi: "a".into(), force: false }).unwrap();
    log.apply(Op::VdiDelete { name: "a".into(), tag: None }).unwrap();
    assert!(log.state.vdis.is_deleted(a.vid));
    assert!(log.state.vdis.get("a").is_none());
}

#[test]
fn recovery_completes_when_every_node_of_the_epoch_reported() {
    let mut log = Log::new();
    log.format();
    let s1 = log.join(1);
    let s2 = log.join(2);
    let epoch = log.state.epochs.current();
    log.apply(Op::RecoveryDone { session: s1, epoch: epoch - 1 }).unwrap();
    assert!(log.state.recovered.is_empty(), "an outdated report counts for nothing");
    log.apply(Op::RecoveryDone { session: s1, epoch }).unwrap();
    log.apply(Op::RecoveryDone { session: s1, epoch }).unwrap();
    let complete = |log: &Log| {
        log.state.events_from(1, usize::MAX).unwrap().iter().any(|e| e.kind == EventKind::RecoveryComplete(epoch))
    };
    assert!(!complete(&log));
    log.apply(Op::RecoveryDone { session: s2, epoch }).unwrap();
    assert!(complete(&log));
    // A new epoch starts the count again.
    log.join(3);
    assert!(log.state.recovered.is_empty());
}

#[test]
fn a_restarted_node_must_report_its_recovery_again() {
    let mut log = Log::new();
    log.format();
    let s1 = log.join(1);
    log.join(2);
    let epoch = log.state.epochs.current();
    log.apply(Op::RecoveryDone { session: s1, epoch }).unwrap();
    assert!(log.state.recovered.contains(&node(1).id));
    log.join(1);
    assert_eq!(log.state.epochs.current(), epoch, "same nodes, same epoch");
    assert!(!log.state.recovered.contains(&node(1).id));
}

#[test]
fn snapshots_respect_the_lock_and_deletions_say_what_may_be_removed() {
    let mut log = Log::new();
    log.format();
    let Reply::Vdi(a) =
        log.apply(Op::VdiCreate { name: "a".into(), size: 1 << 20, copies: 0, allow_fewer_zones: false }).unwrap()
    else {
        panic!("not a VDI")
    };
    let holder = log.client("ublk-dev 1");
    let other = log.client("sheepctl");
    log.apply(Op::Lock { session: holder, vdi: "a".into() }).unwrap();
    let snap = |session| Op::VdiSnapshot { session, name: "a".into(), tag: "s1".into() };
    assert!(matches!(log.apply(snap(other)), Err(GroupError::LockHeld { .. })), "only the writer snapshots");
    let Reply::Snapshot { snapshot, working } = log.apply(snap(holder)).unwrap() else { panic!("not a snapshot") };
    assert_eq!((snapshot.vid, working.parent), (a.vid, Some(a.vid)));
    assert_eq!(snapshot.created_ms, log.index * 10, "a snapshot's time is its command's stamp");
    assert_ne!(snapshot.created_ms, a.created_ms);
    let from = log.state.next_seq() - 1;
    let last = log.state.events_from(from, 10).unwrap();
    assert!(matches!(&last[0].kind, EventKind::VdiSnapshotted { snapshot: s, .. } if s.vid == a.vid));
    // Rollback is refused while attached; resize is not.
    let rollback = Op::VdiRollback { name: "a".into(), tag: "s1".into() };
    assert!(matches!(log.apply(rollback.clone()), Err(GroupError::LockHeld { .. })));
    let Reply::Vdi(grown) = log.apply(Op::VdiResize { name: "a".into(), size: 2 << 20 }).unwrap() else { panic!() };
    assert_eq!(grown.size, 2 << 20);
    // Deleting the snapshot while the working VDI reads it: retired, objects kept.
    let seq = log.state.next_seq();
    log.apply(Op::VdiDelete { name: "a".into(), tag: Some("s1".into()) }).unwrap();
    let kinds: Vec<EventKind> = log.state.events_from(seq, 10).unwrap().into_iter().map(|e| e.kind).collect();
    assert!(matches!(kinds.as_slice(), [EventKind::VdiRetired(e)] if e.vid == a.vid), "{kinds:?}");
    log.apply(Op::Unlock { session: holder, vdi: "a".into(), force: false }).unwrap();
    // Deleting the VDI: both ids become collectable.
    let seq = log.state.next_seq();
    log.apply(Op::VdiDelete { name: "a".into(), tag: None }).unwrap();
    let deleted: Vec<_> = log
        .state
        .events_from(seq, 10)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::VdiDeleted(v) => Some(v.vid),
            _ => None,
        })
        .collect();
    assert_eq!(deleted.len(), 2, "{deleted:?}");
    assert!(deleted.contains(&a.vid) && deleted.contains(&working.vid));
    // Attributes go through the log too.
    log.apply(Op::VdiCreate { name: "b".into(), size: 1 << 20, copies: 0, allow_fewer_zones: false }).unwrap();
    let set = |v: Option<&[u8]>, exclusive| Op::VdiSetAttr {
        name: "b".into(),
        key: "k".into(),
        value: v.map(<[u8]>::to_vec),
        exclusive,
    };
    log.apply(set(Some(b"1"), true)).unwrap();
    assert!(log.apply(set(Some(b"2"), true)).is_err());
    assert_eq!(log.state.vdis.get_attr("b", "k").unwrap(), b"1");
}

/// Applies `op` to a state that breaks one of its invariants: it is refused as such, another
/// replica holding the same state refuses it identically, and nothing changed.
fn refused_unchanged(log: &mut Log, op: Op) -> GroupError {
    let before = log.state.clone();
    let mut replica = log.state.clone();
    let err = log.apply(op.clone()).expect_err("refused");
    assert!(err.is_invariant(), "{err:?}");
    assert!(err.to_string().contains("is inconsistent"), "{err}");
    assert_eq!(log.state, before, "a refusal changes nothing");
    let cmd = Command::new(log.index * 10, op);
    assert_eq!(replica.apply(log.index, &cmd), Err(err.clone()), "every replica refuses alike");
    err
}

#[test]
fn a_session_id_in_use_is_refused_not_handed_out_again() {
    let mut log = Log::new();
    log.format();
    let c = log.client("ublk-dev 1");
    log.apply(Op::Lock { session: c, vdi: "v".into() }).unwrap();
    // Damage the state: the next id is the live session's.
    log.state.next_session = c;
    let open =
        |name: &str| Op::OpenSession { kind: SessionKind::Client { name: name.into() }, store_cluster: "".into() };
    refused_unchanged(&mut log, open("other"));
    refused_unchanged(&mut log, Op::OpenSession { kind: SessionKind::Storage(node(1)), store_cluster: "".into() });
    assert_eq!(log.state.locks["v"].session, c, "the holder keeps its lock");
    // Commands that take no new id still apply.
    log.apply(Op::Unlock { session: c, vdi: "v".into(), force: false }).unwrap();
    log.apply(Op::Broadcast { session: c, payload: vec![1] }).unwrap();
    // The last id there is cannot be followed by another.
    log.state.next_session = u64::MAX;
    refused_unchanged(&mut log, open("last"));
}

#[test]
fn broken_event_numbering_refuses_commands_and_reads_still_answer() {
    let mut log = Log::new();
    log.format();
    let c = log.client("sheepctl");
    let events = log.state.events_from(1, usize::MAX).unwrap();
    // Damage the state: the next number does not follow the newest event.
    log.state.next_seq += 3;
    refused_unchanged(&mut log, Op::Broadcast { session: c, payload: vec![] });
    refused_unchanged(&mut log, Op::VdiCreate { name: "a".into(), size: 1 << 20, copies: 0, allow_fewer_zones: false });
    assert_eq!(log.state.events_from(1, usize::MAX).unwrap(), events);
    // Put right (as a fixed snapshot would), the same command applies.
    log.state.next_seq -= 3;
    assert!(matches!(log.apply(Op::Broadcast { session: c, payload: vec![] }), Ok(Reply::Seq(_))));
}

#[test]
fn an_object_size_beyond_the_largest_refuses_vdi_creation_not_a_panic() {
    let mut log = Log::new();
    log.format();
    // Damage the state: a format never allows an object of 2^64 bytes.
    log.state.config.as_mut().unwrap().object_size_shift = 64;
    let err = refused_unchanged(
        &mut log,
        Op::VdiCreate { name: "a".into(), size: 1 << 20, copies: 0, allow_fewer_zones: false },
    );
    assert!(matches!(err, GroupError::Namespace(NamespaceError::Invariant { .. })), "{err:?}");
    let c = log.client("ublk-dev 1");
    assert!(matches!(log.apply(Op::Lock { session: c, vdi: "a".into() }), Ok(Reply::Locked(_))));
}

#[test]
fn a_snapshot_filed_under_another_id_refuses_its_deletion_not_a_panic() {
    let mut log = Log::new();
    log.format();
    let c = log.client("sheepctl");
    log.apply(Op::VdiCreate { name: "a".into(), size: 1 << 20, copies: 0, allow_fewer_zones: false }).unwrap();
    let Reply::Snapshot { snapshot, .. } =
        log.apply(Op::VdiSnapshot { session: c, name: "a".into(), tag: "s1".into() }).unwrap()
    else {
        panic!("not a snapshot")
    };
    // Damage the state (as a damaged snapshot file would): the snapshot moves to another key.
    let mut ns = serde_json::to_value(&log.state.vdis).unwrap();
    let snaps = ns["snapshots"].as_object_mut().unwrap();
    let entry = snaps.remove(&snapshot.vid.get().to_string()).unwrap();
    snaps.insert((snapshot.vid.get() ^ 0x40).to_string(), entry);
    log.state.vdis = serde_json::from_value(ns).unwrap();
    assert_eq!(log.state.vdis.snapshot("a", "s1"), Some(&snapshot), "still listed");
    let err = refused_unchanged(&mut log, Op::VdiDelete { name: "a".into(), tag: Some("s1".into()) });
    assert!(matches!(err, GroupError::Namespace(NamespaceError::Invariant { .. })), "{err:?}");
    // Other commands go on.
    assert!(matches!(
        log.apply(Op::VdiCreate { name: "b".into(), size: 1 << 20, copies: 0, allow_fewer_zones: false }),
        Ok(Reply::Vdi(_))
    ));
    assert!(matches!(log.apply(Op::VdiResize { name: "a".into(), size: 2 << 20 }), Ok(Reply::Vdi(_))));
}

#[test]
fn the_last_storage_node_crashing_halts_the_cluster_in_its_epoch() {
    let mut log = Log::new();
    log.format();
    let s: Vec<SessionId> = (1..=3).map(|i| log.join(i)).collect();
    let ctl = log.client("ublk-dev");
    log.apply(Op::Lock { session: ctl, vdi: "t".into() }).unwrap();
    log.leave(s[0], true);
    log.leave(s[1], true);
    let last = log.state.epochs.current();
    assert_eq!(log.epoch_nodes(), vec![node(3).id]);
    let seq = log.state.next_seq();
    log.leave(s[2], true);
    assert_eq!(log.state.status, ClusterStatus::Halted);
    assert_eq!(log.state.epochs.current(), last, "no empty epoch");
    assert_eq!(log.epoch_nodes(), vec![node(3).id]);
    let kinds: Vec<EventKind> = log.state.events_from(seq, 10).unwrap().into_iter().map(|e| e.kind).collect();
    assert!(matches!(kinds.as_slice(), [EventKind::Left { .. }, EventKind::Halted]), "{kinds:?}");
    // Client sessions, their locks and group commands go on.
    assert!(log.state.sessions.contains_key(&ctl));
    assert_eq!(log.state.info().locks.len(), 1);
    log.apply(Op::VdiCreate { name: "u".into(), size: 1 << 20, copies: 0, allow_fewer_zones: false }).unwrap();
    assert_eq!(log.state.info().missing, vec![node(3)]);
    // Nodes of older epochs coming back do not resume it: their copies may be older.
    log.join(2);
    log.join(1);
    assert_eq!(log.state.status, ClusterStatus::Halted);
    assert_eq!(log.state.epochs.current(), last);
    assert_eq!(log.state.missing_nodes(), vec![node(3)]);
    // The last epoch's node does; the others joined meanwhile make a new epoch.
    log.join(3);
    assert_eq!(log.state.status, ClusterStatus::Running);
    assert_eq!(log.state.epochs.current(), last + 1);
    assert_eq!(log.epoch_nodes().len(), 3);
}

#[test]
fn a_halted_cluster_goes_on_without_the_missing_only_by_recover_force() {
    let mut log = Log::new();
    log.format();
    let a = log.join(1);
    let b = log.join(2);
    log.leave(a, true);
    log.leave(b, true);
    assert_eq!(log.state.status, ClusterStatus::Halted);
    let last = log.state.epochs.current();
    assert!(matches!(log.apply(Op::RecoverForce), Err(GroupError::BadRequest(_))), "nobody back yet");
    log.join(1);
    assert_eq!(log.state.status, ClusterStatus::Halted);
    log.apply(Op::RecoverForce).unwrap();
    assert_eq!(log.state.status, ClusterStatus::Running);
    assert_eq!(log.state.epochs.current(), last + 1);
    assert_eq!(log.epoch_nodes(), vec![node(1).id]);
}

#[test]
fn a_clean_leave_of_the_last_node_halts_too_and_shutdown_still_works() {
    let mut log = Log::new();
    log.format();
    let a = log.join(1);
    let last = log.state.epochs.current();
    log.leave(a, false);
    assert_eq!(log.state.status, ClusterStatus::Halted);
    assert_eq!(log.state.epochs.current(), last);
    log.apply(Op::Shutdown).unwrap();
    assert_eq!(log.state.status, ClusterStatus::Shutdown);
    log.join(1);
    assert_eq!(log.state.status, ClusterStatus::Running);
    assert_eq!(log.state.epochs.current(), last, "back in the same epoch");
}

#[test]
fn a_node_whose_disk_failed_leaves_the_data_membership_and_stays_listed_with_its_reason() {
    let mut log = Log::new();
    log.format();
    let s: Vec<SessionId> = (1..=3).map(|i| log.join(i)).collect();
    let before = log.state.epochs.current();
    let seq = log.state.next_seq();
    log.apply(Op::NodeFailed { session: s[1], reason: "EIO on obj/".into() }).unwrap();
    assert_eq!(log.state.epochs.current(), before + 1);
    assert_eq!(log.epoch_nodes(), vec![node(1).id, node(3).id]);
    let kinds: Vec<EventKind> = log.state.events_from(seq, 10).unwrap().into_iter().map(|e| e.kind).collect();
    assert!(matches!(kinds.as_slice(), [EventKind::NodeFailed { .. }, EventKind::Epoch(_)]), "{kinds:?}");
    let info = log.state.info();
    let failed = info.sessions.iter().find(|x| x.id == s[1]).expect("the session lives on");
    assert_eq!(failed.failed.as_deref(), Some("EIO on obj/"));
    // Reported again: nothing changes.
    log.apply(Op::NodeFailed { session: s[1], reason: "again".into() }).unwrap();
    assert_eq!(log.state.epochs.current(), before + 1);
    // Only storage sessions report a failed disk.
    let ctl = log.client("sheepctl");
    assert!(matches!(log.apply(Op::NodeFailed { session: ctl, reason: "x".into() }), Err(GroupError::BadRequest(_))));
    // The node restarted (its disk replaced): its new session replaces the failed one.
    log.join(2);
    assert_eq!(log.epoch_nodes().len(), 3);
    assert!(!log.state.sessions.contains_key(&s[1]));
    // The last node failing halts the cluster rather than making an empty epoch.
    let mut log = Log::new();
    log.format();
    let only = log.join(1);
    log.apply(Op::NodeFailed { session: only, reason: "gone".into() }).unwrap();
    assert_eq!(log.state.status, ClusterStatus::Halted);
}

#[test]
fn more_copies_than_zones_are_refused_unless_allowed() {
    let mut log = Log::new();
    log.join(1);
    log.join(2);
    let format = |copies: u8, policy: Policy| Op::Format {
        cluster_id: "z".into(),
        copies,
        object_size_shift: 22,
        voters: 3,
        force: false,
        policy,
    };
    let err = log.apply(format(3, Policy::default())).unwrap_err();
    assert!(matches!(&err, GroupError::BadRequest(m) if m.contains("--allow-fewer-zones")), "{err:?}");
    let err = log.apply(format(2, Policy { min_copies: 3, ..Policy::default() })).unwrap_err();
    assert!(matches!(err, GroupError::BadRequest(_)), "min copies above the copies");
    log.apply(format(2, Policy::default())).unwrap();
    let create = |copies: u8, allow: bool| Op::VdiCreate {
        name: format!("v{copies}{allow}"),
        size: 1 << 20,
        copies,
        allow_fewer_zones: allow,
    };
    assert!(matches!(log.apply(create(3, false)), Err(GroupError::BadRequest(_))));
    assert!(matches!(log.apply(create(3, true)), Ok(Reply::Vdi(_))));
    assert!(matches!(log.apply(create(2, false)), Ok(Reply::Vdi(_))));
    // A cluster formatted to allow it takes any VDI.
    let mut log = Log::new();
    log.join(1);
    log.apply(format(3, Policy { allow_fewer_zones: true, ..Policy::default() })).unwrap();
    assert!(matches!(log.apply(create(3, false)), Ok(Reply::Vdi(_))));
}

/// Client calls, each named by its request id as a `GroupClient` names them.
impl Log {
    fn apply_as(&mut self, op: Op, seq: u64) -> Result<Reply, GroupError> {
        self.apply_pending(op, seq, seq)
    }

    /// Call `seq` while call `first_pending` still waits for its answer.
    fn apply_pending(&mut self, op: Op, seq: u64, first_pending: u64) -> Result<Reply, GroupError> {
        self.index += 1;
        let request = RequestId { client: 0xc11e47, seq, first_pending };
        let cmd = Command { time_ms: self.index * 10, op, request: Some(request) };
        self.state.apply(self.index, &cmd)
    }
}

#[test]
fn a_retried_call_takes_effect_once_and_answers_what_it_did() {
    let mut log = Log::new();
    log.format();
    log.join(1);
    // Each call is applied twice, as when a try was committed but its answer lost: the second
    // answers the same, and leaves the state (events included) as the first left it, but for
    // the table's note of when the client was last seen.
    let unseen = |s: &GroupState| GroupState { requests: RequestTable::default(), ..s.clone() };
    let twice = |log: &mut Log, op: Op, seq: u64| {
        let first = log.apply_as(op.clone(), seq);
        let after_first = unseen(&log.state);
        let again = log.apply_as(op, seq);
        assert_eq!(again, first, "call {seq}: the retry answers what the first try did");
        assert_eq!(unseen(&log.state), after_first, "call {seq}: the retry changes nothing");
        first
    };
    let open = Op::OpenSession { kind: SessionKind::Client { name: "sheepctl".into() }, store_cluster: "".into() };
    let sessions = log.state.sessions.len();
    let Ok(Reply::Session(session)) = twice(&mut log, open, 1) else { panic!("open session") };
    assert_eq!(log.state.sessions.len(), sessions + 1, "one session opened");

    let create = Op::VdiCreate { name: "v".into(), size: 1 << 30, copies: 0, allow_fewer_zones: false };
    let Ok(Reply::Vdi(created)) = twice(&mut log, create.clone(), 2) else { panic!("vdi create") };
    assert_eq!(log.state.vdis.list().count(), 1);
    // Without a request id the same create is refused: what a retry answered before.
    assert!(matches!(log.apply(create), Err(GroupError::Namespace(NamespaceError::Exists(_)))));

    let snap = Op::VdiSnapshot { session, name: "v".into(), tag: "s1".into() };
    let Ok(Reply::Snapshot { snapshot, working }) = twice(&mut log, snap, 3) else { panic!("snapshot") };
    assert_eq!(snapshot.vid, created.vid);
    let vdis: Vec<(String, Option<String>)> =
        log.state.vdis.list().map(|e| (e.name.clone(), e.snapshot.clone())).collect();
    assert_eq!(vdis.len(), 2, "one snapshot and the working VDI: {vdis:?}");
    assert_eq!(log.state.vdis.get("v").map(|e| e.vid), Some(working.vid));

    let seq = log.state.next_seq();
    assert_eq!(twice(&mut log, Op::Broadcast { session, payload: vec![1] }, 4), Ok(Reply::Seq(seq)));

    // A refused call is answered its refusal again, even once it would succeed.
    let lock = Op::Lock { session: 999, vdi: "v".into() };
    assert_eq!(log.apply_as(lock.clone(), 5), Err(GroupError::NoSession(999)));
    let lock_ok = Op::Lock { session, vdi: "v".into() };
    assert_eq!(log.apply_as(lock_ok, 5), Err(GroupError::NoSession(999)), "answered from the record");
    assert!(log.state.locks.is_empty());

    // A format --force retried does not wipe the namespace a second time.
    let format = |id: &str| Op::Format {
        cluster_id: id.into(),
        copies: 3,
        object_size_shift: 22,
        voters: 3,
        force: true,
        policy: Policy { allow_fewer_zones: true, ..Policy::default() },
    };
    let Ok(Reply::Formatted(config)) = log.apply_as(format("new"), 6) else { panic!("format") };
    // The answer was lost; meanwhile another task of the client creates a VDI.
    let create = Op::VdiCreate { name: "w".into(), size: 1 << 20, copies: 0, allow_fewer_zones: false };
    log.apply_pending(create, 7, 6).unwrap();
    // The retry reaches another master, which chose another cluster id.
    assert_eq!(log.apply_as(format("other"), 6), Ok(Reply::Formatted(config)));
    assert_eq!(log.state.config.as_ref().map(|c| c.cluster_id.as_str()), Some("new"));
    assert_eq!(log.state.vdis.list().count(), 1, "the VDI made after the format is still there");
}

#[test]
fn the_record_of_calls_travels_in_the_state_and_is_the_same_on_every_replica() {
    let mut log = Log::new();
    log.format();
    let create = |name: &str| Op::VdiCreate { name: name.into(), size: 1 << 20, copies: 0, allow_fewer_zones: false };
    let first = log.apply_as(create("a"), 1).unwrap();
    // A groupd restored from a snapshot of this state answers the retry from the record.
    let mut restored: GroupState = serde_json::from_str(&serde_json::to_string(&log.state).unwrap()).unwrap();
    assert_eq!(restored, log.state);
    let request = RequestId { client: 0xc11e47, seq: 1, first_pending: 1 };
    let retry = Command { time_ms: 99, op: create("a"), request: Some(request) };
    assert!(restored.is_retry(&retry));
    assert_eq!(restored.apply(log.index + 1, &retry), Ok(first));
    assert_eq!(restored.vdis.list().count(), 1);
    assert!(!restored.is_retry(&Command::new(99, create("a"))), "a command without an id is never a retry");
    // A snapshot written before the table existed still loads, with an empty one.
    let mut old = serde_json::to_value(&log.state).unwrap();
    old.as_object_mut().unwrap().remove("requests");
    let old: GroupState = serde_json::from_value(old).unwrap();
    assert_eq!(old.requests.clients(), 0);
}
