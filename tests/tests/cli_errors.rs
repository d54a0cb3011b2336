//! Bad input gets one clear line on stderr and a non-zero exit; nothing panics or hangs.

use std::process::Output;
use std::time::{Duration, Instant};

use sheep_tests::Cluster;

fn run(program: &str, args: &[&str]) -> Output {
    sheep_tests::keys::command(program).args(args).output().expect("run")
}

fn assert_clear_failure(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail; stdout: {}", String::from_utf8_lossy(&out.stdout));
    assert!(err.contains(needle), "stderr should mention {needle:?}: {err}");
    assert!(!err.contains("panicked"), "no panic: {err}");
}

#[test]
fn unreachable_groupd_fails_fast_naming_the_address() {
    // A port on our own loopback block where nothing listens.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let start = Instant::now();
    let out = run("sheepctl", &["--groupd", &addr, "cluster", "info"]);
    assert!(start.elapsed() < Duration::from_secs(6), "took {:?}", start.elapsed());
    assert_clear_failure(&out, &addr);
}

#[test]
fn malformed_flags_and_sizes_are_refused() {
    let out = run("sheepctl", &["--groupd", "127.0.0.1:1", "cluster", "format", "--object-size", "4X"]);
    assert_clear_failure(&out, "4X");
    let out = run("sheepctl", &["--groupd", "127.0.0.1:1", "cluster", "format", "--object-size", "3M"]);
    assert_clear_failure(&out, "power of two");
    let out = run("sheepctl", &["--groupd", "127.0.0.1:1", "cluster", "format", "--copies", "zero"]);
    assert_clear_failure(&out, "zero");
    let out = run("sheepctl", &["cluster", "--no-such-flag"]);
    assert_clear_failure(&out, "--no-such-flag");
    let out = run("sheepctl", &["--groupd", "127.0.0.1:1", "cluster", "format", "--copies", "4:2"]);
    assert_clear_failure(&out, "erasure coding (4:2, data:parity) is not supported");
    // An unknown subcommand points to its group's help, not to a subcommand named after it.
    let out = run("sheepctl", &["node", "md", "info"]);
    assert_clear_failure(&out, "see 'sheepctl node --help'");
    let out = run("groupd", &["--listen", "not-an-address", "--data", "/tmp/x"]);
    assert_clear_failure(&out, "not-an-address");
    let out =
        run("storaged", &["--listen", "127.0.0.1:1", "--data", "/tmp/x", "--groupd", "127.0.0.1:2", "--weight", "-3"]);
    assert_clear_failure(&out, "-3");
}

#[test]
fn format_of_a_formatted_cluster_needs_force() {
    let mut c = Cluster::new();
    c.add_groupd();
    c.wait_group(0, 1, 1);
    c.ctl_ok(&["cluster", "format"]);
    // Running, but with no storage node: said plainly (the JSON status stays `Running`).
    let text = c.ctl_ok(&["cluster", "info"]);
    assert!(text.contains("running, but no storage node has joined: nothing can be stored until one does"), "{text}");
    let id = c.info().config.unwrap().cluster_id;
    let out = c.ctl(&["cluster", "format"]);
    assert_clear_failure(&out, "--force");
    assert_eq!(c.info().config.unwrap().cluster_id, id, "nothing changed");
    c.ctl_ok(&["cluster", "format", "--force", "--copies", "2"]);
    let info = c.info();
    assert_ne!(info.config.as_ref().unwrap().cluster_id, id);
    assert_eq!(info.config.unwrap().copies, 2);
}

#[test]
fn storaged_refuses_a_data_dir_it_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let data = file.join("store");
    let out =
        run("storaged", &["--listen", "127.0.0.1:1", "--data", data.to_str().unwrap(), "--groupd", "127.0.0.1:1"]);
    assert_clear_failure(&out, "a-file");
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}

#[test]
fn groupd_refuses_a_data_dir_it_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let data = file.join("g");
    let out = run("groupd", &["--listen", "127.0.0.1:0", "--data", data.to_str().unwrap()]);
    assert_clear_failure(&out, "a-file");
}

/// Block device commands on a host without ublk_drv name the module and the NBD way out; with
/// the driver (and root), a device that does not exist is named.
#[test]
fn block_device_commands_without_the_driver_or_device_say_why() {
    let out = run("sheepctl", &["--groupd", "127.0.0.1:1", "add", "bad/name"]);
    if std::path::Path::new("/dev/ublk-control").exists() {
        // With the driver, the VDI name is checked (before any groupd is asked).
        assert_clear_failure(&out, "bad/name");
        let out = run("sheepctl", &["del", "/dev/ublkb99999"]);
        assert_clear_failure(&out, "ublkb99999");
    } else {
        assert_clear_failure(&out, "ublk_drv");
        assert_clear_failure(&out, "sheepctl export");
        let out = run("ublk-dev", &["--groupd", "127.0.0.1:1", "ublk", "--vdi", "disk0"]);
        assert_clear_failure(&out, "/dev/ublk-control is missing");
        let out = run("sheepctl", &["del", "/dev/ublkb0"]);
        assert_clear_failure(&out, "no Sheepdog ublk device matches");
        let out = run("sheepctl", &["list"]);
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("no Sheepdog ublk devices"));
    }
    let out = run("sheepctl", &["add", "disk0", "--queues", "0"]);
    assert_clear_failure(&out, "--queues");
    let out = run("sheepctl", &["add", "disk0", "--depth", "100000"]);
    assert_clear_failure(&out, "--depth");
}
