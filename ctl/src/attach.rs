//! `sheepctl add | del | list`: the ublk devices of this host. `add` starts one `ublk-dev
//! ublk` daemon per VDI, detached, and waits until its device is live; `del` stops it;
//! `list` reads the kernel's devices (see `ublk_dev::ublk::devices`). `add --from FILE` and
//! `del --from FILE` do the same for every VDI of a list (`/etc/sheep/devices`, what
//! `deploy/systemd/sheep-devices.service` attaches at boot and detaches at shutdown).

use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use nix::sys::signal::Signal;
use nix::unistd::setsid;
use serde::Serialize;
use ublk_dev::ublk::devices::{self, Device, DeviceState};

use crate::output;
use crate::procs;

#[derive(Args, Debug)]
pub struct AddArgs {
    /// The VDI to attach; with --recover, the device (/dev/ublkbN) or the VDI it serves
    #[arg(value_name = "NAME|DEV", required_unless_present = "from")]
    pub target: Option<String>,

    /// Attach every VDI listed in FILE (one name a line; `#` starts a comment at the start of
    /// a line or after a blank) that is not attached here yet, each reported on its own line;
    /// one that fails is tried again every 5 s until --timeout, and makes the exit status 1
    #[arg(long, value_name = "FILE", conflicts_with_all = ["target", "recover", "log", "metrics"])]
    pub from: Option<PathBuf>,

    /// Hardware queues, each served by its own thread [default: one per CPU]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub queues: Option<u16>,

    /// Requests in flight per queue
    #[arg(long, value_name = "D", default_value_t = 128, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub depth: u16,

    /// Re-attach a device whose daemon died (state "quiesced" in `sheepctl list`): the same
    /// /dev/ublkbN comes back and a filesystem mounted on it carries on
    #[arg(long)]
    pub recover: bool,

    /// The daemon's log [default: /run/sheep/ublk-NAME.log, or $SHEEP_RUN_DIR/ublk-NAME.log]
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,

    /// The daemon serves Prometheus metrics of the device's requests at http://ADDR/metrics
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,

    /// How long to wait for the device to become live, in seconds
    #[arg(long, value_name = "SECS", default_value_t = 90)]
    pub timeout: u64,
}

#[derive(Args, Debug)]
pub struct DelArgs {
    /// The device (/dev/ublkbN, ublkbN or N) or the VDI it serves
    #[arg(value_name = "DEV|NAME", required_unless_present = "from")]
    pub target: Option<String>,

    /// Detach every VDI listed in FILE (as `add --from`) that is attached here, each
    /// reported on its own line; one that cannot be detached makes the exit status 1
    #[arg(long, value_name = "FILE", conflicts_with = "target")]
    pub from: Option<PathBuf>,

    /// Delete it even while it is mounted or held open (its users get I/O errors)
    #[arg(long)]
    pub force: bool,

    /// How long to wait for the daemon to flush and stop, in seconds
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub timeout: u64,
}

/// Where the daemons' logs go by default.
fn run_dir() -> PathBuf {
    std::env::var_os("SHEEP_RUN_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/run/sheep"))
}

/// `sheepctl add`: prints the device once it is live.
pub fn add(groupd: &str, a: &AddArgs, json: bool) -> Result<()> {
    if let Some(file) = &a.from {
        return add_from(groupd, a, file, json);
    }
    let dev = attach(groupd, a)?;
    if json {
        output::print_json(&dev)?;
    } else {
        println!("{}", dev.device);
    }
    Ok(())
}

/// Starts (or recovers) the daemon of a VDI and waits for its device. Used by `add` and `up`.
pub fn attach(groupd: &str, a: &AddArgs) -> Result<Device> {
    devices::check_driver()?;
    let target = a.target.as_deref().context("no VDI named")?;
    let existing = devices::find(target).ok();
    let (vdi, recover) = match (&existing, a.recover) {
        (Some(d), _) if d.state == DeviceState::Quiesced => (d.vdi.clone(), Some(d.id)),
        (Some(d), true) => bail!(
            "{} is {} (daemon pid {}): only a device whose daemon died can be recovered",
            d.device,
            d.state.as_str(),
            d.pid
        ),
        (Some(d), false) if d.vdi == target => {
            bail!("VDI {} is already attached here as {} (daemon pid {})", d.vdi, d.device, d.pid)
        }
        (None, true) => bail!("no Sheepdog ublk device matches {target:?} (see `sheepctl list`)"),
        _ => {
            sheep_core::object::validate_vdi_name(target)?;
            (target.to_string(), None)
        }
    };
    if let (Some(d), false) = (&existing, a.recover) {
        eprintln!("{} serves VDI {} and its daemon died: recovering it", d.device, d.vdi);
    }
    let log = match &a.log {
        Some(l) => l.clone(),
        None => {
            let dir = run_dir();
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            dir.join(format!("ublk-{vdi}.log"))
        }
    };
    let mut args = vec!["--groupd".to_string(), groupd.to_string()];
    args.extend(crate::keys::child_flags());
    if let Some(addr) = a.metrics {
        args.extend(["--metrics".into(), addr.to_string()]);
    }
    args.push("ublk".into());
    match recover {
        Some(id) => args.extend(["--recover".into(), id.to_string(), "--vdi".into(), vdi.clone()]),
        None => {
            args.extend(["--vdi".into(), vdi.clone(), "--depth".into(), a.depth.to_string()]);
            if let Some(q) = a.queues {
                args.extend(["--queues".into(), q.to_string()]);
            }
        }
    }
    let bin = procs::find_binary("ublk-dev")?;
    let mut child = spawn(&bin, &args, &log)?;
    let device = wait_live(&mut child, &log, Duration::from_secs(a.timeout))?;
    let id = device
        .trim_start_matches("/dev/ublkb")
        .parse::<u32>()
        .with_context(|| format!("the daemon printed {device:?}"))?;
    match devices::device(id)? {
        Some(d) => Ok(d),
        None => bail!("{device} is live but not listed as a Sheepdog device"),
    }
}

/// Starts the daemon in its own session, stdout piped (it prints the device there), stderr
/// appended to `log`.
fn spawn(bin: &Path, args: &[String], log: &Path) -> Result<Child> {
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(err);
    // SAFETY: setsid() is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| setsid().map(drop).map_err(std::io::Error::from));
    }
    cmd.spawn().with_context(|| format!("cannot start {}", bin.display()))
}

/// Waits for the daemon's first stdout line (`/dev/ublkbN`). If it exits first, its log's
/// error is the error; if the time runs out, it is stopped.
fn wait_live(child: &mut Child, log: &Path, timeout: Duration) -> Result<String> {
    let stdout = child.stdout.take().context("the daemon's stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let r = std::io::BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = tx.send(r);
    });
    let deadline = Instant::now() + timeout;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Ok(line)) if line.starts_with("/dev/") => return Ok(line.trim().to_string()),
            Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                // stdout closed without a device: the daemon failed; reap it for its status.
                let status = wait_exit(child, Duration::from_secs(10));
                bail!("{}", daemon_failure(log, status));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() >= deadline {
            let _ = procs::signal(child.id() as i32, Signal::SIGTERM);
            let _ = wait_exit(child, Duration::from_secs(10));
            bail!(
                "the device was not live after {}s; the daemon was stopped (log: {})\n{}",
                timeout.as_secs(),
                log.display(),
                procs::log_tail(log, 5)
            );
        }
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait().ok()
}

/// The daemon's own one-line error from its log, else the log's tail.
fn daemon_failure(log: &Path, status: Option<std::process::ExitStatus>) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let last_error = text.lines().rev().find_map(|l| l.strip_prefix("error: "));
    match last_error {
        Some(e) => e.to_string(),
        None => format!(
            "the daemon exited ({}) without a device (log: {}):\n{}",
            status.map_or("not reaped".into(), |s| s.to_string()),
            log.display(),
            procs::log_tail(log, 8)
        ),
    }
}

/// `sheepctl del`.
pub fn del(a: &DelArgs, json: bool) -> Result<()> {
    if let Some(file) = &a.from {
        return del_from(a, file, json);
    }
    let dev = del_quietly(a)?;
    if json {
        output::print_json(&Deleted { device: &dev.device, vdi: &dev.vdi })?;
    } else {
        println!("deleted {} (VDI {})", dev.device, dev.vdi);
    }
    Ok(())
}

/// Stops a device's daemon (or deletes the device of a dead one) and waits until it is gone.
pub fn del_quietly(a: &DelArgs) -> Result<Device> {
    let dev = devices::find(a.target.as_deref().context("no device named")?)?;
    if !a.force && devices::in_use(&dev.device) {
        bail!(
            "{} (VDI {}) is in use: mounted or held open; unmount it first, or use --force (its users then get I/O \
                errors)",
            dev.device,
            dev.vdi
        );
    }
    if dev.daemon_alive {
        procs::signal(dev.pid, Signal::SIGTERM)
            .with_context(|| format!("cannot signal the daemon (pid {})", dev.pid))?;
        let deadline = Instant::now() + Duration::from_secs(a.timeout);
        while !procs::is_gone(dev.pid) || device_exists(dev.id) {
            if Instant::now() >= deadline {
                bail!("{}'s daemon (pid {}) did not stop within {}s", dev.device, dev.pid, a.timeout);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    } else {
        // The daemon died: nothing holds the device but the kernel. Its VDI lock is freed
        // when the dead daemon's groupd session expires.
        let ctrl = libublk::ctrl::UblkCtrl::new_simple(dev.id as i32)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", dev.device))?;
        ctrl.del_dev().map_err(|e| anyhow::anyhow!("cannot delete {}: {e}", dev.device))?;
    }
    Ok(dev)
}

#[derive(Serialize)]
struct Deleted<'a> {
    device: &'a str,
    vdi: &'a str,
}

fn device_exists(id: u32) -> bool {
    Path::new(&format!("/sys/class/ublk-char/ublkc{id}")).exists()
}

/// `sheepctl list`.
pub fn list(json: bool) -> Result<()> {
    let all = devices::list()?;
    if json {
        return output::print_json(&all);
    }
    if all.is_empty() {
        match devices::check_driver() {
            Ok(()) => println!("no Sheepdog ublk devices on this host"),
            Err(e) => println!("no Sheepdog ublk devices on this host ({e})"),
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|d| {
            let state = match d.state {
                DeviceState::Quiesced => format!("quiesced: daemon died, `sheepctl add --recover {}`", d.device),
                s if !d.daemon_alive => format!("{} (daemon gone)", s.as_str()),
                s => s.as_str().to_string(),
            };
            vec![
                d.device.clone(),
                d.vdi.clone(),
                d.pid.to_string(),
                d.queues.to_string(),
                d.depth.to_string(),
                sheep_core::size::format_size(d.size),
                state,
            ]
        })
        .collect();
    print!("{}", output::table("", &["DEVICE", "VDI", "PID", "QUEUES", "DEPTH", "SIZE", "STATE"], &rows));
    Ok(())
}

/// How often `add --from` tries again a VDI that failed: at boot the cluster's daemons, on
/// other hosts, may not answer yet.
const RETRY_EVERY: Duration = Duration::from_secs(5);

/// What `add --from` and `del --from` did with one VDI of the list.
#[derive(Serialize)]
struct Outcome {
    vdi: String,
    /// `attached`, `already attached`, `detached`, `not attached` or `failed`.
    outcome: &'static str,
    device: Option<String>,
    error: Option<String>,
}

impl Outcome {
    /// Prints it on its own line at once (stdout, a failure on stderr) unless the answer is
    /// JSON, all of them at the end.
    fn report(self, json: bool, all: &mut Vec<Outcome>) {
        if !json {
            match (&self.device, &self.error) {
                (_, Some(e)) => eprintln!("{}: {}: {e}", self.vdi, self.outcome),
                (Some(d), None) if self.outcome == "already attached" => {
                    println!("{}: {} as {d}", self.vdi, self.outcome)
                }
                (Some(d), None) => println!("{}: {} {d}", self.vdi, self.outcome),
                (None, None) => println!("{}: {}", self.vdi, self.outcome),
            }
        }
        all.push(self);
    }
}

/// A VDI list (`/etc/sheep/devices`): one name a line, surrounding blanks trimmed; blank lines
/// and comments skipped — a `#` at the start of a line or after a blank, to the line's end
/// (so a name with " #" in it cannot be listed); a name listed again counts once. Returns the
/// names in order and, for each line that holds no valid name, "line N: why".
pub fn parse_list(text: &str) -> (Vec<String>, Vec<String>) {
    let mut names: Vec<String> = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let name = strip_comment(line).trim();
        if name.is_empty() {
            continue;
        }
        match sheep_core::object::validate_vdi_name(name) {
            Ok(()) if !names.iter().any(|n| n == name) => names.push(name.to_string()),
            Ok(()) => {}
            Err(e) => bad.push(format!("line {}: {e}", i + 1)),
        }
    }
    (names, bad)
}

fn strip_comment(line: &str) -> &str {
    let mut after_blank = true;
    for (i, c) in line.char_indices() {
        if c == '#' && after_blank {
            return &line[..i];
        }
        after_blank = c.is_whitespace();
    }
    line
}

fn read_list(file: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    Ok(parse_list(&text))
}

/// `sheepctl add --from FILE`: attaches each listed VDI not attached here yet (a quiesced one
/// is recovered), tries the failed ones again until `--timeout`, reports each.
fn add_from(groupd: &str, a: &AddArgs, file: &Path, json: bool) -> Result<()> {
    let (names, bad) = read_list(file)?;
    devices::check_driver()?;
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    let mut all = Vec::new();
    let attached = devices::list()?;
    let mut pending = Vec::new();
    for name in names {
        match attached.iter().find(|d| d.vdi == name && d.state != DeviceState::Quiesced) {
            Some(d) => Outcome { vdi: name, outcome: "already attached", device: Some(d.device.clone()), error: None }
                .report(json, &mut all),
            None => pending.push(name),
        }
    }
    let mut failed = Vec::new();
    loop {
        for name in std::mem::take(&mut pending) {
            let left = deadline.saturating_duration_since(Instant::now());
            let one = AddArgs {
                target: Some(name.clone()),
                from: None,
                queues: a.queues,
                depth: a.depth,
                recover: false,
                log: None,
                metrics: None,
                timeout: left.as_secs().max(1),
            };
            match attach(groupd, &one) {
                Ok(d) => Outcome { vdi: name, outcome: "attached", device: Some(d.device), error: None }
                    .report(json, &mut all),
                Err(e) => failed.push((name, format!("{e:#}"))),
            }
        }
        if failed.is_empty() || Instant::now() + RETRY_EVERY >= deadline {
            break;
        }
        for (name, e) in &failed {
            eprintln!("{name}: not attached yet ({e}); trying again in {}s", RETRY_EVERY.as_secs());
        }
        std::thread::sleep(RETRY_EVERY);
        pending = failed.drain(..).map(|(name, _)| name).collect();
    }
    let failures = failed.len() + bad.len();
    for (name, e) in failed {
        Outcome { vdi: name, outcome: "failed", device: None, error: Some(e) }.report(json, &mut all);
    }
    for why in &bad {
        eprintln!("{}: {why}", file.display());
    }
    if json {
        output::print_json(&all)?;
    }
    if failures > 0 {
        bail!("{failures} of the entries of {} could not be attached", file.display());
    }
    Ok(())
}

/// `sheepctl del --from FILE`: detaches each listed VDI attached here, reports each.
fn del_from(a: &DelArgs, file: &Path, json: bool) -> Result<()> {
    let (names, bad) = read_list(file)?;
    for why in &bad {
        eprintln!("{}: {why} (skipped)", file.display());
    }
    let attached = match devices::list() {
        Ok(all) => all,
        // Without the driver nothing can be attached.
        Err(_) if devices::check_driver().is_err() => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let mut all = Vec::new();
    let mut failures = 0;
    for name in names {
        let Some(d) = attached.iter().find(|d| d.vdi == name) else {
            Outcome { vdi: name, outcome: "not attached", device: None, error: None }.report(json, &mut all);
            continue;
        };
        let one = DelArgs { target: Some(d.device.clone()), from: None, force: a.force, timeout: a.timeout };
        match del_quietly(&one) {
            Ok(d) => {
                Outcome { vdi: name, outcome: "detached", device: Some(d.device), error: None }.report(json, &mut all)
            }
            Err(e) => {
                failures += 1;
                let error = Some(format!("{e:#}"));
                Outcome { vdi: name, outcome: "failed", device: Some(d.device.clone()), error }.report(json, &mut all)
            }
        }
    }
    if json {
        output::print_json(&all)?;
    }
    if failures > 0 {
        bail!("{failures} of the VDIs of {} could not be detached", file.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_file() {
        let text = "# this host's disks\n\nvm-a\n  vm-b   # the database\nvm#3\nvm-a\n\tvm c \n#vm-d\n";
        let (names, bad) = parse_list(text);
        assert_eq!(names, ["vm-a", "vm-b", "vm#3", "vm c"]);
        assert!(bad.is_empty(), "{bad:?}");
    }

    #[test]
    fn a_list_file_with_bad_lines() {
        let (names, bad) = parse_list("vm-a\nvms/one\n..\nvm-b\n");
        assert_eq!(names, ["vm-a", "vm-b"]);
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(bad[0].starts_with("line 2: ") && bad[1].starts_with("line 3: "), "{bad:?}");
        assert_eq!(parse_list(""), (vec![], vec![]));
    }
}
