//! Deleting snapshots one by one gives back, each time, every object no remaining VDI reads
//! (issue 10, item 6: it used to remove `0 object(s)` while the working VDI no longer named
//! them), and never one a remaining VDI, snapshot or clone reads. Real processes, through
//! sheepctl; what is on the storage nodes is read from their `obj/` directories.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sheep_tests::rand::Rng;
use sheep_tests::{wait_until, Cluster};

const MIB: usize = 1 << 20;
/// The VDIs' size: 8 objects of 1 MiB.
const SIZE: usize = 8 * MIB;
const NODES: usize = 3;

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

fn cluster() -> Cluster {
    // 3 nodes, 3 copies: every node holds every object.
    Cluster::formatted(NODES, 3, &["--object-size", "1M"])
}

fn write(c: &Cluster, name: &str, offset: usize, data: &[u8]) {
    let out = c.ctl_stdin(&["vdi", "write", name, &offset.to_string()], data);
    assert!(out.status.success(), "vdi write {name}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `label` is `name` or `name@tag`; reads it whole.
fn read(c: &Cluster, label: &str) -> Vec<u8> {
    let mut args = vec!["vdi", "read"];
    match label.split_once('@') {
        Some((name, tag)) => args.extend([name, "--snapshot", tag]),
        None => args.push(label),
    }
    let size = SIZE.to_string();
    args.extend(["0", &size]);
    let out = c.ctl(&args);
    assert!(out.status.success(), "vdi read {label}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// The id of every VDI and snapshot, by label.
fn vids(c: &Cluster) -> BTreeMap<String, u64> {
    let list: serde_json::Value = serde_json::from_str(&c.ctl_ok(&["--json", "vdi", "list"])).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let label = match r["tag"].as_str() {
                Some(tag) => format!("{}@{tag}", r["name"].as_str().unwrap()),
                None => r["name"].as_str().unwrap().to_string(),
            };
            (label, u64::from_str_radix(r["vid"].as_str().unwrap(), 16).unwrap())
        })
        .collect()
}

fn oid(vid: u64, idx: u64) -> String {
    format!("{:016x}", vid << 32 | idx)
}

/// Data objects (not inodes: bit 63 set, a first hex digit of 8 or above) on node `i`.
fn data_on(c: &Cluster, i: usize) -> BTreeSet<String> {
    c.objects_on(i).into_iter().filter(|o| !o.starts_with(|ch: char| ('8'..='f').contains(&ch))).collect()
}

/// Every node holds exactly `want` (3 copies on 3 nodes) among the data objects of `vids`.
fn assert_objects(c: &Cluster, vids: &[u64], want: &BTreeSet<String>, when: &str) {
    let ours = |o: &String| vids.iter().any(|&v| o.starts_with(&format!("{v:08x}")));
    for i in 0..NODES {
        let got: BTreeSet<String> = data_on(c, i).into_iter().filter(ours).collect();
        assert_eq!(&got, want, "node {i}, {when}");
    }
}

/// How many objects a `vdi delete` said it removed.
fn removed(out: &str) -> usize {
    let before = out.split(" object(s)").next().unwrap_or_else(|| panic!("no count in {out:?}"));
    before.rsplit(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("no count in {out:?}"))
}

/// `name` with this history (1 MiB objects): objects 0..4 written, snapshot s1; objects 0
/// and 1 rewritten and 4 written, snapshot s2; object 0 rewritten, 64 KiB in the middle of
/// object 2 (copied on write first). Returns what the VDI and its snapshots read, by label.
fn chain(c: &Cluster, name: &str, seed: u64) -> BTreeMap<String, Vec<u8>> {
    c.ctl_ok(&["vdi", "create", name, "8M"]);
    let mut now = vec![0u8; SIZE];
    let put = |now: &mut Vec<u8>, offset: usize, data: Vec<u8>| {
        write(c, name, offset, &data);
        now[offset..offset + data.len()].copy_from_slice(&data);
    };
    put(&mut now, 0, random(4 * MIB, seed));
    let mut seen = BTreeMap::new();
    c.ctl_ok(&["vdi", "snapshot", name, "--tag", "s1"]);
    seen.insert(format!("{name}@s1"), now.clone());
    put(&mut now, 0, random(2 * MIB, seed + 1));
    put(&mut now, 4 * MIB, random(MIB, seed + 2));
    c.ctl_ok(&["vdi", "snapshot", name, "--tag", "s2"]);
    seen.insert(format!("{name}@s2"), now.clone());
    put(&mut now, 0, random(MIB, seed + 3));
    put(&mut now, 2 * MIB + 512 * 1024, random(64 * 1024, seed + 4));
    seen.insert(name.to_string(), now);
    seen
}

fn check_reads(c: &Cluster, seen: &BTreeMap<String, Vec<u8>>, when: &str) {
    for (label, want) in seen {
        assert!(read(c, label) == *want, "{label} does not read what was written, {when}");
    }
}

#[test]
fn deleting_snapshots_one_by_one_gives_back_what_nothing_reads_any_more() {
    let c = cluster();
    // Two VDIs of the same history; v's snapshots are deleted oldest first, w's newest first.
    let mut v = chain(&c, "v", 10);
    let mut w = chain(&c, "w", 20);
    let ids = vids(&c);
    let (va, vb, vc) = (ids["v@s1"], ids["v@s2"], ids["v"]);
    let (wa, wb, wc) = (ids["w@s1"], ids["w@s2"], ids["w"]);
    let set = |l: &[(u64, u64)]| l.iter().map(|&(v, i)| oid(v, i)).collect::<BTreeSet<_>>();
    // Tables: s1 [A0 A1 A2 A3], s2 [B0 B1 A2 A3 B4], working [C0 B1 C2 A3 B4].
    let all = |a, b, c| set(&[(a, 0), (a, 1), (a, 2), (a, 3), (b, 0), (b, 1), (b, 4), (c, 0), (c, 2)]);
    assert_objects(&c, &[va, vb, vc], &all(va, vb, vc), "after the writes");
    assert_objects(&c, &[wa, wb, wc], &all(wa, wb, wc), "after the writes");

    // v@s1: its 2 and 3 are still read by s2 (and 3 by the working VDI); 0 and 1 go.
    let out = c.ctl_ok(&["vdi", "delete", "v", "--snapshot", "s1"]);
    assert_eq!(removed(&out), 2, "{out}");
    v.remove("v@s1");
    let left = set(&[(va, 2), (va, 3), (vb, 0), (vb, 1), (vb, 4), (vc, 0), (vc, 2)]);
    assert_objects(&c, &[va, vb, vc], &left, "after deleting v@s1");
    check_reads(&c, &v, "after deleting v@s1");
    // v@s2: its own 0, and s1's 2, which s2 was the last to read.
    let out = c.ctl_ok(&["--json", "vdi", "delete", "v", "--snapshot", "s2"]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["objects_removed"], 2, "{out}");
    assert!(json["incomplete"].is_null(), "{out}");
    v.remove("v@s2");
    let left = set(&[(va, 3), (vb, 1), (vb, 4), (vc, 0), (vc, 2)]);
    assert_objects(&c, &[va, vb, vc], &left, "after deleting v@s2: exactly what v reads");
    check_reads(&c, &v, "after deleting v@s2");

    // w@s2 first: s1 still reads its 2 and 3, the working VDI s2's 1 and 4; its 0 goes.
    let out = c.ctl_ok(&["vdi", "delete", "w", "--snapshot", "s2"]);
    assert_eq!(removed(&out), 1, "{out}");
    w.remove("w@s2");
    let left = set(&[(wa, 0), (wa, 1), (wa, 2), (wa, 3), (wb, 1), (wb, 4), (wc, 0), (wc, 2)]);
    assert_objects(&c, &[wa, wb, wc], &left, "after deleting w@s2");
    check_reads(&c, &w, "after deleting w@s2");
    // Then w@s1: the working VDI descends from it through the deleted s2, and reads its 3.
    let out = c.ctl_ok(&["vdi", "delete", "w", "--snapshot", "s1"]);
    assert_eq!(removed(&out), 3, "{out}");
    w.remove("w@s1");
    let left = set(&[(wa, 3), (wb, 1), (wb, 4), (wc, 0), (wc, 2)]);
    assert_objects(&c, &[wa, wb, wc], &left, "after deleting w@s1: exactly what w reads");
    check_reads(&c, &w, "after deleting w@s1");
    check_reads(&c, &v, "after deleting w's snapshots");

    // The last VDI of each family: the storage nodes remove everything, inodes too.
    c.ctl_ok(&["vdi", "delete", "v"]);
    c.ctl_ok(&["vdi", "delete", "w"]);
    wait_until(Duration::from_secs(30), "every object of the deleted VDIs to be removed", || {
        let left: Vec<String> = (0..NODES).flat_map(|i| c.objects_on(i)).collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{} objects left: {left:?}", left.len()))
        }
    });
}

#[test]
fn deleting_the_base_of_a_clone_keeps_what_the_clone_reads() {
    let c = cluster();
    c.ctl_ok(&["vdi", "create", "u", "8M"]);
    let base = random(4 * MIB, 30);
    write(&c, "u", 0, &base);
    c.ctl_ok(&["vdi", "snapshot", "u", "--tag", "s1"]);
    c.ctl_ok(&["vdi", "clone", "u", "--snapshot", "s1", "k"]);
    let mut u = base.clone();
    u.resize(SIZE, 0);
    let mut k = u.clone();
    let (u01, k12) = (random(2 * MIB, 31), random(2 * MIB, 32));
    write(&c, "u", 0, &u01);
    u[..2 * MIB].copy_from_slice(&u01);
    write(&c, "k", MIB, &k12);
    k[MIB..3 * MIB].copy_from_slice(&k12);
    let ids = vids(&c);
    let (a, uw, kw) = (ids["u@s1"], ids["u"], ids["k"]);
    let set = |l: &[(u64, u64)]| l.iter().map(|&(v, i)| oid(v, i)).collect::<BTreeSet<_>>();
    // Tables: s1 [A0 A1 A2 A3], u [U0 U1 A2 A3], k [A0 K1 K2 A3].

    // s1's 0 is the clone's, 2 u's, 3 both's: only 1 goes.
    let out = c.ctl_ok(&["vdi", "delete", "u", "--snapshot", "s1"]);
    assert_eq!(removed(&out), 1, "{out}");
    let left = set(&[(a, 0), (a, 2), (a, 3), (uw, 0), (uw, 1), (kw, 1), (kw, 2)]);
    assert_objects(&c, &[a, uw, kw], &left, "after deleting u@s1");
    assert!(read(&c, "u") == u, "u reads what was written");
    assert!(read(&c, "k") == k, "the clone reads what was written");

    // u goes: the storage nodes remove its own objects; s1's 2, which only u read, goes too;
    // the clone keeps s1's 0 and 3.
    let out = c.ctl_ok(&["vdi", "delete", "u"]);
    assert_eq!(removed(&out), 1, "{out}");
    let left = set(&[(a, 0), (a, 3), (kw, 1), (kw, 2)]);
    wait_until(Duration::from_secs(30), "u's own objects to be removed", || {
        let ours = |o: &String| [a, uw, kw].iter().any(|&v| o.starts_with(&format!("{v:08x}")));
        let on: Vec<BTreeSet<String>> = (0..NODES).map(|i| data_on(&c, i).into_iter().filter(ours).collect()).collect();
        if on.iter().all(|s| *s == left) {
            Ok(())
        } else {
            Err(format!("{on:?}"))
        }
    });
    assert!(read(&c, "k") == k, "the clone reads what was written after its base went");
    let out = c.ctl_ok(&["vdi", "delete", "k"]);
    assert_eq!(removed(&out), 0, "everything left is the storage nodes' to remove: {out}");
    wait_until(Duration::from_secs(30), "every object to be removed", || {
        let left: Vec<String> = (0..NODES).flat_map(|i| c.objects_on(i)).collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{} objects left: {left:?}", left.len()))
        }
    });
}
