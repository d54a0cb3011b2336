//! The NBD export of one VDI: listen, take the VDI's lock, open it, serve every connection
//! on the same engine until SIGTERM/SIGINT, then stop cleanly.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::handshake::{self, Outcome, Tls};
use super::proto::*;
use super::transmission::{self, End, Limits};
use crate::attach_lock::AttachLock;
use crate::backend::{Backend, VdiBackend};

/// What to export and where.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    pub vdi: String,
    pub listen: SocketAddr,
    pub groupd: Vec<String>,
    pub limits: Limits,
    /// TLS required of every client (`--tls-cert`/`--tls-key`), or none.
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// Where the VDI's request metrics go.
    pub metrics: sheep_metrics::OpFamilies,
}

/// Whether the export may listen on `addr`: NBD without TLS carries the VDI's data and takes
/// writes with no authentication and no encryption, so only loopback, unless the export
/// requires TLS or the operator says `--insecure-listen` (then with a warning).
pub fn check_listen(addr: SocketAddr, insecure_listen: bool, tls: bool) -> Result<()> {
    if addr.ip().is_loopback() || tls {
        return Ok(());
    }
    if !insecure_listen {
        bail!(
            "an NBD export on {addr} (not loopback) without TLS would serve the VDI in the clear, unauthenticated, to \
             anyone who reaches it: give it --tls-cert and --tls-key (clients then need QEMU's tls-creds-x509), \
             listen on 127.0.0.1 (the default) and reach it through an SSH tunnel, or pass --insecure-listen to \
             accept that"
        );
    }
    tracing::warn!("serving NBD on {addr} in the clear (--insecure-listen): anyone who reaches it can read and write");
    Ok(())
}

/// A client has this long to finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The flags of the export: flush, FUA, trim and write-zeroes, and multiple connections
/// (every connection shares one engine, and flushes are serialised across them, so a flush
/// on one connection covers the writes answered on all of them).
pub const EXPORT_FLAGS: u16 = TFLAG_HAS_FLAGS
    | TFLAG_SEND_FLUSH
    | TFLAG_SEND_FUA
    | TFLAG_SEND_TRIM
    | TFLAG_SEND_WRITE_ZEROES
    | TFLAG_CAN_MULTI_CONN;

/// Runs the export until a signal; returns an error if it could not start or had to stop.
pub async fn run(cfg: ExportConfig) -> Result<()> {
    let mut term = signal(SignalKind::terminate()).context("cannot catch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot catch SIGINT")?;
    let listener = TcpListener::bind(cfg.listen).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow!("cannot listen on {}: the address is already in use", cfg.listen),
        _ => anyhow!("cannot listen on {}: {e}", cfg.listen),
    })?;
    let local = listener.local_addr().context("local address of the listener")?;
    let holder = format!("nbd-export {local} pid {} on {}", std::process::id(), crate::hostname());
    let mut attached = crate::attached::attach(
        &cfg.groupd,
        &cfg.vdi,
        &holder,
        Duration::ZERO,
        crate::metrics::FrontendMetrics::new(&cfg.metrics, &cfg.vdi),
    )
    .await?;
    let served = async {
        let backend = attached.backend.clone();
        // Snapshots asked of this export are taken between requests; a resize applies to
        // connections opened after it (NBD tells the size once, at the handshake).
        let follower = tokio::task::spawn_local(
            attached.follow(|size| tracing::info!("new connections see the new size, {size} bytes")),
        );
        let info = ExportInfo {
            name: cfg.vdi.clone(),
            size: backend.size(),
            flags: EXPORT_FLAGS,
            description: format!("Sheepdog VDI {}", cfg.vdi),
        };
        let url = nbd_url(local, &cfg.vdi);
        tracing::info!("serving VDI {} ({} bytes) at {url} (session {})", cfg.vdi, info.size, attached.lock.session());
        println!("{url}");
        // The line above is what a caller waits for.
        let _ = std::io::Write::flush(&mut std::io::stdout());
        if cfg.tls.is_some() {
            tracing::info!("every client must start TLS (NBD_OPT_STARTTLS) before anything else");
        }
        let tls = cfg.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        let stopped =
            accept_loop(&listener, &backend, &info, &mut attached.lock, &mut term, &mut int, cfg.limits, tls).await;
        follower.abort();
        drop(listener);
        match backend.flush().await {
            Ok(()) => tracing::info!("flushed VDI {}", cfg.vdi),
            Err(e) => tracing::error!("final flush of VDI {} failed: {}", cfg.vdi, e.message),
        }
        stopped
    };
    let result = served.await;
    attached.lock.release().await;
    result
}

/// Accepts connections until a signal or the loss of the lock; then stops every connection
/// (requests in flight are answered) and returns.
#[allow(clippy::too_many_arguments, reason = "the export's parts, each used once")]
async fn accept_loop(
    listener: &TcpListener,
    backend: &Rc<VdiBackend>,
    info: &ExportInfo,
    lock: &mut AttachLock,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let outcome = loop {
        tokio::select! {
            a = listener.accept() => match a {
                Ok((sock, peer)) => {
                    // The size as of now: a connection made after a resize sees the new one.
                    let info = ExportInfo { size: backend.size(), ..info.clone() };
                    let c = connection(backend.clone(), sock, peer, info, stop_rx.clone(), limits, tls.clone());
                    conns.spawn_local(c);
                }
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = term.recv() => break Ok("SIGTERM"),
            _ = int.recv() => break Ok("SIGINT"),
            why = lock.lost() => break Err(anyhow!("{why}; the VDI lock may belong to someone else now: stopped \
                serving")),
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    };
    match &outcome {
        Ok(sig) => tracing::info!("{sig}: stopping ({} connections open)", conns.len()),
        Err(e) => tracing::error!("{e}"),
    }
    stop_tx.send_replace(true);
    let all_closed = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.drain + Duration::from_secs(15), all_closed).await.is_err() {
        tracing::warn!("{} connections did not close in time; dropped", conns.len());
        conns.shutdown().await;
    }
    outcome.map(drop)
}

/// A connection once negotiated: in the clear, or over TLS.
enum Negotiated {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// The handshake on `sock`: with TLS required, STARTTLS, the TLS handshake, then the options
/// over TLS. None when the client gave up (said why in the log).
async fn negotiate(
    mut sock: TcpStream,
    info: &ExportInfo,
    tls: Option<tokio_rustls::TlsAcceptor>,
    peer: SocketAddr,
) -> Option<Negotiated> {
    let result = async {
        let no_zeroes = handshake::greet(&mut sock).await?;
        let Some(acceptor) = tls else {
            return Ok(handshake::options(&mut sock, info, Tls::Off, no_zeroes).await?.chosen(Negotiated::Plain(sock)));
        };
        match handshake::options(&mut sock, info, Tls::Required, no_zeroes).await? {
            Outcome::StartTls => {}
            _ => return Ok(None),
        }
        let mut s = acceptor.accept(sock).await?;
        Ok(handshake::options(&mut s, info, Tls::Established, no_zeroes).await?.chosen(Negotiated::Tls(Box::new(s))))
    };
    match result.await {
        Ok(Some(n)) => Some(n),
        Ok(None) => {
            tracing::info!("{peer}: aborted the handshake");
            None
        }
        Err(e) => {
            let e: handshake::HandshakeError = e;
            tracing::info!("{peer}: handshake failed: {e}");
            None
        }
    }
}

impl Outcome {
    /// `conn` if the client chose the export.
    fn chosen(self, conn: Negotiated) -> Option<Negotiated> {
        (self == Outcome::Transmission).then_some(conn)
    }
}

/// One client connection: handshake, then transmission.
async fn connection(
    backend: Rc<VdiBackend>,
    sock: TcpStream,
    peer: SocketAddr,
    info: ExportInfo,
    mut stop: watch::Receiver<bool>,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    if let Err(e) = sock.set_nodelay(true) {
        tracing::warn!("{peer}: cannot set TCP_NODELAY: {e}");
    }
    tracing::info!("{peer}: connected");
    let negotiated = tokio::select! {
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, negotiate(sock, &info, tls, peer)) => r,
        () = transmission::stopped(&mut stop) => return,
    };
    let ended = match negotiated {
        Ok(Some(Negotiated::Plain(sock))) => {
            let (rd, wr) = sock.into_split();
            transmit(backend, rd, wr, stop, limits, peer).await
        }
        Ok(Some(Negotiated::Tls(s))) => {
            let (rd, wr) = tokio::io::split(*s);
            transmit(backend, rd, wr, stop, limits, peer).await
        }
        Ok(None) => return,
        Err(_) => {
            tracing::info!("{peer}: no handshake within {HANDSHAKE_TIMEOUT:?}; closed");
            return;
        }
    };
    match ended {
        Ok(End::Disconnected) => tracing::info!("{peer}: disconnected"),
        Ok(End::Vanished) => tracing::info!("{peer}: closed the connection without NBD_CMD_DISC"),
        Ok(End::Shutdown) => tracing::info!("{peer}: closed, the server is stopping"),
        Err(e) => tracing::warn!("{peer}: connection ended: {e}"),
    }
}

async fn transmit<R, W>(
    backend: Rc<VdiBackend>,
    rd: R,
    wr: W,
    stop: watch::Receiver<bool>,
    limits: Limits,
    peer: SocketAddr,
) -> Result<End, transmission::TransmissionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + 'static,
{
    let reader = BufReader::with_capacity(256 << 10, rd);
    transmission::serve(backend, reader, wr, stop, limits, &peer.to_string()).await
}

/// `nbd://127.0.0.1:10809/disk0`, the name percent-encoded where a URL needs it.
pub fn nbd_url(addr: SocketAddr, name: &str) -> String {
    let mut path = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            path.push(b as char);
        } else {
            path.push_str(&format!("%{b:02X}"));
        }
    }
    format!("nbd://{addr}/{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let a: SocketAddr = "127.0.0.1:10809".parse().unwrap();
        assert_eq!(nbd_url(a, "disk0"), "nbd://127.0.0.1:10809/disk0");
        assert_eq!(nbd_url(a, "my disk/é"), "nbd://127.0.0.1:10809/my%20disk%2F%C3%A9");
        let v6: SocketAddr = "[::1]:7".parse().unwrap();
        assert_eq!(nbd_url(v6, "d"), "nbd://[::1]:7/d");
    }

    #[test]
    fn only_loopback_unless_told() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        for ok in ["127.0.0.1:10809", "127.5.6.7:1", "[::1]:0"] {
            assert!(check_listen(addr(ok), false, false).is_ok(), "{ok}");
        }
        for open in ["0.0.0.0:10809", "192.168.1.5:10809", "[::]:10809"] {
            let e = check_listen(addr(open), false, false).unwrap_err().to_string();
            assert!(e.contains("--insecure-listen") && e.contains("in the clear"), "{open}: {e}");
            assert!(e.contains("--tls-cert"), "{open}: {e}");
            assert!(check_listen(addr(open), true, false).is_ok(), "{open} with --insecure-listen");
            assert!(check_listen(addr(open), false, true).is_ok(), "{open} with TLS");
        }
    }
}
