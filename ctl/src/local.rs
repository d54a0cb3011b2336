//! `sheepctl up` and `sheepctl down`: a local cluster on this host.
//!
//! Layout of DIR: `cluster.json` (how many nodes, which port), and per node `nodeN/` with
//! the daemons' data dirs `groupd/` and `storaged/`, their logs `groupd.log` and
//! `storaged.log`, and their pid files `groupd.pid` and `storaged.pid`. Node N's groupd
//! listens on 127.0.0.N:PORT, its storaged on 127.0.0.N:PORT+1.

use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sheep_client::group::{GroupClient, Options};
use sheep_client::ErrorCode;
use sheep_core::group::{ClusterInfo, ClusterStatus, DEFAULT_OBJECT_SIZE_SHIFT, DEFAULT_VOTERS};
use sheep_core::size::format_size;
use tokio::time::Instant;

use crate::cli::{DownArgs, UpArgs};
use crate::keys;
use crate::output::print_json;
use crate::procs::{self, find_binary, is_gone, is_ours, read_pid, spawn_detached};
use sheep_rpc::keyfile::KeyArgs;

const LAYOUT_FILE: &str = "cluster.json";
const DEFAULT_NODES: u8 = 3;
const DEFAULT_PORT: u16 = 7000;
/// After SIGTERM, how long `down` waits before SIGKILL.
const TERM_WAIT: Duration = Duration::from_secs(10);
const KILL_WAIT: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(200);

/// `DIR/cluster.json`: what `up` created, so that a later `up` restarts the same nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub nodes: u8,
    pub port_base: u16,
    /// groupd's `--lease-ms` (None: its default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u32>,
}

impl Layout {
    pub fn groupd_addr(&self, n: u8) -> String {
        format!("127.0.0.{n}:{}", self.port_base)
    }
    pub fn storaged_addr(&self, n: u8) -> String {
        format!("127.0.0.{n}:{}", self.port_base + 1)
    }
    /// Where node `n`'s groupd serves its Prometheus metrics.
    pub fn groupd_metrics(&self, n: u8) -> String {
        format!("127.0.0.{n}:{}", self.port_base + 2)
    }
    /// Where node `n`'s storaged serves its Prometheus metrics.
    pub fn storaged_metrics(&self, n: u8) -> String {
        format!("127.0.0.{n}:{}", self.port_base + 3)
    }
    pub fn groupd_addrs(&self) -> Vec<String> {
        (1..=self.nodes).map(|n| self.groupd_addr(n)).collect()
    }
    pub fn storaged_addrs(&self) -> Vec<String> {
        (1..=self.nodes).map(|n| self.storaged_addr(n)).collect()
    }
}

/// The layout of an existing DIR, or a new one from the flags. Flags that contradict an
/// existing DIR are refused.
fn resolve_layout(
    existing: Option<Layout>,
    nodes: Option<u8>,
    port_base: Option<u16>,
    lease_ms: Option<u32>,
    dir: &Path,
) -> Result<Layout> {
    let layout = match existing {
        Some(l) => {
            if nodes.is_some_and(|n| n != l.nodes) || port_base.is_some_and(|p| p != l.port_base) {
                bail!(
                    "{} holds a cluster of {} nodes on port {}; run `up` on it without --nodes/--port-base, or use \
                        another --dir",
                    dir.display(),
                    l.nodes,
                    l.port_base
                );
            }
            l
        }
        None => {
            Layout { nodes: nodes.unwrap_or(DEFAULT_NODES), port_base: port_base.unwrap_or(DEFAULT_PORT), lease_ms }
        }
    };
    // A lease given now applies from this start on (it is no property of the data).
    Ok(Layout { lease_ms: lease_ms.or(layout.lease_ms), ..layout })
}

fn load_layout(dir: &Path) -> Result<Option<Layout>> {
    let path = dir.join(LAYOUT_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => Ok(Some(
            serde_json::from_str(&text).with_context(|| format!("{} is not a valid cluster layout", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn save_layout(dir: &Path, layout: &Layout) -> Result<()> {
    let path = dir.join(LAYOUT_FILE);
    let tmp = dir.join(format!("{LAYOUT_FILE}.tmp"));
    fs::write(&tmp, serde_json::to_string_pretty(layout)? + "\n")
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
}

/// One daemon of one node.
#[derive(Clone, Debug)]
struct Daemon {
    node: u8,
    name: &'static str,
    data: PathBuf,
    log: PathBuf,
    pid_file: PathBuf,
}

impl Daemon {
    fn new(dir: &Path, node: u8, name: &'static str) -> Daemon {
        let nd = dir.join(format!("node{node}"));
        Daemon {
            node,
            name,
            data: nd.join(name),
            log: nd.join(format!("{name}.log")),
            pid_file: nd.join(format!("{name}.pid")),
        }
    }

    fn args(&self, layout: &Layout) -> Vec<String> {
        let data = self.data.to_string_lossy().into_owned();
        let n = self.node;
        match self.name {
            "groupd" => {
                let mut a = vec![
                    "--listen".into(),
                    layout.groupd_addr(n),
                    "--data".into(),
                    data,
                    "--metrics".into(),
                    layout.groupd_metrics(n),
                ];
                if n > 1 {
                    a.extend(["--join".into(), layout.groupd_addr(1)]);
                }
                if let Some(ms) = layout.lease_ms {
                    a.extend(["--lease-ms".into(), ms.to_string()]);
                }
                a
            }
            _ => vec![
                "--listen".into(),
                layout.storaged_addr(n),
                "--data".into(),
                data,
                "--metrics".into(),
                layout.storaged_metrics(n),
                "--groupd".into(),
                layout.groupd_addrs().join(","),
                // One zone per node, so that a local cluster keeps its copies on distinct nodes.
                "--zone".into(),
                n.to_string(),
            ],
        }
    }

    /// Its pid, if its pid file names a live process that is this daemon.
    fn running_pid(&self) -> Result<Option<i32>> {
        Ok(read_pid(&self.pid_file)?.filter(|&pid| is_ours(pid, self.name, &self.data)))
    }
}

/// A daemon `up` started and still watches.
struct Started {
    daemon: Daemon,
    child: Child,
}

impl Started {
    /// An error if the daemon exited already (its log's last lines say why).
    fn check(&mut self) -> Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            let d = &self.daemon;
            bail!(
                "the {} of node {} exited during startup ({status}): {}; see {}",
                d.name,
                d.node,
                procs::log_tail(&d.log, 1),
                d.log.display()
            );
        }
        Ok(())
    }
}

pub async fn up(args: &UpArgs, keys: &KeyArgs, json: bool) -> Result<()> {
    fs::create_dir_all(&args.dir).with_context(|| format!("cannot create {}", args.dir.display()))?;
    let dir = args.dir.canonicalize().with_context(|| format!("cannot open {}", args.dir.display()))?;
    if let Some(k) = &keys.keyring {
        // Its own keyring named (as `up` tells to export it) is fine; another one is not.
        if k.canonicalize().ok() != keys::keyring_in(&dir).canonicalize().ok() {
            bail!(
                "`sheepctl up` keeps its cluster's keyring in {}; --keyring (or SHEEP_KEYRING) {} is another one",
                keys::keyring_in(&dir).display(),
                k.display()
            );
        }
    }
    let existing = load_layout(&dir)?;
    let keyring = local_keyring(&dir, existing.is_some(), keys.insecure)?;
    let keyring = keyring.as_deref();
    let layout = resolve_layout(existing, args.nodes, args.port_base, args.lease_ms, &dir)?;
    let groupd_bin = find_binary("groupd")?;
    let storaged_bin = find_binary("storaged")?;
    for n in 1..=layout.nodes {
        fs::create_dir_all(dir.join(format!("node{n}")))
            .with_context(|| format!("cannot create node dirs in {}", dir.display()))?;
    }
    save_layout(&dir, &layout)?;

    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let progress = Progress::new(json);
    let mut started: Vec<Started> = Vec::new();
    let mut already = 0usize;
    let client = GroupClient::new(
        layout.groupd_addrs(),
        Options {
            connect_timeout: Duration::from_secs(1),
            call_timeout: Duration::from_secs(2),
            retry_for: Duration::from_secs(2),
            wait_for_groupd: false,
        },
    )?;

    for n in 1..=layout.nodes {
        let d = Daemon::new(&dir, n, "groupd");
        if start(&d, &layout, &groupd_bin, &mut started)? {
            if n == 1 {
                // The others join through the first: let it come up first.
                progress.set("waiting for the first groupd");
                wait_until(deadline, &mut started, || async { client.info().await.ok().map(|_| ()) }).await?;
            }
        } else {
            already += 1;
        }
    }
    for n in 1..=layout.nodes {
        if !start(&Daemon::new(&dir, n, "storaged"), &layout, &storaged_bin, &mut started)? {
            already += 1;
        }
    }

    let want_storaged = layout.storaged_addrs();
    let want_groupd = layout.groupd_addrs();
    let info = wait_until(deadline, &mut started, || async {
        let info = client.info().await.ok()?;
        let members = info.members.iter().filter(|m| want_groupd.contains(&m.addr)).count();
        let nodes = storage_ids(&info).iter().filter(|id| want_storaged.contains(id)).count();
        progress.set(&format!(
            "waiting for the nodes: {members}/{} groupd members, {nodes}/{} storage nodes",
            layout.nodes, layout.nodes
        ));
        let master = info.members.iter().any(|m| m.role == sheep_core::group::MemberRole::Master);
        (master && members == want_groupd.len() && nodes == want_storaged.len()).then_some(info)
    })
    .await
    .with_context(|| not_up_hint(&dir))?;

    let mut formatted = None;
    if info.status == ClusterStatus::Unformatted {
        progress.set("formatting");
        let copies = args.copies.unwrap_or(layout.nodes.min(3));
        match client.format(copies, DEFAULT_OBJECT_SIZE_SHIFT, DEFAULT_VOTERS, false).await {
            Ok(cfg) => formatted = Some(cfg),
            Err(e) if e.is_code(ErrorCode::AlreadyFormatted) => {}
            Err(e) => return Err(e).context("cannot format the new cluster"),
        }
    } else if args.copies.is_some() {
        eprintln!("note: the cluster is formatted already; --copies is ignored");
    }
    progress.set("waiting for the cluster to run with every node");
    let info = wait_until(deadline, &mut started, || async {
        let info = client.info().await.ok()?;
        let in_epoch =
            info.epochs.last().is_some_and(|e| want_storaged.iter().all(|id| e.nodes.iter().any(|n| &n.id == id)));
        (info.status == ClusterStatus::Running && in_epoch).then_some(info)
    })
    .await
    .with_context(|| not_up_hint(&dir))?;
    let disk = if args.no_disk {
        None
    } else {
        progress.set(&format!("attaching {}", crate::local_disk::DISK));
        Some(crate::local_disk::attach(&dir, &client, &layout.groupd_addrs(), args.disk_size).await?)
    };
    progress.done();
    let up = UpSummary {
        dir: &dir,
        layout: &layout,
        info: &info,
        formatted: formatted.is_some(),
        started: &started,
        already,
        disk: disk.as_ref(),
        keyring,
    };
    up.print(json)
}

fn not_up_hint(dir: &Path) -> String {
    format!(
        "the local cluster did not come up (logs in {}/node*/; stop it with `sheepctl down --dir {}`)",
        dir.display(),
        dir.display()
    )
}

fn storage_ids(info: &ClusterInfo) -> Vec<String> {
    info.sessions.iter().filter_map(|s| s.node().map(|n| n.id.clone())).collect()
}

/// Starts `d` unless it runs already. Returns whether it was started.
/// The keyring of the local cluster in `dir` (made with the cluster, unless `insecure`), now
/// this process's too. None: the cluster runs without keys.
fn local_keyring(dir: &Path, exists: bool, insecure: bool) -> Result<Option<PathBuf>> {
    let path = keys::keyring_in(dir);
    let chosen = match (path.is_file(), insecure) {
        (true, true) => {
            bail!("the cluster in {} has keys ({}): --insecure is not for it", dir.display(), path.display())
        }
        (true, false) => Some(path),
        (false, true) => None,
        (false, false) if exists => bail!(
            "the cluster in {} runs without keys (it has no {}): start it with `sheepctl up --insecure`",
            dir.display(),
            path.display()
        ),
        (false, false) => {
            let k = keys::new_cluster_keyring()?;
            sheep_rpc::keyfile::create(&path, &k).map_err(anyhow::Error::msg)?;
            Some(path)
        }
    };
    keys::use_keyring(chosen.as_deref(), chosen.is_none())?;
    Ok(chosen)
}

fn start(d: &Daemon, layout: &Layout, bin: &Path, started: &mut Vec<Started>) -> Result<bool> {
    if d.running_pid()?.is_some() {
        return Ok(false);
    }
    fs::create_dir_all(&d.data).with_context(|| format!("cannot create {}", d.data.display()))?;
    let mut args = d.args(layout);
    args.extend(keys::child_flags());
    let child = spawn_detached(bin, &args, &d.log, &d.pid_file)?;
    started.push(Started { daemon: d.clone(), child });
    Ok(true)
}

/// Polls `probe` until it gives a value, failing when a started daemon exits or the
/// deadline passes.
async fn wait_until<T, F, Fut>(deadline: Instant, started: &mut [Started], mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    loop {
        for s in started.iter_mut() {
            s.check()?;
        }
        if let Some(v) = probe().await {
            return Ok(v);
        }
        if Instant::now() + POLL >= deadline {
            bail!("timed out");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What `up` did, for its report.
struct UpSummary<'a> {
    dir: &'a Path,
    layout: &'a Layout,
    info: &'a ClusterInfo,
    /// A new cluster was formatted.
    formatted: bool,
    started: &'a [Started],
    /// Daemons that were running already.
    already: usize,
    disk: Option<&'a crate::local_disk::Attached>,
    /// None: the cluster runs without keys.
    keyring: Option<&'a Path>,
}

impl UpSummary<'_> {
    fn print(&self, json: bool) -> Result<()> {
        let UpSummary { dir, layout, info, formatted, started, already, disk, keyring } = *self;
        let id = info.config.as_ref().map_or(String::new(), |c| c.cluster_id.clone());
        let epoch = info.epochs.last().map_or(0, |e| e.epoch);
        let export = layout.groupd_addrs().join(",");
        if json {
            let started: Vec<_> = started
                .iter()
                .map(|s| json!({ "node": s.daemon.node, "daemon": s.daemon.name, "pid": s.child.id() }))
                .collect();
            return print_json(&json!({
                "dir": dir,
                "cluster_id": id,
                "epoch": epoch,
                "formatted": formatted,
                "groupd": layout.groupd_addrs(),
                "storaged": layout.storaged_addrs(),
                "groupd_metrics": (1..=layout.nodes).map(|n| layout.groupd_metrics(n)).collect::<Vec<_>>(),
                "storaged_metrics": (1..=layout.nodes).map(|n| layout.storaged_metrics(n)).collect::<Vec<_>>(),
                "started": started,
                "already_running": already,
                "sheep_groupd": export,
                "disk": disk,
                "keyring": keyring,
            }));
        }
        let how = if formatted {
            let c = info.config.as_ref();
            format!(
                "formatted a new cluster {id} ({}, object size {})",
                crate::cluster::copies(c.map_or(0, |c| c.copies)),
                format_size(c.map_or(0, |c| c.object_size()))
            )
        } else if started.is_empty() {
            format!("cluster {id} was running already")
        } else {
            format!("cluster {id} restarted ({} daemon(s) started, {already} running already)", started.len())
        };
        println!("local cluster of {} node(s) running in {}: {how}, epoch {epoch}", layout.nodes, dir.display());
        for n in 1..=layout.nodes {
            println!("  node {n}: groupd {}  storaged {}", layout.groupd_addr(n), layout.storaged_addr(n));
        }
        println!(
            "metrics (Prometheus): http://127.0.0.N:{}/metrics (groupd), http://127.0.0.N:{}/metrics (storaged)",
            layout.port_base + 2,
            layout.port_base + 3
        );
        println!("logs and pid files: {}/node<N>/{{groupd,storaged}}.{{log,pid}}", dir.display());
        if let Some(d) = disk {
            println!("{}", d.describe());
        }
        println!();
        match keyring {
            Some(k) => {
                println!("keyring (the cluster's secret and client.admin's key; keep it secret): {}", k.display())
            }
            None => println!("no keys: running --insecure, anyone who reaches these ports can do anything"),
        }
        println!();
        println!("to use it:");
        println!("  export SHEEP_GROUPD={export}");
        if let Some(k) = keyring {
            println!("  export SHEEP_KEYRING={}", k.display());
        }
        println!("  sheepctl cluster info");
        println!("to stop it:");
        println!("  sheepctl down --dir {}", dir.display());
        Ok(())
    }
}

/// A spinner on stderr while waiting, when stderr is a terminal and output is not JSON.
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new(json: bool) -> Progress {
        if json || !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let pb = indicatif::ProgressBar::new_spinner();
        pb.enable_steady_tick(Duration::from_millis(120));
        Progress(Some(pb))
    }
    fn set(&self, msg: &str) {
        if let Some(pb) = &self.0 {
            pb.set_message(msg.to_string());
        }
    }
    fn done(&self) {
        if let Some(pb) = &self.0 {
            pb.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.done();
    }
}

pub async fn down(args: &DownArgs, json: bool) -> Result<()> {
    let dir = args.dir.canonicalize().unwrap_or_else(|_| args.dir.clone());
    let Some(layout) = load_layout(&dir)? else {
        bail!(
            "no local cluster in {}: {LAYOUT_FILE} not found (start one with `sheepctl up --dir {}`)",
            dir.display(),
            dir.display()
        );
    };
    let keyring = keys::keyring_in(&dir);
    let has_keys = keyring.is_file();
    keys::use_keyring(has_keys.then_some(keyring.as_path()), !has_keys)?;
    let storaged: Vec<Daemon> = (1..=layout.nodes).map(|n| Daemon::new(&dir, n, "storaged")).collect();
    let groupd: Vec<Daemon> = (1..=layout.nodes).map(|n| Daemon::new(&dir, n, "groupd")).collect();

    // Which processes run, noted before the shutdown: storaged stop by themselves then.
    let mut running = Vec::new();
    for d in storaged.iter().chain(&groupd) {
        running.push((d.clone(), d.running_pid()?));
    }
    // The disk first: a mounted one stops `down` before anything else is touched.
    let detached = crate::local_disk::detach(&dir, &layout.groupd_addrs())?;
    if !json {
        for line in &detached {
            println!("{line}");
        }
    }
    let mut report = Vec::new();
    let mut shut = "not running";
    if running.iter().any(|(d, pid)| d.name == "groupd" && pid.is_some()) {
        shut = shutdown_cluster(&layout).await;
        if !json {
            println!("{}", shut_line(shut));
        }
    }
    let mut failed = false;
    let (first, then): (Vec<_>, Vec<_>) = running.into_iter().partition(|(d, _)| d.name == "storaged");
    for list in [first, then] {
        for (d, outcome) in stop_all(list).await {
            failed |= matches!(outcome, Stopped::StillRunning(_));
            if !json {
                println!("node {}: {} {}", d.node, d.name, outcome.describe());
            }
            report.push(json!({ "node": d.node, "daemon": d.name, "result": outcome.word(), "pid": outcome.pid() }));
        }
    }
    if json {
        print_json(&json!({ "dir": dir, "cluster": shut, "daemons": report, "disk": detached }))?;
    }
    if failed {
        bail!("some processes of {} did not stop; see above", dir.display());
    }
    if !json {
        println!("local cluster in {} stopped", dir.display());
    }
    Ok(())
}

fn shut_line(shut: &str) -> String {
    match shut {
        "shutdown" => "cluster shut down (it resumes in the same epoch on `sheepctl up`)".into(),
        "was shutdown" => "cluster already shut down".into(),
        "unformatted" => "cluster not formatted: nothing to shut down".into(),
        other => format!("cluster not shut down cleanly ({other}); stopping the processes anyway"),
    }
}

/// Shuts the cluster down before its processes stop, so that a later `up` resumes it in
/// the same epoch. Returns what happened, as one word for JSON.
async fn shutdown_cluster(layout: &Layout) -> &'static str {
    let Ok(client) = GroupClient::new(layout.groupd_addrs(), crate::cli_options()) else { return "no groupd" };
    match client.info().await {
        Ok(info) if info.status == ClusterStatus::Unformatted => "unformatted",
        Ok(info) if info.status == ClusterStatus::Shutdown => "was shutdown",
        Ok(_) => match client.shutdown().await {
            Ok(()) => "shutdown",
            Err(e) => {
                eprintln!("warning: cluster shutdown failed: {e}");
                "failed"
            }
        },
        Err(e) => {
            eprintln!("warning: cannot reach the cluster: {e}");
            "unreachable"
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopped {
    NotRunning,
    Terminated(i32),
    Killed(i32),
    StillRunning(i32),
}

impl Stopped {
    fn word(&self) -> &'static str {
        match self {
            Stopped::NotRunning => "not running",
            Stopped::Terminated(_) => "stopped",
            Stopped::Killed(_) => "killed",
            Stopped::StillRunning(_) => "still running",
        }
    }
    fn pid(&self) -> Option<i32> {
        match *self {
            Stopped::NotRunning => None,
            Stopped::Terminated(p) | Stopped::Killed(p) | Stopped::StillRunning(p) => Some(p),
        }
    }
    fn describe(&self) -> String {
        match self {
            Stopped::NotRunning => "was not running".into(),
            Stopped::Terminated(p) => format!("stopped (pid {p})"),
            Stopped::Killed(p) => format!("killed after {} s (pid {p})", TERM_WAIT.as_secs()),
            Stopped::StillRunning(p) => format!("DID NOT STOP (pid {p})"),
        }
    }
}

/// Stops the daemons of `list` (each with the pid it had when `down` began, if it ran):
/// SIGTERM, then SIGKILL for those still there after [`TERM_WAIT`]. A pid is signalled
/// only while it still is that daemon.
async fn stop_all(list: Vec<(Daemon, Option<i32>)>) -> Vec<(Daemon, Stopped)> {
    let mut out = Vec::new();
    let mut pending = Vec::new();
    for (d, pid) in list {
        match pid {
            // Gone already (a storaged stops by itself when the cluster shuts down).
            Some(pid) if is_gone(pid) => pending.push((d, pid)),
            Some(pid) if is_ours(pid, d.name, &d.data) && procs::signal(pid, Signal::SIGTERM).is_ok() => {
                pending.push((d, pid))
            }
            _ => {
                let _ = fs::remove_file(&d.pid_file);
                out.push((d, Stopped::NotRunning));
            }
        }
    }
    let deadline = Instant::now() + TERM_WAIT;
    while pending.iter().any(|(_, pid)| !is_gone(*pid)) && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
    }
    let mut killed = Vec::new();
    for (d, pid) in pending {
        if is_gone(pid) {
            let _ = fs::remove_file(&d.pid_file);
            out.push((d, Stopped::Terminated(pid)));
        } else if is_ours(pid, d.name, &d.data) && procs::signal(pid, Signal::SIGKILL).is_ok() {
            killed.push((d, pid));
        } else {
            out.push((d, Stopped::StillRunning(pid)));
        }
    }
    let deadline = Instant::now() + KILL_WAIT;
    while killed.iter().any(|(_, pid)| !is_gone(*pid)) && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
    }
    for (d, pid) in killed {
        if is_gone(pid) {
            let _ = fs::remove_file(&d.pid_file);
            out.push((d, Stopped::Killed(pid)));
        } else {
            out.push((d, Stopped::StillRunning(pid)));
        }
    }
    out.sort_by_key(|(d, _)| d.node);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_kept_and_checked() {
        let dir = Path::new("/tmp/c");
        let fresh = resolve_layout(None, None, None, None, dir).unwrap();
        assert_eq!(fresh, Layout { nodes: 3, port_base: 7000, lease_ms: None });
        let l = Layout { nodes: 2, port_base: 9000, lease_ms: None };
        assert_eq!(resolve_layout(Some(l), None, None, None, dir).unwrap(), l);
        assert_eq!(resolve_layout(Some(l), Some(2), Some(9000), None, dir).unwrap(), l);
        assert!(resolve_layout(Some(l), Some(3), None, None, dir).is_err());
        assert!(resolve_layout(Some(l), None, Some(7000), None, dir).is_err());
        // A lease is kept, and a later one replaces it.
        let slow = resolve_layout(Some(l), None, None, Some(15000), dir).unwrap();
        assert_eq!(slow.lease_ms, Some(15000));
        assert_eq!(resolve_layout(Some(slow), None, None, None, dir).unwrap(), slow);

        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(load_layout(tmp.path()).unwrap(), None);
        save_layout(tmp.path(), &l).unwrap();
        assert_eq!(load_layout(tmp.path()).unwrap(), Some(l));
    }

    #[test]
    fn daemon_command_lines() {
        let l = Layout { nodes: 3, port_base: 7000, lease_ms: None };
        let dir = Path::new("/c");
        let first = ["--listen", "127.0.0.1:7000", "--data", "/c/node1/groupd", "--metrics", "127.0.0.1:7002"];
        assert_eq!(Daemon::new(dir, 1, "groupd").args(&l), first);
        assert_eq!(
            Daemon::new(dir, 2, "groupd").args(&l),
            [
                "--listen",
                "127.0.0.2:7000",
                "--data",
                "/c/node2/groupd",
                "--metrics",
                "127.0.0.2:7002",
                "--join",
                "127.0.0.1:7000"
            ]
        );
        let slow = Layout { lease_ms: Some(15000), ..l };
        assert_eq!(Daemon::new(dir, 1, "groupd").args(&slow), [&first[..], &["--lease-ms", "15000"]].concat());
        let s = Daemon::new(dir, 3, "storaged");
        assert_eq!(
            s.args(&l),
            [
                "--listen",
                "127.0.0.3:7001",
                "--data",
                "/c/node3/storaged",
                "--metrics",
                "127.0.0.3:7003",
                "--groupd",
                "127.0.0.1:7000,127.0.0.2:7000,127.0.0.3:7000",
                "--zone",
                "3"
            ]
        );
        assert_eq!(s.pid_file, Path::new("/c/node3/storaged.pid"));
        assert_eq!(s.log, Path::new("/c/node3/storaged.log"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn stop_all_leaves_strangers_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let d = Daemon::new(tmp.path(), 1, "groupd");
        fs::create_dir_all(tmp.path().join("node1")).unwrap();
        // A pid file naming a process that is not this daemon: never signalled.
        let mut child = std::process::Command::new("/bin/sleep").arg("30").spawn().unwrap();
        fs::write(&d.pid_file, format!("{}\n", child.id())).unwrap();
        let pid = d.running_pid().unwrap();
        assert_eq!(pid, None);
        let out = stop_all(vec![(d.clone(), Some(child.id() as i32))]).await;
        assert_eq!(out[0].1, Stopped::NotRunning);
        assert!(!is_gone(child.id() as i32), "a stranger was signalled");
        assert!(!d.pid_file.exists(), "the stale pid file is removed");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
