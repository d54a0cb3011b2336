//! Outgoing TCP connections of every daemon and client: from one source address per process.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

use tokio::net::{TcpSocket, TcpStream};

/// The address this process's outgoing connections leave from (see [`set_source_ip`]).
static SOURCE_IP: OnceLock<IpAddr> = OnceLock::new();

/// Makes every later outgoing connection of this process leave from `ip` (once per process;
/// a second call changes nothing). A daemon with an address of its own (its `--listen`)
/// calls it, so that its peers, and firewall rules by source address, see it as that address
/// on a host with several.
pub fn set_source_ip(ip: IpAddr) {
    let _ = SOURCE_IP.set(ip);
}

/// A TCP connection to `addr`, from [`set_source_ip`]'s address if one is set.
pub async fn connect(addr: &str) -> io::Result<TcpStream> {
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
