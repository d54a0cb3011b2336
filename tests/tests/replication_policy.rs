//! The replication policy set at format: more copies than zones refused unless allowed, and
//! writes held while an object has fewer replicas than `--min-copies`, then failing with an
//! error that says why (issue 10); `cluster info` says how the copies fit the nodes.

use std::time::{Duration, Instant};

use sheep_core::group::ClusterStatus;
use sheep_tests::Cluster;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn more_copies_than_zones_are_refused_unless_allowed() {
    let c = Cluster::formatted(3, 3, &[]);
    let out = c.ctl(&["vdi", "create", "wide", "8M", "--copies", "4"]);
    assert!(!out.status.success(), "4 copies on 3 zones were accepted");
    assert!(stderr(&out).contains("--allow-fewer-zones"), "{}", stderr(&out));
    c.ctl_ok(&["vdi", "create", "wide", "8M", "--copies", "4", "--allow-fewer-zones"]);
    c.ctl_ok(&["vdi", "create", "fits", "8M"]);
    let info = c.ctl_ok(&["cluster", "info"]);
    assert!(info.contains("Replication:  ok (writes need 2 of 3 copies)"), "{info}");
}

#[test]
fn writes_below_min_copies_are_held_then_fail_saying_why() {
    let mut c = Cluster::formatted(3, 3, &["--min-copies", "3", "--min-copies-wait", "4"]);
    c.ctl_ok(&["vdi", "create", "t", "8M"]);
    let out = c.ctl_stdin(&["vdi", "write", "t", "0"], b"three copies");
    assert!(out.status.success(), "{}", stderr(&out));

    c.storageds[2].kill();
    c.wait_epoch_nodes(0, 2, ClusterStatus::Running);
    let info = c.ctl_ok(&["cluster", "info"]);
    assert!(info.contains("Replication:  halted: 2 zone(s) up, fewer than the 3 copies a write needs"), "{info}");
    let started = Instant::now();
    let out = c.ctl_stdin(&["vdi", "write", "t", "0"], b"two copies only");
    let took = started.elapsed();
    assert!(!out.status.success(), "a write on 2 of 3 copies was acknowledged with --min-copies 3");
    assert!(stderr(&out).contains("fewer than the 3 a write needs"), "{}", stderr(&out));
    assert!(took >= Duration::from_secs(4), "failed after {took:?}, before the hold of 4 s");
    // Reads go on meanwhile.
    let back = c.ctl(&["vdi", "read", "t", "0", "12"]);
    assert!(back.status.success() && back.stdout == b"three copies", "{}", stderr(&back));

    // A write held while the node comes back goes through.
    let groupd = c.groupd_addrs.join(",");
    let held = std::thread::spawn(move || {
        let mut child = sheep_tests::keys::command("sheepctl")
            .args(["--groupd", &groupd, "vdi", "write", "t", "0"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("sheepctl");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"held, then written").unwrap();
        child.wait_with_output().expect("wait")
    });
    std::thread::sleep(Duration::from_millis(500));
    c.storageds[2].restart();
    let out = held.join().unwrap();
    assert!(out.status.success(), "the held write failed: {}", stderr(&out));
    c.wait_recovered();
    let back = c.ctl(&["vdi", "read", "t", "0", "18", "--replica", "2"]);
    assert!(back.status.success() && back.stdout == b"held, then written", "{}", stderr(&back));
}
