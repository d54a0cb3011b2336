//! The test VM with the real kernel path (ci/vm): boots Debian's 6.12 kernel with ublk_drv,
//! runs ci/vm/smoke.sh inside it (/dev/ublk-control, io_uring, lo and 127.0.0.N, network
//! namespaces, mkfs.ext4 + loop mount) and checks its verdict. One boot (~25 s under
//! emulation). Needs root and qemu (ci/vm/build installs it); skipped with a printed reason when
//! not root, except under CI (CI=true), where a VM that cannot start fails the test.

use std::time::Duration;

use sheep_tests::vm;

#[test]
fn vm_boots_with_ublk_and_runs_a_script() {
    if !vm::should_run("vm_boots_with_ublk_and_runs_a_script") {
        return;
    }
    let smoke = vm::repo_root().join("ci/vm/smoke.sh");
    // SMOKE_EXIT: the smoke script ends with this code once every check passed, so the test
    // also sees a non-zero code come back out of the guest.
    let out = vm::run_file(&smoke, Duration::from_secs(300), &["SMOKE_EXIT=7"]);
    eprintln!("VM run took {:?}", out.elapsed);
    assert_eq!(out.exit_code, Some(7), "smoke failed: error {:?}\n----- console -----\n{}", out.error, out.output);
    assert!(out.output.contains("smoke: /dev/ublk-control present"), "console:\n{}", out.output);
    assert!(out.output.contains(&format!("cwd {}", vm::repo_root().display())), "console:\n{}", out.output);
    let marker = out.out.as_ref().expect("share").path().join("smoke-ok");
    let marker =
        std::fs::read_to_string(&marker).unwrap_or_else(|e| panic!("{}: {e}\n{}", marker.display(), out.output));
    assert!(marker.starts_with("smoke-ok 6.12"), "marker: {marker}");
}
