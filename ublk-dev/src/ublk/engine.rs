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
use libublk::helpers::IoBuf;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::notify::Notifier;
use super::request::BlockOp;
use crate::backend::{Backend, IoFailure, VdiBackend};

/// A request's outcome (a negative errno on failure), with the queue's buffer it was lent:
/// a read's data is in it, a write's payload came from it. Lending the buffer itself (the
/// kernel touches it only while the tag's next command is in flight, which waits for this
/// reply) moves no payload between the threads.
pub struct Reply {
    pub result: Result<(), i32>,
    pub buf: IoBuf<u8>,
}

struct Job {
    op: BlockOp,
    buf: IoBuf<u8>,
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
    /// Sends a request with the tag's buffer (a write's payload at its start; a read's
    /// data goes there). After the reply is sent, `wake` is notified. The channel is
    /// unbounded but never holds more than queues × depth requests: each queue tag has at
    /// most one outstanding. The reply is dropped (and the buffer with it) only if the
    /// engine thread ends without answering.
    pub fn submit(&self, op: BlockOp, buf: IoBuf<u8>, wake: &Arc<Notifier>) -> oneshot::Receiver<Reply> {
        let (reply, rx) = oneshot::channel();
        let job = Job { op, buf, reply, wake: wake.clone() };
        // A send fails only once the engine is gone: the buffer comes back with EIO.
        if let Err(mpsc::error::SendError(job)) = self.tx.send(job) {
            let _ = job.reply.send(Reply { result: Err(-(nix::errno::Errno::EIO as i32)), buf: job.buf });
        }
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
    pub metrics: crate::metrics::FrontendMetrics,
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
    let mut attached =
        crate::attached::attach(&cfg.groupd, &cfg.vdi, &cfg.holder, cfg.wait_for_lock, cfg.metrics.clone()).await?;
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
    let Job { op, mut buf, reply, wake } = job;
    let done = match op {
        BlockOp::Read { offset, len } => {
            // A read that succeeds writes every byte (never-written objects as zeros), so
            // what the buffer held before never reaches the kernel.
            let len = len as usize;
            debug_assert!(len <= buf.len(), "a read of {len} bytes into a buffer of {}", buf.len());
            backend.read(offset, &mut buf[..len]).await
        }
        BlockOp::Write { offset, len, fua } => {
            let len = len as usize;
            debug_assert!(len <= buf.len(), "a write of {len} bytes from a buffer of {}", buf.len());
            backend.write(offset, &buf[..len], fua).await
        }
        BlockOp::Flush => backend.flush().await,
        BlockOp::Discard { offset, len } => backend.discard(offset, len, false).await,
        BlockOp::WriteZeroes { offset, len, may_unmap, fua } => backend.write_zeroes(offset, len, may_unmap, fua).await,
    };
    let result = done.map_err(|f: IoFailure| {
        tracing::warn!("{op:?} failed: {}", f.message);
        -(f.errno as i32)
    });
    // The queue may have stopped waiting (its thread is gone): nothing to do then.
    let _ = reply.send(Reply { result, buf });
    wake.notify();
}
