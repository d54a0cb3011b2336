//! The disk of a local cluster: `sheepctl up` creates VDI `disk0` and attaches it — as
//! `/dev/ublkbN` where `ublk_drv` is loaded, else as an NBD export (`nbd://…/disk0`) with
//! the reason; `sheepctl down` detaches it before it stops the cluster.
//!
//! Files in DIR: `ublk-disk0.log` (the ublk daemon's log), `nbd-disk0.{log,pid}` (the NBD
//! export's).

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use serde::Serialize;
use sheep_client::group::GroupClient;
use sheep_core::size::format_size;
use ublk_dev::ublk::devices::{self, DeviceState};

use crate::attach::{self, AddArgs, DelArgs};
use crate::procs;

pub const DISK: &str = "disk0";
/// The NBD port QEMU assumes; a free one is picked when it is taken.
const NBD_PORT: u16 = 10809;
const NBD_WAIT: Duration = Duration::from_secs(30);

/// How the disk is attached.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Attached {
    Ublk { vdi: String, size: u64, device: String, pid: i32 },
    Nbd { vdi: String, size: u64, url: String, pid: i32, why: String },
}

impl Attached {
    /// Lines for `up`'s summary.
    pub fn describe(&self) -> String {
        match self {
            Attached::Ublk { vdi, size, device, .. } => format!(
                "disk: VDI {vdi} ({}) attached as {device}\n  try: mkfs.ext4 {device} && mount {device} /mnt",
                format_size(*size)
            ),
            Attached::Nbd { vdi, size, url, why, .. } => format!(
                "disk: VDI {vdi} ({}) exported at {url}\n  (no /dev/ublkbN: {why})\n  try: qemu-img info {url}",
                format_size(*size)
            ),
        }
    }
}

/// Creates `disk0` of `size` if the cluster has none, and attaches it unless it is already.
pub async fn attach(dir: &Path, client: &GroupClient, groupd: &[String], size: u64) -> Result<Attached> {
    let (vdis, _) = client.vdi_list().await.context("cannot list the VDIs")?;
    let entry = match vdis.into_iter().find(|v| v.name == DISK && !v.is_snapshot()) {
        Some(v) => {
            if v.size != size {
                eprintln!("note: VDI {DISK} exists with {}; --disk-size is ignored", format_size(v.size));
            }
            v
        }
        None => client.vdi_create(DISK, size, 0).await.with_context(|| format!("cannot create VDI {DISK}"))?,
    };
    let groupd_arg = groupd.join(",");
    match devices::check_driver() {
        Ok(()) => {
            if let Ok(d) = devices::find(DISK) {
                if d.state == DeviceState::Live && d.daemon_alive && d.groupd == groupd {
                    return Ok(Attached::Ublk { vdi: d.vdi, size: d.size, device: d.device, pid: d.pid });
                }
            }
            let args = AddArgs {
                target: Some(DISK.into()),
                from: None,
                queues: None,
                depth: 128,
                recover: false,
                log: Some(dir.join(format!("ublk-{DISK}.log"))),
                timeout: 90,
                metrics: None,
            };
            let d = attach::attach(&groupd_arg, &args)?;
            Ok(Attached::Ublk { vdi: d.vdi, size: d.size, device: d.device, pid: d.pid })
        }
        Err(why) => {
            let why = match why {
                devices::DevError::NoDriver => {
                    "/dev/ublk-control is missing; load ublk_drv (`modprobe ublk_drv`) for one".into()
                }
                other => other.to_string(),
            };
            let (url, pid) = nbd_export(dir, &groupd_arg)?;
            Ok(Attached::Nbd { vdi: DISK.into(), size: entry.size, url, pid, why })
        }
    }
}

fn nbd_files(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join(format!("nbd-{DISK}.log")), dir.join(format!("nbd-{DISK}.pid")))
}

/// The running export of this DIR, if its pid file names one.
fn running_export(dir: &Path, groupd_arg: &str) -> Result<Option<i32>> {
    let (_, pid_file) = nbd_files(dir);
    Ok(procs::read_pid(&pid_file)?.filter(|&pid| is_our_export(pid, groupd_arg)))
}

/// Whether `pid` is `ublk-dev --groupd GROUPD nbd --vdi disk0 …`: a pid file is never
/// trusted alone.
fn is_our_export(pid: i32, groupd_arg: &str) -> bool {
    if procs::is_gone(pid) {
        return false;
    }
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let is = |w: &[&[u8]], a: &str, b: &str| w[0] == a.as_bytes() && w[1] == b.as_bytes();
    args.first().is_some_and(|a0| a0.ends_with(b"ublk-dev"))
        && args.contains(&b"nbd".as_slice())
        && args.windows(2).any(|w| is(w, "--groupd", groupd_arg))
        && args.windows(2).any(|w| is(w, "--vdi", DISK))
}

/// Starts the NBD export of disk0 (or finds it running) and returns its URL and pid.
fn nbd_export(dir: &Path, groupd_arg: &str) -> Result<(String, i32)> {
    let (log, pid_file) = nbd_files(dir);
    if let Some(pid) = running_export(dir, groupd_arg)? {
        if let Some(url) = last_url(&log) {
            return Ok((url, pid));
        }
    }
    let port = if TcpListener::bind(("127.0.0.1", NBD_PORT)).is_ok() { NBD_PORT } else { 0 };
    // A fresh log, so that the URL read back is this export's.
    let _ = fs::remove_file(&log);
    let mut args = vec!["--groupd".to_string(), groupd_arg.to_string()];
    args.extend(crate::keys::child_flags());
    args.extend(["nbd".into(), "--vdi".into(), DISK.into(), "--listen".into(), format!("127.0.0.1:{port}")]);
    let mut child = procs::spawn_detached(&procs::find_binary("ublk-dev")?, &args, &log, &pid_file)?;
    let deadline = Instant::now() + NBD_WAIT;
    loop {
        if let Some(url) = last_url(&log) {
            return Ok((url, child.id() as i32));
        }
        if let Ok(Some(status)) = child.try_wait() {
            let _ = fs::remove_file(&pid_file);
            bail!("the NBD export of {DISK} exited ({status}):\n{}", procs::log_tail(&log, 5));
        }
        if Instant::now() >= deadline {
            let _ = procs::signal(child.id() as i32, Signal::SIGTERM);
            bail!("the NBD export of {DISK} did not start within {NBD_WAIT:?}:\n{}", procs::log_tail(&log, 5));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The export prints its URL on stdout (into its log) once it listens.
fn last_url(log: &Path) -> Option<String> {
    let text = fs::read_to_string(log).ok()?;
    text.lines().rev().find(|l| l.starts_with("nbd://")).map(str::to_string)
}

/// Detaches this cluster's disk before `down` stops the cluster: deletes its ublk device
/// (refused while it is mounted) and stops its NBD export. Returns what was done.
pub fn detach(dir: &Path, groupd: &[String]) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for d in devices::list().unwrap_or_default() {
        if d.groupd == groupd {
            let del = DelArgs { target: Some(d.device.clone()), from: None, force: false, timeout: 60 };
            attach::del_quietly(&del).with_context(|| {
                format!("cannot detach {} before stopping the cluster (`sheepctl del {}` by hand)", d.device, d.device)
            })?;
            done.push(format!("deleted {} (VDI {})", d.device, d.vdi));
        }
    }
    let groupd_arg = groupd.join(",");
    if let Some(pid) = running_export(dir, &groupd_arg)? {
        procs::signal(pid, Signal::SIGTERM).with_context(|| format!("cannot stop the NBD export (pid {pid})"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !procs::is_gone(pid) {
            if Instant::now() >= deadline {
                bail!("the NBD export (pid {pid}) did not stop within 20s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = fs::remove_file(nbd_files(dir).1);
        done.push(format!("stopped the NBD export of {DISK} (pid {pid})"));
    }
    Ok(done)
}
