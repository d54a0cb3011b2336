//! Bounds on what a server holds, so that no number of requests or slow peers grows it
//! without limit.
//!
//! - Per connection, the requests read and not finished: each handler counts its request's
//!   bytes on the connection's [`Admission`] as it starts ([`Admission::admit_now`]), and
//!   while they reach the limit the connection reads no more, so TCP pushes back on its
//!   sender. capnp-rpc reads and dispatches every message as it arrives; only stopping the
//!   reads bounds the messages waiting for a handler.
//! - Per connection too, the replies not yet sent ([`Backlog`]): while they reach their
//!   limit the connection reads no more, and its handlers wait for them to drain before
//!   they take any of the node's room, so a peer that stops reading its replies stalls only
//!   its own connection.
//! - Node-wide, the bytes being worked on (a request's data, or the data its reply will
//!   carry): handlers wait for room ([`Admission::admit`]). This bound never stops a read:
//!   a handler that calls another node (a copy-on-write's base) would otherwise wait for
//!   that node while that node waits for it.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use futures::io::AsyncRead;

use super::batch::Backlog;

/// The server's count of admitted request bytes and the tasks waiting for room.
pub struct Admission {
    held: Cell<usize>,
    limit: usize,
    waiting: RefCell<Vec<Waker>>,
}

impl Admission {
    pub fn new(limit: usize) -> Rc<Admission> {
        assert!(limit > 0, "an admission limit of 0 would never admit a request");
        Rc::new(Admission { held: Cell::new(0), limit, waiting: RefCell::new(Vec::new()) })
    }

    /// Waits until the admitted bytes are below the limit, then counts `bytes` as held until
    /// the guard is dropped. A request larger than the room left still gets in once there is
    /// any: the bound is the limit plus the largest request.
    pub async fn admit(self: &Rc<Self>, bytes: usize) -> Admitted {
        poll_fn(|cx| self.poll_room(cx)).await;
        self.held.set(self.held.get() + bytes);
        Admitted { admission: self.clone(), bytes }
    }

    /// Counts `bytes` as held at once: the request is in memory already; what waits is the
    /// reading of the next ones (see [`GatedReader`]).
    pub fn admit_now(self: &Rc<Self>, bytes: usize) -> Admitted {
        self.held.set(self.held.get() + bytes);
        Admitted { admission: self.clone(), bytes }
    }

    pub fn held(&self) -> usize {
        self.held.get()
    }

    fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.held.get() < self.limit {
            return Poll::Ready(());
        }
        self.waiting.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    }
}

/// A connection's bounds, as its handlers see them.
#[derive(Clone)]
pub struct ConnectionBounds {
    /// The connection's requests read and not finished.
    pub requests: Rc<Admission>,
    /// The connection's replies not sent yet.
    pub replies: Backlog,
}

/// A request's bytes, held until its handler ends.
pub struct Admitted {
    admission: Rc<Admission>,
    bytes: usize,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let a = &self.admission;
        debug_assert!(a.held.get() >= self.bytes, "released more than was admitted");
        a.held.set(a.held.get().saturating_sub(self.bytes));
        if a.held.get() < a.limit {
            for w in a.waiting.borrow_mut().drain(..) {
                w.wake();
            }
        }
    }
}

/// A connection's reader that reads only while the connection's requests and its unsent
/// replies are below their limits.
pub(crate) struct GatedReader<R> {
    pub(crate) inner: R,
    pub(crate) admission: Rc<Admission>,
    pub(crate) backlog: Backlog,
    pub(crate) backlog_limit: usize,
}

impl<R: AsyncRead + Unpin> AsyncRead for GatedReader<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        if self.admission.poll_room(cx).is_pending() || self.backlog.poll_below(cx, self.backlog_limit).is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::{AsyncReadExt, AsyncWriteExt};
    use std::time::Duration;

    fn gated<'a>(admission: &Rc<Admission>, backlog: &Backlog, limit: usize) -> GatedReader<&'a [u8]> {
        GatedReader {
            inner: &b"abcdef"[..],
            admission: admission.clone(),
            backlog: backlog.clone(),
            backlog_limit: limit,
        }
    }

    #[test]
    fn reads_and_admissions_wait_while_the_limit_is_reached() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let admission = Admission::new(10);
            let mut r = gated(&admission, &Backlog::default(), 1 << 20);
            let mut b = [0u8; 3];
            r.read_exact(&mut b).await.unwrap();
            let held = admission.admit_now(10);
            assert_eq!(admission.held(), 10);
            let waiting = tokio::time::timeout(Duration::from_millis(50), r.read_exact(&mut b)).await;
            assert!(waiting.is_err(), "no read while the limit is held");
            let next = tokio::time::timeout(Duration::from_millis(50), admission.admit(1)).await;
            assert!(next.is_err(), "no admission while the limit is held");
            drop(held);
            assert_eq!(admission.held(), 0);
            r.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"def");
            // One request larger than the limit still gets in.
            let big = admission.admit(25).await;
            assert_eq!(admission.held(), 25);
            drop(big);
        });
    }

    #[test]
    fn a_connection_with_unsent_replies_reads_no_more_requests() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let admission = Admission::new(1 << 20);
            let (mut w, backlog, flush) = super::super::batch::batched(Vec::new());
            w.write_all(b"0123456789").await.unwrap();
            assert_eq!(backlog.unsent(), 10);
            let mut r = gated(&admission, &backlog, 10);
            let mut b = [0u8; 3];
            let waiting = tokio::time::timeout(Duration::from_millis(50), r.read_exact(&mut b)).await;
            assert!(waiting.is_err(), "no read while the replies wait");
            assert_eq!(admission.held(), 0, "the node's bound is not touched");
            let flusher = tokio::task::spawn_local(flush);
            r.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"abc");
            assert_eq!(backlog.unsent(), 0);
            flusher.abort();
        });
    }
}
