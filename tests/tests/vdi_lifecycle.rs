//! Snapshots, clones, rollbacks, resizes, attributes and space reclaim on real processes,
//! through sheepctl and an NBD export (the attached case: the export's daemon takes the
//! snapshot between two writes).

use std::collections::BTreeSet;
use std::time::Duration;

use nix::sys::signal::Signal;
use sheep_tests::nbd::{qemu_io, qemu_io_ok, serving};
use sheep_tests::rand::Rng;
use sheep_tests::{wait_until, Cluster};

const MIB: usize = 1 << 20;

fn read(c: &Cluster, args: &[&str]) -> Vec<u8> {
    let mut all = vec!["vdi", "read"];
    all.extend_from_slice(args);
    let out = c.ctl(&all);
    assert!(out.status.success(), "vdi read {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn write(c: &Cluster, name: &str, offset: usize, data: &[u8]) {
    let out = c.ctl_stdin(&["vdi", "write", name, &offset.to_string()], data);
    assert!(out.status.success(), "vdi write: {}", String::from_utf8_lossy(&out.stderr));
}

fn fails(c: &Cluster, args: &[&str], needle: &str) {
    let out = c.ctl(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(err.contains(needle), "{args:?}: stderr should mention {needle:?}: {err}");
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

#[test]
fn snapshots_clones_rollback_resize_and_attributes() {
    let c = Cluster::formatted(3, 3, &[]);
    c.ctl_ok(&["vdi", "create", "v", "16M"]);
    let a = random(10 * MIB, 1);
    write(&c, "v", 0, &a);
    let list =
        |c: &Cluster| -> serde_json::Value { serde_json::from_str(&c.ctl_ok(&["--json", "vdi", "list"])).unwrap() };
    let created = list(&c)[0]["created_ms"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let out = c.ctl_ok(&["vdi", "snapshot", "v", "--tag", "s1"]);
    assert!(out.contains("snapshot v@s1 taken"), "{out}");
    fails(&c, &["vdi", "snapshot", "v", "--tag", "s1"], "already");
    fails(&c, &["vdi", "snapshot", "v", "--tag", ""], "a snapshot tag must not be empty");
    // The snapshot lists when it was taken (the new working VDI's start), not when v began.
    let rows = list(&c);
    let time_of = |tag: Option<&str>| {
        let row = rows.as_array().unwrap().iter().find(|r| r["name"] == "v" && r["tag"].as_str() == tag);
        row.and_then(|r| r["created_ms"].as_u64()).unwrap_or_else(|| panic!("no v@{tag:?} in {rows}"))
    };
    assert!(time_of(Some("s1")) > created, "snapshot time {} after {created}: {rows}", time_of(Some("s1")));
    assert_eq!(time_of(Some("s1")), time_of(None), "{rows}");
    // The VDI goes on: new writes do not change the snapshot (copy-on-write).
    let b = random(5 * MIB, 2);
    write(&c, "v", 2 * MIB, &b);
    let mut now = a.clone();
    now[2 * MIB..7 * MIB].copy_from_slice(&b);
    assert_eq!(read(&c, &["v", "0", "10M"]), now);
    assert_eq!(read(&c, &["v", "--snapshot", "s1", "0", "10M"]), a);
    fails(&c, &["vdi", "read", "v", "--snapshot", "nope"], "no snapshot");
    // A clone starts as the snapshot and lives its own life.
    c.ctl_ok(&["vdi", "clone", "v", "--snapshot", "s1", "c"]);
    assert_eq!(read(&c, &["c", "0", "10M"]), a);
    write(&c, "c", 0, &[0xcc; 4096]);
    assert_eq!(read(&c, &["c", "0", "4096"]), vec![0xcc; 4096]);
    assert_eq!(read(&c, &["v", "--snapshot", "s1", "0", "4096"]), a[..4096].to_vec());
    // Rollback: back to the snapshot.
    c.ctl_ok(&["vdi", "rollback", "v", "--snapshot", "s1"]);
    assert_eq!(read(&c, &["v", "0", "10M"]), a);
    // Resize: grows, the new part reads as zeros; never shrinks.
    c.ctl_ok(&["vdi", "resize", "v", "32M"]);
    assert_eq!(read(&c, &["v", "30M", "2M"]), vec![0; 2 * MIB]);
    write(&c, "v", 31 * MIB, &[7; 4096]);
    assert_eq!(read(&c, &["v", "31M", "4096"]), vec![7; 4096]);
    fails(&c, &["vdi", "resize", "v", "8M"], "shrink");
    let out = c.ctl_ok(&["vdi", "resize", "v", "32M"]);
    assert_eq!(out, "VDI v is 32.0 MiB (33554432 bytes) already: nothing changed\n");
    // The list shows the snapshot, the tree who comes from whom.
    let list: serde_json::Value = serde_json::from_str(&c.ctl_ok(&["--json", "vdi", "list"])).unwrap();
    let rows = list.as_array().unwrap();
    let row = |name: &str, tag: Option<&str>| {
        rows.iter()
            .find(|r| r["name"] == name && r["tag"].as_str() == tag)
            .unwrap_or_else(|| panic!("no {name}@{tag:?} in {list}"))
            .clone()
    };
    assert_eq!(row("v", None)["size"], 32 * MIB as u64);
    assert_eq!(row("v", Some("s1"))["size"], 16 * MIB as u64);
    assert!(row("v", Some("s1"))["used"].as_u64().unwrap() >= 8 * MIB as u64, "{list}");
    assert!(row("c", None)["shared"].as_u64().unwrap() > 0, "the clone shares the snapshot's objects: {list}");
    let tree = c.ctl_ok(&["vdi", "tree"]);
    let lines: Vec<&str> = tree.lines().collect();
    let snap = lines.iter().position(|l| l.starts_with("v@s1 ")).unwrap_or_else(|| panic!("{tree}"));
    let under = |name: &str| {
        let child = |l: &&str| l.starts_with(&format!("├─ {name} ")) || l.starts_with(&format!("└─ {name} "));
        lines[snap + 1..].iter().any(child)
    };
    assert!(under("c") && under("v"), "the clone and the VDI go on from the snapshot:\n{tree}");
    // Attributes, ordered through groupd.
    c.ctl_ok(&["vdi", "setattr", "v", "owner", "alice"]);
    assert_eq!(c.ctl_ok(&["vdi", "getattr", "v", "owner"]), "alice\n");
    assert_eq!(c.ctl_ok(&["vdi", "getattr", "v", "owner", "--raw"]), "alice");
    fails(&c, &["vdi", "setattr", "v", "owner", "bob", "--exclusive"], "already");
    let out = c.ctl_stdin(&["vdi", "setattr", "v", "config"], b"{\"cpus\": 2}\n");
    assert!(out.status.success());
    assert_eq!(c.ctl_ok(&["vdi", "getattr", "v", "config"]), "{\"cpus\": 2}\n");
    c.ctl_ok(&["vdi", "setattr", "v", "owner", "--delete"]);
    fails(&c, &["vdi", "getattr", "v", "owner"], "no attribute");
    fails(&c, &["vdi", "getattr", "nope", "k"], "no VDI");
    // Import then export of a small image: both carry the same data, in the same object.
    c.ctl_ok(&["vdi", "create", "img", "16M"]);
    let mut image = vec![0u8; 16 * MIB];
    image[MIB..MIB + 8192].copy_from_slice(&random(8192, 5));
    let (src, dst) = (c.path("img.raw"), c.path("img.out"));
    std::fs::write(&src, &image).unwrap();
    let carried = "16.0 MiB (8.0 KiB of data in 1 object(s))";
    let out = c.ctl_ok(&["vdi", "import", "img", src.to_str().unwrap()]);
    assert!(out.contains(carried), "{out}");
    let out = c.ctl_ok(&["vdi", "export", "img", dst.to_str().unwrap()]);
    assert!(out.contains(carried), "{out}");
    assert!(std::fs::read(&dst).unwrap() == image, "the export is the image");
}

/// Data objects (not inodes) on every node: (node, oid).
fn data_objects(c: &Cluster) -> BTreeSet<(usize, String)> {
    (0..c.storageds.len())
        .flat_map(|i| c.objects_on(i).into_iter().map(move |o| (i, o)))
        // An inode's oid has the inode bit (bit 63) set: its first hex digit is 8 or above.
        .filter(|(_, o)| !o.starts_with(|ch: char| ('8'..='f').contains(&ch)))
        .collect()
}

#[test]
fn deleting_a_snapshot_then_the_vdi_gives_the_space_back() {
    let c = Cluster::formatted(3, 3, &[]);
    c.ctl_ok(&["vdi", "create", "v", "128M"]);
    write(&c, "v", 0, &random(100 * MIB, 3));
    assert_eq!(data_objects(&c).len(), 25 * 3, "100 MiB in 4 MiB objects, 3 copies");
    c.ctl_ok(&["vdi", "snapshot", "v", "--tag", "before"]);
    let after = random(100 * MIB, 4);
    write(&c, "v", 0, &after);
    assert_eq!(data_objects(&c).len(), 50 * 3, "every object copied on write");
    let out = c.ctl_ok(&["vdi", "delete", "v", "--snapshot", "before"]);
    assert!(out.contains("25 object(s)"), "{out}");
    assert_eq!(data_objects(&c).len(), 25 * 3, "back to 100 MiB x 3 copies: the snapshot's objects are gone");
    assert_eq!(read(&c, &["v", "0", "100M"]), after);
    c.ctl_ok(&["vdi", "delete", "v"]);
    wait_until(Duration::from_secs(30), "every object of the deleted VDI to be removed", || {
        let left: Vec<_> = (0..3).flat_map(|i| c.objects_on(i)).collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{} objects left", left.len()))
        }
    });
}

#[test]
fn an_attached_vdi_is_snapshotted_by_its_export_between_writes() {
    let c = Cluster::formatted(3, 3, &[]);
    c.ctl_ok(&["vdi", "create", "v", "16M"]);
    let (mut export, url) = serving(&c, "v", "export.log");
    qemu_io_ok(&url, &["write -P 0xaa 0 6M"]);
    let out = c.ctl_ok(&["vdi", "snapshot", "v", "--tag", "live"]);
    assert!(out.contains("taken by nbd-export"), "the export took it: {out}");
    qemu_io_ok(&url, &["write -P 0xbb 1M 2M", "read -P 0xaa 0 1M", "read -P 0xbb 1M 2M"]);
    assert_eq!(read(&c, &["v", "--snapshot", "live", "0", "6M"]), vec![0xaa; 6 * MIB]);
    // Attached: no rollback, no delete.
    fails(&c, &["vdi", "rollback", "v", "--snapshot", "live"], "locked by");
    fails(&c, &["vdi", "delete", "v"], "locked by");
    // A write is refused naming the holder, when its lock would clear and how to force it.
    let out = c.ctl(&["vdi", "write", "v", "0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a write while attached is refused");
    for needle in ["VDI v is locked by session", "nbd-export", "lease runs out, about", "`sheepctl vdi lock unlock v`"]
    {
        assert!(err.contains(needle), "{needle:?}: {err}");
    }
    // A discard frees the objects of the VDI it covers whole; an object still shared with
    // the snapshot (the second 4 MiB) is only unmapped: the snapshot keeps it.
    qemu_io_ok(&url, &["write -P 0xcc 8M 4M"]);
    let before = data_objects(&c).len();
    let (ok, text) = qemu_io(&url, &["discard 4M 8M"]);
    assert!(ok, "{text}");
    qemu_io_ok(&url, &["read -P 0 4M 8M", "read -P 0xaa 0 1M"]);
    assert_eq!(data_objects(&c).len(), before - 3, "the discarded object's 3 copies are gone");
    assert_eq!(read(&c, &["v", "--snapshot", "live", "4M", "2M"]), vec![0xaa; 2 * MIB], "the snapshot keeps its data");
    // Grown while attached: a new connection sees the new size.
    c.ctl_ok(&["vdi", "resize", "v", "24M"]);
    wait_until(Duration::from_secs(20), "the export to follow the resize", || {
        let (ok, text) = qemu_io(&url, &["read -P 0 20M 4M"]);
        if ok {
            Ok(())
        } else {
            Err(text)
        }
    });
    qemu_io_ok(&url, &["write -P 0xdd 23M 1M", "read -P 0xdd 23M 1M"]);
    export.signal(Signal::SIGTERM);
    export.wait_exit(Duration::from_secs(20));
    c.ctl_ok(&["vdi", "rollback", "v", "--snapshot", "live"]);
    assert_eq!(read(&c, &["v", "0", "6M"]), vec![0xaa; 6 * MIB]);
}
