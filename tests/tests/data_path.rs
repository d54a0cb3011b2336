//! The replicated data path on real processes: import/export through sheepctl, node
//! failures and additions while the cluster heals, corrupt copies, deletes while a node is down.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sheep_core::group::ClusterStatus;
use sheep_tests::rand::Rng;
use sheep_tests::{wait_until, Cluster};

const T: Duration = Duration::from_secs(60);
const MIB: usize = 1 << 20;

/// One groupd, `nodes` storaged, formatted with 3 copies.
fn cluster(nodes: usize) -> Cluster {
    Cluster::formatted(nodes, 3, &[])
}

fn live(c: &mut Cluster) -> Vec<usize> {
    (0..c.storageds.len()).filter(|&i| c.storageds[i].is_running()).collect()
}

/// oid → the live nodes holding it in `obj/`.
fn holders(c: &mut Cluster) -> BTreeMap<String, BTreeSet<usize>> {
    let mut map: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for i in live(c) {
        for oid in c.objects_on(i) {
            map.entry(oid).or_default().insert(i);
        }
    }
    map
}

/// Every object is held by exactly `copies` live nodes.
fn assert_replicated(c: &mut Cluster, copies: usize, objects_expected: usize) {
    let h = holders(c);
    assert!(h.len() >= objects_expected, "{} objects, expected at least {objects_expected}", h.len());
    for (oid, nodes) in &h {
        assert_eq!(nodes.len(), copies, "object {oid} is on nodes {nodes:?}\n{}", c.logs());
    }
}

fn import(c: &Cluster, name: &str, data: &[u8]) {
    let file = c.path(&format!("{name}.in"));
    std::fs::write(&file, data).unwrap();
    c.ctl_ok(&["vdi", "import", name, file.to_str().unwrap()]);
}

fn export(c: &Cluster, name: &str) -> Vec<u8> {
    let file = c.path(&format!("{name}.out"));
    let _ = std::fs::remove_file(&file);
    c.ctl_ok(&["vdi", "export", name, file.to_str().unwrap()]);
    std::fs::read(&file).unwrap()
}

fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {i} (object {})", i / (4 * MIB));
    }
}

#[test]
fn kill_a_node_data_survives_and_heals_then_it_returns() {
    let mut c = cluster(4);
    let data = Rng::new(1).bytes(64 * MIB);
    c.ctl_ok(&["vdi", "create", "v", "64M"]);
    import(&c, "v", &data);
    assert_replicated(&mut c, 3, 16);

    c.storageds[0].kill();
    c.wait_epoch_nodes(0, 3, ClusterStatus::Running);
    assert_same(&export(&c, "v"), &data, "export after a node died");
    c.wait_recovered();
    assert_replicated(&mut c, 3, 16);

    // The node comes back: its old copies are never served, objects stay at 3 copies, and
    // once everyone has recovered nothing is left in .stale.
    c.storageds[0].restart();
    c.wait_epoch_nodes(0, 4, ClusterStatus::Running);
    assert_same(&export(&c, "v"), &data, "export after the node returned");
    c.wait_recovered();
    wait_until(T, "3 copies of every object and empty .stale dirs", || {
        let h = holders(&mut c);
        if let Some((oid, n)) = h.iter().find(|(_, n)| n.len() != 3) {
            return Err(format!("{oid} on {n:?}"));
        }
        for i in 0..4 {
            let stale = c.stale_on(i);
            if !stale.is_empty() {
                return Err(format!("node {i} still has {} stale objects", stale.len()));
            }
        }
        Ok(())
    });
}

#[test]
fn a_new_node_takes_its_share_and_reads_stay_correct() {
    let mut c = cluster(4);
    let data = Rng::new(2).bytes(64 * MIB);
    c.ctl_ok(&["vdi", "create", "v", "64M"]);
    import(&c, "v", &data);
    c.add_storaged();
    // Reads during the move.
    assert_same(&export(&c, "v"), &data, "export while objects move");
    c.wait_epoch_nodes(0, 5, ClusterStatus::Running);
    c.wait_recovered();
    assert!(!c.objects_on(4).is_empty(), "the new node holds objects");
    assert_replicated(&mut c, 3, 16);
    assert_same(&export(&c, "v"), &data, "export after the move");
}

#[test]
fn a_flipped_byte_is_never_served_and_is_repaired() {
    let c = cluster(3);
    let data = Rng::new(3).bytes(8 * MIB);
    c.ctl_ok(&["vdi", "create", "v", "8M"]);
    import(&c, "v", &data);
    // Flip one byte in the middle of every data object file on node 0.
    let dir = c.path("storaged1/obj");
    let mut flipped = Vec::new();
    for oid in c.objects_on(0) {
        if oid.starts_with('8') {
            continue; // the inode object
        }
        let path = dir.join(&oid);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() - 100_000;
        bytes[at] ^= 0x5a;
        std::fs::write(&path, &bytes).unwrap();
        flipped.push((path, bytes));
    }
    assert!(!flipped.is_empty());
    // Read every object from each of its 3 replicas in turn, so the corrupt copies are read.
    for k in 0..3 {
        let file = c.path("replica.out");
        c.ctl_ok(&["vdi", "export", "v", file.to_str().unwrap(), "--replica", &k.to_string()]);
        assert_same(&std::fs::read(&file).unwrap(), &data, &format!("export from replica {k}"));
    }
    wait_until(T, "the corrupt copies to be repaired", || {
        for (path, bad) in &flipped {
            if std::fs::read(path).map_err(|e| e.to_string())? == *bad {
                return Err(format!("{} still corrupt", path.display()));
            }
        }
        Ok(())
    });
    assert_same(&export(&c, "v"), &data, "export after repair");
}

#[test]
fn acked_writes_survive_a_kill_and_an_addition_during_recovery() {
    let mut c = cluster(4);
    let size = 32 * MIB;
    c.ctl_ok(&["vdi", "create", "v", "32M"]);
    let mut model = vec![0u8; size];
    let mut rng = Rng::new(4);
    let mut acked = 0;
    for step in 0..120 {
        if step == 30 {
            c.storageds[1].kill();
        }
        if step == 60 {
            c.add_storaged();
        }
        let len = (rng.below(16) as usize + 1) * 4096 + rng.below(2) as usize * 1000;
        let off = rng.below((size - len) as u64) as usize;
        let bytes = rng.bytes(len);
        let out = c.ctl_stdin(&["vdi", "write", "v", &off.to_string(), &len.to_string()], &bytes);
        if out.status.success() {
            model[off..off + len].copy_from_slice(&bytes);
            acked += 1;
        } else {
            // A write that failed may or may not have reached the disk: read back what is
            // there now and take it as the model for that range.
            let out = c.ctl(&["vdi", "read", "v", &off.to_string(), &len.to_string()]);
            assert!(out.status.success());
            model[off..off + len].copy_from_slice(&out.stdout);
        }
    }
    assert!(acked >= 100, "only {acked} of 120 writes were acked");
    c.wait_epoch_nodes(0, 4, ClusterStatus::Running);
    c.wait_recovered();
    assert_same(&export(&c, "v"), &model, "the VDI after everything settled");
    assert_replicated(&mut c, 3, 1);
}

#[test]
fn delete_while_a_node_is_down_removes_everything_when_it_returns() {
    let mut c = cluster(4);
    let data = Rng::new(5).bytes(16 * MIB);
    c.ctl_ok(&["vdi", "create", "gone", "16M"]);
    import(&c, "gone", &data);
    c.ctl_ok(&["vdi", "create", "kept", "4M"]);
    import(&c, "kept", &data[..4 * MIB]);
    let before: BTreeSet<String> = (0..4).flat_map(|i| c.objects_on(i)).collect();
    c.wait_recovered();
    c.storageds[2].kill();
    c.wait_epoch_nodes(0, 3, ClusterStatus::Running);
    c.ctl_ok(&["vdi", "delete", "gone"]);
    let out = c.ctl(&["vdi", "export", "gone", c.path("x").to_str().unwrap()]);
    assert!(!out.status.success(), "a deleted VDI cannot be read");
    c.storageds[2].restart();
    c.wait_epoch_nodes(0, 4, ClusterStatus::Running);
    c.wait_recovered();
    let kept: BTreeSet<String> = wait_until(T, "the deleted VDI's objects to go everywhere", || {
        let now: BTreeSet<String> = (0..4).flat_map(|i| c.objects_on(i).into_iter().chain(c.stale_on(i))).collect();
        // What is left are the objects of `kept` only: at most 1 data object + its inode.
        if now.len() <= 2 {
            Ok(now)
        } else {
            Err(format!("{} objects left", now.len()))
        }
    });
    assert!(kept.is_subset(&before));
    assert_same(&export(&c, "kept"), &data[..4 * MIB], "the other VDI is untouched");
}

#[test]
fn bad_vdi_requests_get_one_clear_line() {
    let c = cluster(3);
    c.ctl_ok(&["vdi", "create", "v", "8M"]);
    let cases: &[(&[&str], &str)] = &[
        (&["vdi", "create", "v", "8M"], "exists"),
        (&["vdi", "create", "a/b", "8M"], "/"),
        (&["vdi", "create", "w", "8Q"], "8Q"),
        (&["vdi", "create", "w", "1000"], "512"),
        (&["vdi", "read", "nope"], "nope"),
        (&["vdi", "read", "v", "8M", "1"], "end"),
        (&["vdi", "read", "v", "7M", "2M"], "end"),
        (&["vdi", "delete", "nope"], "nope"),
    ];
    for (args, needle) in cases {
        let out = c.ctl(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(err.contains(needle), "{args:?}: stderr should mention {needle:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
    }
    let out = c.ctl_stdin(&["vdi", "write", "v", "8M"], b"x");
    assert!(!out.status.success(), "a write past the end is refused");
    // Reads inside the VDI of never-written space are zeros.
    let out = c.ctl(&["vdi", "read", "v", "4M", "4K"]);
    assert!(out.status.success());
    assert_eq!(out.stdout, vec![0u8; 4096]);
}
