//! Cap'n Proto RPC connections over TCP (two-party): [`connect`] for the client side,
//! [`serve`] for the server side; both set TCP_NODELAY and batch outgoing messages.
//!
//! The RPC system runs as a task of the current [`tokio::task::LocalSet`]; dropping the
//! [`Connection`] stops it and closes the socket.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::rc::Rc;
use std::time::Duration;

use capnp_rpc::{rpc_twoparty_capnp, twoparty, RpcSystem};
use futures::FutureExt;
use tokio::net::TcpStream;
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

pub mod admission;
mod batch;

pub use admission::{Admission, Admitted, ConnectionBounds};
pub use batch::{Backlog, Reserved};

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

    /// Whether the connection has ended or been dropped, as a check a call can make after it
    /// failed (capnp-rpc fails the calls of a connection whose RPC system went away).
    pub fn ended(&self) -> impl Fn() -> bool + 'static {
        let alive = self.alive.clone();
        let closed = self.closed.subscribe();
        move || !alive.get() || *closed.borrow()
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

pub use sheep_rpc::transport::set_source_ip;
use sheep_rpc::transport::{self, Stream};

/// Connects to `addr` within `timeout` and bootstraps its capability. Must be called from
/// inside a `LocalSet`. The error is a short reason for people ("connection refused",
/// "timed out after 1.0 s").
pub async fn connect<C>(addr: &str, timeout: Duration) -> Result<Connection<C>, String>
where
    C: capnp::capability::FromClientHook,
{
    connect_presenting(addr, timeout, &[]).await
}

/// [`connect`], showing the peer `ticket` in the handshake (empty: none).
pub async fn connect_presenting<C>(addr: &str, timeout: Duration, ticket: &[u8]) -> Result<Connection<C>, String>
where
    C: capnp::capability::FromClientHook,
{
    start(addr, timeout, transport::connect_presenting(addr, ticket)).await
}

/// [`connect`] as the client of `keyring` instead of this process (see
/// `sheep_rpc::transport::connect_as`), showing `ticket`.
pub async fn connect_as<C>(
    addr: &str,
    timeout: Duration,
    keyring: &sheep_core::auth::keyring::Keyring,
    ticket: &[u8],
) -> Result<Connection<C>, String>
where
    C: capnp::capability::FromClientHook,
{
    start(addr, timeout, transport::connect_as(addr, keyring, ticket)).await
}

async fn start<C>(
    addr: &str,
    timeout: Duration,
    connecting: impl Future<Output = io::Result<Stream>>,
) -> Result<Connection<C>, String>
where
    C: capnp::capability::FromClientHook,
{
    let stream = match tokio::time::timeout(timeout, connecting).await {
        Err(_) => return Err(format!("timed out after {}", secs(timeout))),
        Ok(Err(e)) => return Err(io_reason(&e)),
        Ok(Ok(s)) => s,
    };
    let (reader, writer) = stream.into_split();
    let (writer, _, flusher) = batch::batched(writer.compat_write());
    let network = twoparty::VatNetwork::new(
        rpc_reader(reader, |r| r),
        writer,
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
        let ended = futures::future::select(system.boxed_local(), flusher.boxed_local()).await;
        if let futures::future::Either::Left((Err(e), _)) = ended {
            tracing::debug!("rpc connection ended: {e}");
        }
        flag.set(false);
        on_end.send_replace(true);
    });
    Ok(Connection { addr: addr.to_string(), client, alive, closed, task })
}

/// Serves the capability `bootstrap` makes for the authenticated peer on one accepted socket
/// until the peer goes away (see `sheep_rpc::transport::accept`). Must be called from inside
/// a `LocalSet`.
pub async fn serve(
    tcp: TcpStream,
    addr: std::net::SocketAddr,
    bootstrap: impl FnOnce(transport::Peer) -> capnp::capability::Client,
) {
    let Ok((stream, peer)) = transport::accept(tcp, addr).await else { return };
    let (reader, writer) = stream.into_split();
    let (writer, _, flusher) = batch::batched(writer.compat_write());
    run_server(rpc_reader(reader, |r| r), writer, flusher, bootstrap(peer)).await
}

/// [`serve`] for a server that bounds what it holds (see [`admission`]): the connection
/// reads no more while its handlers hold `requests` bytes ([`Admission::admit_now`]) or
/// while `replies` bytes of replies wait to be sent to its peer; `bootstrap` gets those
/// bounds. Past a limit the connection may still hold one read buffer of requests.
pub async fn serve_admitted(
    tcp: TcpStream,
    addr: std::net::SocketAddr,
    requests: usize,
    replies: usize,
    bootstrap: impl FnOnce(transport::Peer, ConnectionBounds) -> capnp::capability::Client,
) {
    let Ok((stream, peer)) = transport::accept(tcp, addr).await else { return };
    let (reader, writer) = stream.into_split();
    let (writer, backlog, flusher) = batch::batched(writer.compat_write());
    let bounds = ConnectionBounds { requests: Admission::new(requests), replies: backlog };
    let gated = |inner| admission::GatedReader {
        inner,
        admission: bounds.requests.clone(),
        backlog: bounds.replies.clone(),
        backlog_limit: replies,
    };
    let reader = rpc_reader(reader, gated);
    run_server(reader, writer, flusher, bootstrap(peer, bounds)).await
}

/// Each connection's read buffer: capnp-rpc reads a message in small pieces.
const READ_BUFFER: usize = 256 << 10;

/// A connection's read half as capnp-rpc reads it: through `wrap`, with a [`READ_BUFFER`]
/// on top unless the stream buffers itself already (a sealed stream: one more copy of every
/// byte received would buy nothing).
fn rpc_reader<R: futures::io::AsyncRead + Unpin + 'static>(
    half: transport::ReadHalf,
    wrap: impl FnOnce(tokio_util::compat::Compat<transport::ReadHalf>) -> R,
) -> Box<dyn futures::io::AsyncRead + Unpin> {
    let buffered = half.buffers_itself();
    let reader = wrap(half.compat());
    if buffered {
        Box::new(reader)
    } else {
        Box::new(futures::io::BufReader::with_capacity(READ_BUFFER, reader))
    }
}

async fn run_server<R, W>(reader: R, writer: W, flusher: impl Future<Output = ()>, bootstrap: capnp::capability::Client)
where
    R: futures::io::AsyncRead + Unpin + 'static,
    W: futures::io::AsyncWrite + Unpin + 'static,
{
    let network = twoparty::VatNetwork::new(reader, writer, rpc_twoparty_capnp::Side::Server, Default::default());
    let system = RpcSystem::new(Box::new(network), Some(bootstrap));
    let ended = futures::future::select(system.boxed_local(), flusher.boxed_local()).await;
    if let futures::future::Either::Left((Err(e), _)) = ended {
        tracing::debug!("rpc connection ended: {e}");
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

/// "1.0 s", "250 ms".
pub(crate) fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}
