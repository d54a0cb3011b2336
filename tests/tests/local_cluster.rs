//! `sheepctl up` / `down`: the README's first command, on a free port block.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

use sheep_core::group::{ClusterInfo, ClusterStatus, MemberRole};
use sheep_tests::bin;
use sheep_tests::http::scrape;

/// A port P with P..=P+3 free on 127.0.0.1..3: groupd, storaged and their metrics.
fn free_ports() -> u16 {
    for _ in 0..50 {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = probe.local_addr().unwrap().port();
        drop(probe);
        if p > 65000 {
            continue;
        }
        let all_free =
            (1..=3).all(|n| (p..=p + 3).all(|port| TcpListener::bind((format!("127.0.0.{n}").as_str(), port)).is_ok()));
        if all_free {
            return p;
        }
    }
    panic!("no four free ports in a row found");
}

fn ctl(args: &[&str]) -> Output {
    Command::new(bin("sheepctl")).args(args).env_remove("SHEEP_KEYRING").output().unwrap()
}

/// sheepctl with the keyring `up` made in `dir`.
fn ctl_keyed(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin("sheepctl")).args(args).env("SHEEP_KEYRING", dir.join("keyring")).output().unwrap()
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pids(dir: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    for n in 1..=3 {
        for d in ["groupd", "storaged"] {
            let f = dir.join(format!("node{n}/{d}.pid"));
            if let Ok(s) = std::fs::read_to_string(&f) {
                out.push(s.trim().parse().unwrap());
            }
        }
    }
    out
}

fn alive(pid: i32) -> bool {
    // Zombies of a daemon `up` detached are not ours to reap; a stopped daemon is gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// Stops the cluster whatever happens to the test.
struct Down<'a>(&'a Path);
impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = ctl(&["down", "--dir", self.0.to_str().unwrap()]);
    }
}

#[test]
fn up_starts_and_formats_down_stops_up_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    let d = dir.to_str().unwrap();
    let base = free_ports();
    let port = base.to_string();
    let _down = Down(&dir);

    let out = ok(ctl(&["up", "--dir", d, "--nodes", "3", "--port-base", &port]));
    assert!(out.contains("formatted a new cluster"), "{out}");
    // Its keys: made with the cluster, mode 0600, named in what it prints; needed.
    let keyring = dir.join("keyring");
    assert!(out.contains(&format!("export SHEEP_KEYRING={}", keyring.display())), "{out}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&keyring).unwrap().permissions().mode() & 0o777, 0o600);
    let groupd = format!("127.0.0.1:{port},127.0.0.2:{port},127.0.0.3:{port}");
    let without = ctl(&["--groupd", &groupd, "--keyring", "/dev/null", "cluster", "info"]);
    assert!(!without.status.success(), "an empty keyring is refused");
    let info: ClusterInfo =
        serde_json::from_str(&ok(ctl_keyed(&dir, &["--groupd", &groupd, "--json", "cluster", "info"]))).unwrap();
    assert_eq!(info.status, ClusterStatus::Running);
    assert_eq!(info.members.iter().filter(|m| m.role != MemberRole::Member).count(), 3);
    assert_eq!(info.epochs.last().unwrap().nodes.len(), 3);
    assert_eq!(info.config.as_ref().unwrap().copies, 3);
    let started = pids(&dir);
    assert_eq!(started.len(), 6);
    assert!(started.iter().all(|p| alive(*p)));
    // Every daemon serves its metrics where `up` says.
    assert!(out.contains(&format!("http://127.0.0.N:{}/metrics (groupd)", base + 2)), "{out}");
    for n in 1..=3 {
        let groupd_metrics = scrape(&format!("127.0.0.{n}:{}", base + 2));
        assert!(groupd_metrics.contains("sheep_build_info{daemon=\"groupd\""), "{groupd_metrics}");
        let storaged_metrics = scrape(&format!("127.0.0.{n}:{}", base + 3));
        assert!(storaged_metrics.contains("sheep_build_info{daemon=\"storaged\""), "{storaged_metrics}");
    }

    // disk0 is created and attached: a ublk device where the kernel has ublk_drv, else an NBD
    // export that qemu-img reads.
    let vdis = ok(ctl_keyed(&dir, &["--groupd", &groupd, "vdi", "list"]));
    assert!(vdis.contains("disk0") && vdis.contains("10.0 GiB"), "{vdis}");
    let mut export_pid = None;
    if Path::new("/dev/ublk-control").exists() {
        assert!(out.contains("attached as /dev/ublkb"), "{out}");
    } else {
        assert!(out.contains("/dev/ublk-control is missing"), "{out}");
        let url = out.split_whitespace().find(|w| w.starts_with("nbd://")).expect("an nbd:// address").to_string();
        let info = Command::new("qemu-img").args(["info", "--output=json", &url]).output().unwrap();
        assert!(info.status.success(), "qemu-img info {url}: {}", String::from_utf8_lossy(&info.stderr));
        assert!(String::from_utf8_lossy(&info.stdout).contains("\"virtual-size\": 10737418240"));
        let pid: i32 = std::fs::read_to_string(dir.join("nbd-disk0.pid")).unwrap().trim().parse().unwrap();
        assert!(alive(pid));
        export_pid = Some(pid);
    }

    let down = ok(ctl(&["down", "--dir", d]));
    assert!(started.iter().all(|p| !alive(*p)), "down stops every daemon it started");
    if let Some(pid) = export_pid {
        assert!(down.contains("stopped the NBD export"), "{down}");
        assert!(!alive(pid), "down stops the NBD export");
    }

    // With its own keyring exported, as `up` says to.
    let out = ok(ctl_keyed(&dir, &["up", "--dir", d]));
    assert!(out.contains("restarted"), "{out}");
    let again: ClusterInfo =
        serde_json::from_str(&ok(ctl_keyed(&dir, &["--groupd", &groupd, "--json", "cluster", "info"]))).unwrap();
    assert_eq!(again.config, info.config, "the same cluster");
    assert_eq!(again.epochs, info.epochs, "a restart after down makes no epoch");
    ok(ctl(&["down", "--dir", d]));
}
