//! A small blocking NBD client for tests: fixed newstyle negotiation with `NBD_OPT_GO`, then
//! one request at a time (simple replies), every read of the socket bounded.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const FLAG_FUA: u16 = 1;

const REQUEST_MAGIC: u32 = 0x2560_9513;
const REPLY_MAGIC: u32 = 0x6744_6698;

/// Sends option `opt` with `data`.
pub fn option(s: &mut TcpStream, opt: u32, data: &[u8]) -> io::Result<()> {
    let mut b = b"IHAVEOPT".to_vec();
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    s.write_all(&b)
}

/// One option reply: (type, data).
pub fn option_reply(s: &mut TcpStream) -> io::Result<(u32, Vec<u8>)> {
    let mut h = [0u8; 20];
    s.read_exact(&mut h)?;
    let len = u32::from_be_bytes(h[16..20].try_into().expect("4 bytes")) as usize;
    if len > 1 << 20 {
        return Err(io::Error::other(format!("an option reply of {len} bytes")));
    }
    let mut data = vec![0u8; len];
    s.read_exact(&mut data)?;
    Ok((u32::from_be_bytes(h[12..16].try_into().expect("4 bytes")), data))
}

/// Sends one request header (and nothing else: a write's data follows separately).
pub fn request(s: &mut TcpStream, kind: u16, flags: u16, handle: u64, offset: u64, len: u32) -> io::Result<()> {
    let mut b = REQUEST_MAGIC.to_be_bytes().to_vec();
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&handle.to_be_bytes());
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    s.write_all(&b)
}

/// One connection in transmission.
pub struct NbdClient {
    s: TcpStream,
    pub size: u64,
    pub flags: u16,
    handle: u64,
}

/// A request the server answered with an error (its NBD error number).
#[derive(Debug)]
pub enum NbdError {
    Refused(u32),
    Io(io::Error),
}

impl std::fmt::Display for NbdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NbdError::Refused(e) => write!(f, "the server answered error {e}"),
            NbdError::Io(e) => write!(f, "connection: {e}"),
        }
    }
}

impl From<io::Error> for NbdError {
    fn from(e: io::Error) -> Self {
        NbdError::Io(e)
    }
}

impl NbdClient {
    /// Connects to `addr` (`ip:port`) and opens export `name`; every reply waits at most
    /// `timeout`.
    pub fn connect(addr: &str, name: &str, timeout: Duration) -> io::Result<NbdClient> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        s.set_nodelay(true)?;
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting)?;
        if &greeting[..16] != b"NBDMAGICIHAVEOPT" {
            return Err(io::Error::other("not an NBD newstyle server"));
        }
        s.write_all(&3u32.to_be_bytes())?; // fixed newstyle, no zeroes
        let mut go = (name.len() as u32).to_be_bytes().to_vec();
        go.extend_from_slice(name.as_bytes());
        go.extend_from_slice(&0u16.to_be_bytes());
        option(&mut s, 7, &go)?;
        let (mut size, mut flags) = (0, 0);
        loop {
            let (kind, info) = option_reply(&mut s)?;
            match kind {
                1 => break,
                3 if info.len() >= 12 && info[..2] == [0, 0] => {
                    size = u64::from_be_bytes(info[2..10].try_into().expect("8 bytes"));
                    flags = u16::from_be_bytes([info[10], info[11]]);
                }
                3 => {}
                k => return Err(io::Error::other(format!("NBD_OPT_GO refused ({k:#x})"))),
            }
        }
        Ok(NbdClient { s, size, flags, handle: 0 })
    }

    /// The connection, for requests sent by hand (e.g. many without reading the replies).
    pub fn into_stream(self) -> TcpStream {
        self.s
    }

    fn reply(&mut self, handle: u64, data: &mut [u8]) -> Result<(), NbdError> {
        let mut r = [0u8; 16];
        self.s.read_exact(&mut r)?;
        let magic = u32::from_be_bytes(r[0..4].try_into().expect("4 bytes"));
        let got = u64::from_be_bytes(r[8..16].try_into().expect("8 bytes"));
        if magic != REPLY_MAGIC || got != handle {
            return Err(io::Error::other(format!("a reply {magic:#x} for handle {got}, not {handle}")).into());
        }
        match u32::from_be_bytes(r[4..8].try_into().expect("4 bytes")) {
            0 => {
                self.s.read_exact(data)?;
                Ok(())
            }
            e => Err(NbdError::Refused(e)),
        }
    }

    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        self.handle += 1;
        request(&mut self.s, CMD_READ, 0, self.handle, offset, buf.len() as u32)?;
        self.reply(self.handle, buf)
    }

    pub fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> Result<(), NbdError> {
        self.handle += 1;
        request(&mut self.s, CMD_WRITE, if fua { FLAG_FUA } else { 0 }, self.handle, offset, data.len() as u32)?;
        self.s.write_all(data)?;
        self.reply(self.handle, &mut [])
    }

    pub fn flush(&mut self) -> Result<(), NbdError> {
        self.handle += 1;
        request(&mut self.s, CMD_FLUSH, 0, self.handle, 0, 0)?;
        self.reply(self.handle, &mut [])
    }

    /// `NBD_CMD_TRIM`: the range is no longer needed.
    pub fn trim(&mut self, offset: u64, len: u32) -> Result<(), NbdError> {
        self.handle += 1;
        request(&mut self.s, CMD_TRIM, 0, self.handle, offset, len)?;
        self.reply(self.handle, &mut [])
    }

    /// `NBD_CMD_DISC`: the server closes the connection without a reply.
    pub fn disconnect(mut self) -> io::Result<()> {
        self.handle += 1;
        request(&mut self.s, CMD_DISC, 0, self.handle, 0, 0)
    }
}
