//! groupd on its own, as real processes on the test's loopback block: election,
//! replication, forwarding to the master, failover, sessions and leases, shutdown, members,
//! snapshots.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sheep_client::ErrorCode;
use sheep_core::epoch::NodeInfo;
use sheep_core::group::{ClusterStatus, EventKind, MemberRole};
use sheep_tests::groupd_api::*;
use sheep_tests::{wait_until, Daemon, Loopback};

/// A groupd of the test: a free port on address `n` of the loopback block, its data in
/// `root/<name>`, killed and reaped when dropped.
struct Groupd {
    addr: String,
    dir: PathBuf,
    daemon: Daemon,
}

impl Groupd {
    fn start(net: &Loopback, root: &Path, name: &str, n: usize, extra: &[&str]) -> Groupd {
        let addr = net.free_addr(n);
        let dir = root.join(name);
        let mut args = vec!["--listen".to_string(), addr.clone(), "--data".into(), dir.display().to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let daemon = Daemon::start("groupd", args, root.join(format!("{name}.log")));
        Groupd { addr, dir, daemon }
    }
}

/// A test's directory and loopback block.
fn setup() -> (tempfile::TempDir, Loopback) {
    (tempfile::Builder::new().prefix("groupd-test-").tempdir().unwrap(), Loopback::new())
}

/// Polls `probe` until it returns `Some`, for at most `limit`.
fn wait_for<T>(limit: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    wait_until(limit, what, || probe().ok_or_else(|| "not yet".to_string()))
}

fn three(net: &Loopback, root: &Path, extra: &[&str]) -> Vec<Groupd> {
    let a = Groupd::start(net, root, "a", 1, extra);
    wait_for(Duration::from_secs(10), "a to be master", || master_of(&a.addr).filter(|m| *m == a.addr));
    let mut join = vec!["--join", a.addr.as_str()];
    join.extend_from_slice(extra);
    let b = Groupd::start(net, root, "b", 2, &join);
    let c = Groupd::start(net, root, "c", 3, &join);
    let all = vec![a, b, c];
    wait_for(Duration::from_secs(20), "3 voters", || {
        let i = info(&all[0].addr).ok()?;
        (count_roles(&i, MemberRole::Master) == 1 && count_roles(&i, MemberRole::Submaster) == 2).then_some(())
    });
    all
}

#[test]
fn elect_replicate_forward_and_fail_over() {
    let (root, net) = setup();
    let mut g = three(&net, root.path(), &[]);

    // Writes through a non-master are forwarded; reads anywhere see them.
    let config = format(&g[1].addr, 3).unwrap();
    assert_eq!(config.cluster_id.len(), 36);
    let again = format(&g[2].addr, 3).unwrap_err();
    assert_eq!(code(&again), Some(ErrorCode::AlreadyFormatted), "{again:?}");
    let (session, lease) = open_client(&g[2].addr, "test client").unwrap();
    assert_eq!(lease, 5000);
    assert_eq!(info(&g[2].addr).unwrap().sessions.len(), 1, "a forwarded write is visible where it was made");
    let l = lock(&g[1].addr, session, "vdi1").unwrap();
    assert_eq!(l.holder, "test client");
    let seq = propose(&g[0].addr, session, b"hello").unwrap();
    let (events, next) = watch(&g[1].addr, 1, 100, 5000).unwrap();
    assert_eq!(next, seq + 1);
    assert!(matches!(events[0].kind, EventKind::Formatted(_)));
    assert!(matches!(events.last().unwrap().kind, EventKind::Broadcast { .. }));
    let err = keepalive(&g[1].addr, 999).unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::NoSession), "{err:?}");

    // Long poll: a watch past the end waits for the next event.
    let waiter_addr = g[2].addr.clone();
    let waiter = std::thread::spawn(move || watch(&waiter_addr, next, 10, 10_000));
    std::thread::sleep(Duration::from_millis(300));
    propose(&g[1].addr, session, b"later").unwrap();
    let (later, _) = waiter.join().unwrap().unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].seq, next);

    // The VDI namespace: created through one groupd, listed by another.
    let vdi = vdi_create(&g[1].addr, "disk0", 1 << 30).unwrap();
    assert_eq!(vdi.copies, 3, "copies 0 means the cluster's default");
    assert_eq!(vdi_list(&g[1].addr).unwrap().0, vec!["disk0".to_string()]);
    assert_eq!(code(&vdi_create(&g[2].addr, "disk0", 1 << 30).unwrap_err()), Some(ErrorCode::VdiExists));
    assert_eq!(vdi_delete(&g[0].addr, "disk0").unwrap().vid, vdi.vid);
    wait_for(Duration::from_secs(5), "the delete everywhere", || {
        (vdi_list(&g[2].addr).ok()? == (vec![], vec![vdi.vid.get()])).then_some(())
    });
    assert_eq!(code(&vdi_delete(&g[2].addr, "disk0").unwrap_err()), Some(ErrorCode::NoVdi));

    // Kill the master: another voter takes over, nothing committed is lost.
    let master = master_of(&g[0].addr).unwrap();
    let mi = g.iter().position(|x| x.addr == master).unwrap();
    g[mi].daemon.kill();
    let killed_at = Instant::now();
    let survivor = g[(mi + 1) % 3].addr.clone();
    let new_master =
        wait_for(Duration::from_secs(15), "a new master", || master_of(&survivor).filter(|m| *m != master));
    eprintln!("failover took {:?}", killed_at.elapsed());
    keepalive(&survivor, session).unwrap();
    let i = info(&new_master).unwrap();
    assert_eq!(i.locks.len(), 1);
    assert_eq!(i.sessions.len(), 1);
    propose(&survivor, session, b"after failover").unwrap();

    // The old master comes back from its data directory and follows.
    g[mi].daemon.restart();
    wait_for(Duration::from_secs(15), "the old master to catch up", || {
        let i = info(&g[mi].addr).ok()?;
        let want = info(&new_master).ok()?.applied_seq;
        (i.sessions.len() == 1 && i.applied_seq == want && master_of(&g[mi].addr).is_some()).then_some(())
    });
}

#[test]
fn a_session_without_keepalive_expires() {
    let (root, net) = setup();
    let a = Groupd::start(&net, root.path(), "a", 1, &["--lease-ms", "1000"]);
    wait_for(Duration::from_secs(10), "a master", || master_of(&a.addr));
    let err = open_client(&a.addr, "x");
    assert!(err.is_ok(), "client sessions do not need a formatted cluster: {err:?}");
    let config = format(&a.addr, 1).unwrap();
    let node = NodeInfo { id: "127.0.0.9:7000".into(), addr: "127.0.0.9:7000".into(), zone: 0, weight: 1 };
    let storage = open_storage(&a.addr, &node, "").unwrap();
    let kept = open_client(&a.addr, "kept").unwrap().0;
    for _ in 0..20 {
        keepalive(&a.addr, kept).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let i = info(&a.addr).unwrap();
    assert!(i.sessions.iter().all(|s| s.id != storage), "the storage session expired");
    assert!(i.sessions.iter().any(|s| s.id == kept), "the session with keepalives lives");
    // The only storage node left: no empty epoch, the cluster halts in the node's epoch.
    assert_eq!(i.epochs.last().unwrap().nodes, vec![node.clone()], "no empty epoch");
    assert_eq!(i.status, ClusterStatus::Halted);
    let (events, _) = watch(&a.addr, 1, 1000, 0).unwrap();
    assert!(events.iter().any(|e| matches!(e.kind, EventKind::Left { session, expired: true } if session == storage)));
    assert_eq!(code(&open_storage(&a.addr, &node, "other-cluster").unwrap_err()), Some(ErrorCode::WrongCluster));
    assert!(open_storage(&a.addr, &node, &config.cluster_id).is_ok());
}

#[test]
fn cluster_shutdown_stops_every_groupd_and_restart_resumes() {
    let (root, net) = setup();
    let mut g = three(&net, root.path(), &[]);
    let config = format(&g[0].addr, 3).unwrap();
    let node = NodeInfo { id: "127.0.0.9:7000".into(), addr: "127.0.0.9:7000".into(), zone: 0, weight: 1 };
    open_storage(&g[1].addr, &node, &config.cluster_id).unwrap();
    shutdown(&g[2].addr).unwrap();
    for x in g.iter_mut() {
        let st = x.daemon.wait_exit(Duration::from_secs(15));
        assert_eq!(st, Some(0), "{} exited with {st:?}", x.addr);
    }
    for x in g.iter_mut() {
        x.daemon.restart();
    }
    let i = wait_for(Duration::from_secs(15), "the group back", || {
        let i = info(&g[0].addr).ok()?;
        (master_of(&g[0].addr).is_some() && i.status == ClusterStatus::Shutdown).then_some(i)
    });
    assert_eq!(i.missing, vec![node.clone()]);
    // Still up a few seconds later: an old shutdown entry does not stop a restarted groupd.
    std::thread::sleep(Duration::from_secs(3));
    for x in g.iter_mut() {
        assert!(x.daemon.is_running(), "{} stopped again", x.addr);
    }
    open_storage(&g[1].addr, &node, &config.cluster_id).unwrap();
    assert_eq!(info(&g[1].addr).unwrap().status, ClusterStatus::Running);
}

#[test]
fn sigterm_stops_cleanly_and_startup_errors_are_one_line() {
    let (root, net) = setup();
    let mut a = Groupd::start(&net, root.path(), "a", 1, &[]);
    wait_for(Duration::from_secs(10), "a master", || master_of(&a.addr));
    // A second groupd on the same address cannot listen.
    let out = sheep_tests::keys::command("groupd")
        .args(["--listen", &a.addr, "--data", &root.path().join("b").display().to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("groupd: error: cannot listen on"), "{err}");
    // The same data directory is refused.
    let out = sheep_tests::keys::command("groupd")
        .args(["--listen", &net.free_addr(1), "--data", &a.dir.display().to_string()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another groupd"));
    a.daemon.signal(Signal::SIGTERM);
    let st = a.daemon.wait_exit(Duration::from_secs(10));
    assert_eq!(st, Some(0), "exits cleanly on SIGTERM: {st:?}");
}

#[test]
fn later_groupd_are_members_until_more_voters_are_wanted() {
    let (root, net) = setup();
    let g = three(&net, root.path(), &[]);
    let d = Groupd::start(&net, root.path(), "d", 4, &["--join", &g[1].addr]);
    let role_of_d = |at: &str| info(at).ok().and_then(|i| i.members.iter().find(|m| m.addr == d.addr).map(|m| m.role));
    wait_for(Duration::from_secs(10), "d to be a member", || {
        (role_of_d(&g[0].addr) == Some(MemberRole::Member)).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(role_of_d(&g[0].addr), Some(MemberRole::Member), "a fourth groupd does not vote with voters=3");
    // A member serves reads and forwards writes.
    format(&d.addr, 5).unwrap();
    assert!(info(&d.addr).unwrap().config.is_some());
    wait_for(Duration::from_secs(10), "d to be promoted", || {
        (role_of_d(&g[2].addr) == Some(MemberRole::Submaster)).then_some(())
    });
}

#[test]
fn snapshots_bring_new_members_up_and_survive_restarts() {
    let (root, net) = setup();
    let mut a = Groupd::start(&net, root.path(), "a", 1, &["--snapshot-every", "20"]);
    wait_for(Duration::from_secs(10), "a master", || master_of(&a.addr));
    let (session, _) = open_client(&a.addr, "writer").unwrap();
    for i in 0..60u8 {
        propose(&a.addr, session, &[i]).unwrap();
    }
    wait_for(Duration::from_secs(5), "a snapshot file", || a.dir.join("snapshot.bin").exists().then_some(()));
    let b = Groupd::start(&net, root.path(), "b", 2, &["--snapshot-every", "20", "--join", &a.addr]);
    let want = info(&a.addr).unwrap().applied_seq;
    wait_for(Duration::from_secs(10), "b to catch up from the snapshot", || {
        (info(&b.addr).ok()?.applied_seq == want).then_some(())
    });
    let (events, _) = watch(&b.addr, 1, 1000, 0).unwrap();
    assert_eq!(events.len() as u64, want, "the events travel in the snapshot");
    // kill -9 and restart: the state comes back from the snapshot and the log after it.
    propose(&a.addr, session, b"last").unwrap();
    a.daemon.kill();
    a.daemon.restart();
    wait_for(Duration::from_secs(15), "a back with its state", || {
        let i = info(&a.addr).ok()?;
        (i.applied_seq == want + 1 && i.sessions.len() == 1).then_some(())
    });
}

#[test]
fn a_hung_master_is_replaced_and_follows_when_it_resumes() {
    let (root, net) = setup();
    let g = three(&net, root.path(), &[]);
    let (session, _) = open_client(&g[0].addr, "c").unwrap();
    let master = master_of(&g[0].addr).unwrap();
    let mi = g.iter().position(|x| x.addr == master).unwrap();
    let other = g[(mi + 1) % 3].addr.clone();
    g[mi].daemon.signal(Signal::SIGSTOP);
    let new_master = wait_for(Duration::from_secs(15), "a new master", || master_of(&other).filter(|m| *m != master));
    // Writes go on through any live groupd; the session was granted a new lease.
    keepalive(&other, session).unwrap();
    let seq = propose(&g[(mi + 2) % 3].addr, session, b"while hung").unwrap();
    g[mi].daemon.signal(Signal::SIGCONT);
    wait_for(Duration::from_secs(15), "the old master to follow", || {
        let i = info(&master).ok()?;
        (i.applied_seq >= seq && master_of(&master)? == new_master).then_some(())
    });
    assert!(info(&new_master).unwrap().sessions.iter().any(|s| s.id == session));
}
