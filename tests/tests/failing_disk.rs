//! A storage node whose disk fails (its object directory vanishes under it, as in issue 10's
//! "seen 3"): it leaves the data membership within a lease, is listed as failed with the
//! reason, and writes, recovery, `vdi list` and `vdi check` go on at the others.

use std::time::{Duration, Instant};

use sheep_core::group::ClusterStatus;
use sheep_tests::{wait_until, Cluster};

#[test]
fn a_node_whose_disk_fails_leaves_within_a_lease_and_the_rest_goes_on() {
    let mut c = Cluster::formatted(4, 3, &["--object-size", "1M"]);
    c.ctl_ok(&["vdi", "create", "t", "8M"]);
    let first: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let out = c.ctl_stdin(&["vdi", "write", "t", "0"], &first);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let epochs_before = c.info().epochs.len();

    // Storage node 1's disk "fails": its object directory is gone.
    let obj = c.path("storaged2/obj");
    std::fs::rename(&obj, c.path("storaged2/obj.gone")).expect("rename obj");
    let failed_at = Instant::now();
    let bound = Duration::from_millis(c.lease_ms) + Duration::from_secs(5);
    let info = wait_until(bound, "the node with the failed disk to leave the epoch", || {
        let info = c.info_from(0)?;
        let nodes = info.epochs.last().map_or(0, |e| e.nodes.len());
        if nodes == 3 && info.status == ClusterStatus::Running {
            Ok(info)
        } else {
            Err(format!("{nodes} nodes, {:?}", info.status))
        }
    });
    eprintln!("left the epoch {:?} after the failure", failed_at.elapsed());
    assert_eq!(info.epochs.len(), epochs_before + 1, "one new epoch");
    assert!(!info.epochs.last().unwrap().nodes.iter().any(|n| n.addr == c.storaged_addrs[1]));

    // Listed as failed, with the reason; its process lives on.
    let list: serde_json::Value = serde_json::from_str(&c.ctl_ok(&["--json", "node", "list"])).expect("JSON");
    let row = list["nodes"].as_array().unwrap().iter().find(|n| n["addr"] == c.storaged_addrs[1].as_str()).cloned();
    let row = row.unwrap_or_else(|| panic!("the failed node is not listed: {list}"));
    assert_eq!(row["state"], "failed", "{row}");
    assert!(row["reason"].as_str().unwrap_or("").contains("obj"), "{row}");
    let table = c.ctl_ok(&["node", "list"]);
    assert!(table.contains("failed ("), "{table}");
    assert!(c.storageds[1].is_running());
    let info_out = c.ctl(&["node", "info"]);
    assert!(String::from_utf8_lossy(&info_out.stdout).contains("disk failed"), "{info_out:?}");

    // Writes, reads, the VDI list, recovery and check go on at the others.
    let second: Vec<u8> = (0..4u32 << 20).map(|i| (i % 241) as u8).collect();
    let out = c.ctl_stdin(&["vdi", "write", "t", "4194304"], &second);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    c.ctl_ok(&["vdi", "list"]);
    c.wait_recovered();
    let back = c.ctl(&["vdi", "read", "t", "0", "8388608"]);
    assert!(back.status.success(), "{}", String::from_utf8_lossy(&back.stderr));
    assert!(back.stdout[..4 << 20] == first[..] && back.stdout[4 << 20..] == second[..], "the VDI's bytes");
    let check = c.ctl(&["vdi", "check", "t", "--dry-run"]);
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // The disk is back (repaired): restarted, the node rejoins and recovers; all is clean.
    c.storageds[1].kill();
    std::fs::rename(c.path("storaged2/obj.gone"), &obj).expect("rename back");
    c.storageds[1].restart();
    c.wait_epoch_nodes(0, 4, ClusterStatus::Running);
    c.wait_recovered();
    c.assert_check_clean();
    let back = c.ctl(&["vdi", "read", "t", "4194304", "4194304", "--replica", "1"]);
    assert!(back.status.success() && back.stdout == second, "the second write after the node came back");
}

/// Every replica of an object crashes at once: the nodes left must not take an older copy
/// (or none) for it. The object waits, `node recovery` names the nodes it waits for, and
/// once one of them is back everything is recovered with the newest data.
#[test]
fn an_object_whose_every_replica_is_down_waits_for_one_of_them() {
    let mut c = Cluster::formatted(5, 3, &["--object-size", "1M"]);
    c.ctl_ok(&["vdi", "create", "t", "1M"]);
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
    let out = c.ctl_stdin(&["vdi", "write", "t", "0"], &data);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    c.wait_recovered();
    // The data object (index 0) is on three of the five nodes; the inode is a "8…" object.
    let holders: Vec<usize> =
        (0..5).filter(|&i| c.objects_on(i).iter().any(|o| !o.starts_with('8') && o.ends_with("00000000"))).collect();
    assert_eq!(holders.len(), 3, "the data object's replicas: {holders:?}");
    for &i in &holders {
        c.storageds[i].kill();
    }
    c.wait_epoch_nodes(0, 2, ClusterStatus::Running);
    let waited: serde_json::Value = wait_until(Duration::from_secs(30), "a node to say it waits", || {
        let v: serde_json::Value =
            serde_json::from_str(&c.ctl_ok(&["--json", "node", "recovery"])).map_err(|e| e.to_string())?;
        let waiting = v["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["waiting_for"].as_array().is_some_and(|w| !w.is_empty()) && n["complete"] == false);
        waiting.cloned().ok_or_else(|| v.to_string())
    });
    let named: Vec<String> =
        waited["waiting_for"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()).collect();
    assert!(holders.iter().any(|&i| named.contains(&c.storaged_addrs[i])), "waits for {named:?}, holders {holders:?}");
    let table = c.ctl_ok(&["node", "recovery"]);
    assert!(table.contains("waiting for"), "{table}");
    // Reads of it wait, then fail: never zeros or an older copy.
    let read = c.ctl(&["vdi", "read", "t", "0", "4096"]);
    assert!(!read.status.success(), "read while every replica is down: {:?}", &read.stdout.get(..16));

    // One of them is back: the newest copy comes from it.
    c.storageds[holders[0]].restart();
    c.wait_epoch_nodes(0, 3, ClusterStatus::Running);
    c.wait_recovered();
    let back = c.ctl(&["vdi", "read", "t", "0", "1048576"]);
    assert!(back.status.success() && back.stdout == data, "{}", String::from_utf8_lossy(&back.stderr));
}

/// A disk that stops answering (a hung device: the probe's I/O never returns) has failed
/// like one that answers with errors: past the probe's deadline the node leaves the data
/// membership, listed as failed with why, and writes go on at the others.
#[test]
fn a_node_whose_disk_hangs_leaves_after_the_probe_deadline() {
    if !sheep_tests::daemon::require_failpoints("a_node_whose_disk_hangs_leaves_after_the_probe_deadline") {
        return;
    }
    let mut c = Cluster::formatted(4, 3, &["--object-size", "1M"]);
    c.ctl_ok(&["vdi", "create", "t", "4M"]);
    // Node 1 restarted with a disk that hangs from its third probe on.
    c.storageds[1].kill();
    c.wait_epoch_nodes(0, 3, ClusterStatus::Running);
    c.storageds[1].failpoints = Some("object-probe=2*off->sleep(120000)".into());
    c.storageds[1].restart();
    c.wait_epoch_nodes(0, 4, ClusterStatus::Running);
    let bound = Duration::from_secs(10 + 3) + Duration::from_millis(c.lease_ms) + Duration::from_secs(10);
    wait_until(bound, "the node with the hung disk to be listed failed", || {
        let list: serde_json::Value =
            serde_json::from_str(&c.ctl_ok(&["--json", "node", "list"])).map_err(|e| e.to_string())?;
        let row = list["nodes"].as_array().into_iter().flatten().find(|n| n["addr"] == c.storaged_addrs[1].as_str());
        match row {
            Some(r) if r["state"] == "failed" && r["reason"].as_str().unwrap_or("").contains("did not answer") => {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    });
    c.wait_epoch_nodes(0, 3, ClusterStatus::Running);
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 249) as u8).collect();
    let out = c.ctl_stdin(&["vdi", "write", "t", "0"], &data);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let back = c.ctl(&["vdi", "read", "t", "0", "1048576"]);
    assert!(back.status.success() && back.stdout == data, "{}", String::from_utf8_lossy(&back.stderr));
}
