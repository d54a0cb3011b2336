//! Batched outgoing messages for capnp-rpc connections, client and server side: capnp-rpc
//! flushes its socket after every message, one `send` each; with many requests in flight
//! that system call (and, on loopback, the receiver's work it carries) dominates the CPU.
//! Here the writer only appends to a buffer, and a flusher task sends what accumulated once
//! the other ready tasks had their turn: messages issued together leave in one `send`.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use futures::io::AsyncWrite;

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
            tracing::debug!("rpc connection write: {e}");
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

/// Wraps `inner` for capnp-rpc: returns the writer to give the `VatNetwork` and the task
/// that sends what it buffers (run it beside the `RpcSystem`; it ends on a send error).
pub(crate) fn batched<W: AsyncWrite + Unpin>(inner: W) -> (BatchWriter<W>, impl std::future::Future<Output = ()>) {
    let shared = Rc::new(RefCell::new(Shared { inner, buf: Vec::with_capacity(64 << 10), waiting: None, error: None }));
    (BatchWriter { shared: shared.clone() }, flusher(shared))
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
            let shared =
                Rc::new(RefCell::new(Shared { inner: Vec::new(), buf: Vec::new(), waiting: None, error: None }));
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
