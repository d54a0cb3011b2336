//! The transmission phase of one connection: requests are read in order, each runs as its
//! own task (many in flight, bounded), and one writer task sends the simple replies in the
//! order they complete.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::proto::*;
use crate::backend::{Backend, IoFailure};

/// Bounds of one connection.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Requests in flight at once.
    pub queue_depth: usize,
    /// Bytes of request and reply data held at once.
    pub buffered: usize,
    /// How long requests still running at the end of the connection are waited for.
    pub drain: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { queue_depth: 128, buffered: 32 << 20, drain: Duration::from_secs(40) }
    }
}

/// How a connection ended without a protocol error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// NBD_CMD_DISC: every request was answered, then the connection closed.
    Disconnected,
    /// The client closed the connection between requests without NBD_CMD_DISC.
    Vanished,
    /// The server is stopping.
    Shutdown,
}

#[derive(Debug, thiserror::Error)]
pub enum TransmissionError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Proto(#[from] ProtoError),
    #[error("a write of {0} bytes is larger than the {MAX_REQUEST}-byte maximum")]
    WriteTooBig(u32),
    #[error("sending replies failed: {0}")]
    Writer(std::io::Error),
}

/// Units of the byte budget: 4 KiB.
const UNIT: usize = 4096;

struct Reply {
    handle: u64,
    errno: u32,
    data: Option<Vec<u8>>,
    /// Released once the reply is sent: the request slot and its share of the byte budget.
    _permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
}

/// The `len` bytes of a write's payload, read into a buffer that is never zeroed first
/// (`read_buf` fills its spare capacity).
async fn read_payload<R: AsyncRead + Unpin>(reader: &mut R, len: usize) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        let want = len - data.len();
        if (&mut *reader).take(want as u64).read_buf(&mut data).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(data)
}

/// Serves requests from `reader` with replies on `writer` until the client disconnects,
/// `shutdown` turns true, or an error. Requests in flight are finished (within
/// `limits.drain`) and answered before it returns; after NBD_CMD_DISC the backend is flushed.
pub async fn serve<B, R, W>(
    backend: Rc<B>,
    mut reader: R,
    writer: W,
    mut shutdown: watch::Receiver<bool>,
    limits: Limits,
    peer: &str,
) -> Result<End, TransmissionError>
where
    B: Backend + 'static,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel::<Reply>();
    let mut writer_task = tokio::task::spawn_local(write_replies(writer, rx));
    let slots = Arc::new(Semaphore::new(limits.queue_depth.max(1)));
    let budget_units = (limits.buffered / UNIT).max((MAX_REQUEST as usize) / UNIT);
    let budget = Arc::new(Semaphore::new(budget_units));
    let mut tasks = JoinSet::new();
    let requests = read_requests(&backend, &mut reader, &tx, &mut shutdown, &slots, &budget, &mut tasks, peer);
    let result = tokio::select! {
        r = requests => r,
        w = &mut writer_task => {
            let e = match w {
                Ok(Err(e)) => e,
                Ok(Ok(())) => std::io::Error::other("the reply writer stopped"),
                Err(e) => std::io::Error::other(e.to_string()),
            };
            return Err(TransmissionError::Writer(e));
        }
    };
    // Requests in flight are answered before the connection closes.
    let drained = tokio::time::timeout(limits.drain, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!("{peer}: {} requests still running after {:?}; abandoned", tasks.len(), limits.drain);
        tasks.shutdown().await;
    }
    if matches!(result, Ok(End::Disconnected)) {
        if let Err(e) = backend.flush().await {
            tracing::warn!("{peer}: flush at disconnect failed: {}", e.message);
        }
    }
    drop(tx);
    match tokio::time::timeout(Duration::from_secs(10), &mut writer_task).await {
        Ok(Ok(Err(e))) if result.is_ok() => return Err(TransmissionError::Writer(e)),
        Ok(_) => {}
        Err(_) => writer_task.abort(),
    }
    result
}

/// Reads requests and starts their tasks until the connection ends.
#[allow(clippy::too_many_arguments, reason = "the connection's shared state, passed apart to keep borrows short")]
async fn read_requests<B, R>(
    backend: &Rc<B>,
    reader: &mut R,
    tx: &mpsc::UnboundedSender<Reply>,
    shutdown: &mut watch::Receiver<bool>,
    slots: &Arc<Semaphore>,
    budget: &Arc<Semaphore>,
    tasks: &mut JoinSet<()>,
    peer: &str,
) -> Result<End, TransmissionError>
where
    B: Backend + 'static,
    R: AsyncRead + Unpin,
{
    loop {
        while tasks.try_join_next().is_some() {}
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s.expect("never closed"),
            () = stopped(shutdown) => return Ok(End::Shutdown),
        };
        let mut hdr = [0u8; REQUEST_LEN];
        let first = tokio::select! {
            r = reader.read(&mut hdr) => r?,
            () = stopped(shutdown) => return Ok(End::Shutdown),
        };
        if first == 0 {
            return Ok(End::Vanished);
        }
        reader.read_exact(&mut hdr[first..]).await?;
        let req = decode_request(&hdr)?;
        tracing::trace!("{peer}: {} {}+{} flags {:#x}", command_name(req.kind), req.offset, req.len, req.flags);
        let size = backend.size();
        let reply = |errno: u32, permits| Reply { handle: req.handle, errno, data: None, _permits: permits };
        let units = (req.len as usize).div_ceil(UNIT) as u32;
        match req.kind {
            CMD_READ | CMD_WRITE if req.len > MAX_REQUEST => {
                tracing::warn!(
                    "{peer}: {} of {} bytes refused: larger than {MAX_REQUEST}",
                    command_name(req.kind),
                    req.len
                );
                let _ = tx.send(reply(EINVAL, (slot, None)));
                if req.kind == CMD_WRITE {
                    return Err(TransmissionError::WriteTooBig(req.len));
                }
            }
            CMD_READ => {
                let bytes = budget.clone().acquire_many_owned(units).await.expect("never closed");
                if !in_range(req.offset, req.len, size) {
                    let _ = tx.send(reply(EINVAL, (slot, None)));
                    continue;
                }
                let (b, tx) = (backend.clone(), tx.clone());
                tasks.spawn_local(async move {
                    let mut buf = vec![0u8; req.len as usize];
                    let r = b.read(req.offset, &mut buf).await;
                    let errno = outcome(&r, &req);
                    let data = (errno == 0).then_some(buf);
                    let _ = tx.send(Reply { handle: req.handle, errno, data, _permits: (slot, Some(bytes)) });
                });
            }
            CMD_WRITE => {
                let bytes = budget.clone().acquire_many_owned(units).await.expect("never closed");
                let data = read_payload(reader, req.len as usize).await?;
                if !in_range(req.offset, req.len, size) {
                    let _ = tx.send(reply(EINVAL, (slot, None)));
                    continue;
                }
                let (b, tx) = (backend.clone(), tx.clone());
                let fua = req.flags & CMD_FLAG_FUA != 0;
                tasks.spawn_local(async move {
                    let r = b.write(req.offset, &data, fua).await;
                    drop(data);
                    let _ = tx.send(Reply {
                        handle: req.handle,
                        errno: outcome(&r, &req),
                        data: None,
                        _permits: (slot, Some(bytes)),
                    });
                });
            }
            CMD_FLUSH => {
                let (b, tx) = (backend.clone(), tx.clone());
                tasks.spawn_local(async move {
                    let r = b.flush().await;
                    let _ = tx.send(Reply {
                        handle: req.handle,
                        errno: outcome(&r, &req),
                        data: None,
                        _permits: (slot, None),
                    });
                });
            }
            CMD_TRIM | CMD_WRITE_ZEROES => {
                if !in_range(req.offset, req.len, size) {
                    let _ = tx.send(reply(EINVAL, (slot, None)));
                    continue;
                }
                let may_unmap = req.flags & CMD_FLAG_NO_HOLE == 0;
                let fua = req.flags & CMD_FLAG_FUA != 0;
                let (b, tx) = (backend.clone(), tx.clone());
                tasks.spawn_local(async move {
                    let (offset, len) = (req.offset, u64::from(req.len));
                    let r = match req.kind {
                        CMD_TRIM => b.discard(offset, len, fua).await,
                        _ => b.write_zeroes(offset, len, may_unmap, fua).await,
                    };
                    let _ = tx.send(Reply {
                        handle: req.handle,
                        errno: outcome(&r, &req),
                        data: None,
                        _permits: (slot, None),
                    });
                });
            }
            CMD_DISC => return Ok(End::Disconnected),
            other => {
                tracing::debug!("{peer}: unknown command {other}");
                let _ = tx.send(reply(EINVAL, (slot, None)));
            }
        }
    }
}

/// Resolves once `stop` turns true; never if its sender is gone without doing so.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The error value of a finished request; failures are logged.
fn outcome(r: &Result<(), IoFailure>, req: &Request) -> u32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            tracing::warn!("{} {}+{} failed: {}", command_name(req.kind), req.offset, req.len, e.message);
            e.errno
        }
    }
}

/// Sends replies as they come; flushes whenever no other reply is waiting.
async fn write_replies<W: AsyncWrite + Unpin>(
    writer: W,
    mut rx: mpsc::UnboundedReceiver<Reply>,
) -> std::io::Result<()> {
    let mut w = BufWriter::with_capacity(64 << 10, writer);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(r) = next {
            w.write_all(&simple_reply(r.handle, r.errno)).await?;
            if let Some(data) = &r.data {
                w.write_all(data).await?;
            }
            drop(r);
            next = rx.try_recv().ok();
        }
        w.flush().await?;
    }
    w.shutdown().await
}

#[cfg(test)]
#[path = "transmission_tests.rs"]
mod tests;
