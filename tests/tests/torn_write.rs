//! Writes cut off by a crash (failpoints in storaged's object store end the process between
//! the steps of a write, as a power loss would): on every replica at once, each 4 KiB block
//! reads as its old or its new content, never as an error, and the replicas become one again.
//! Needs daemons built with the `failpoints` feature (`ci/test` builds them so).

use std::os::unix::fs::FileExt;
use std::process::Stdio;
use std::time::Duration;

use sheep_core::group::ClusterStatus;
use sheep_tests::chaos::compare_replicas;
use sheep_tests::daemon::require_failpoints;
use sheep_tests::{block_on, wait_until, Cluster};

const MIB: usize = 1 << 20;
const BLOCK: usize = 4096;
/// The object file format (storaged/src/objects/file.rs): the version at byte 24; the data
/// of a 1 MiB object at 4 KiB (64 bytes of header and 8 bytes a block of crcs, rounded up).
const VERSION_AT: u64 = 24;
const DATA_AT_1M: u64 = 4096;

/// The data object's id (16 hex digits) among storaged `i`'s objects (inodes start with 8).
fn data_object(c: &Cluster, i: usize) -> String {
    let objs = c.objects_on(i);
    objs.into_iter().find(|o| !o.starts_with('8')).expect("the data object")
}

/// The version in the header of storaged `i`'s copy of `oid`, and its first `len` bytes.
fn on_disk(c: &Cluster, i: usize, oid: &str, len: usize) -> (u64, Vec<u8>) {
    let f = std::fs::File::open(c.path(&format!("storaged{}/obj/{oid}", i + 1))).expect("object file");
    let mut v = [0u8; 8];
    f.read_exact_at(&mut v, VERSION_AT).unwrap();
    let mut data = vec![0u8; len];
    f.read_exact_at(&mut data, DATA_AT_1M).unwrap();
    (u64::from_le_bytes(v), data)
}

#[test]
fn a_write_cut_off_on_every_replica_reads_old_or_new_and_the_replicas_become_one() {
    if !require_failpoints("a_write_cut_off_on_every_replica") {
        return;
    }
    let mut c = Cluster::formatted(3, 3, &["--object-size", "1M"]);
    c.ctl_ok(&["vdi", "create", "t", "4M"]);
    let old = vec![1u8; MIB];
    let out = c.ctl_stdin(&["vdi", "write", "t", "0"], &old);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Every storage node restarts set to crash in its next write: nodes 1 and 3 after the
    // crc entries and before the data, node 2 after the data and before the settled version.
    for (i, at) in
        ["object-write-before-data", "object-write-before-version", "object-write-before-data"].into_iter().enumerate()
    {
        c.storageds[i].kill();
        c.storageds[i].failpoints = Some(format!("{at}=1*return(crash)"));
    }
    for d in &mut c.storageds {
        d.restart();
    }
    c.wait_epoch_nodes(0, 3, ClusterStatus::Running);
    c.wait_recovered();
    let oid = data_object(&c, 0);

    // A write of 64 KiB over the object: every replica crashes in the middle of it.
    let new = vec![2u8; 16 * BLOCK];
    let mut writer = sheep_tests::keys::command("sheepctl")
        .args(["--groupd", &c.groupd_addrs.join(","), "vdi", "write", "t", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sheepctl");
    {
        use std::io::Write;
        writer.stdin.take().unwrap().write_all(&new).unwrap();
    }
    for d in &mut c.storageds {
        let code = d.wait_exit(Duration::from_secs(60));
        assert_ne!(code, Some(0), "{} should have crashed", d.name);
    }
    let _ = writer.kill();
    let _ = writer.wait();
    for (i, want) in [(0, &old[..new.len()]), (1, &new[..]), (2, &old[..new.len()])] {
        let (version, data) = on_disk(&c, i, &oid, new.len());
        assert_eq!(version & 1, 1, "storaged {} holds an unsettled copy ({version:#x})", i + 1);
        assert!(data == want, "storaged {}: the data as far as its write went: {:?}\n{}", i + 1, &data[..8], c.logs());
    }

    // Back without failpoints: the replicas take one copy, settled; every block reads as
    // its old or its new content, through every replica; nothing is damaged.
    for d in &mut c.storageds {
        d.failpoints = None;
        d.restart();
    }
    c.wait_epoch_nodes(0, 3, ClusterStatus::Running);
    c.wait_recovered();
    let epoch = c.info().epochs.last().unwrap().epoch;
    let differ = block_on(compare_replicas(&c.storaged_addrs, epoch));
    assert!(differ.is_empty(), "{differ:?}\n{}", c.logs());
    for replica in ["0", "1", "2"] {
        let back = c.ctl(&["vdi", "read", "t", "0", &new.len().to_string(), "--replica", replica]);
        assert!(back.status.success(), "{}", String::from_utf8_lossy(&back.stderr));
        for (k, block) in back.stdout.chunks(BLOCK).enumerate() {
            assert!(block == &old[..BLOCK] || block == &new[..BLOCK], "block {k} of replica {replica}");
        }
    }
    for i in 0..3 {
        let (version, _) = on_disk(&c, i, &oid, 0);
        assert_eq!(version & 1, 0, "storaged {}'s copy is settled ({version:#x})", i + 1);
    }
    let settled: usize = (1..=3)
        .filter(|n| std::fs::read_to_string(c.path(&format!("storaged{n}.log"))).unwrap().contains("settled object"))
        .count();
    // One node settles its own copy and the others take it; or, when every node plans
    // while all copies still wait in `.stale/`, every one takes the same chosen copy and
    // installs it settled at the same version (`recovery_plan`: live before stale, then the
    // lowest address), and none settles in place. The checks above hold either way.
    assert!(settled <= 1, "at most one node settles its copy in place, the others take one copy\n{}", c.logs());
    c.assert_check_clean();
    // And the VDI takes writes again (once the killed writer's lock went with its lease).
    wait_until(Duration::from_secs(30), "a write after the crash", || {
        let out = c.ctl_stdin(&["vdi", "write", "t", "0"], &[3u8; BLOCK]);
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
}
