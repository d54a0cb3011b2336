//! Round trips: every core value written to a message and read back is the same value.

use super::*;
use capnp::message::{Builder, ReaderOptions};
use capnp::serialize;

fn node(i: u32) -> NodeInfo {
    NodeInfo { id: format!("127.0.0.{i}:7001"), addr: format!("127.0.0.{i}:7001"), zone: i, weight: 2 }
}

fn vdi() -> sheep_core::namespace::VdiEntry {
    sheep_core::namespace::VdiEntry {
        name: "disk0".into(),
        vid: sheep_core::object::VdiId::new(0xabcdef).unwrap(),
        size: 10 << 30,
        copies: 3,
        object_size_shift: 22,
        created_ms: 77,
        parent: None,
        snapshot: None,
    }
}

fn snap() -> sheep_core::namespace::VdiEntry {
    sheep_core::namespace::VdiEntry {
        parent: Some(sheep_core::object::VdiId::new(0x12).unwrap()),
        snapshot: Some("before-upgrade".into()),
        ..vdi()
    }
}

fn round_trip_event(e: &Event) -> Event {
    let mut msg = Builder::new_default();
    write_event(msg.init_root::<event::Builder<'_>>(), e);
    let bytes = serialize::write_message_to_words(&msg);
    let reader = serialize::read_message(&mut bytes.as_slice(), ReaderOptions::new()).unwrap();
    read_event(reader.get_root::<event::Reader<'_>>().unwrap()).unwrap()
}

#[test]
fn every_event_kind_round_trips() {
    let config = ClusterConfig {
        cluster_id: "c0ffee".into(),
        created_ms: 5,
        copies: 3,
        object_size_shift: 22,
        voters: 3,
        policy: Default::default(),
    };
    let kinds = vec![
        EventKind::Formatted(config),
        EventKind::Joined(Session { id: 4, kind: SessionKind::Storage(node(2)), opened_ms: 9, failed: None }),
        EventKind::Joined(Session {
            id: 6,
            kind: SessionKind::Storage(node(3)),
            opened_ms: 9,
            failed: Some("EIO".into()),
        }),
        EventKind::Joined(Session {
            id: 5,
            kind: SessionKind::Client { name: "ctl".into() },
            opened_ms: 9,
            failed: None,
        }),
        EventKind::Left { session: 4, expired: true },
        EventKind::Epoch(EpochRecord { epoch: 7, time_ms: 11, nodes: vec![node(1), node(2)] }),
        EventKind::Broadcast { session: 5, payload: vec![1, 2, 3] },
        EventKind::Locked(Lock { vdi: "disk0".into(), session: 5, token: 42 }),
        EventKind::Unlocked { vdi: "disk0".into(), session: 5, forced: true },
        EventKind::Shutdown,
        EventKind::Halted,
        EventKind::NodeFailed { session: 6, node: "127.0.0.3:7001".into(), reason: "obj/ is gone".into() },
        EventKind::Resumed,
        EventKind::VdiCreated(vdi()),
        EventKind::VdiDeleted(vdi()),
        EventKind::VdiRetired(snap()),
        EventKind::VdiSnapshotted { snapshot: snap(), working: vdi() },
        EventKind::VdiResized(vdi()),
        EventKind::Recovered { node: "127.0.0.1:7001".into(), epoch: 4 },
        EventKind::RecoveryComplete(4),
    ];
    for (i, kind) in kinds.into_iter().enumerate() {
        let e = Event { seq: i as u64 + 1, time_ms: 1000 + i as u64, kind };
        assert_eq!(round_trip_event(&e), e);
    }
}

#[test]
fn cluster_info_round_trips_with_and_without_config() {
    let mut info = ClusterInfo {
        status: ClusterStatus::Shutdown,
        config: None,
        members: vec![
            GroupMember { raft_id: 1, addr: "127.0.0.1:7000".into(), role: MemberRole::Master },
            GroupMember { raft_id: 2, addr: "127.0.0.2:7000".into(), role: MemberRole::Member },
        ],
        epochs: vec![EpochRecord { epoch: 1, time_ms: 3, nodes: vec![node(1)] }],
        sessions: vec![Session { id: 1, kind: SessionKind::Storage(node(1)), opened_ms: 2, failed: None }],
        locks: vec![LockInfo { lock: Lock { vdi: "v".into(), session: 1, token: 8 }, holder: "h".into() }],
        missing: vec![node(3)],
        clean_epoch: 0,
        applied_seq: 99,
        answered_by: "127.0.0.1:7000".into(),
    };
    for config in [
        None,
        Some(ClusterConfig {
            cluster_id: "x".into(),
            created_ms: 1,
            copies: 2,
            object_size_shift: 20,
            voters: 5,
            policy: Default::default(),
        }),
    ] {
        info.config = config;
        let mut msg = Builder::new_default();
        write_cluster_info(msg.init_root::<cluster_info::Builder<'_>>(), &info);
        let r = msg.get_root_as_reader::<cluster_info::Reader<'_>>().unwrap();
        assert_eq!(read_cluster_info(r).unwrap(), info);
    }
}

#[test]
fn request_ids_round_trip_and_an_unset_one_is_none() {
    let r = RequestId { client: u64::MAX - 1, seq: 12, first_pending: 9 };
    let mut msg = Builder::new_default();
    write_request(msg.init_root::<request_id::Builder<'_>>(), &r);
    let bytes = serialize::write_message_to_words(&msg);
    let reader = serialize::read_message(&mut bytes.as_slice(), ReaderOptions::new()).unwrap();
    assert_eq!(read_request(reader.get_root::<request_id::Reader<'_>>().unwrap()), Some(r));
    // A call that sends no id: the params' field is unset and reads as client 0.
    let mut msg = Builder::new_default();
    msg.init_root::<crate::groupd_capnp::groupd::vdi_create_params::Builder<'_>>().set_name("v");
    let bytes = serialize::write_message_to_words(&msg);
    let reader = serialize::read_message(&mut bytes.as_slice(), ReaderOptions::new()).unwrap();
    let params = reader.get_root::<crate::groupd_capnp::groupd::vdi_create_params::Reader<'_>>().unwrap();
    assert_eq!(read_request(params.get_request().unwrap()), None);
}
