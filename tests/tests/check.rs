//! `sheepctl vdi check` / `cluster check` on real processes: a clean VDI is reported clean;
//! a missing replica and a valid-but-divergent replica are reported by `--dry-run` without
//! any change, then repaired, after which every replica is byte-identical.
//!
//! The damage is chosen so that storaged never repairs it by itself (that would race with
//! the check and make the test depend on timing): a deleted object file is simply absent
//! to a settled node, and a divergent block whose crc is rewritten to match passes every
//! checksum, so no read of it ever triggers storaged's own corrupt-copy repair.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use serde_json::Value;
use sheep_tests::rand::Rng;
use sheep_tests::{wait_until, Cluster, Daemon};

const T: std::time::Duration = std::time::Duration::from_secs(60);

const MIB: usize = 1 << 20;
const BLOCK: u64 = 4096;
/// The object file format (storaged/src/objects/file.rs): the object size at byte 8, the
/// crc table at byte 64 (per 4 KiB block: its crc32, and its crc32 before its last write),
/// the data after it on a block boundary.
const SIZE_AT: u64 = 8;
const CRC_TABLE_AT: u64 = 64;
const ENTRY: u64 = 8;

/// Where the data of the object file `f` starts.
fn data_off(f: &std::fs::File) -> u64 {
    let mut word = [0u8; 4];
    f.read_exact_at(&mut word, SIZE_AT).unwrap();
    let blocks = u64::from(u32::from_le_bytes(word)) / BLOCK;
    (CRC_TABLE_AT + ENTRY * blocks).div_ceil(BLOCK) * BLOCK
}

fn cluster(nodes: usize) -> Cluster {
    Cluster::formatted(nodes, 3, &[])
}

fn obj_path(c: &Cluster, node: usize, oid: &str) -> PathBuf {
    c.path(&format!("storaged{}/obj/{oid}", node + 1))
}

/// oid → the nodes holding it in `obj/`.
fn holders(c: &Cluster, nodes: usize) -> BTreeMap<String, BTreeSet<usize>> {
    let mut map: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for i in 0..nodes {
        for oid in c.objects_on(i) {
            map.entry(oid).or_default().insert(i);
        }
    }
    map
}

/// Every object file of every node, by (node, oid).
fn snapshot(c: &Cluster, nodes: usize) -> BTreeMap<(usize, String), Vec<u8>> {
    let mut all = BTreeMap::new();
    for i in 0..nodes {
        for oid in c.objects_on(i) {
            let bytes = std::fs::read(obj_path(c, i, &oid)).unwrap();
            all.insert((i, oid), bytes);
        }
    }
    all
}

/// CRC-32 (IEEE, reflected), the checksum storaged keeps per block (crc32fast's).
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Rewrites block `k` of the object file at `path` with different bytes and the matching
/// crc, in place (the node may hold the file open): a valid copy with other content.
fn diverge(path: &PathBuf, k: u64) {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let data_off = data_off(&f);
    assert!(data_off + (k + 1) * BLOCK <= f.metadata().unwrap().len());
    let mut block = vec![0u8; BLOCK as usize];
    f.read_exact_at(&mut block, data_off + k * BLOCK).unwrap();
    for b in &mut block[100..200] {
        *b ^= 0xa5;
    }
    f.write_all_at(&block, data_off + k * BLOCK).unwrap();
    let crc = crc32(&block).to_le_bytes();
    f.write_all_at(&[crc, crc].concat(), CRC_TABLE_AT + ENTRY * k).unwrap();
    f.sync_all().unwrap();
}

fn check_json(c: &Cluster, args: &[&str]) -> (bool, Value) {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let out = c.ctl(&full);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: bad JSON ({e}): {}\nstderr: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            c.logs()
        )
    });
    (out.status.success(), v)
}

fn problem<'a>(v: &'a Value, oid: &str) -> &'a Value {
    let all = v["problems"].as_array().expect("problems");
    all.iter().find(|p| p["oid"] == oid).unwrap_or_else(|| panic!("no problem reported for {oid}: {v:#}"))
}

/// The VDI "v" of `mib` MiB, created and filled with random bytes from `seed`, every node
/// recovered; what it holds.
fn imported(c: &Cluster, mib: usize, seed: u64) -> Vec<u8> {
    let data = Rng::new(seed).bytes(mib * MIB);
    c.ctl_ok(&["vdi", "create", "v", &format!("{mib}M")]);
    let input = c.path("v.in");
    std::fs::write(&input, &data).unwrap();
    c.ctl_ok(&["vdi", "import", "v", input.to_str().unwrap()]);
    c.wait_recovered();
    data
}

fn export_vdi(c: &Cluster, name: &str) -> Vec<u8> {
    let file = c.path(&format!("{name}.out"));
    let _ = std::fs::remove_file(&file);
    c.ctl_ok(&["vdi", "export", name, file.to_str().unwrap()]);
    std::fs::read(&file).unwrap()
}

#[test]
fn check_reports_then_repairs_a_missing_and_a_divergent_replica() {
    let nodes = 4;
    let c = cluster(nodes);
    let data = imported(&c, 16, 11);

    // Clean: nothing to repair, in both forms.
    let out = c.ctl_ok(&["vdi", "check", "v"]);
    assert!(out.contains("checked 5 objects of 1 VDIs") && out.contains("0 repaired, 0 unrepairable"), "{out}");
    let (ok, v) = check_json(&c, &["vdi", "check", "v", "--dry-run"]);
    assert!(ok && v["problems"].as_array().unwrap().is_empty(), "{v:#}");

    // Damage: object X loses its copy on one node, object Y gets a valid but different
    // copy on another node.
    let h = holders(&c, nodes);
    let data_oids: Vec<&String> = h.keys().filter(|o| !o.starts_with('8')).collect();
    assert_eq!(data_oids.len(), 4, "{h:?}");
    for (oid, on) in &h {
        assert_eq!(on.len(), 3, "{oid} on {on:?}");
    }
    let x = data_oids[0].clone();
    let nx = *h[&x].iter().next().unwrap();
    let y = data_oids[1].clone();
    let ny = *h[&y].iter().find(|&&n| n != nx).unwrap();
    std::fs::remove_file(obj_path(&c, nx, &x)).unwrap();
    diverge(&obj_path(&c, ny, &y), 7);

    // Dry run: both reported, nothing changed, non-zero exit.
    let before = snapshot(&c, nodes);
    let out = c.ctl(&["vdi", "check", "v", "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(!out.status.success());
    assert!(text.contains(&x) && text.contains(&y) && text.contains("=missing"), "{text}");
    assert!(text.contains("would copy from") && text.contains("2 to repair, 0 unrepairable"), "{text}");
    let (ok, v) = check_json(&c, &["vdi", "check", "v", "--dry-run"]);
    assert!(!ok, "a dry run that finds problems fails: {v:#}");
    assert_eq!(v["problems"].as_array().unwrap().len(), 2, "{v:#}");
    assert_eq!(v["would_repair"], 2, "{v:#}");
    let px = problem(&v, &x);
    assert_eq!(px["action"]["kind"], "would_repair");
    let nx_addr = &c.storaged_addrs[nx];
    let ny_addr = &c.storaged_addrs[ny];
    assert_eq!(px["action"]["targets"], serde_json::json!([nx_addr]), "{px:#}");
    let sx = px["replicas"].as_array().unwrap().iter().find(|r| r["node"] == nx_addr.as_str()).unwrap();
    assert_eq!(sx["state"], "missing");
    let py = problem(&v, &y);
    assert_eq!(py["action"]["targets"], serde_json::json!([ny_addr]), "{py:#}");
    assert_eq!(py["action"]["tie"], false);
    assert_eq!(snapshot(&c, nodes), before, "a dry run changes nothing");
    assert!(!obj_path(&c, nx, &x).exists());

    // Repair.
    let (ok, v) = check_json(&c, &["vdi", "check", "v"]);
    assert!(ok, "{v:#}\n{}", c.logs());
    assert_eq!(v["repaired"], 2, "{v:#}");
    assert_eq!(v["unrepairable"], 0, "{v:#}");
    assert_eq!(problem(&v, &x)["action"]["kind"], "repaired");
    assert_eq!(problem(&v, &y)["action"]["kind"], "repaired");

    // Every replica of every object is byte-identical, on the same 3 nodes as before.
    let after = holders(&c, nodes);
    assert_eq!(after, h, "the objects are where they were");
    for (oid, on) in &after {
        let copies: Vec<Vec<u8>> = on.iter().map(|&n| body(&obj_path(&c, n, oid))).collect();
        for (i, copy) in copies.iter().enumerate().skip(1) {
            assert!(*copy == copies[0], "object {oid}: replica {i} differs from the first");
        }
    }
    assert!(export_vdi(&c, "v") == data, "the VDI reads back as written");

    // The whole cluster checks clean now.
    let out = c.ctl_ok(&["cluster", "check"]);
    assert!(out.contains("0 repaired, 0 unrepairable"), "{out}");
    let (ok, v) = check_json(&c, &["cluster", "check", "--dry-run"]);
    assert!(ok && v["problems"].as_array().unwrap().is_empty(), "{v:#}");
}

/// An object file's data (its header's version and its crc table's crcs from before the
/// last writes differ between copies repaired by writing and those written in place).
fn body(path: &std::path::Path) -> Vec<u8> {
    let off = data_off(&std::fs::File::open(path).unwrap());
    std::fs::read(path).unwrap().split_off(off as usize)
}

#[test]
fn check_breaks_a_tie_with_the_primary_copy() {
    let nodes = 3;
    let c = cluster(nodes);
    c.ctl_ok(&["vdi", "create", "w", "4M", "--copies", "2"]);
    let input = c.path("w.in");
    std::fs::write(&input, Rng::new(12).bytes(4 * MIB)).unwrap();
    c.ctl_ok(&["vdi", "import", "w", input.to_str().unwrap()]);
    c.wait_recovered();
    let h = holders(&c, nodes);
    let (oid, on) = h.iter().find(|(o, _)| !o.starts_with('8')).expect("the data object");
    assert_eq!(on.len(), 2);
    let damaged = *on.iter().next().unwrap();
    diverge(&obj_path(&c, damaged, oid), 3);
    let (ok, v) = check_json(&c, &["vdi", "check", "w"]);
    assert!(ok, "{v:#}");
    let p = problem(&v, oid);
    assert_eq!(p["action"]["tie"], true, "{p:#}");
    let primary = p["replicas"][0]["node"].as_str().unwrap();
    assert_eq!(p["action"]["source"], primary, "{p:#}");
    assert!(p["text"].as_str().unwrap().contains("the primary's won"), "{p:#}");
    // Both copies now hold what the primary held.
    let copies: Vec<Vec<u8>> = on.iter().map(|&n| body(&obj_path(&c, n, oid))).collect();
    assert!(copies[0] == copies[1], "the two replicas agree");
}

/// A VDI served by someone else (here an NBD export, which holds its lock) is checked but
/// not repaired, naming the holder; once the holder is gone the repair goes through.
#[test]
fn check_does_not_repair_a_vdi_locked_by_someone_else() {
    let nodes = 3;
    let c = cluster(nodes);
    let data = imported(&c, 4, 13);

    let ip = c.groupd_addrs[0].rsplit_once(':').map(|(ip, _)| ip).unwrap();
    let listen = format!("{}.200:0", ip.rsplit_once('.').unwrap().0);
    let args = ["--groupd", &c.groupd_addrs.join(","), "export", "v", "--listen", &listen];
    let mut export = Daemon::start("sheepctl", args.iter().map(|s| s.to_string()).collect(), c.path("export.log"));
    wait_until(T, "the export to serve", || {
        let text = std::fs::read_to_string(&export.log).unwrap_or_default();
        if text.lines().any(|l| l.starts_with("nbd://")) {
            Ok(())
        } else {
            Err(text)
        }
    });

    let h = holders(&c, nodes);
    let (oid, on) = h.iter().find(|(o, _)| !o.starts_with('8')).expect("the data object");
    let victim = *on.iter().next().unwrap();
    std::fs::remove_file(obj_path(&c, victim, oid)).unwrap();

    let (ok, v) = check_json(&c, &["vdi", "check", "v"]);
    assert!(!ok, "{v:#}");
    let p = problem(&v, oid);
    assert_eq!(p["action"]["kind"], "unrepairable", "{p:#}");
    assert!(p["action"]["reason"].as_str().unwrap().contains("locked"), "{p:#}");
    assert!(!obj_path(&c, victim, oid).exists(), "nothing was written");

    // The holder goes away (its session expires after the lease): now it is repaired.
    export.kill();
    let v = wait_until(T, "the repair once the lock is free", || {
        let (ok, v) = check_json(&c, &["vdi", "check", "v"]);
        if ok {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    });
    assert_eq!(v["repaired"], 1, "{v:#}");
    assert!(obj_path(&c, victim, oid).exists());
    assert!(export_vdi(&c, "v") == data);
}

#[test]
fn check_of_an_unknown_vdi_is_one_clear_line() {
    let c = cluster(3);
    let out = c.ctl(&["vdi", "check", "nope"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope") && err.trim().lines().count() == 1, "{err}");
}

/// Issue 10, seen 6: a dry run of a VDI with a corrupt copy (a block that fails its crc) must
/// not repair it through the reads it makes: it reports it and changes nothing; the check
/// proper repairs it.
#[test]
fn a_dry_run_leaves_a_corrupt_copy_as_it_is() {
    let nodes = 3;
    let c = cluster(nodes);
    let data = imported(&c, 4, 12);
    let h = holders(&c, nodes);
    let x = h.keys().find(|o| !o.starts_with('8')).expect("a data object").clone();
    let nx = *h[&x].iter().next().unwrap();
    // Flip bytes of block 3 without fixing its crc: the copy is corrupt.
    let path = obj_path(&c, nx, &x);
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let at = data_off(&f) + 3 * BLOCK + 10;
    f.write_all_at(b"not what was written", at).unwrap();
    f.sync_all().unwrap();
    drop(f);

    let before = snapshot(&c, nodes);
    for _ in 0..2 {
        let (ok, v) = check_json(&c, &["vdi", "check", "v", "--dry-run"]);
        assert!(!ok, "{v:#}");
        let p = problem(&v, &x);
        let seen = p["replicas"].as_array().unwrap().iter().find(|r| r["node"] == c.storaged_addrs[nx].as_str());
        assert_eq!(seen.unwrap()["state"], "corrupt", "{p:#}");
        assert_eq!(p["action"]["kind"], "would_repair", "{p:#}");
        // A repair set off by the dry run's reads would land within moments.
        std::thread::sleep(std::time::Duration::from_millis(1500));
        assert!(snapshot(&c, nodes) == before, "a dry run changes nothing");
    }
    let (ok, v) = check_json(&c, &["vdi", "check", "v"]);
    assert!(ok, "{v:#}\n{}", c.logs());
    assert_eq!(problem(&v, &x)["action"]["kind"], "repaired", "{v:#}");
    let (ok, v) = check_json(&c, &["vdi", "check", "v", "--dry-run"]);
    assert!(ok && v["problems"].as_array().unwrap().is_empty(), "{v:#}");
    assert!(export_vdi(&c, "v") == data, "the VDI reads back as written");
}

/// Issue 10, seen 6: the working VDI after a snapshot, not written since, has no inode object
/// of its own yet (it reads through the snapshot's table): that is no damage.
#[test]
fn a_vdi_not_written_since_its_snapshot_checks_clean() {
    let c = cluster(3);
    c.ctl_ok(&["vdi", "create", "v", "8M"]);
    let out = c.ctl_stdin(&["vdi", "write", "v", "0"], b"before the snapshot");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    c.ctl_ok(&["vdi", "snapshot", "v", "--tag", "s1"]);
    let (ok, v) = check_json(&c, &["cluster", "check", "--dry-run"]);
    assert!(
        ok && v["problems"].as_array().unwrap().is_empty() && v["errors"].as_array().is_none_or(|e| e.is_empty()),
        "{v:#}"
    );
    assert_eq!(c.ctl_ok(&["vdi", "read", "v", "0", "19"]), "before the snapshot");
    // Once written, it has an inode of its own, checked like any other.
    let out = c.ctl_stdin(&["vdi", "write", "v", "4096"], b"after");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (ok, v) = check_json(&c, &["cluster", "check", "--dry-run"]);
    assert!(ok && v["problems"].as_array().unwrap().is_empty(), "{v:#}");
}
