//! The real kernel path: `tests/vm/ublk_disk.sh` inside the test VM (Debian's 6.12 kernel with
//! ublk_drv, see ci/vm): `sheepctl up` attaching disk0 as /dev/ublkb0, a second attach refused
//! (same host, another daemon, NBD), ext4 with a tree of checksummed files across umount, del
//! and add, del refused while mounted, kill -9 of ublk-dev under the mounted filesystem and
//! `sheepctl add --recover`, a power loss inside a write on every storaged at once (a
//! failpoint; the image replays its journal, checks clean and mounts; every replica the same),
//! a crash-consistent snapshot of the busy filesystem (its clone fscks clean, fsynced files
//! intact), and fio randwrite with crc32c verify on a raw device while it is snapshotted and a
//! storaged is killed -9. Then, in the same boot, `tests/vm/ublk_vs_loop.sh`: the same fio jobs
//! on /dev/ublkbN (a VDI of its own) and on a loop device over tmpfs, printed as a table with
//! their ratio (both emulated, so only the ratio means something) and kept as JSON in
//! `target/vm/ublk-vs-loop.json`; only that every job ran and did I/O is asserted, never how
//! fast. One boot, about 4 min under emulation.
//!
//! Needs root and qemu (ci/install-deps installs it): skipped with a printed reason when not
//! root, except under CI (CI=true), where a VM that cannot start fails the test.

use std::time::Duration;

use sheep_tests::vm;

#[test]
fn ublk_device_with_ext4_recovery_and_fio_verify() {
    if !vm::should_run("ublk_device_with_ext4_recovery_and_fio_verify") {
        return;
    }
    let script = vm::repo_root().join("tests/vm/ublk_disk.sh");
    let repo = format!("SHEEP_REPO={}", vm::repo_root().display());
    let out = vm::run_file(&script, Duration::from_secs(900), &[repo.as_str()]);
    eprintln!("VM run took {:?}", out.elapsed);
    out.assert_success();
    for line in
        out.output.lines().filter(|l| l.contains("ublk-vm:") || l.contains("ublk-vs-loop:") || l.contains("cut off"))
    {
        eprintln!("{line}");
    }
    for step in [
        "ublk-vm: up attached disk0 as /dev/ublkb0",
        "ublk-vm: second attach refused; unknown VDI or device named",
        "ublk-vm: ext4: every checksum verified after umount, del, add",
        "ublk-vm: kill -9 of ublk-dev under a mounted ext4: recovered, files intact, writes work",
        "ublk-vm: power loss: every replica the same image; its journal replays, it checks clean, it mounts",
        "ublk-vm: power loss: the device recovered, the writes in flight completed",
        "ublk-vm: fstrim:",
        "ublk-vm: vdi resize: the device grew to 768 MiB",
        "ublk-vm: snapshot of a busy mounted ext4: clone fscks clean",
        "ublk-vm: killed storaged of node 3",
        "ublk-vm: fio randwrite 64M with crc32c verify passed across a snapshot and a storaged kill -9",
        "ublk-vm: storaged of node 3 back, recovery complete",
        "ublk-vs-loop: done: 6 jobs on both devices",
        "ublk-vm: ublk against loop on tmpfs measured",
        "ublk-vm: OK",
    ] {
        assert!(out.output.contains(step), "missing {step:?} in the console:\n{}", out.output);
    }
    check_figures(&out);
}

/// The table of ublk_vs_loop.sh, as JSON in the VM's share: every job ran on both devices and
/// did I/O (how fast is not asserted: the VM is emulated and the machine shared). Kept in
/// target/vm/ for CI to pick up.
fn check_figures(out: &vm::VmOutcome) {
    let path = out.out.as_ref().expect("the VM's share").path().join("ublk-vs-loop.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let figures: serde_json::Value = serde_json::from_str(&text).expect("ublk-vs-loop.json");
    let jobs = figures["jobs"].as_array().expect("jobs");
    let names: Vec<&str> = jobs.iter().filter_map(|j| j["job"].as_str()).collect();
    assert_eq!(names, ["seqwrite", "randwrite1", "randwrite32", "randread1", "randread32", "seqread"]);
    for j in jobs {
        for side in ["ublk", "loop"] {
            let r = &j[side];
            assert!(
                r["error"].as_i64() == Some(0)
                    && r["ios"].as_f64().unwrap_or(0.0) > 0.0
                    && r["iops"].as_f64().unwrap_or(0.0) > 0.0,
                "{} on {side} did no I/O: {r}",
                j["job"]
            );
        }
    }
    let keep = vm::vm_dir().join("ublk-vs-loop.json");
    match std::fs::write(&keep, &text) {
        Ok(()) => eprintln!("ublk-vs-loop: the table as JSON in {}", keep.display()),
        Err(e) => eprintln!("ublk-vs-loop: cannot keep the table in {}: {e}", keep.display()),
    }
}
