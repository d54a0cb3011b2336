//! Connections to storage nodes whose outgoing messages are batched: capnp-rpc flushes its
//! socket after every message, one `send` each; with many requests in flight that system
//! call (and, on loopback, the receiver's work it carries) dominates the client's CPU. Here
//! the writer only appends to a buffer, and a flusher task sends what accumulated once the
//! other ready tasks had their turn: requests issued together leave in one `send`.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use capnp_rpc::{rpc_twoparty_capnp, twoparty, RpcSystem};
use futures::io::AsyncWrite;
use futures::FutureExt;
use tokio::net::TcpStream;
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

use crate::rpc::io_reason;

struct Shared<W> {
    inner: W,
    /// Bytes written by capnp-rpc, not yet handed to the flusher.
    buf: Vec<u8>,
    /// The flusher, waiting for bytes.
    waiting: Option<Waker>,
    /// The first write error; every later write fails with it.
    error: Option<(io::ErrorKind, String)>,
}

/// The `AsyncWrite` given to capnp-rpc.
pub(crate) struct BatchWriter<W> {
    shared: Rc<RefCell<Shared<W>>>,
}

impl<W> BatchWriter<W> {
    fn failed(&self) -> Option<io::Error> {
        self.shared.borrow().error.as_ref().map(|(kind, text)| io::Error::new(*kind, text.clone()))
    }

    fn wake_flusher(&self) {
        if let Some(w) = self.shared.borrow_mut().waiting.take() {
            w.wake();
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for BatchWriter<W> {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(e) = self.failed() {
            return Poll::Ready(Err(e));
        }
        self.shared.borrow_mut().buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.failed() {
            return Poll::Ready(Err(e));
        }
        self.wake_flusher();
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = self.shared.borrow_mut();
        while !s.buf.is_empty() {
            let Shared { inner, buf, .. } = &mut *s;
            match Pin::new(inner).poll_write(cx, buf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    buf.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Pin::new(&mut s.inner).poll_close(cx)
    }
}

/// Sends what the writer buffered, after letting the other ready tasks add to it. Ends on a
/// write error (recorded for the writer).
async fn flusher<W: AsyncWrite + Unpin>(shared: Rc<RefCell<Shared<W>>>) {
    loop {
        poll_fn(|cx| {
            let mut s = shared.borrow_mut();
            if s.buf.is_empty() {
                s.waiting = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        tokio::task::yield_now().await;
        let out = std::mem::take(&mut shared.borrow_mut().buf);
        let mut pos = 0;
        let result = poll_fn(|cx| {
            let mut s = shared.borrow_mut();
            while pos < out.len() {
                match Pin::new(&mut s.inner).poll_write(cx, &out[pos..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero))),
                    Poll::Ready(Ok(n)) => pos += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            Pin::new(&mut s.inner).poll_flush(cx)
        })
        .await;
        if let Err(e) = result {
            tracing::debug!("storage connection write: {e}");
            shared.borrow_mut().error = Some((e.kind(), e.to_string()));
            return;
        }
        // Reuse the allocation when nothing arrived meanwhile.
        let mut s = shared.borrow_mut();
        if s.buf.is_empty() {
            let mut out = out;
            out.clear();
            s.buf = out;
        }
    }
}

/// A live connection to a storage node; dropping it closes the socket.
pub(crate) struct StoreConn<C> {
    client: C,
    alive: Rc<Cell<bool>>,
    closed: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl<C: Clone> StoreConn<C> {
    pub(crate) fn client(&self) -> C {
        self.client.clone()
    }

    pub(crate) fn is_alive(&self) -> bool {
        self.alive.get()
    }

    /// Resolves when the connection ends or is dropped.
    pub(crate) fn closed(&self) -> impl std::future::Future<Output = ()> + 'static {
        let mut rx = self.closed.subscribe();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }
}

impl<C> Drop for StoreConn<C> {
    fn drop(&mut self) {
        self.closed.send_replace(true);
        self.task.abort();
    }
}

/// Connects to `addr` within `timeout` (TCP_NODELAY, batched writes) and bootstraps its
/// capability. Must be called inside a `LocalSet`.
pub(crate) async fn connect<C>(addr: &str, timeout: Duration) -> Result<StoreConn<C>, String>
where
    C: capnp::capability::FromClientHook,
{
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(format!("timed out after {}", crate::group::secs(timeout))),
        Ok(Err(e)) => return Err(io_reason(&e)),
        Ok(Ok(s)) => s,
    };
    stream.set_nodelay(true).map_err(|e| io_reason(&e))?;
    let (reader, writer) = stream.into_split();
    let shared = Rc::new(RefCell::new(Shared {
        inner: writer.compat_write(),
        buf: Vec::with_capacity(64 << 10),
        waiting: None,
        error: None,
    }));
    let network = twoparty::VatNetwork::new(
        futures::io::BufReader::with_capacity(256 << 10, reader.compat()),
        BatchWriter { shared: shared.clone() },
        rpc_twoparty_capnp::Side::Client,
        Default::default(),
    );
    let mut system = RpcSystem::new(Box::new(network), None);
    let client: C = system.bootstrap(rpc_twoparty_capnp::Side::Server);
    let alive = Rc::new(Cell::new(true));
    let flag = alive.clone();
    let (closed, _) = tokio::sync::watch::channel(false);
    let on_end = closed.clone();
    let task = tokio::task::spawn_local(async move {
        let ended = futures::future::select(system.boxed_local(), flusher(shared).boxed_local()).await;
        if let futures::future::Either::Left((Err(e), _)) = ended {
            tracing::debug!("storage connection ended: {e}");
        }
        flag.set(false);
        on_end.send_replace(true);
    });
    Ok(StoreConn { client, alive, closed, task })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::AsyncWriteExt;

    #[test]
    fn batches_until_the_flusher_runs() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let shared = Rc::new(RefCell::new(Shared { inner: Vec::new(), buf: Vec::new(), waiting: None, error: None }));
            let flush_task = tokio::task::spawn_local(flusher(shared.clone()));
            let mut w = BatchWriter { shared: shared.clone() };
            w.write_all(b"one").await.unwrap();
            w.flush().await.unwrap();
            w.write_all(b"two").await.unwrap();
            w.flush().await.unwrap();
            assert!(shared.borrow().inner.is_empty(), "nothing sent before the flusher ran");
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
            assert_eq!(shared.borrow().inner, b"onetwo");
            w.write_all(b"3").await.unwrap();
            w.close().await.unwrap();
            assert_eq!(shared.borrow().inner, b"onetwo3");
            flush_task.abort();
        });
    }
}
