//! `sheepctl up` / `down`: the README's first command, on a free port block; and the
//! multi-host deployment: `ci/install` into a directory, groupd and storaged started with the
//! command lines of the systemd units in `deploy/systemd` and config files made from the
//! examples in `deploy/config`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use sheep_core::group::{ClusterInfo, ClusterStatus, MemberRole};
use sheep_tests::http::scrape;
use sheep_tests::{bin, Cluster, Daemon};

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

/// The repository's `deploy/` directory.
fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(rel)
}

/// The command line of a unit's `ExecStart=` for instance `instance` (`%i`), made to run here:
/// the program's name (the unit runs `/usr/local/bin/NAME`; the test runs the built NAME) and
/// its arguments, every file of /etc/sheep/ taken from `etc` instead.
fn exec_start(unit: &str, instance: &str, etc: &Path) -> (String, Vec<String>) {
    let text = std::fs::read_to_string(deploy(&format!("systemd/{unit}"))).unwrap();
    let lines: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("ExecStart=")).collect();
    assert_eq!(lines.len(), 1, "{unit}: one ExecStart= line");
    let line = lines[0].trim_start_matches(['-', '@', ':', '+', '!']).replace("%i", instance);
    let mut words = line.split_whitespace();
    let program = words.next().unwrap();
    let name = program.strip_prefix("/usr/local/bin/").unwrap_or_else(|| panic!("{unit} runs {program}"));
    let args = words
        .map(|w| match w.strip_prefix("/etc/sheep/") {
            Some(file) => etc.join(file).display().to_string(),
            None => w.to_string(),
        })
        .collect();
    (name.to_string(), args)
}

/// A config file made from the example `deploy/config/NAME`: every setting of it, the optional
/// ones (`# name = value`) uncommented with their defaults, `set` ones replaced by the value
/// given (a TOML value) or left out (`None`). So every key of the examples is one the daemon
/// takes, with a value it accepts.
fn config_from_example(name: &str, set: &[(&str, Option<String>)]) -> String {
    let example = std::fs::read_to_string(deploy(&format!("config/{name}"))).unwrap();
    let mut out = String::new();
    for line in example.lines() {
        let setting = line.strip_prefix("# ").unwrap_or(line);
        let key =
            setting.split_once(" = ").map(|(k, _)| k).filter(|k| k.chars().all(|c| c.is_ascii_lowercase() || c == '-'));
        match key.map(|k| (k, set.iter().find(|(s, _)| *s == k))) {
            Some((k, Some((_, Some(v))))) => out.push_str(&format!("{k} = {v}\n")),
            Some((_, Some((_, None)))) => {}
            Some((_, None)) => out.push_str(&format!("{setting}\n")),
            None => out.push_str(&format!("{line}\n")),
        }
    }
    for (k, v) in set {
        assert!(v.is_none() || out.contains(&format!("\n{k} = ")), "{name} has no setting {k}");
    }
    out
}

fn toml_str(s: &str) -> Option<String> {
    Some(format!("{s:?}"))
}

fn toml_list(items: &[String]) -> Option<String> {
    Some(format!("[{}]", items.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ")))
}

#[test]
fn the_systemd_units_and_config_files_run_a_cluster() {
    let mut c = Cluster::new();
    let keyring = sheep_tests::keys::keyring().display().to_string();

    // ci/install into a directory: binaries, units, examples; a real config is left alone.
    let root = c.path("root");
    std::fs::create_dir_all(root.join("etc/sheep")).unwrap();
    std::fs::write(root.join("etc/sheep/groupd.toml"), "# mine\n").unwrap();
    let bins = bin("groupd").parent().unwrap().display().to_string();
    let install = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ci/install");
    let out =
        Command::new(&install).args(["--bin-dir", &bins, "--dest", &root.display().to_string()]).output().unwrap();
    assert!(out.status.success(), "ci/install: {}", String::from_utf8_lossy(&out.stderr));
    for f in [
        "usr/local/bin/groupd",
        "usr/local/bin/storaged",
        "usr/local/bin/ublk-dev",
        "usr/local/bin/sheepctl",
        "etc/systemd/system/sheep-groupd.service",
        "etc/systemd/system/sheep-storaged@.service",
        "etc/systemd/system/sheep-devices.service",
        "etc/sheep/groupd.toml.example",
        "etc/sheep/storaged.toml.example",
        "etc/sheep/export.toml.example",
        "etc/sheep/devices.example",
    ] {
        assert!(root.join(f).exists(), "ci/install did not install {f}");
    }
    assert_eq!(std::fs::read_to_string(root.join("etc/sheep/groupd.toml")).unwrap(), "# mine\n");
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/sheep-devices.service")).unwrap();
    assert!(unit.contains("sheepctl add --from /etc/sheep/devices") && unit.contains("sheepctl del --from"), "{unit}");

    // groupd as sheep-groupd.service runs it, settings from its config file.
    let etc = c.path("etc-sheep");
    std::fs::create_dir_all(&etc).unwrap();
    let (addr, metrics) = c.net.free_addr_pair(1);
    let groupd = config_from_example(
        "groupd.toml",
        &[
            ("listen", toml_str(&addr)),
            ("data", toml_str(&c.path("groupd1").display().to_string())),
            ("join", None),
            ("keyring", toml_str(&keyring)),
            ("lease-ms", Some(c.lease_ms.to_string())),
            ("metrics", toml_str(&metrics)),
        ],
    );
    std::fs::write(etc.join("groupd.toml"), groupd).unwrap();
    let (program, args) = exec_start("sheep-groupd.service", "", &etc);
    assert_eq!(program, "groupd");
    c.groupds.push(Daemon::start(&program, args, c.path("groupd1.log")));
    c.groupd_addrs.push(addr);
    c.groupd_metrics.push(metrics.clone());
    c.wait_group(0, 1, 1);
    c.ctl_ok(&["cluster", "format", "--copies", "2"]);

    // Two storage nodes as instances of sheep-storaged@.service.
    for n in 1..=2 {
        let (addr, metrics) = c.net.free_addr_pair(100 + n);
        let text = config_from_example(
            "storaged.toml",
            &[
                ("listen", toml_str(&addr)),
                ("data", toml_str(&c.path(&format!("storaged{n}")).display().to_string())),
                ("groupd", toml_list(&c.groupd_addrs)),
                ("keyring", toml_str(&keyring)),
                ("zone", Some(n.to_string())),
                ("metrics", toml_str(&metrics)),
            ],
        );
        std::fs::write(etc.join(format!("storaged-disk{n}.toml")), text).unwrap();
        let (program, args) = exec_start("sheep-storaged@.service", &format!("disk{n}"), &etc);
        assert_eq!(program, "storaged");
        c.storageds.push(Daemon::start(&program, args, c.path(&format!("storaged{n}.log"))));
        c.storaged_addrs.push(addr);
        c.storaged_metrics.push(metrics);
    }
    let info = c.wait_epoch_nodes(0, 2, ClusterStatus::Running);
    let mut zones: Vec<u32> = info.epochs.last().unwrap().nodes.iter().map(|n| n.zone).collect();
    zones.sort_unstable();
    assert_eq!(zones, [1, 2], "each node's zone from its file");
    // The files' metrics addresses.
    assert!(scrape(&metrics).contains("sheep_group_role"));
    assert!(scrape(&c.storaged_metrics[1]).contains("sheep_storage_epoch"));

    // The export example: every setting accepted (what fails is the missing certificate).
    let listen = c.net.free_addr(1);
    let export = config_from_example(
        "export.toml",
        &[
            ("groupd", toml_list(&c.groupd_addrs)),
            ("keyring", toml_str(&keyring)),
            ("listen", toml_str(&listen)),
            ("metrics", None),
            ("tls-cert", toml_str(&c.path("no-cert.pem").display().to_string())),
            ("tls-key", toml_str(&c.path("no-key.pem").display().to_string())),
        ],
    );
    std::fs::write(etc.join("export.toml"), export).unwrap();
    let args = vec!["nbd".to_string(), "--config".into(), etc.join("export.toml").display().to_string()];
    let mut nbd = Daemon::start("ublk-dev", args, c.path("nbd.log"));
    assert_eq!(nbd.wait_exit(Duration::from_secs(20)), Some(1));
    let log = std::fs::read_to_string(c.path("nbd.log")).unwrap();
    assert!(log.contains("no-cert.pem") && !log.contains("config file"), "{log}");

    // A typo in a file: refused at once, naming the key and the file.
    std::fs::write(etc.join("typo.toml"), "listen = \"127.0.0.1:1\"\nlisten-addr = \"x\"\n").unwrap();
    let args = vec!["--config".to_string(), etc.join("typo.toml").display().to_string()];
    let mut typo = Daemon::start("groupd", args, c.path("typo.log"));
    assert_eq!(typo.wait_exit(Duration::from_secs(10)), Some(2));
    let log = std::fs::read_to_string(c.path("typo.log")).unwrap();
    assert!(log.contains("typo.toml: unknown setting `listen-addr`"), "{log}");
}
