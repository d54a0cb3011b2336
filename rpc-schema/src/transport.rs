//! Every connection of every daemon and client: TCP from one source address per process,
//! then (unless the process runs `--insecure`) the handshake of `sheep_core::auth::handshake`
//! and sealed frames (`sheep_core::auth::seal`). A connection that does not authenticate is
//! closed before a byte of a request is read, and logged once a minute per peer address.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use sheep_core::auth::handshake::{self, Answer, Hello, Status, ANSWER_BODY, HELLO_HEAD, NONCE_LEN};
use sheep_core::auth::keyring::Keyring;
use sheep_core::auth::seal::{Opener, Sealer, HEADER_LEN, MAX_FRAME, TAG_LEN};
use sheep_core::auth::ticket::Ticket;
use sheep_core::auth::{client_key, key_of, Key, ADMIN, DAEMON, KEY_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

use crate::clock::now_unix_ms;

/// How long an accepted connection may take to authenticate.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a refused peer address is logged.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

/// Who this process is on the wire.
#[derive(Clone, Debug)]
pub enum Identity {
    /// No keys: plain connections, and only to peers that run so too.
    Insecure,
    /// A daemon: proves the cluster's secret to its peers, checks theirs with it.
    Daemon { keyring: Keyring },
    /// A client: proves its own key (and encrypts when the server says its cluster does).
    Client { keyring: Keyring },
}

/// Who the peer of an accepted connection proved to be.
#[derive(Clone, Debug)]
pub enum Peer {
    /// This process runs without keys: anyone.
    Insecure,
    /// Another daemon of the cluster.
    Daemon,
    /// `client.admin`.
    Admin,
    /// Any other client: its rights are its entry's in groupd (`generation` says which
    /// entry), and at a storage node its `ticket`'s.
    Client { entity: String, generation: u64, ticket: Option<Box<Ticket>> },
}

impl Peer {
    /// Daemons, the administrator, and anyone when there are no keys: every right.
    pub fn is_privileged(&self) -> bool {
        !matches!(self, Peer::Client { .. })
    }

    /// For messages: who the peer is.
    pub fn name(&self) -> &str {
        match self {
            Peer::Insecure => "an unauthenticated peer",
            Peer::Daemon => DAEMON,
            Peer::Admin => ADMIN,
            Peer::Client { entity, .. } => entity,
        }
    }
}

static SOURCE_IP: OnceLock<IpAddr> = OnceLock::new();
/// The clients this daemon knows by their entry (groupd: every client of its state), with
/// the generation of each one's key. Storage nodes know none: clients show them tickets.
static KNOWN_CLIENTS: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);

/// Tells the transport the clients (name, generation) whose keys it takes without a ticket
/// (groupd calls it whenever its state's clients change).
pub fn set_known_clients(clients: impl IntoIterator<Item = (String, u64)>) {
    *KNOWN_CLIENTS.lock().unwrap_or_else(|p| p.into_inner()) = Some(clients.into_iter().collect());
}

fn known_generation(entity: &str) -> Option<u64> {
    KNOWN_CLIENTS.lock().unwrap_or_else(|p| p.into_inner()).as_ref()?.get(entity).copied()
}

static IDENTITY: OnceLock<Identity> = OnceLock::new();
/// The cluster this daemon serves was formatted `--secure`: every session it accepts or
/// opens from now on is encrypted.
static CLUSTER_SECURE: AtomicBool = AtomicBool::new(false);

/// Tells the transport whether this daemon's cluster encrypts its sessions (a daemon calls
/// it whenever it learns the cluster's configuration). Sessions open already stay as they are.
pub fn set_cluster_secure(secure: bool) {
    if CLUSTER_SECURE.swap(secure, Ordering::Relaxed) != secure {
        tracing::info!("sessions are {} from now on", if secure { "encrypted" } else { "integrity-checked" });
    }
}

fn cluster_secure() -> bool {
    CLUSTER_SECURE.load(Ordering::Relaxed)
}

/// Makes every later outgoing connection of this process leave from `ip` (once per process;
/// a second call changes nothing). A daemon with an address of its own (its `--listen`)
/// calls it, so that its peers, and firewall rules by source address, see it as that address
/// on a host with several.
pub fn set_source_ip(ip: IpAddr) {
    let _ = SOURCE_IP.set(ip);
}

/// Sets who this process is, before its first connection (once; a second call is refused).
/// A process that never calls it is [`Identity::Insecure`].
pub fn set_identity(id: Identity) -> Result<(), String> {
    if let Identity::Daemon { keyring } = &id {
        if keyring.secret.is_none() {
            return Err(format!(
                "the keyring of {} has no cluster secret: a daemon needs the cluster's keyring (`sheepctl auth init`)",
                keyring.entity
            ));
        }
    }
    IDENTITY.set(id).map_err(|_| "the identity of this process is set already".to_string())
}

pub fn identity() -> &'static Identity {
    IDENTITY.get_or_init(|| Identity::Insecure)
}

/// Whether this process runs without keys.
pub fn is_insecure() -> bool {
    matches!(identity(), Identity::Insecure)
}

/// A TCP connection to `addr` from [`set_source_ip`]'s address, authenticated as this
/// process's [`identity`]. The caller bounds it with its own timeout.
pub async fn connect(addr: &str) -> io::Result<Stream> {
    connect_presenting(addr, &[]).await
}

/// [`connect`], showing the peer `ticket` (a client's, to a storage node; empty: none).
pub async fn connect_presenting(addr: &str, ticket: &[u8]) -> io::Result<Stream> {
    let tcp = tcp_connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    match identity() {
        Identity::Insecure => Ok(Stream::Plain(tcp)),
        Identity::Daemon { keyring } => {
            let secret = keyring.secret.expect("set_identity checked it");
            client_handshake(tcp, DAEMON, &secret, cluster_secure(), &[]).await
        }
        Identity::Client { keyring } => client_handshake(tcp, &keyring.entity, &keyring.key, false, ticket).await,
    }
}

/// A connection to `addr` authenticated as the client of `keyring` rather than as this
/// process (tools that act for several clients, and tests), showing `ticket` (or none).
pub async fn connect_as(addr: &str, keyring: &Keyring, ticket: &[u8]) -> io::Result<Stream> {
    let tcp = tcp_connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    client_handshake(tcp, &keyring.entity, &keyring.key, false, ticket).await
}

async fn tcp_connect(addr: &str) -> io::Result<TcpStream> {
    let Some(&source) = SOURCE_IP.get() else { return TcpStream::connect(addr).await };
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, format!("{addr} resolves to no address"));
    for target in tokio::net::lookup_host(addr).await? {
        if target.is_ipv4() != source.is_ipv4() {
            continue;
        }
        let socket = if source.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.bind(SocketAddr::new(source, 0))?;
        match socket.connect(target).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Authenticates an accepted connection (within [`HANDSHAKE_TIMEOUT`]); a daemon with keys
/// takes only peers that prove a key of its cluster. A refusal is logged (rate-limited) and
/// the connection closed: Err.
pub async fn accept(tcp: TcpStream, peer: SocketAddr) -> io::Result<(Stream, Peer)> {
    let _ = tcp.set_nodelay(true);
    let secret = match identity() {
        Identity::Insecure => return Ok((Stream::Plain(tcp), Peer::Insecure)),
        Identity::Daemon { keyring } => keyring.secret.expect("set_identity checked it"),
        Identity::Client { .. } => return Err(io::Error::other("a client process serves no connections")),
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, server_handshake(tcp, &secret)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => {
            log_refusal(peer, &e.to_string());
            Err(e)
        }
        Err(_) => {
            let why = format!("no handshake within {}s", HANDSHAKE_TIMEOUT.as_secs());
            log_refusal(peer, &why);
            Err(io::Error::new(io::ErrorKind::TimedOut, why))
        }
    }
}

fn log_refusal(peer: SocketAddr, why: &str) {
    static LAST: Mutex<Option<HashMap<IpAddr, Instant>>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    let map = last.get_or_insert_with(HashMap::new);
    if map.len() > 4096 {
        map.clear();
    }
    let now = Instant::now();
    if map.get(&peer.ip()).is_some_and(|t| now.duration_since(*t) < REFUSAL_LOG_EVERY) {
        return;
    }
    map.insert(peer.ip(), now);
    tracing::warn!(%peer, "refused a connection that did not authenticate: {why} (logged once a minute per address)");
}

fn refused(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, what.into())
}

fn random<const N: usize>() -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| io::Error::other(format!("no random bytes: {e}")))?;
    Ok(b)
}

/// Reads exactly `buf.len()` bytes; an end of stream is `closed`'s error.
async fn read_all(tcp: &mut TcpStream, buf: &mut [u8], closed: &str) -> io::Result<()> {
    match tcp.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(refused(closed)),
        Err(e) => Err(e),
    }
}

const CLOSED_IN_HANDSHAKE: &str = "the peer closed the connection during authentication (does it run with \
                                   --insecure, or is it no Sheepdog daemon?)";

async fn client_handshake(
    mut tcp: TcpStream,
    entity: &str,
    key: &Key,
    secure: bool,
    ticket: &[u8],
) -> io::Result<Stream> {
    let hello = Hello {
        flags: if secure { handshake::flags::SECURE } else { 0 },
        entity: entity.into(),
        nonce: random::<NONCE_LEN>()?,
        ticket: ticket.to_vec(),
    };
    tcp.write_all(&hello.encode()).await?;
    let mut status = [0u8; 1];
    read_all(&mut tcp, &mut status, CLOSED_IN_HANDSHAKE).await?;
    match Status::from_byte(status[0]) {
        Some(Status::Ok) => {}
        Some(s) => return Err(refused(format!("refused as {entity}: {}", s.reason()))),
        None => return Err(refused("the peer answered the handshake with nonsense")),
    }
    let mut body = [0u8; ANSWER_BODY];
    read_all(&mut tcp, &mut body, CLOSED_IN_HANDSHAKE).await?;
    let answer = Answer::decode(&body);
    let t = handshake::transcript(&hello, answer.flags, &answer.nonce);
    if !handshake::server_proof_matches(key, &t, &answer.proof) {
        return Err(refused(format!(
            "the peer did not prove it knows the key of {entity}: it is no member of this keyring's cluster, or it \
             runs without keys (--insecure)"
        )));
    }
    if secure && !answer.is_secure() {
        return Err(refused("the peer would not encrypt the session this process asked to encrypt"));
    }
    tcp.write_all(&handshake::client_proof(key, &t)).await?;
    read_all(&mut tcp, &mut status, CLOSED_IN_HANDSHAKE).await?;
    match Status::from_byte(status[0]) {
        Some(Status::Ok) => {}
        Some(s) => return Err(refused(format!("refused as {entity}: {}", s.reason()))),
        None => return Err(refused("the peer answered the handshake with nonsense")),
    }
    let (c2s, s2c) = handshake::frame_keys(key, &t);
    let secure = answer.is_secure();
    Ok(Stream::Sealed(Box::new(Sealed::new(tcp, Sealer::new(&c2s, secure), Opener::new(&s2c, secure)))))
}

/// Who `hello` claims to be and the key it must prove it holds: daemons and the admin by
/// the secret alone, other clients by their ticket or (groupd) by the clients it knows.
fn resolve(secret: &Key, hello: &Hello) -> Result<(Key, Peer), (Status, String)> {
    if let Some(key) = key_of(secret, &hello.entity) {
        return Ok((key, if hello.entity == DAEMON { Peer::Daemon } else { Peer::Admin }));
    }
    let entity = hello.entity.clone();
    if !hello.ticket.is_empty() {
        let ticket = Ticket::open(&hello.ticket, secret, now_unix_ms())
            .map_err(|e| (Status::BadTicket, format!("{entity}: {e}")))?;
        if ticket.entity != entity {
            return Err((Status::BadTicket, format!("{entity} showed the ticket of {}", ticket.entity)));
        }
        let key = client_key(secret, &entity, ticket.generation);
        return Ok((key, Peer::Client { entity, generation: ticket.generation, ticket: Some(Box::new(ticket)) }));
    }
    match known_generation(&entity) {
        Some(generation) => {
            Ok((client_key(secret, &entity, generation), Peer::Client { entity, generation, ticket: None }))
        }
        None => Err((Status::UnknownEntity, format!("unknown entity {entity} (removed, or no ticket shown)"))),
    }
}

async fn server_handshake(mut tcp: TcpStream, secret: &Key) -> io::Result<(Stream, Peer)> {
    let mut head = [0u8; HELLO_HEAD];
    read_all(&mut tcp, &mut head, "closed before its handshake").await?;
    // Not a hello (e.g. a request of a client without keys): closed without a word.
    let rest_len = Hello::rest_len(&head).ok_or_else(|| refused("no handshake (a client without keys?)"))?;
    let mut rest = vec![0u8; rest_len];
    read_all(&mut tcp, &mut rest, "closed in its handshake").await?;
    let Some(mut hello) = Hello::decode(&head, &rest) else {
        tcp.write_all(&[Status::BadHello as u8]).await?;
        return Err(refused("a malformed handshake"));
    };
    if Hello::has_ticket(&head) {
        let mut len = [0u8; 2];
        read_all(&mut tcp, &mut len, "closed in its handshake").await?;
        let Some(n) = Hello::ticket_len(len) else {
            tcp.write_all(&[Status::BadHello as u8]).await?;
            return Err(refused("a ticket beyond the bound"));
        };
        hello.ticket = vec![0u8; n];
        read_all(&mut tcp, &mut hello.ticket, "closed in its handshake").await?;
    }
    let (key, who) = match resolve(secret, &hello) {
        Ok(k) => k,
        Err((status, why)) => {
            tcp.write_all(&[status as u8]).await?;
            return Err(refused(why));
        }
    };
    // Encrypted if the client asks or this cluster says so.
    let secure = hello.flags & handshake::flags::SECURE != 0 || cluster_secure();
    let server_flags = if secure { handshake::flags::SECURE } else { 0 };
    let server_nonce = random::<NONCE_LEN>()?;
    let t = handshake::transcript(&hello, server_flags, &server_nonce);
    let answer = Answer { flags: server_flags, nonce: server_nonce, proof: handshake::server_proof(&key, &t) };
    let mut out = Vec::with_capacity(1 + ANSWER_BODY);
    out.push(Status::Ok as u8);
    out.extend_from_slice(&answer.encode());
    tcp.write_all(&out).await?;
    let mut proof = [0u8; KEY_LEN];
    read_all(&mut tcp, &mut proof, "closed in its handshake").await?;
    if !handshake::client_proof_matches(&key, &t, &proof) {
        tcp.write_all(&[Status::WrongProof as u8]).await?;
        return Err(refused(format!("{}: wrong key", hello.entity)));
    }
    tcp.write_all(&[Status::Ok as u8]).await?;
    let (c2s, s2c) = handshake::frame_keys(&key, &t);
    tracing::debug!(entity = hello.entity, secure, "authenticated");
    Ok((Stream::Sealed(Box::new(Sealed::new(tcp, Sealer::new(&s2c, secure), Opener::new(&c2s, secure)))), who))
}

/// A connection, as the RPC layer reads and writes it.
pub enum Stream {
    Plain(TcpStream),
    Sealed(Box<Sealed>),
}

/// An authenticated connection: bytes written leave as sealed frames, bytes read are the
/// payloads of frames that passed their check.
pub struct Sealed {
    tcp: TcpStream,
    sealer: Sealer,
    opener: Opener,
    /// Sealed bytes not yet on the socket, from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
    /// Bytes read from the socket: `inb[in_start..in_end]` not yet opened. Allocated once,
    /// large enough for the largest frame and a read ahead, so that reads never zero-fill or
    /// move more than a frame's tail.
    inb: Box<[u8]>,
    in_start: usize,
    in_end: usize,
    /// The payload of the last frame opened (decrypted in place), not yet read: a range of
    /// `inb` before `in_start`, which stays put until it is read (only `poll_fill` moves
    /// bytes, and it runs once the payload is read).
    plain: std::ops::Range<usize>,
}

/// How much a read from the socket asks for beyond what the frame needs.
const READ_AHEAD: usize = 64 << 10;
/// The read buffer: a whole frame and a read ahead.
const IN_CAP: usize = HEADER_LEN + MAX_FRAME + TAG_LEN + READ_AHEAD;

impl Sealed {
    fn new(tcp: TcpStream, sealer: Sealer, opener: Opener) -> Sealed {
        Sealed {
            tcp,
            sealer,
            opener,
            out: Vec::with_capacity(64 << 10),
            out_pos: 0,
            inb: vec![0u8; IN_CAP].into_boxed_slice(),
            in_start: 0,
            in_end: 0,
            plain: 0..0,
        }
    }

    /// Writes what is sealed and pending; Ready once none is.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.out[self.out_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        self.out.clear();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }

    /// Reads from the socket until at least `want` unopened bytes are held; Ok(false) at an
    /// end of the stream before any byte of them.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<bool>> {
        debug_assert!(want <= IN_CAP && self.plain.is_empty());
        while self.in_end - self.in_start < want {
            if IN_CAP - self.in_start < want {
                // The frame would not fit behind: its head goes to the front.
                self.inb.copy_within(self.in_start..self.in_end, 0);
                self.in_end -= self.in_start;
                self.in_start = 0;
            }
            let held = self.in_end - self.in_start;
            let mut rb = ReadBuf::new(&mut self.inb[self.in_end..]);
            ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut rb))?;
            let got = rb.filled().len();
            self.in_end += got;
            if got == 0 {
                if held == 0 {
                    return Poll::Ready(Ok(false));
                }
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "a frame cut short")));
            }
        }
        Poll::Ready(Ok(true))
    }
}

fn forged(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl AsyncRead for Sealed {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        loop {
            if !me.plain.is_empty() {
                let n = me.plain.len().min(buf.remaining());
                buf.put_slice(&me.inb[me.plain.start..me.plain.start + n]);
                me.plain.start += n;
                return Poll::Ready(Ok(()));
            }
            if !ready!(me.poll_fill(cx, HEADER_LEN))? {
                return Poll::Ready(Ok(()));
            }
            let at = me.in_start;
            let header: [u8; HEADER_LEN] = me.inb[at..at + HEADER_LEN].try_into().expect("header length");
            let len = me.opener.payload_len(header).map_err(forged)?;
            let total = HEADER_LEN + len + TAG_LEN;
            ready!(me.poll_fill(cx, total))?;
            let at = me.in_start;
            me.opener.open(&mut me.inb[at..at + total]).map_err(forged)?;
            me.plain = at + HEADER_LEN..at + HEADER_LEN + len;
            me.in_start = at + total;
        }
    }
}

impl AsyncWrite for Sealed {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        ready!(me.poll_drain(cx))?;
        let n = data.len().min(MAX_FRAME);
        if let Some((header, tag)) = me.sealer.seal_unencrypted(&data[..n]) {
            // The payload goes to the socket from where it is; only what the socket does not
            // take at once is copied (the frame is sealed: it must leave whole).
            let parts = [&header[..], &data[..n], &tag[..]];
            let slices = parts.map(io::IoSlice::new);
            let sent = match Pin::new(&mut me.tcp).poll_write_vectored(cx, &slices) {
                Poll::Ready(Ok(sent)) => sent,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => 0,
            };
            let mut skip = sent;
            for part in parts {
                let taken = skip.min(part.len());
                me.out.extend_from_slice(&part[taken..]);
                skip -= taken;
            }
            return Poll::Ready(Ok(n));
        }
        me.sealer.seal(&data[..n], &mut me.out);
        // Start sending at once; the rest goes on the next write or flush.
        if let Poll::Ready(Err(e)) = me.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_drain(cx))?;
        Pin::new(&mut me.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_drain(cx))?;
        Pin::new(&mut me.tcp).poll_shutdown(cx)
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Sealed(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, data),
            Stream::Sealed(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Sealed(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Sealed(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Stream {
    /// The two halves, for an RPC system that reads and writes apart.
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Plain(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Plain(r), WriteHalf::Plain(w))
            }
            Stream::Sealed(s) => {
                let (r, w) = tokio::io::split(s);
                (ReadHalf::Sealed(r), WriteHalf::Sealed(w))
            }
        }
    }
}

pub enum ReadHalf {
    Plain(tokio::net::tcp::OwnedReadHalf),
    Sealed(tokio::io::ReadHalf<Box<Sealed>>),
}

impl ReadHalf {
    /// Whether reads are served from a buffer of its own (a sealed stream opens whole
    /// frames), so that a reader in small pieces needs no buffer on top.
    pub fn buffers_itself(&self) -> bool {
        matches!(self, ReadHalf::Sealed(_))
    }
}

pub enum WriteHalf {
    Plain(tokio::net::tcp::OwnedWriteHalf),
    Sealed(tokio::io::WriteHalf<Box<Sealed>>),
}

impl AsyncRead for ReadHalf {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ReadHalf::Sealed(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Plain(s) => Pin::new(s).poll_write(cx, data),
            WriteHalf::Sealed(s) => Pin::new(s).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(s) => Pin::new(s).poll_flush(cx),
            WriteHalf::Sealed(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(s) => Pin::new(s).poll_shutdown(cx),
            WriteHalf::Sealed(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sealed frames over a real socket: writes of every size (a byte, across frames, larger
    /// than a frame) read back whole through reads of odd sizes, in both modes.
    #[test]
    fn sealed_streams_carry_every_byte_in_order() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        for secure in [false, true] {
            rt.block_on(async {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                let (c2s, s2c) = ([1u8; KEY_LEN], [2u8; KEY_LEN]);
                let client = TcpStream::connect(addr).await.unwrap();
                let (server, _) = listener.accept().await.unwrap();
                let mut w = Sealed::new(client, Sealer::new(&c2s, secure), Opener::new(&s2c, secure));
                let mut r = Sealed::new(server, Sealer::new(&s2c, secure), Opener::new(&c2s, secure));
                let sizes = [1usize, 7, MAX_FRAME - 1, MAX_FRAME, MAX_FRAME + 1, 3 * MAX_FRAME + 5, 4096, 0, 2];
                let data: Vec<u8> = (0..sizes.iter().sum::<usize>()).map(|i| (i * 31 % 251) as u8).collect();
                let sent = data.clone();
                let writer = async move {
                    let mut at = 0;
                    for n in sizes {
                        w.write_all(&sent[at..at + n]).await.unwrap();
                        at += n;
                    }
                    w.flush().await.unwrap();
                    w.shutdown().await.unwrap();
                };
                let reader = async move {
                    let mut got = Vec::new();
                    let mut buf = vec![0u8; 10_007];
                    loop {
                        let n = r.read(&mut buf).await.unwrap();
                        if n == 0 {
                            return got;
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                };
                let ((), got) = tokio::join!(writer, reader);
                assert_eq!(got.len(), data.len(), "secure {secure}");
                assert!(got == data, "the bytes read differ from those written (secure {secure})");
            });
        }
    }
}
