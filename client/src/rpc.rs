//! One Cap'n Proto RPC connection over TCP (two-party, this side the client).
//!
//! The RPC system runs as a task of the current [`tokio::task::LocalSet`]; dropping the
//! [`Connection`] stops it and closes the socket.

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

/// A live connection and the remote's bootstrap capability.
pub struct Connection<C> {
    addr: String,
    client: C,
    alive: Rc<Cell<bool>>,
    /// Set to true when the connection ends or is dropped.
    closed: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl<C: Clone> Connection<C> {
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The remote's bootstrap capability.
    pub fn client(&self) -> C {
        self.client.clone()
    }

    /// False once the connection ended (peer closed it, or a protocol error).
    pub fn is_alive(&self) -> bool {
        self.alive.get()
    }

    /// Resolves when the connection ends or is dropped: a call waiting on it can give up
    /// (capnp-rpc may leave such calls waiting until their own timeout).
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + 'static {
        let mut rx = self.closed.subscribe();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }
}

impl<C> Drop for Connection<C> {
    fn drop(&mut self) {
        self.closed.send_replace(true);
        self.task.abort();
    }
}

/// Connects to `addr` within `timeout` and bootstraps its capability. Must be called from
/// inside a `LocalSet`. The error is a short reason for people ("connection refused",
/// "timed out after 1.0 s").
pub async fn connect<C>(addr: &str, timeout: Duration) -> Result<Connection<C>, String>
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
    let network = twoparty::VatNetwork::new(
        futures::io::BufReader::new(reader.compat()),
        futures::io::BufWriter::new(writer.compat_write()),
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
        if let Err(e) = system.await {
            tracing::debug!("rpc connection ended: {e}");
        }
        flag.set(false);
        on_end.send_replace(true);
    });
    Ok(Connection { addr: addr.to_string(), client, alive, closed, task })
}

/// Serves `bootstrap` on one accepted socket until the peer goes away. Must be called from
/// inside a `LocalSet`.
pub async fn serve(stream: TcpStream, bootstrap: capnp::capability::Client) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("set_nodelay: {e}");
    }
    let (reader, writer) = stream.into_split();
    let shared = Rc::new(RefCell::new(Replies { inner: writer.compat_write(), buf: Vec::new(), waiting: None, error: None }));
    let network = twoparty::VatNetwork::new(
        futures::io::BufReader::with_capacity(256 << 10, reader.compat()),
        ReplyWriter { shared: shared.clone() },
        rpc_twoparty_capnp::Side::Server,
        Default::default(),
    );
    let system = RpcSystem::new(Box::new(network), Some(bootstrap));
    let ended = futures::future::select(system.boxed_local(), send_replies(shared).boxed_local()).await;
    if let futures::future::Either::Left((Err(e), _)) = ended {
        tracing::debug!("rpc connection ended: {e}");
    }
}

/// The server's outgoing messages, batched: capnp-rpc flushes after every message (one
/// `send` each); here a flush only wakes [`send_replies`], which sends everything that
/// accumulated once the other ready tasks had their turn — replies finished together leave
/// in one `send` (as the client side does in `vdi/batch.rs`).
struct Replies<W> {
    inner: W,
    buf: Vec<u8>,
    waiting: Option<Waker>,
    /// The first send error; every later write fails with it.
    error: Option<(io::ErrorKind, String)>,
}

struct ReplyWriter<W> {
    shared: Rc<RefCell<Replies<W>>>,
}

impl<W> ReplyWriter<W> {
    fn failed(&self) -> Option<io::Error> {
        self.shared.borrow().error.as_ref().map(|(kind, text)| io::Error::new(*kind, text.clone()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for ReplyWriter<W> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(e) = self.failed() {
            return Poll::Ready(Err(e));
        }
        self.shared.borrow_mut().buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.failed() {
            return Poll::Ready(Err(e));
        }
        if let Some(w) = self.shared.borrow_mut().waiting.take() {
            w.wake();
        }
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = self.shared.borrow_mut();
        while !s.buf.is_empty() {
            let Replies { inner, buf, .. } = &mut *s;
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
/// send error (recorded for the writer).
async fn send_replies<W: AsyncWrite + Unpin>(shared: Rc<RefCell<Replies<W>>>) {
    let mut spare = Vec::new();
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
        let out = std::mem::replace(&mut shared.borrow_mut().buf, std::mem::take(&mut spare));
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
        spare = out;
        spare.clear();
    }
}

/// A short reason for a socket error, for people.
pub fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        io::ErrorKind::TimedOut => "timed out".into(),
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => "unreachable".into(),
        io::ErrorKind::AddrNotAvailable => "address not available".into(),
        _ => {
            let s = e.to_string();
            // "failed to lookup address information: Name or service not known"
            s.split(" (os error").next().unwrap_or(&s).to_string()
        }
    }
}
