//! The real kernel path: `tests/vm/ublk_disk.sh` inside the test VM (Debian's 6.12 kernel with
//! ublk_drv, see ci/vm): `sheepctl up` attaching disk0 as /dev/ublkb0, a second attach refused
//! (same host, another daemon, NBD), ext4 with a tree of checksummed files across umount, del
//! and add, del refused while mounted, kill -9 of ublk-dev under the mounted filesystem and
//! `sheepctl add --recover`, a power loss inside a write on every storaged at once (a
//! failpoint; the image replays its journal, checks clean and mounts; every replica the same),
//! a crash-consistent snapshot of the busy filesystem (its clone fscks clean, fsynced files
//! intact), and fio randwrite with crc32c verify on a raw device while it is snapshotted and a
//! storaged is killed -9. One boot, about 3 min under emulation.
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
    for line in out.output.lines().filter(|l| l.contains("ublk-vm:") || l.contains("cut off")) {
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
        "ublk-vm: OK",
    ] {
        assert!(out.output.contains(step), "missing {step:?} in the console:\n{}", out.output);
    }
}
