//! A cluster of real processes for one test: groupd and storaged instances on their own
//! loopback addresses, `sheepctl` run against them.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use sheep_core::group::{ClusterInfo, ClusterStatus, MemberRole};

use crate::daemon::Daemon;
use crate::net::Loopback;
use crate::wait::wait_until;

/// Every wait on the cluster is bounded by this unless a test says otherwise.
pub const TIMEOUT: Duration = Duration::from_secs(30);

pub struct Cluster {
    pub dir: tempfile::TempDir,
    /// This cluster's addresses.
    pub net: Loopback,
    pub lease_ms: u64,
    /// More flags for every groupd started from now on.
    pub groupd_extra: Vec<String>,
    pub groupds: Vec<Daemon>,
    pub groupd_addrs: Vec<String>,
    /// Where each groupd serves its metrics (`--metrics`), in the order of `groupds`.
    pub groupd_metrics: Vec<String>,
    pub storageds: Vec<Daemon>,
    pub storaged_addrs: Vec<String>,
    /// Where each storaged serves its metrics, in the order of `storageds`.
    pub storaged_metrics: Vec<String>,
}

/// A failing test keeps its cluster's directory (every daemon's log is there) and says where.
impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!("the failed test's cluster (data and logs) is kept in {}", self.dir.path().display());
        }
    }
}

impl Cluster {
    pub fn new() -> Cluster {
        // Every cluster of the tests has keys; this process's own clients use them too.
        crate::keys::keyring();
        let dir = tempfile::Builder::new().prefix("sheep-test-").tempdir().expect("tempdir");
        Cluster {
            dir,
            net: Loopback::new(),
            lease_ms: 3000,
            groupd_extra: Vec::new(),
            groupds: Vec::new(),
            groupd_addrs: Vec::new(),
            groupd_metrics: Vec::new(),
            storageds: Vec::new(),
            storaged_addrs: Vec::new(),
            storaged_metrics: Vec::new(),
        }
    }

    /// One groupd and `nodes` storaged, formatted with `copies` (and `extra` format flags,
    /// e.g. `["--object-size", "1M"]`), running with every node in the epoch.
    pub fn formatted(nodes: usize, copies: u8, extra: &[&str]) -> Cluster {
        Cluster::new().format_with(nodes, copies, extra)
    }

    /// [`Cluster::formatted`] from this cluster (not started yet: its settings, e.g.
    /// `groupd_extra`, chosen).
    pub fn format_with(self, nodes: usize, copies: u8, extra: &[&str]) -> Cluster {
        let mut c = self;
        c.add_groupd();
        c.wait_group(0, 1, 1);
        let copies_arg = copies.to_string();
        let mut args = vec!["cluster", "format", "--copies", copies_arg.as_str()];
        // Fewer nodes (one zone each) than copies: the test accepts under-replicated VDIs,
        // and writes that land on every node there is.
        let min = nodes.min(usize::from(copies - copies / 2)).to_string();
        if nodes < usize::from(copies) {
            args.extend(["--allow-fewer-zones", "--min-copies", min.as_str()]);
        }
        args.extend_from_slice(extra);
        c.ctl_ok(&args);
        for _ in 0..nodes {
            c.add_storaged();
        }
        c.wait_epoch_nodes(0, nodes, sheep_core::group::ClusterStatus::Running);
        c
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Starts groupd number `len + 1`; all but the first join the first one.
    pub fn add_groupd(&mut self) -> usize {
        let n = self.groupds.len() + 1;
        let (addr, metrics) = self.net.free_addr_pair(n);
        let mut args = vec![
            "--listen".to_string(),
            addr.clone(),
            "--metrics".into(),
            metrics.clone(),
            "--data".into(),
            self.path(&format!("groupd{n}")).display().to_string(),
            "--lease-ms".into(),
            self.lease_ms.to_string(),
        ];
        args.extend(self.groupd_extra.iter().cloned());
        if let Some(first) = self.groupd_addrs.first() {
            args.push("--join".into());
            args.push(first.clone());
        }
        let log = self.path(&format!("groupd{n}.log"));
        self.groupds.push(Daemon::start("groupd", args, log));
        self.groupd_addrs.push(addr);
        self.groupd_metrics.push(metrics);
        n - 1
    }

    /// Starts `n` groupd (a new group of them) and waits until every one is a voting member.
    pub fn add_group(&mut self, n: usize) -> ClusterInfo {
        for _ in 0..n {
            self.add_groupd();
        }
        self.wait_group(0, n, n)
    }

    /// Starts storaged number `len + 1` (zone = its number) pointed at every groupd. Its
    /// address is `.100 + number` of the block: apart from every groupd's (a test cuts the
    /// links of one daemon by its address).
    pub fn add_storaged(&mut self) -> usize {
        self.add_storaged_failing(None)
    }

    /// [`Cluster::add_storaged`] with `FAILPOINTS` from its first start.
    pub fn add_storaged_failing(&mut self, failpoints: Option<&str>) -> usize {
        let n = self.storageds.len() + 1;
        let (addr, metrics) = self.net.free_addr_pair(100 + n);
        let args = vec![
            "--listen".to_string(),
            addr.clone(),
            "--metrics".into(),
            metrics.clone(),
            "--data".into(),
            self.path(&format!("storaged{n}")).display().to_string(),
            "--groupd".into(),
            self.groupd_addrs.join(","),
            "--zone".into(),
            n.to_string(),
        ];
        let log = self.path(&format!("storaged{n}.log"));
        self.storageds.push(Daemon::start_failing("storaged", args, log, failpoints.map(String::from)));
        self.storaged_addrs.push(addr);
        self.storaged_metrics.push(metrics);
        n - 1
    }

    /// `sheepctl --groupd <addrs> args…`.
    pub fn ctl_at(&self, groupd: &str, args: &[&str]) -> Output {
        crate::keys::command("sheepctl").arg("--groupd").arg(groupd).args(args).output().expect("run sheepctl")
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_at(&self.groupd_addrs.join(","), args)
    }

    /// Runs sheepctl and returns its stdout; panics with its stderr if it failed.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "sheepctl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `cluster info` as answered by groupd `i` alone.
    pub fn info_from(&self, i: usize) -> Result<ClusterInfo, String> {
        let out = self.ctl_at(&self.groupd_addrs[i], &["--json", "cluster", "info"]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("bad JSON from cluster info: {e}"))
    }

    pub fn info(&self) -> ClusterInfo {
        let out = self.ctl_ok(&["--json", "cluster", "info"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON from cluster info: {e}: {out}"))
    }

    /// Waits until groupd `i` sees a master and `voters` voters in all; returns its info.
    pub fn wait_group(&self, i: usize, members: usize, voters: usize) -> ClusterInfo {
        wait_until(TIMEOUT, &format!("groupd {i} to see {members} members, {voters} voters"), || {
            let info = self.info_from(i)?;
            let masters = info.members.iter().filter(|m| m.role == MemberRole::Master).count();
            let subs = info.members.iter().filter(|m| m.role == MemberRole::Submaster).count();
            if masters == 1 && info.members.len() == members && masters + subs == voters {
                Ok(info)
            } else {
                Err(format!("{:?}", info.members))
            }
        })
    }

    /// Waits until groupd `i` has applied an epoch with exactly `nodes` storage nodes and
    /// status `status`; returns its info.
    pub fn wait_epoch_nodes(&self, i: usize, nodes: usize, status: ClusterStatus) -> ClusterInfo {
        wait_until(TIMEOUT, &format!("an epoch of {nodes} nodes, {status:?}, on groupd {i}"), || {
            let info = self.info_from(i)?;
            let n = info.epochs.last().map_or(0, |e| e.nodes.len());
            if n == nodes && info.status == status {
                Ok(info)
            } else {
                Err(format!("status {:?}, last epoch {:?}", info.status, info.epochs.last()))
            }
        })
    }

    /// Index of the groupd that is master now, as seen by groupd `seen_by`.
    pub fn master(&self, seen_by: usize) -> Option<usize> {
        let info = self.info_from(seen_by).ok()?;
        let m = info.members.iter().find(|m| m.role == MemberRole::Master)?;
        self.groupd_addrs.iter().position(|a| *a == m.addr)
    }

    /// The last lines of every daemon's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for d in self.groupds.iter().chain(&self.storageds) {
            s.push_str(&format!("--- {} {:?}\n{}\n", d.name, d.args.get(1), d.log_tail()));
        }
        s
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster::new()
    }
}

/// Data-path helpers: objects on disk, VDIs through sheepctl.
impl Cluster {
    /// Object ids (16 hex digits) in storaged `i`'s `obj/` directory.
    pub fn objects_on(&self, i: usize) -> std::collections::BTreeSet<String> {
        Self::objects_in(&self.path(&format!("storaged{}/obj", i + 1)))
    }

    /// Object ids in storaged `i`'s `.stale/` directory.
    pub fn stale_on(&self, i: usize) -> std::collections::BTreeSet<String> {
        Self::objects_in(&self.path(&format!("storaged{}/.stale", i + 1)))
    }

    fn objects_in(dir: &std::path::Path) -> std::collections::BTreeSet<String> {
        let Ok(entries) = std::fs::read_dir(dir) else { return Default::default() };
        entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.len() >= 16 && n[..16].chars().all(|c| c.is_ascii_hexdigit()))
            .map(|n| n[..16].to_string())
            .collect()
    }

    /// Waits until every live storaged reports its recovery complete for the newest epoch.
    pub fn wait_recovered(&self) {
        wait_until(Duration::from_secs(60), "recovery to complete on every node", || {
            let out = self.ctl(&["--json", "node", "recovery"]);
            if !out.status.success() {
                return Err(String::from_utf8_lossy(&out.stderr).into_owned());
            }
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
            let nodes = v.get("nodes").and_then(|n| n.as_array()).ok_or("no nodes in JSON")?;
            // A node whose disk failed left the data membership: it recovers nothing.
            let nodes: Vec<_> = nodes.iter().filter(|n| n.get("failed").is_none()).collect();
            let done = nodes.iter().filter(|n| n.get("complete").and_then(|c| c.as_bool()) == Some(true)).count();
            if done == nodes.len() && !nodes.is_empty() {
                Ok(())
            } else {
                Err(format!("{done} of {} complete: {v}", nodes.len()))
            }
        })
    }

    /// Asserts that `cluster check --dry-run` finds nothing (every replica identical).
    pub fn assert_check_clean(&self) {
        let check = self.ctl(&["cluster", "check", "--dry-run"]);
        let text = format!("{}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
        assert!(check.status.success() && text.contains("0 to repair, 0 unrepairable"), "{text}");
    }

    /// Runs sheepctl with `input` on stdin; returns its output.
    pub fn ctl_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        self.ctl_as(crate::keys::keyring(), args, input)
    }

    /// sheepctl as the client of `keyring` (e.g. one `auth add` made), `input` on its stdin.
    pub fn ctl_as(&self, keyring: &std::path::Path, args: &[&str], input: &[u8]) -> Output {
        use std::io::Write;
        let mut child = crate::keys::command("sheepctl")
            .env("SHEEP_KEYRING", keyring)
            .arg("--groupd")
            .arg(self.groupd_addrs.join(","))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run sheepctl");
        let mut stdin = child.stdin.take().expect("stdin");
        let _ = stdin.write_all(input);
        drop(stdin);
        child.wait_with_output().expect("wait sheepctl")
    }
}
