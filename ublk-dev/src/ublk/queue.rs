//! One queue thread: a task per tag that fetches a request from the kernel, hands it to the
//! engine, waits for the reply and commits it — the libublk queue loop, kept short.

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use libublk::helpers::IoBuf;
use libublk::io::{UblkDev, UblkQueue};
use libublk::{BufDesc, UblkError};
use nix::errno::Errno;

use super::engine::EngineHandle;
use super::notify::{self, Notifier};
use super::request;

/// How long an idle queue sleeps in the kernel before it lets libublk release its buffers'
/// pages; replies never wait for it (the eventfd wakes the ring).
const IDLE_SECS: u64 = 20;

/// Serves queue `qid` until the device stops.
pub fn serve(qid: u16, dev: &UblkDev, engine: EngineHandle, dev_size: Arc<AtomicU64>) {
    let q = match UblkQueue::new(qid, dev) {
        Ok(q) => Rc::new(q),
        Err(e) => {
            tracing::error!("queue {qid}: cannot set up: {e}");
            return;
        }
    };
    let wake = match Notifier::new() {
        Ok(n) => Arc::new(n),
        Err(e) => {
            tracing::error!("queue {qid}: cannot create its eventfd: {e}");
            return;
        }
    };
    let exe = Rc::new(smol::LocalExecutor::new());
    let tasks: Vec<_> = (0..dev.dev_info.queue_depth)
        .map(|tag| {
            let (q, engine, wake, dev_size) = (q.clone(), engine.clone(), wake.clone(), dev_size.clone());
            exe.spawn(async move {
                match io_task(&q, tag, &engine, &wake, &dev_size).await {
                    Ok(()) | Err(UblkError::QueueIsDown) => {}
                    Err(e) => tracing::error!("queue {qid} tag {tag}: {e}"),
                }
            })
        })
        .collect();
    let armed = {
        let (q, wake) = (q.clone(), wake.clone());
        exe.spawn(async move { notify::keep_armed(&q, &wake).await })
    };
    let run_ops = || while exe.try_tick() {};
    let is_done = || tasks.iter().all(|t| t.is_finished());
    let ended = smol::block_on(exe.run(libublk::wait_and_handle_io_events(&q, Some(IDLE_SECS), run_ops, is_done)));
    if let Err(e) = ended {
        tracing::error!("queue {qid}: {e}");
    }
    drop(armed);
    tracing::debug!("queue {qid}: stopped");
}

/// One tag: fetch, serve, commit, forever (until the queue is down).
async fn io_task(
    q: &UblkQueue<'_>,
    tag: u16,
    engine: &EngineHandle,
    wake: &Arc<Notifier>,
    dev_size: &AtomicU64,
) -> Result<(), UblkError> {
    let max_io = q.dev.dev_info.max_io_buf_bytes;
    let mut buf = IoBuf::<u8>::new(max_io as usize);
    q.submit_io_prep_cmd(tag, BufDesc::Slice(buf.as_slice()), 0, Some(&buf)).await?;
    loop {
        let iod = q.get_iod(tag);
        let size = dev_size.load(Ordering::SeqCst);
        let res = match request::decode(iod.op_flags, iod.start_sector, iod.nr_sectors, size, max_io) {
            Err(errno) => {
                tracing::warn!(
                    "queue {} tag {tag}: refused op_flags {:#x}: {}",
                    q.get_qid(),
                    iod.op_flags,
                    std::io::Error::from_raw_os_error(errno)
                );
                -errno
            }
            Ok(op) => {
                // The buffer goes to the engine and comes back with the reply.
                match engine.submit(op, buf, wake).await {
                    Ok(reply) => {
                        buf = reply.buf;
                        match reply.result {
                            Ok(()) => op.success(),
                            Err(errno) => errno,
                        }
                    }
                    // The reply was dropped, and the buffer with it: the engine is gone.
                    Err(_) => {
                        buf = IoBuf::<u8>::new(max_io as usize);
                        -(Errno::EIO as i32)
                    }
                }
            }
        };
        q.submit_io_commit_cmd(tag, BufDesc::Slice(buf.as_slice()), res).await?;
    }
}
