//! Batched outgoing messages for capnp-rpc connections, client and server side: capnp-rpc
//! flushes its socket after every message, one `send` each; with many requests in flight
//! that system call (and, on loopback, the receiver's work it carries) dominates the CPU.
//! Here the writer only appends to a buffer, and a flusher task sends what accumulated once
//! the other ready tasks had their turn: messages issued together leave in one `send`.
//!
//! A large piece (a segment of a message with bulk data) goes to the socket at once,
//! after what was buffered, when the flusher is not in the middle of a send: batching gains
//! nothing there, and the copy into the buffer would be the largest cost of the write.
//!
//! The writer never refuses bytes (capnp-rpc would only queue the message elsewhere); what
//! is not yet sent is the connection's [`Backlog`], which a server waits on before it makes
//! more replies for a peer that does not read them.

use std::cell::{Cell, RefCell};
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
    /// How many bytes are not sent yet: `buf` and the rest of the flusher's current send.
    backlog: Rc<BacklogState>,
    /// The flusher, waiting for bytes.
    waiting: Option<Waker>,
    /// The first write error; every later write fails with it.
    error: Option<(io::ErrorKind, String)>,
    /// The flusher holds bytes taken from `buf` that are not all sent yet.
    sending: bool,
    /// The writer wrote to `inner` itself: the flusher must flush it.
    needs_flush: bool,
}

/// Pieces at least this large are written to the socket directly when they can be.
const DIRECT_MIN: usize = 64 << 10;

impl<W: AsyncWrite + Unpin> Shared<W> {
    /// Writes what is buffered and then `data` to `inner` while it takes them without
    /// waiting: how much of `data` it took (None: none, or only part of what was buffered).
    fn write_through(&mut self, cx: &mut Context<'_>, data: &[u8]) -> io::Result<Option<usize>> {
        debug_assert!(!self.sending, "bytes in the flusher's hands go first");
        while !self.buf.is_empty() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.buf) {
                Poll::Ready(Ok(0)) | Poll::Pending => return Ok(None),
                Poll::Ready(Ok(n)) => {
                    self.buf.drain(..n);
                    self.backlog.sent(n);
                }
                Poll::Ready(Err(e)) => return Err(e),
            }
        }
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(Ok(0)) | Poll::Pending => Ok(None),
            Poll::Ready(Ok(n)) => Ok(Some(n)),
            Poll::Ready(Err(e)) => Err(e),
        }
    }

    fn fail(&mut self, e: &io::Error) {
        tracing::debug!("rpc connection write: {e}");
        self.error = Some((e.kind(), e.to_string()));
        // Nothing more will be sent: whoever waits for the backlog goes on (and fails).
        self.backlog.broken();
    }
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
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(e) = self.failed() {
            return Poll::Ready(Err(e));
        }
        let mut s = self.shared.borrow_mut();
        if data.len() >= DIRECT_MIN && !s.sending {
            match s.write_through(cx, data) {
                Err(e) => {
                    s.fail(&e);
                    return Poll::Ready(Err(e));
                }
                Ok(Some(n)) => {
                    s.needs_flush = true;
                    if let Some(w) = s.waiting.take() {
                        w.wake();
                    }
                    return Poll::Ready(Ok(n));
                }
                Ok(None) => {}
            }
        }
        s.buf.extend_from_slice(data);
        s.backlog.add(data.len());
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
                    s.backlog.sent(n);
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
            if s.buf.is_empty() && !s.needs_flush {
                s.waiting = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        tokio::task::yield_now().await;
        let out = {
            let mut s = shared.borrow_mut();
            s.sending = true;
            s.needs_flush = false;
            std::mem::take(&mut s.buf)
        };
        let mut pos = 0;
        let result = poll_fn(|cx| {
            let mut s = shared.borrow_mut();
            while pos < out.len() {
                match Pin::new(&mut s.inner).poll_write(cx, &out[pos..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero))),
                    Poll::Ready(Ok(n)) => {
                        pos += n;
                        s.backlog.sent(n);
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            Pin::new(&mut s.inner).poll_flush(cx)
        })
        .await;
        let mut s = shared.borrow_mut();
        s.sending = false;
        if let Err(e) = result {
            s.fail(&e);
            return;
        }
        // Reuse the allocation when nothing arrived meanwhile.
        if s.buf.is_empty() {
            let mut out = out;
            out.clear();
            s.buf = out;
        }
    }
}

#[derive(Default)]
struct BacklogState {
    unsent: Cell<usize>,
    /// Bytes of replies being made (see [`Backlog::reserve`]), not written yet.
    reserved: Cell<usize>,
    /// Set once the connection cannot send any more.
    broken: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

impl BacklogState {
    fn add(&self, n: usize) {
        self.unsent.set(self.unsent.get() + n);
    }

    fn sent(&self, n: usize) {
        debug_assert!(n <= self.unsent.get(), "sent more than was written");
        self.unsent.set(self.unsent.get().saturating_sub(n));
        self.wake();
    }

    fn wake(&self) {
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    fn broken(&self) {
        self.broken.set(true);
        self.sent(0);
    }
}

/// The bytes a connection has been given and not sent yet (see the module's comment).
#[derive(Clone, Default)]
pub struct Backlog(Rc<BacklogState>);

impl Backlog {
    pub fn unsent(&self) -> usize {
        self.0.unsent.get()
    }

    /// Resolves once fewer than `limit` bytes wait to be sent (or are reserved), or the
    /// connection broke.
    pub async fn below(&self, limit: usize) {
        poll_fn(|cx| self.poll_below(cx, limit)).await
    }

    /// Waits as [`Self::below`], then counts a reply of `bytes` about to be made as waiting
    /// to be sent until the guard is dropped (by then the reply was written, or not made):
    /// the replies a connection makes at once cannot overshoot `limit` by more than one.
    pub async fn reserve(&self, limit: usize, bytes: usize) -> Reserved {
        self.below(limit).await;
        self.0.reserved.set(self.0.reserved.get() + bytes);
        Reserved { state: self.0.clone(), bytes }
    }

    pub(crate) fn poll_below(&self, cx: &mut Context<'_>, limit: usize) -> Poll<()> {
        if self.0.unsent.get() + self.0.reserved.get() < limit || self.0.broken.get() {
            return Poll::Ready(());
        }
        self.0.waiters.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    }
}

/// A reply's bytes counted in its connection's [`Backlog`] before it is written.
pub struct Reserved {
    state: Rc<BacklogState>,
    bytes: usize,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        let s = &self.state;
        debug_assert!(s.reserved.get() >= self.bytes, "released more than was reserved");
        s.reserved.set(s.reserved.get().saturating_sub(self.bytes));
        s.wake();
    }
}

/// Wraps `inner` for capnp-rpc: returns the writer to give the `VatNetwork`, its backlog and
/// the task that sends what it buffers (run it beside the `RpcSystem`; it ends on a send error).
pub(crate) fn batched<W: AsyncWrite + Unpin>(
    inner: W,
) -> (BatchWriter<W>, Backlog, impl std::future::Future<Output = ()>) {
    let backlog = Backlog::default();
    let shared = Rc::new(RefCell::new(Shared {
        inner,
        buf: Vec::with_capacity(64 << 10),
        backlog: backlog.0.clone(),
        waiting: None,
        error: None,
        sending: false,
        needs_flush: false,
    }));
    (BatchWriter { shared: shared.clone() }, backlog, flusher(shared))
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
            let (mut w, backlog, flush) = batched(Vec::new());
            let shared = w.shared.clone();
            let flush_task = tokio::task::spawn_local(flush);
            w.write_all(b"one").await.unwrap();
            w.flush().await.unwrap();
            w.write_all(b"two").await.unwrap();
            w.flush().await.unwrap();
            assert!(shared.borrow().inner.is_empty(), "nothing sent before the flusher ran");
            assert_eq!(backlog.unsent(), 6);
            backlog.below(1).await;
            assert_eq!(shared.borrow().inner, b"onetwo");
            assert_eq!(backlog.unsent(), 0);
            w.write_all(b"3").await.unwrap();
            w.close().await.unwrap();
            assert_eq!(shared.borrow().inner, b"onetwo3");
            flush_task.abort();
        });
    }

    /// A peer that reads nothing until `open` is set.
    struct Stalled {
        open: Rc<Cell<bool>>,
        got: Vec<u8>,
        waker: Rc<RefCell<Option<Waker>>>,
    }

    impl AsyncWrite for Stalled {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
            if !self.open.get() {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                return Poll::Pending;
            }
            self.got.extend_from_slice(data);
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn the_backlog_counts_what_a_stalled_peer_has_not_taken() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let open = Rc::new(Cell::new(false));
            let waker = Rc::new(RefCell::new(None::<Waker>));
            let peer = Stalled { open: open.clone(), got: Vec::new(), waker: waker.clone() };
            let (mut w, backlog, flush) = batched(peer);
            let flush_task = tokio::task::spawn_local(flush);
            w.write_all(&[7u8; 1000]).await.unwrap();
            w.flush().await.unwrap();
            let waited = tokio::time::timeout(std::time::Duration::from_millis(50), backlog.below(1000)).await;
            assert!(waited.is_err(), "the peer took nothing: the backlog stays");
            assert_eq!(backlog.unsent(), 1000);
            assert!(tokio::time::timeout(std::time::Duration::from_millis(50), backlog.below(1001)).await.is_ok());
            open.set(true);
            waker.borrow_mut().take().expect("the flusher waits on the peer").wake();
            backlog.below(1).await;
            assert_eq!(backlog.unsent(), 0);
            assert_eq!(w.shared.borrow().inner.got.len(), 1000);
            flush_task.abort();
        });
    }

    #[test]
    fn large_pieces_go_straight_to_the_socket_after_what_was_buffered() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let open = Rc::new(Cell::new(true));
            let waker = Rc::new(RefCell::new(None::<Waker>));
            let peer = Stalled { open: open.clone(), got: Vec::new(), waker: waker.clone() };
            let (mut w, backlog, flush) = batched(peer);
            w.write_all(b"head").await.unwrap();
            assert!(w.shared.borrow().inner.got.is_empty(), "small pieces wait for the flusher");
            let big = vec![1u8; DIRECT_MIN];
            w.write_all(&big).await.unwrap();
            assert_eq!(w.shared.borrow().inner.got, [&b"head"[..], &big].concat(), "in order, at once");
            assert_eq!(backlog.unsent(), 0);
            // A socket that takes nothing: the piece is buffered, and sent by the flusher.
            open.set(false);
            w.write_all(&big).await.unwrap();
            assert_eq!(backlog.unsent(), DIRECT_MIN);
            let flush_task = tokio::task::spawn_local(flush);
            w.flush().await.unwrap();
            tokio::task::yield_now().await;
            open.set(true);
            if let Some(wk) = waker.borrow_mut().take() {
                wk.wake();
            }
            backlog.below(1).await;
            assert_eq!(w.shared.borrow().inner.got.len(), 4 + 2 * DIRECT_MIN);
            flush_task.abort();
        });
    }
}
