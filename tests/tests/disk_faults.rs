//! Disk faults injected with failpoints (daemons built with the `failpoints` feature, as
//! `ci/test` builds them): a full disk fails writes cleanly and leaves nothing that reads as
//! damage (issue 10, "seen 4"); an I/O error on a write or on a sync fails the node's disk,
//! and the node leaves the data membership while the others go on; a raft log write torn by
//! a crash leaves a groupd that starts again and catches up.

use std::process::Output;
use std::time::Duration;

use sheep_core::group::{ClusterInfo, ClusterStatus};
use sheep_tests::daemon::require_failpoints;
use sheep_tests::{wait_until, Cluster};

const MIB: usize = 1 << 20;

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn restart_with(c: &mut Cluster, i: usize, failpoints: Option<&str>) {
    c.storageds[i].kill();
    c.storageds[i].failpoints = failpoints.map(str::to_string);
    c.storageds[i].restart();
}

#[test]
fn a_full_disk_fails_writes_cleanly_and_leaves_no_damage() {
    if !require_failpoints("a_full_disk_fails_writes_cleanly") {
        return;
    }
    let mut c = Cluster::formatted(3, 3, &["--object-size", "1M"]);
    c.ctl_ok(&["vdi", "create", "t", "8M"]);
    let out = c.ctl_stdin(&["vdi", "write", "t", "0"], &[7u8; 4096]);
    assert!(out.status.success(), "{}", text(&out));
    let before: Vec<_> = (0..3).map(|i| c.objects_on(i)).collect();

    // Storage node 2's disk is full.
    restart_with(&mut c, 1, Some("object-no-space=return"));
    c.wait_epoch_nodes(0, 3, ClusterStatus::Running);
    c.wait_recovered();
    c.ctl_ok(&["vdi", "create", "u", "8M"]);
    // The first write of a new VDI (its inode and a data object to create), and the first
    // write to another object of a written one: both fail saying why.
    for (vdi, offset) in [("u", "0"), ("t", "1048576")] {
        let out = c.ctl_stdin(&["vdi", "write", vdi, offset], &[9u8; 4096]);
        assert!(!out.status.success(), "a write onto a full disk");
        assert!(text(&out).contains("no space left"), "{}", text(&out));
    }
    // Nothing of them stays on the nodes that took them: no object table "lost", no orphan.
    let after: Vec<_> = (0..3).map(|i| c.objects_on(i)).collect();
    assert_eq!(after, before, "the failed writes' objects are gone");
    c.assert_check_clean();
    for (vdi, offset) in [("u", "0"), ("t", "1048576")] {
        let back = c.ctl(&["vdi", "read", vdi, offset, "4096"]);
        assert!(back.status.success() && back.stdout == vec![0u8; 4096], "{}", text(&back));
    }
    let back = c.ctl(&["vdi", "read", "t", "0", "4096"]);
    assert!(back.status.success() && back.stdout == vec![7u8; 4096], "{}", text(&back));

    // Space again: the same writes go through, and all is clean.
    restart_with(&mut c, 1, None);
    c.wait_epoch_nodes(0, 3, ClusterStatus::Running);
    c.wait_recovered();
    for (vdi, offset) in [("u", "0"), ("t", "1048576")] {
        let out = c.ctl_stdin(&["vdi", "write", vdi, offset], &[9u8; 4096]);
        assert!(out.status.success(), "{}", text(&out));
    }
    c.assert_check_clean();
}

/// The nodes of the newest epoch, and the cluster's status.
fn epoch_nodes(c: &Cluster) -> Result<(usize, ClusterInfo), String> {
    let info = c.info_from(0)?;
    let nodes = info.epochs.last().map_or(0, |e| e.nodes.len());
    Ok((nodes, info))
}

#[test]
fn an_io_error_on_a_write_or_a_sync_fails_the_disk_and_the_node_leaves() {
    if !require_failpoints("an_io_error_on_a_write_or_a_sync") {
        return;
    }
    let mut c = Cluster::formatted(5, 3, &["--object-size", "1M"]);
    c.ctl_ok(&["vdi", "create", "t", "16M"]);
    let first: Vec<u8> = (0..8 * MIB as u32).map(|i| (i % 251) as u8).collect();
    let out = c.ctl_stdin(&["vdi", "write", "t", "0"], &first);
    assert!(out.status.success(), "{}", text(&out));

    // Node 2's next object write fails with EIO; node 3's next sync does (a flush, or
    // the creation of an object its recovery pulls).
    restart_with(&mut c, 1, Some("object-write=return(eio)"));
    restart_with(&mut c, 2, Some("object-sync=return(eio)"));
    c.wait_epoch_nodes(0, 5, ClusterStatus::Running);
    let second: Vec<u8> = (0..8 * MIB as u32).map(|i| (i % 241) as u8).collect();
    let out = c.ctl_stdin(&["vdi", "write", "t", "0"], &second);
    assert!(out.status.success(), "the write goes on at the others: {}", text(&out));
    let bound = Duration::from_millis(c.lease_ms) + Duration::from_secs(10);
    wait_until(bound, "both failed nodes to leave the epoch", || match epoch_nodes(&c)? {
        (3, info) if info.status == ClusterStatus::Running => Ok(()),
        (n, info) => Err(format!("{n} nodes, {:?}", info.status)),
    });
    let list: serde_json::Value = serde_json::from_str(&c.ctl_ok(&["--json", "node", "list"])).expect("JSON");
    for i in [1, 2] {
        let row = list["nodes"].as_array().unwrap().iter().find(|n| n["addr"] == c.storaged_addrs[i].as_str());
        let row = row.unwrap_or_else(|| panic!("node {} is not listed: {list}", i + 1));
        assert_eq!(row["state"], "failed", "{row}");
        assert!(row["reason"].as_str().unwrap_or("").contains("Input/output error"), "{row}");
    }
    c.wait_recovered();
    let back = c.ctl(&["vdi", "read", "t", "0", &(8 * MIB).to_string()]);
    assert!(back.status.success() && back.stdout == second, "{}", text(&back));

    // The disks "repaired": restarted without faults, the nodes rejoin and all is clean.
    restart_with(&mut c, 1, None);
    restart_with(&mut c, 2, None);
    c.wait_epoch_nodes(0, 5, ClusterStatus::Running);
    c.wait_recovered();
    c.assert_check_clean();
    for replica in ["0", "1", "2"] {
        let back = c.ctl(&["vdi", "read", "t", "0", &(8 * MIB).to_string(), "--replica", replica]);
        assert!(back.status.success() && back.stdout == second, "replica {replica}: {}", text(&back));
    }
}

#[test]
fn a_raft_log_write_torn_by_a_crash_leaves_a_groupd_that_starts_and_catches_up() {
    if !require_failpoints("a_raft_log_write_torn") {
        return;
    }
    let mut c = Cluster::new();
    c.add_group(3);
    c.ctl_ok(&["cluster", "format", "--copies", "1"]);
    c.add_storaged();
    c.wait_epoch_nodes(0, 1, ClusterStatus::Running);
    // A submaster restarts set to tear its next log write and crash.
    let master = c.master(0).expect("a master");
    let sub = (0..3).find(|&i| i != master).unwrap();
    c.groupds[sub].kill();
    c.groupds[sub].failpoints = Some("raft-log-append=1*return(torn)".into());
    c.groupds[sub].restart();
    c.wait_group(master, 3, 3);
    // Proposals go on (two of three groupd are a quorum) while it crashes on the first.
    for name in ["a", "b", "c"] {
        c.ctl_ok(&["vdi", "create", name, "4M"]);
    }
    assert_ne!(c.groupds[sub].wait_exit(Duration::from_secs(30)), Some(0), "the torn write crashed it");
    let log = std::fs::read_to_string(&c.groupds[sub].log).unwrap();
    assert!(log.contains("raft log write torn"), "{log}");
    // Back without faults: it starts over its torn log and catches up.
    c.groupds[sub].failpoints = None;
    c.groupds[sub].restart();
    c.wait_group(sub, 3, 3);
    let at = c.groupd_addrs[sub].clone();
    wait_until(Duration::from_secs(30), "the restarted groupd to list every VDI", || {
        let out = c.ctl_at(&at, &["vdi", "list"]);
        let t = text(&out);
        if out.status.success() && ["a ", "b ", "c "].iter().all(|n| t.lines().any(|l| l.starts_with(n))) {
            Ok(())
        } else {
            Err(t)
        }
    });
}
