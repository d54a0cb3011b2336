//! Seen in issue 10 (item 2): snapshots taken under load while the membership changes must
//! not leave their objects' replicas different from each other. 6 storaged, copies 3, a VDI
//! served over NBD with fio writing 16 KiB blocks at queue depth 16 (crc32c verify) again and
//! again; one storaged is killed -9, a new one joins, then 5 snapshots are taken 3 s apart.
//! Afterwards every copy of every object is identical, every snapshot reads the same through
//! each replica (twice), and `cluster check --dry-run` finds nothing.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sheep_core::group::ClusterStatus;
use sheep_tests::chaos::compare_replicas;
use sheep_tests::nbd::serving;
use sheep_tests::{block_on, Cluster};

const SNAPSHOTS: usize = 5;

/// Full passes of fio over the export until `stop`: each writes the whole VDI at random
/// and verifies it. Returns how many passes ran; panics if one failed its verify.
fn fio_passes(uri: String, stop: Arc<AtomicBool>) -> usize {
    let mut passes = 0;
    while !stop.load(Ordering::SeqCst) || passes == 0 {
        let out = Command::new("fio")
            .args([
                "--name=verify",
                "--ioengine=nbd",
                &format!("--uri={uri}"),
                "--rw=randwrite",
                "--bs=16k",
                "--iodepth=16",
                "--size=32M",
                "--verify=crc32c",
                "--verify_fatal=1",
                "--verify_state_save=0",
                "--do_verify=1",
                "--eta=never",
            ])
            .output()
            .expect("run fio (ci/install-deps installs it)");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "fio pass {passes} failed:\n{text}");
        passes += 1;
    }
    passes
}

/// Snapshot `tag` read through its `replica`-th replica first.
fn read_snapshot(c: &Cluster, tag: &str, replica: u8) -> Vec<u8> {
    let out = c.ctl(&["vdi", "read", "disk0", "--snapshot", tag, "--replica", &replica.to_string()]);
    assert!(out.status.success(), "read {tag} replica {replica}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn snapshots_under_load_across_a_membership_change_keep_identical_replicas() {
    let mut c = Cluster::formatted(6, 3, &["--object-size", "1M"]);
    c.ctl_ok(&["vdi", "create", "disk0", "32M"]);
    let (mut export, uri) = serving(&c, "disk0", "export.log");
    let stop = Arc::new(AtomicBool::new(false));
    let fio = {
        let (uri, stop) = (uri.clone(), stop.clone());
        std::thread::spawn(move || fio_passes(uri, stop))
    };
    std::thread::sleep(Duration::from_secs(2));
    c.storageds[0].kill();
    c.wait_epoch_nodes(0, 5, ClusterStatus::Running);
    c.add_storaged();
    c.wait_epoch_nodes(0, 6, ClusterStatus::Running);
    for i in 1..=SNAPSHOTS {
        std::thread::sleep(Duration::from_secs(3));
        c.ctl_ok(&["vdi", "snapshot", "disk0", "--tag", &format!("snap{i}")]);
    }
    stop.store(true, Ordering::SeqCst);
    let passes = fio.join().expect("fio thread");
    eprintln!("snapshot_replicas: {passes} fio passes verified");
    assert!(export.is_running(), "the export stopped");
    export.kill();

    c.wait_recovered();
    let info = c.info_from(0).expect("cluster info");
    let epoch = info.epochs.last().expect("an epoch").epoch;
    let live: Vec<String> =
        (1..c.storageds.len()).filter(|&i| c.storageds[i].is_running()).map(|i| c.storaged_addrs[i].clone()).collect();
    let differ = block_on(compare_replicas(&live, epoch));
    assert!(differ.is_empty(), "replicas differ:\n{}", differ.join("\n"));
    for i in 1..=SNAPSHOTS {
        let tag = format!("snap{i}");
        let first = read_snapshot(&c, &tag, 0);
        assert_eq!(first.len(), 32 << 20, "{tag}'s size");
        for r in [1, 2, 0, 1, 2] {
            assert!(read_snapshot(&c, &tag, r) == first, "{tag} reads otherwise through replica {r}");
        }
    }
    c.assert_check_clean();
}
