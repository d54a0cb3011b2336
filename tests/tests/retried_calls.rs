//! A call retried after its answer was lost takes effect once, on real groupd processes: the
//! same request id sent again through another groupd (what `GroupClient`'s failover does), to
//! a new master after the old one died, and to a groupd restarted from its snapshot, gets the
//! first try's answer and changes nothing.

use std::time::Duration;

use sheep_client::ErrorCode;
use sheep_core::group::{ClusterInfo, ClusterStatus, Event, EventKind, RequestId};
use sheep_tests::groupd_api::*;
use sheep_tests::{wait_until, Cluster, Daemon, Loopback};

const T: Duration = Duration::from_secs(30);
/// The test's client id (a `GroupClient` picks one at random).
const CLIENT: u64 = 0x5eed_c11e;

/// Call `seq` of the test's client, sent while call 1 still waits for its answer: the group
/// keeps the answers of every call since.
fn call(seq: u64) -> Option<RequestId> {
    Some(RequestId { client: CLIENT, seq, first_pending: 1 })
}

fn sessions_named(i: &ClusterInfo, name: &str) -> usize {
    i.sessions.iter().filter(|s| s.name() == name).count()
}

/// How many of `events` `pick` counts.
fn count(events: &[Event], pick: impl Fn(&EventKind) -> bool) -> usize {
    events.iter().filter(|e| pick(&e.kind)).count()
}

#[test]
fn a_call_sent_again_with_its_request_id_takes_effect_once() {
    let mut c = Cluster::new();
    // The test's session sends no keepalives: a long lease keeps it while the test runs.
    c.lease_ms = 120_000;
    c.add_group(3);
    c.ctl_ok(&["cluster", "format", "--copies", "1"]);
    c.add_storaged();
    c.wait_epoch_nodes(0, 1, ClusterStatus::Running);
    let g = c.groupd_addrs.clone();

    // Each call twice, through two groupd: the second try answers what the first did.
    let (session, _) = open_client_as(&g[1], "retried", call(1)).unwrap();
    assert_eq!(open_client_as(&g[2], "retried", call(1)).unwrap().0, session, "one session");
    let vdi = vdi_create_as(&g[1], "disk0", 1 << 30, call(2)).unwrap();
    assert_eq!(vdi_create_as(&g[0], "disk0", 1 << 30, call(2)).unwrap(), vdi, "the VDI the first try made");
    // Without an id the same create is refused: what a retry answered before.
    assert_eq!(code(&vdi_create(&g[2], "disk0", 1 << 30).unwrap_err()), Some(ErrorCode::VdiExists));
    // A snapshot's inode exists before it is taken (sheepctl and the lock holder see to it).
    let out = c.ctl_stdin(&["vdi", "write", "disk0", "0"], &[0x5a; 4096]);
    assert!(out.status.success(), "vdi write: {}", String::from_utf8_lossy(&out.stderr));
    let snap = vdi_snapshot_as(&g[2], session, "disk0", "s1", call(3)).unwrap();
    assert_eq!(vdi_snapshot_as(&g[1], session, "disk0", "s1", call(3)).unwrap(), snap, "one snapshot");
    let seq = propose_as(&g[0], session, b"once", call(4)).unwrap();
    assert_eq!(propose_as(&g[2], session, b"once", call(4)).unwrap(), seq);

    // `vdi list` shows the one VDI and its one snapshot.
    let list: serde_json::Value = serde_json::from_str(&c.ctl_ok(&["--json", "vdi", "list"])).unwrap();
    let mut rows: Vec<(String, Option<String>)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap().to_string(), r["tag"].as_str().map(String::from)))
        .collect();
    rows.sort();
    assert_eq!(rows, vec![("disk0".to_string(), None), ("disk0".to_string(), Some("s1".to_string()))], "{list}");
    // Every groupd applied each call once: one event of each.
    for addr in &g {
        wait_until(T, &format!("{addr} to have applied every call"), || {
            let (events, _) = watch(addr, 1, 1000, 0).map_err(|e| e.to_string())?;
            let joined = count(&events, |k| matches!(k, EventKind::Joined(s) if s.name() == "retried"));
            let created = count(&events, |k| matches!(k, EventKind::VdiCreated(v) if v.name == "disk0"));
            let snapshots = count(&events, |k| matches!(k, EventKind::VdiSnapshotted { .. }));
            let sent = count(&events, |k| matches!(k, EventKind::Broadcast { payload, .. } if payload == b"once"));
            match (joined, created, snapshots, sent) {
                (1, 1, 1, 1) => Ok(()),
                other => Err(format!("(joined, created, snapshotted, broadcast) = {other:?}")),
            }
        });
    }

    // The master dies: the new one answers retries from the replicated record.
    let old = c.master(0).expect("a master");
    c.groupds[old].kill();
    let survivor = (0..3).find(|&i| i != old).unwrap();
    wait_until(T, "a new master", || match c.master(survivor) {
        Some(m) if m != old => Ok(()),
        other => Err(format!("master {other:?}")),
    });
    let s = &g[survivor];
    assert_eq!(vdi_create_as(s, "disk0", 1 << 30, call(2)).unwrap(), vdi);
    assert_eq!(vdi_snapshot_as(s, session, "disk0", "s1", call(3)).unwrap(), snap);
    assert_eq!(open_client_as(s, "retried", call(1)).unwrap().0, session);

    // Once a call says calls 1..4 are finished, a late copy of one is refused, unapplied.
    let next = Some(RequestId { client: CLIENT, seq: 5, first_pending: 5 });
    vdi_create_as(s, "disk1", 1 << 20, next).unwrap();
    let late = open_client_as(s, "retried", call(1)).unwrap_err();
    assert_eq!(code(&late), Some(ErrorCode::BadRequest), "{late:?}");
    assert_eq!(sessions_named(&info(s).unwrap(), "retried"), 1);
    let mut names: Vec<String> = vdi_entries(s).unwrap().into_iter().map(|v| v.name).collect();
    names.sort();
    assert_eq!(names, ["disk0", "disk0", "disk1"]);
}

#[test]
fn the_record_of_calls_survives_a_restart_from_the_snapshot() {
    let dir = tempfile::Builder::new().prefix("retried-calls-").tempdir().unwrap();
    let net = Loopback::new();
    let addr = net.free_addr(1);
    let data = dir.path().join("groupd");
    let args = ["--listen", &addr, "--data", &data.display().to_string(), "--snapshot-every", "20"]
        .into_iter()
        .map(String::from)
        .chain(["--lease-ms".to_string(), "120000".to_string()])
        .collect();
    let mut groupd = Daemon::start("groupd", args, dir.path().join("groupd.log"));
    let is_master = |addr: &str| match master_of(addr) {
        Some(m) if m == addr => Ok(()),
        other => Err(format!("master {other:?}")),
    };
    wait_until(T, "groupd to be master", || is_master(&addr));
    format(&addr, 1).unwrap();
    let (session, _) = open_client_as(&addr, "writer", call(1)).unwrap();
    let vdi = vdi_create_as(&addr, "disk0", 1 << 30, call(2)).unwrap();
    // Enough entries after the calls that they live on in the snapshot only.
    for i in 0..40u8 {
        propose(&addr, session, &[i]).unwrap();
    }
    wait_until(T, "a snapshot", || data.join("snapshot.bin").exists().then_some(()).ok_or("none yet".to_string()));

    // kill -9, restart: the state comes back from the snapshot, and the record with it.
    groupd.kill();
    groupd.restart();
    wait_until(T, "groupd back as master", || is_master(&addr));
    assert_eq!(vdi_create_as(&addr, "disk0", 1 << 30, call(2)).unwrap(), vdi);
    assert_eq!(open_client_as(&addr, "writer", call(1)).unwrap().0, session);
    let i = info(&addr).unwrap();
    assert_eq!(sessions_named(&i, "writer"), 1, "{:?}", i.sessions);
    assert_eq!(vdi_list(&addr).unwrap().0, vec!["disk0".to_string()]);
}
