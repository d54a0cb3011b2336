//! The NBD wire format (the server side of <https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md>):
//! constants, and the pure encoding and decoding of the handshake and of transmission
//! requests and simple replies. No I/O here.

/// "NBDMAGIC": the first 8 bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": newstyle negotiation, and the magic of every option the client sends.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// The magic of every option reply.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const CLIENT_NO_ZEROES: u32 = 1 << 1;

// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;

// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
const REP_FLAG_ERROR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR | 2;
/// The server requires TLS first (NBD_OPT_STARTTLS).
pub const REP_ERR_TLS_REQD: u32 = REP_FLAG_ERROR | 5;
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;
pub const REP_ERR_TOO_BIG: u32 = REP_FLAG_ERROR | 9;

// Information types of NBD_REP_INFO.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Transmission flags.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

// Commands and their flags.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

// Error values of replies: Linux errno numbers, as the protocol defines them.
pub use crate::errno::{EINVAL, EIO, ENOMEM, ENOSPC, ENOTSUP, EOVERFLOW, EPERM, ESHUTDOWN};

/// The largest payload of a read or write request we accept (and advertise as the maximum
/// block size). A bigger write cannot be skipped safely and ends the connection.
pub const MAX_REQUEST: u32 = 32 << 20;
/// The largest option data we read during the handshake (names are at most 4 KiB).
pub const MAX_OPTION: u32 = 64 << 10;
/// Longest export name accepted (the protocol's limit).
pub const MAX_NAME: usize = 4096;

pub const REQUEST_LEN: usize = 28;
pub const OPTION_HEADER_LEN: usize = 16;

/// The server's first 18 bytes: magics and handshake flags.
pub fn server_greeting() -> [u8; 18] {
    let mut b = [0u8; 18];
    b[0..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..18].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    b
}

/// The header of one option from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub len: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("bad option magic {0:#018x}")]
    BadOptionMagic(u64),
    #[error("bad request magic {0:#010x}")]
    BadRequestMagic(u32),
    #[error("malformed option data: {0}")]
    BadOptionData(&'static str),
}

pub fn decode_option_header(b: &[u8; OPTION_HEADER_LEN]) -> Result<OptionHeader, ProtoError> {
    let magic = be64(&b[0..8]);
    if magic != IHAVEOPT {
        return Err(ProtoError::BadOptionMagic(magic));
    }
    Ok(OptionHeader { option: be32(&b[8..12]), len: be32(&b[12..16]) })
}

/// One option reply: header and data.
pub fn option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&reply.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// The data of NBD_OPT_INFO and NBD_OPT_GO: an export name and the information asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: Vec<u8>,
    pub infos: Vec<u16>,
}

pub fn decode_info_request(data: &[u8]) -> Result<InfoRequest, ProtoError> {
    let short = ProtoError::BadOptionData("shorter than its lengths say");
    let name_len = data.get(0..4).map(be32).ok_or(short.clone())? as usize;
    let name = data.get(4..4usize.saturating_add(name_len)).ok_or(short.clone())?.to_vec();
    let rest = &data[4 + name_len..];
    let count = rest.get(0..2).map(be16).ok_or(short.clone())? as usize;
    let list = &rest[2..];
    if list.len() != count * 2 {
        return Err(ProtoError::BadOptionData("information request count does not match its length"));
    }
    let infos = list.chunks_exact(2).map(be16).collect();
    Ok(InfoRequest { name, infos })
}

/// What the server says about its one export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    pub name: String,
    pub size: u64,
    pub flags: u16,
    pub description: String,
}

/// Data of an NBD_REP_INFO carrying NBD_INFO_EXPORT.
pub fn info_export(e: &ExportInfo) -> Vec<u8> {
    let mut b = Vec::with_capacity(12);
    b.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    b.extend_from_slice(&e.size.to_be_bytes());
    b.extend_from_slice(&e.flags.to_be_bytes());
    b
}

pub fn info_name(info: u16, text: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(2 + text.len());
    b.extend_from_slice(&info.to_be_bytes());
    b.extend_from_slice(text.as_bytes());
    b
}

/// Minimum 1 byte, preferred 4 KiB, maximum [`MAX_REQUEST`].
pub fn info_block_size() -> Vec<u8> {
    let mut b = Vec::with_capacity(14);
    b.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    b.extend_from_slice(&1u32.to_be_bytes());
    b.extend_from_slice(&4096u32.to_be_bytes());
    b.extend_from_slice(&MAX_REQUEST.to_be_bytes());
    b
}

/// Data of an NBD_REP_SERVER (NBD_OPT_LIST).
pub fn rep_server(name: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + name.len());
    b.extend_from_slice(&(name.len() as u32).to_be_bytes());
    b.extend_from_slice(name.as_bytes());
    b
}

/// The answer to NBD_OPT_EXPORT_NAME: size, flags, and 124 zeroes unless the client
/// negotiated NO_ZEROES.
pub fn export_name_reply(e: &ExportInfo, no_zeroes: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(134);
    b.extend_from_slice(&e.size.to_be_bytes());
    b.extend_from_slice(&e.flags.to_be_bytes());
    if !no_zeroes {
        b.resize(b.len() + 124, 0);
    }
    b
}

/// One transmission request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub kind: u16,
    pub handle: u64,
    pub offset: u64,
    pub len: u32,
}

pub fn decode_request(b: &[u8; REQUEST_LEN]) -> Result<Request, ProtoError> {
    let magic = be32(&b[0..4]);
    if magic != REQUEST_MAGIC {
        return Err(ProtoError::BadRequestMagic(magic));
    }
    Ok(Request {
        flags: be16(&b[4..6]),
        kind: be16(&b[6..8]),
        handle: be64(&b[8..16]),
        offset: be64(&b[16..24]),
        len: be32(&b[24..28]),
    })
}

pub fn encode_request(r: &Request) -> [u8; REQUEST_LEN] {
    let mut b = [0u8; REQUEST_LEN];
    b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&r.flags.to_be_bytes());
    b[6..8].copy_from_slice(&r.kind.to_be_bytes());
    b[8..16].copy_from_slice(&r.handle.to_be_bytes());
    b[16..24].copy_from_slice(&r.offset.to_be_bytes());
    b[24..28].copy_from_slice(&r.len.to_be_bytes());
    b
}

/// The 16-byte header of a simple reply (read data follows it when `error` is 0).
pub fn simple_reply(handle: u64, error: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&handle.to_be_bytes());
    b
}

/// Whether a request's range lies inside an export of `size` bytes.
pub fn in_range(offset: u64, len: u32, size: u64) -> bool {
    offset.checked_add(u64::from(len)).is_some_and(|end| end <= size)
}

pub fn command_name(kind: u16) -> &'static str {
    match kind {
        CMD_READ => "read",
        CMD_WRITE => "write",
        CMD_DISC => "disconnect",
        CMD_FLUSH => "flush",
        CMD_TRIM => "trim",
        CMD_WRITE_ZEROES => "write-zeroes",
        _ => "unknown",
    }
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_is_fixed_newstyle_without_zeroes() {
        let g = server_greeting();
        assert_eq!(&g[0..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(&g[16..18], &[0, 3]);
    }

    #[test]
    fn requests_round_trip_and_bad_magic_is_refused() {
        let r =
            Request { flags: CMD_FLAG_FUA, kind: CMD_WRITE, handle: 0xdead_beef_0102_0304, offset: 4 << 20, len: 4096 };
        let b = encode_request(&r);
        assert_eq!(&b[0..4], &[0x25, 0x60, 0x95, 0x13]);
        assert_eq!(decode_request(&b), Ok(r));
        let mut bad = b;
        bad[0] = 0;
        assert_eq!(decode_request(&bad), Err(ProtoError::BadRequestMagic(0x0060_9513)));
    }

    #[test]
    fn simple_replies() {
        let b = simple_reply(7, EIO);
        assert_eq!(&b[0..4], &[0x67, 0x44, 0x66, 0x98]);
        assert_eq!(&b[4..8], &[0, 0, 0, 5]);
        assert_eq!(&b[8..16], &7u64.to_be_bytes());
    }

    #[test]
    fn option_headers_and_replies() {
        let mut h = [0u8; OPTION_HEADER_LEN];
        h[0..8].copy_from_slice(b"IHAVEOPT");
        h[8..12].copy_from_slice(&OPT_GO.to_be_bytes());
        h[12..16].copy_from_slice(&9u32.to_be_bytes());
        assert_eq!(decode_option_header(&h), Ok(OptionHeader { option: OPT_GO, len: 9 }));
        h[0] = b'X';
        assert!(matches!(decode_option_header(&h), Err(ProtoError::BadOptionMagic(_))));
        let r = option_reply(OPT_LIST, REP_SERVER, &rep_server("disk0"));
        assert_eq!(&r[0..8], &REPLY_MAGIC.to_be_bytes());
        assert_eq!(&r[8..12], &OPT_LIST.to_be_bytes());
        assert_eq!(&r[12..16], &REP_SERVER.to_be_bytes());
        assert_eq!(&r[16..20], &9u32.to_be_bytes());
        assert_eq!(&r[20..], b"\0\0\0\x05disk0");
    }

    #[test]
    fn info_requests() {
        let mut d = Vec::new();
        d.extend_from_slice(&5u32.to_be_bytes());
        d.extend_from_slice(b"disk0");
        d.extend_from_slice(&2u16.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        d.extend_from_slice(&INFO_NAME.to_be_bytes());
        let r = decode_info_request(&d).unwrap();
        assert_eq!(r, InfoRequest { name: b"disk0".to_vec(), infos: vec![INFO_BLOCK_SIZE, INFO_NAME] });
        // Lengths that do not add up.
        assert!(decode_info_request(&d[..d.len() - 1]).is_err());
        assert!(decode_info_request(&d[..3]).is_err());
        let mut long = d.clone();
        long[0..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_info_request(&long).is_err());
        // An empty name (the default export) and no information requests.
        assert_eq!(decode_info_request(&[0, 0, 0, 0, 0, 0]).unwrap(), InfoRequest { name: vec![], infos: vec![] });
    }

    #[test]
    fn export_replies() {
        let e = ExportInfo {
            name: "d".into(),
            size: 1 << 30,
            flags: TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH,
            description: String::new(),
        };
        assert_eq!(export_name_reply(&e, true).len(), 10);
        assert_eq!(export_name_reply(&e, false).len(), 134);
        let i = info_export(&e);
        assert_eq!(&i[0..2], &[0, 0]);
        assert_eq!(&i[2..10], &(1u64 << 30).to_be_bytes());
        assert_eq!(&i[10..12], &5u16.to_be_bytes());
        let b = info_block_size();
        assert_eq!(b.len(), 14);
        assert_eq!(&b[10..14], &MAX_REQUEST.to_be_bytes());
    }

    #[test]
    fn ranges() {
        assert!(in_range(0, 512, 512));
        assert!(!in_range(1, 512, 512));
        assert!(in_range(512, 0, 512));
        assert!(!in_range(u64::MAX, 1, u64::MAX));
    }
}
