//! The ublk target: serves one VDI as `/dev/ublkbN` (as rublk does, one daemon per device).
//!
//! Threads: the caller's thread creates the device and waits for it to stop
//! ([`run`]); one thread per queue runs libublk's ring loop ([`queue`]); one engine thread
//! runs the VDI engine ([`engine`]) and wakes queue rings through an eventfd ([`notify`]).
//! The daemon takes the VDI's lock before the device exists, and survives nothing: if it
//! dies, the device stays (`UBLK_F_USER_RECOVERY`) with its I/O held until a new daemon
//! recovers it (`--recover`).

pub mod devices;
mod engine;
mod notify;
pub mod params;
mod queue;
pub mod request;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::io::UblkDev;
use libublk::{sys, UblkError, UblkFlags};

use devices::{DeviceState, TargetData, TARGET_NAME};
use engine::EngineConfig;

/// What to serve.
#[derive(Debug, Clone)]
pub struct UblkConfig {
    /// The VDI; with `recover`, taken from the device when absent.
    pub vdi: Option<String>,
    pub groupd: Vec<String>,
    pub queues: u16,
    pub depth: u16,
    /// Re-attach this quiesced device (its daemon died) instead of creating one.
    pub recover: Option<u32>,
    /// Where the VDI's request metrics go.
    pub metrics: sheep_metrics::OpFamilies,
}

/// How long a recovering daemon waits for the dead daemon's session (and lock) to expire.
const RECOVER_LOCK_WAIT: Duration = Duration::from_secs(60);

/// Runs the device until it is stopped (SIGTERM/SIGINT, `sheepctl del`, or the loss of the
/// VDI's lock). Prints `/dev/ublkbN` on stdout once the device is live.
pub fn run(cfg: UblkConfig) -> Result<()> {
    devices::check_driver()?;
    let (vdi, groupd) = match cfg.recover {
        None => (cfg.vdi.clone().ok_or_else(|| anyhow!("--vdi is required"))?, cfg.groupd.clone()),
        Some(id) => recovery_target(id, &cfg)?,
    };
    let switch = Arc::new(StopSwitch::default());
    // The device's size as the queues check requests against it: grows on a resize.
    let dev_size = switch.size.clone();
    let stop = switch.clone();
    let engine_cfg = EngineConfig {
        vdi: vdi.clone(),
        groupd: groupd.clone(),
        holder: format!("ublk-dev pid {} on {}", std::process::id(), crate::hostname()),
        wait_for_lock: if cfg.recover.is_some() { RECOVER_LOCK_WAIT } else { Duration::ZERO },
        metrics: crate::metrics::FrontendMetrics::new(&cfg.metrics, &vdi),
    };
    let (engine, ready, engine_thread) = engine::start(engine_cfg, Box::new(stop))?;
    dev_size.store(ready.size, Ordering::SeqCst);

    // From here on, a failure must let the engine unlock before the process ends.
    let give_up = |engine: engine::EngineHandle, thread: std::thread::JoinHandle<Result<()>>, e: anyhow::Error| {
        drop(engine);
        let _ = thread.join();
        Err(e)
    };
    let ctrl = match build_ctrl(&cfg) {
        Ok(c) => Arc::new(c),
        Err(e) => return give_up(engine, engine_thread, anyhow!("cannot create the ublk device: {}", describe(&e))),
    };
    if !switch.arm(ctrl.clone()) {
        drop(engine);
        return finish(engine_thread, "stopped before the device started");
    }
    if cfg.recover.is_some() {
        if let Err(e) = ctrl.start_user_recover() {
            return give_up(engine, engine_thread, anyhow!("cannot start recovering the device: {}", describe(&e)));
        }
    }
    let size = ready.size;
    let target = TargetData { vdi: vdi.clone(), groupd };
    let tgt_init = move |dev: &mut UblkDev| {
        dev.tgt.dev_size = size;
        dev.tgt.params = params::device_params(size);
        // One more ring slot per queue for the eventfd read kept in flight.
        dev.tgt.sq_depth = dev.dev_info.queue_depth + 1;
        dev.tgt.cq_depth = dev.dev_info.queue_depth + 1;
        dev.tgt.extra_ios = 1;
        dev.set_target_json(serde_json::to_value(&target).map_err(UblkError::JsonError)?);
        Ok(())
    };
    let q_engine = engine.clone();
    let queue_fn = move |qid: u16, dev: &UblkDev| queue::serve(qid, dev, q_engine.clone(), dev_size.clone());
    let live = move |ctrl: &UblkCtrl| {
        let info = ctrl.dev_info();
        tracing::info!(
            "{} is live: VDI {vdi}, {} queues of depth {}",
            ctrl.get_bdev_path(),
            info.nr_hw_queues,
            info.queue_depth
        );
        // The line a caller (`sheepctl add`) waits for.
        println!("{}", ctrl.get_bdev_path());
        let _ = std::io::Write::flush(&mut std::io::stdout());
    };
    // Only the queue threads' clones of the handle may keep the engine running.
    drop(engine);
    let ran = ctrl.run_target(tgt_init, queue_fn, live);
    switch.disarm();
    // The device is stopped; remove it (a recovered device's control does not on drop).
    if let Err(e) = ctrl.del_dev() {
        tracing::debug!("deleting the device: {e}");
    }
    drop(ctrl);
    if let Err(e) = ran {
        // The engine ends once the queue threads are gone; wait for its unlock.
        let _ = engine_thread.join();
        bail!("the ublk device failed: {}", describe(&e));
    }
    finish(engine_thread, "device stopped")
}

fn finish(engine_thread: std::thread::JoinHandle<Result<()>>, what: &str) -> Result<()> {
    match engine_thread.join() {
        Ok(r) => r.map(|()| tracing::info!("{what}")),
        Err(_) => bail!("the engine thread panicked"),
    }
}

/// The VDI and groupd of device `id`, which must be ours and quiesced.
fn recovery_target(id: u32, cfg: &UblkConfig) -> Result<(String, Vec<String>)> {
    let Some(dev) = devices::device(id)? else {
        bail!("/dev/ublkb{id} is not a Sheepdog device (see `sheepctl list`)");
    };
    if dev.state != DeviceState::Quiesced {
        bail!(
            "{} is {} (daemon pid {}): only a device whose daemon died can be recovered",
            dev.device,
            dev.state.as_str(),
            dev.pid
        );
    }
    if let Some(v) = &cfg.vdi {
        if *v != dev.vdi {
            bail!("{} serves VDI {:?}, not {v:?}", dev.device, dev.vdi);
        }
    }
    // The addresses given now win: the cluster may have moved since.
    let groupd = if cfg.groupd.is_empty() { dev.groupd } else { cfg.groupd.clone() };
    Ok((dev.vdi, groupd))
}

fn build_ctrl(cfg: &UblkConfig) -> Result<UblkCtrl, UblkError> {
    let flags = (sys::UBLK_F_USER_RECOVERY | sys::UBLK_F_USER_RECOVERY_REISSUE) as u64;
    let b = UblkCtrlBuilder::default()
        .name(TARGET_NAME)
        .nr_queues(cfg.queues)
        .depth(cfg.depth)
        .io_buf_bytes(params::MAX_IO_BYTES)
        .ctrl_flags(flags);
    match cfg.recover {
        None => b.id(-1).dev_flags(UblkFlags::UBLK_DEV_F_ADD_DEV).build(),
        Some(id) => b.id(id as i32).dev_flags(UblkFlags::UBLK_DEV_F_RECOVER_DEV).build(),
    }
}

/// libublk's errors carry a bare errno; say what it means.
fn describe(e: &UblkError) -> String {
    match e {
        UblkError::OtherError(n) | UblkError::UringIOError(n) if *n < 0 => {
            format!("{} ({e})", std::io::Error::from_raw_os_error(-n))
        }
        _ => e.to_string(),
    }
}

/// Lets the engine thread stop or grow the device once it exists.
#[derive(Default)]
struct StopSwitch {
    requested: AtomicBool,
    ctrl: Mutex<Option<Arc<UblkCtrl>>>,
    size: Arc<AtomicU64>,
}

/// Control commands go through a per-thread ring, which libublk only sets up on the thread
/// that created the control (it panics without one).
/// Returns whether the command succeeded (the driver answers some with a negative errno).
fn with_ctrl_ring(what: &str, f: impl FnOnce() -> Result<i32, UblkError>) -> bool {
    let ring = libublk::ublk_init_ctrl_task_ring(|ring| {
        if ring.is_none() {
            *ring = Some(io_uring::IoUring::<io_uring::squeue::Entry128>::builder().build(4)?);
        }
        Ok(())
    });
    match ring.and_then(|_| f()) {
        Ok(r) if r >= 0 => true,
        Ok(r) => {
            tracing::warn!("{what}: {}", std::io::Error::from_raw_os_error(-r));
            false
        }
        Err(e) => {
            tracing::warn!("{what}: {}", describe(&e));
            false
        }
    }
}

impl engine::DeviceControl for Arc<StopSwitch> {
    fn stop(&self) {
        self.requested.store(true, Ordering::SeqCst);
        if let Some(ctrl) = self.ctrl() {
            with_ctrl_ring("stopping the device", || ctrl.kill_dev());
        }
    }

    fn resize(&self, size: u64) {
        // Requests up to the new end are served from now on; then the kernel is told.
        self.size.fetch_max(size, Ordering::SeqCst);
        if let Some(ctrl) = self.ctrl() {
            if with_ctrl_ring("growing the device", || ctrl.update_size(size)) {
                tracing::info!("{} grew to {size} bytes", ctrl.get_bdev_path());
            } else {
                // UBLK_U_CMD_UPDATE_SIZE arrived in Linux 6.16: older drivers refuse it.
                tracing::warn!(
                    "{} keeps its old size: this kernel's ublk_drv cannot resize a live device \
                     (Linux 6.16 or later can); \
                     re-attach it (`sheepctl del`, `sheepctl add`) to see {size} bytes",
                    ctrl.get_bdev_path()
                );
            }
        }
    }
}

impl StopSwitch {
    fn ctrl(&self) -> Option<Arc<UblkCtrl>> {
        self.ctrl.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Gives the switch the device; false if a stop was already asked for.
    fn arm(&self, ctrl: Arc<UblkCtrl>) -> bool {
        *self.ctrl.lock().unwrap_or_else(|p| p.into_inner()) = Some(ctrl);
        !self.requested.load(Ordering::SeqCst)
    }

    fn disarm(&self) {
        self.ctrl.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}
