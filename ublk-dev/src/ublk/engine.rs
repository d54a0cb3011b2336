//! The engine thread: the VDI engine (tokio, capnp-rpc — both `!Send`) on its own thread,
//! serving the block requests of every queue thread.
//!
//! It opens a groupd session, takes the VDI's lock, opens the VDI and reports ready; only
//! then does the caller create the device. Requests arrive on a channel; each runs as its own
//! task (so a queue's whole depth is in flight), and its reply goes back on a oneshot followed
//! by a wakeup of the queue's ring ([`Notifier`]). On SIGTERM/SIGINT or the loss of the lock
//! it asks the caller to stop the device, answers what is in flight, flushes and unlocks.

use std::rc::Rc;
use std::sync::{mpsc as std_mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures::channel::oneshot;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::notify::Notifier;
use super::request::BlockOp;
use crate::backend::{Backend, IoFailure, VdiBackend};

/// A request's outcome: the data read (empty for the others) or a negative errno.
pub type Reply = Result<Vec<u8>, i32>;

struct Job {
    op: BlockOp,
    data: Vec<u8>,
    reply: oneshot::Sender<Reply>,
    wake: Arc<Notifier>,
}

/// How queue threads reach the engine. Cheap to clone; the engine ends once every clone is
/// dropped.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::UnboundedSender<Job>,
}

impl EngineHandle {
    /// Sends a request; `data` is the payload of a write. After the reply is sent, `wake`
    /// is notified. The channel is unbounded but never holds more than queues × depth
    /// requests: each queue tag has at most one outstanding.
    pub fn submit(&self, op: BlockOp, data: Vec<u8>, wake: &Arc<Notifier>) -> oneshot::Receiver<Reply> {
        let (reply, rx) = oneshot::channel();
        let job = Job { op, data, reply, wake: wake.clone() };
        // A send fails only once the engine is gone; the dropped sender then reads as EIO.
        let _ = self.tx.send(job);
        rx
    }
}

/// What to serve and how.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub vdi: String,
    pub groupd: Vec<String>,
    /// Session name of the lock holder, shown to whoever is refused.
    pub holder: String,
    /// Keep trying while another session holds the lock, this long (recovery: the dead
    /// daemon's session holds it until its lease runs out).
    pub wait_for_lock: Duration,
}

/// The engine is serving.
#[derive(Debug, Clone)]
pub struct Ready {
    pub size: u64,
    pub session: u64,
    pub token: u64,
}

/// What the engine thread may do to the device. Called on the engine thread; must not block
/// for long.
pub trait DeviceControl: Send {
    /// Stops the device (the queues end once their requests are answered).
    fn stop(&self);
    /// The VDI grew to `size` bytes: the device grows too.
    fn resize(&self, size: u64);
}

pub type StopDevice = Box<dyn DeviceControl>;

/// Starts the engine thread and waits until it is serving (or failed to start).
pub fn start(cfg: EngineConfig, stop_device: StopDevice) -> Result<(EngineHandle, Ready, JoinHandle<Result<()>>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = std_mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the engine's runtime")?;
            let local = tokio::task::LocalSet::new();
            let result = local.block_on(&rt, serve(cfg, rx, ready_tx, stop_device));
            // Tasks left on the runtime (the engine's watch) are not waited for.
            rt.shutdown_timeout(Duration::from_millis(100));
            result
        })
        .context("cannot start the engine thread")?;
    match ready_rx.recv() {
        Ok(ready) => Ok((EngineHandle { tx }, ready, thread)),
        // The thread ended before it was ready: its error says why.
        Err(_) => match thread.join() {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => bail!("the engine stopped before it was ready"),
            Err(_) => bail!("the engine thread panicked"),
        },
    }
}

async fn serve(
    cfg: EngineConfig,
    mut rx: mpsc::UnboundedReceiver<Job>,
    ready: std_mpsc::SyncSender<Ready>,
    stop_device: StopDevice,
) -> Result<()> {
    let mut term = signal(SignalKind::terminate()).context("cannot catch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot catch SIGINT")?;
    let mut attached = crate::attached::attach(&cfg.groupd, &cfg.vdi, &cfg.holder, cfg.wait_for_lock).await?;
    let served = async {
        let backend = attached.backend.clone();
        let r = Ready { size: backend.size(), session: attached.lock.session(), token: attached.lock.token() };
        tracing::info!("serving VDI {} ({} bytes), session {}, fencing token {}", cfg.vdi, r.size, r.session, r.token);
        ready.send(r).map_err(|_| anyhow!("the daemon went away before the device was created"))?;
        let control = &stop_device;
        let follower = attached.follow(|size| control.resize(size));
        tokio::pin!(follower);

        let mut tasks = JoinSet::new();
        let mut stopping = false;
        let mut lost: Option<String> = None;
        loop {
            tokio::select! {
                job = rx.recv() => match job {
                    Some(job) => { tasks.spawn_local(run(backend.clone(), job)); }
                    // Every queue thread is gone: the device is stopped.
                    None => break,
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                () = &mut follower => {}
                _ = term.recv(), if !stopping => {
                    tracing::info!("SIGTERM: stopping the device");
                    stopping = true;
                    stop_device.stop();
                }
                _ = int.recv(), if !stopping => {
                    tracing::info!("SIGINT: stopping the device");
                    stopping = true;
                    stop_device.stop();
                }
                why = attached.lock.lost(), if lost.is_none() => {
                    tracing::error!("{why}; the VDI lock may belong to someone else now: stopping the device");
                    lost = Some(why);
                    stopping = true;
                    stop_device.stop();
                }
            }
        }
        while tasks.join_next().await.is_some() {}
        match backend.flush().await {
            Ok(()) => tracing::info!("flushed VDI {}", cfg.vdi),
            Err(e) => tracing::error!("final flush of VDI {} failed: {}", cfg.vdi, e.message),
        }
        match lost {
            Some(why) => Err(anyhow!("{why}; stopped serving VDI {}", cfg.vdi)),
            None => Ok(()),
        }
    };
    let result = served.await;
    attached.lock.release().await;
    result
}

async fn run(backend: Rc<VdiBackend>, job: Job) {
    let done = match job.op {
        BlockOp::Read { offset, len } => {
            let mut buf = vec![0u8; len as usize];
            backend.read(offset, &mut buf).await.map(|()| buf)
        }
        BlockOp::Write { offset, len, fua } => {
            debug_assert_eq!(job.data.len(), len as usize);
            backend.write(offset, &job.data, fua).await.map(|()| Vec::new())
        }
        BlockOp::Flush => backend.flush().await.map(|()| Vec::new()),
        BlockOp::Discard { offset, len } => backend.write_zeroes(offset, len, true, false).await.map(|()| Vec::new()),
        BlockOp::WriteZeroes { offset, len, may_unmap, fua } => {
            backend.write_zeroes(offset, len, may_unmap, fua).await.map(|()| Vec::new())
        }
    };
    let reply = done.map_err(|f: IoFailure| {
        tracing::warn!("{:?} failed: {}", job.op, f.message);
        -(f.errno as i32)
    });
    // The queue may have stopped waiting (its thread is gone): nothing to do then.
    let _ = job.reply.send(reply);
    job.wake.notify();
}
