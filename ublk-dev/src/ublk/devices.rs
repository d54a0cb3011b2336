//! The ublk devices this host runs for Sheepdog VDIs: found through the kernel
//! (`/sys/class/ublk-char`) and the JSON file libublk writes for each device
//! (`/run/ublksrvd/NNNN.json`), whose `target_data` names the VDI.

use std::path::Path;

use libublk::ctrl::UblkCtrl;
use libublk::sys;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use serde::Serialize;

/// The target type our devices carry (libublk's "tgt_type").
pub const TARGET_NAME: &str = "sheep";

const CONTROL: &str = "/dev/ublk-control";

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(
        "{CONTROL} is missing: the ublk_drv kernel module is not loaded (`modprobe ublk_drv`, Linux 6.0 \
         or later); without it, serve the VDI over NBD instead: `sheepctl export NAME --listen 127.0.0.1:10809`"
    )]
    NoDriver,
    #[error("cannot open {CONTROL}: {0} (ublk devices need root, or CAP_SYS_ADMIN)")]
    Control(std::io::Error),
    #[error("no Sheepdog ublk device matches {0:?} (see `sheepctl list`)")]
    NotFound(String),
    #[error("{0}")]
    Ublk(String),
}

/// Fails with one clear message when this host cannot create ublk devices.
pub fn check_driver() -> Result<(), DevError> {
    if !Path::new(CONTROL).exists() {
        return Err(DevError::NoDriver);
    }
    std::fs::OpenOptions::new().read(true).write(true).open(CONTROL).map_err(DevError::Control)?;
    Ok(())
}

/// The kernel's view of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceState {
    /// Served by a live daemon.
    Live,
    /// Its daemon died; I/O waits for `sheepctl add --recover`.
    Quiesced,
    /// Created, not started (or stopped).
    Dead,
    /// Its daemon died and I/O fails.
    FailIo,
    Unknown,
}

impl DeviceState {
    fn from_kernel(state: u16) -> DeviceState {
        match u32::from(state) {
            sys::UBLK_S_DEV_LIVE => DeviceState::Live,
            sys::UBLK_S_DEV_QUIESCED => DeviceState::Quiesced,
            sys::UBLK_S_DEV_DEAD => DeviceState::Dead,
            sys::UBLK_S_DEV_FAIL_IO => DeviceState::FailIo,
            _ => DeviceState::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Live => "live",
            DeviceState::Quiesced => "quiesced",
            DeviceState::Dead => "dead",
            DeviceState::FailIo => "fail-io",
            DeviceState::Unknown => "unknown",
        }
    }
}

/// One of our devices.
#[derive(Debug, Clone, Serialize)]
pub struct Device {
    pub id: u32,
    /// `/dev/ublkbN`
    pub device: String,
    pub vdi: String,
    /// The groupd addresses the daemon was started with.
    pub groupd: Vec<String>,
    /// The daemon serving it (0 if none).
    pub pid: i32,
    /// Whether that process still runs.
    pub daemon_alive: bool,
    pub queues: u16,
    pub depth: u16,
    pub size: u64,
    pub state: DeviceState,
}

/// What our daemons store in libublk's JSON (`target_data`).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct TargetData {
    pub vdi: String,
    pub groupd: Vec<String>,
}

/// Every Sheepdog ublk device on this host, by id. Devices of other targets are skipped.
pub fn list() -> Result<Vec<Device>, DevError> {
    let mut ids: Vec<u32> = match std::fs::read_dir("/sys/class/ublk-char") {
        Ok(rd) => rd
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_prefix("ublkc")).and_then(|n| n.parse().ok()))
            .collect(),
        // No driver loaded: no devices.
        Err(_) => return Ok(Vec::new()),
    };
    ids.sort_unstable();
    let mut out = Vec::new();
    for id in ids {
        if let Some(d) = device(id)? {
            out.push(d);
        }
    }
    Ok(out)
}

/// Device `id` if it is one of ours.
pub fn device(id: u32) -> Result<Option<Device>, DevError> {
    let Some((size, data)) = read_json(id) else { return Ok(None) };
    let ctrl = UblkCtrl::new_simple(id as i32).map_err(|e| DevError::Ublk(format!("device {id}: {e}")))?;
    let info = ctrl.dev_info();
    let pid = info.ublksrv_pid;
    Ok(Some(Device {
        id,
        device: format!("/dev/ublkb{id}"),
        vdi: data.vdi,
        groupd: data.groupd,
        pid,
        daemon_alive: pid > 0 && process_alive(pid),
        queues: info.nr_hw_queues,
        depth: info.queue_depth,
        size,
        state: DeviceState::from_kernel(info.state),
    }))
}

/// Finds a device by `/dev/ublkbN`, `ublkbN`, `N` or VDI name.
pub fn find(spec: &str) -> Result<Device, DevError> {
    let all = list()?;
    let id = spec.strip_prefix("/dev/").unwrap_or(spec);
    let id = id.strip_prefix("ublkb").unwrap_or(id);
    if let Ok(n) = id.parse::<u32>() {
        if let Some(d) = all.iter().find(|d| d.id == n) {
            return Ok(d.clone());
        }
    }
    all.into_iter().find(|d| d.vdi == spec).ok_or_else(|| DevError::NotFound(spec.to_string()))
}

/// The size and target data of device `id` from libublk's JSON, if it is ours.
fn read_json(id: u32) -> Option<(u64, TargetData)> {
    let path = format!("{}/{id:04}.json", UblkCtrl::run_dir());
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    if json["target"]["tgt_type"].as_str() != Some(TARGET_NAME) {
        return None;
    }
    let size = json["target"]["dev_size"].as_u64().unwrap_or(0);
    let data = serde_json::from_value(json["target_data"].clone()).ok()?;
    Some((size, data))
}

pub fn process_alive(pid: i32) -> bool {
    // No signal: only checks that the process exists (EPERM: it does, and is not ours).
    matches!(kill(Pid::from_raw(pid), None), Ok(()) | Err(Errno::EPERM))
}

/// Whether something (a mounted filesystem, a holder like LVM or a VM) has the block device
/// open exclusively: an `O_EXCL` open of a block device fails with EBUSY then.
pub fn in_use(device: &str) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    matches!(
        std::fs::OpenOptions::new().read(true).custom_flags(OFlag::O_EXCL.bits()).open(device),
        Err(e) if e.raw_os_error() == Some(Errno::EBUSY as i32)
    )
}
