//! The fixed newstyle handshake, server side, over any byte stream: options until the
//! client picks the export (NBD_OPT_GO or NBD_OPT_EXPORT_NAME) or gives up.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::proto::*;

/// How the handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The client chose the export: transmission begins.
    Transmission,
    /// The client sent NBD_OPT_ABORT.
    Aborted,
    /// The client asked for TLS and it was acknowledged: the TLS handshake comes next, then
    /// the options go on over it ([`options`] with [`Tls::Established`]).
    StartTls,
}

/// TLS in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// Not offered: NBD_OPT_STARTTLS is refused.
    Off,
    /// Required and not started yet: only NBD_OPT_STARTTLS and NBD_OPT_ABORT are answered.
    Required,
    /// The session is encrypted.
    Established,
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Proto(#[from] ProtoError),
    #[error("client flags {0:#x} not supported (a fixed newstyle client is required)")]
    ClientFlags(u32),
    #[error("option {option} with {len} bytes of data is too large")]
    OptionTooBig { option: u32, len: u32 },
    #[error("the client asked for export {0:?}, which this server does not have")]
    UnknownExport(String),
    #[error("more than {0} options: the client does not settle")]
    TooManyOptions(usize),
    #[error("the client chose the export without TLS, which this server requires")]
    TlsRequired,
}

/// Options a client may send before it must pick the export.
const MAX_OPTIONS: usize = 256;
/// Option data up to this size is read and dropped when it is too large to use
/// (NBD_REP_ERR_TOO_BIG); beyond it the connection is closed.
const MAX_SKIP: u32 = 1 << 20;

/// Runs the handshake for the one export `export` on `s`, without TLS.
pub async fn negotiate<S>(s: &mut S, export: &ExportInfo) -> Result<Outcome, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let no_zeroes = greet(s).await?;
    options(s, export, Tls::Off, no_zeroes).await
}

/// The server's greeting and the client's flags: whether it wants no zeroes after
/// NBD_OPT_EXPORT_NAME's reply.
pub async fn greet<S>(s: &mut S) -> Result<bool, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    s.write_all(&server_greeting()).await?;
    s.flush().await?;
    let client_flags = s.read_u32().await?;
    if client_flags & CLIENT_FIXED_NEWSTYLE == 0 || client_flags & !(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES) != 0 {
        return Err(HandshakeError::ClientFlags(client_flags));
    }
    Ok(client_flags & CLIENT_NO_ZEROES != 0)
}

/// The options, until the client picks the export, gives up, or starts TLS.
pub async fn options<S>(s: &mut S, export: &ExportInfo, tls: Tls, no_zeroes: bool) -> Result<Outcome, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    for _ in 0..MAX_OPTIONS {
        let mut h = [0u8; OPTION_HEADER_LEN];
        s.read_exact(&mut h).await?;
        let OptionHeader { option, len } = decode_option_header(&h)?;
        if len > MAX_OPTION {
            if option == OPT_EXPORT_NAME || len > MAX_SKIP {
                return Err(HandshakeError::OptionTooBig { option, len });
            }
            tokio::io::copy(&mut (&mut *s).take(u64::from(len)), &mut tokio::io::sink()).await?;
            send(s, option_reply(option, REP_ERR_TOO_BIG, b"option data too large")).await?;
            continue;
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).await?;
        tracing::debug!("NBD option {option} ({len} bytes)");
        if tls == Tls::Required && !matches!(option, OPT_STARTTLS | OPT_ABORT) {
            if option == OPT_EXPORT_NAME {
                // No reply is possible but the export's: close.
                return Err(HandshakeError::TlsRequired);
            }
            send(s, option_reply(option, REP_ERR_TLS_REQD, b"this server requires TLS: NBD_OPT_STARTTLS first"))
                .await?;
            continue;
        }
        match option {
            OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data).into_owned();
                if !name.is_empty() && name != export.name {
                    return Err(HandshakeError::UnknownExport(name));
                }
                send(s, export_name_reply(export, no_zeroes)).await?;
                return Ok(Outcome::Transmission);
            }
            OPT_ABORT => {
                // The client may close without reading the acknowledgement.
                let _ = send(s, option_reply(option, REP_ACK, &[])).await;
                return Ok(Outcome::Aborted);
            }
            OPT_LIST => {
                let out = if data.is_empty() {
                    let mut out = option_reply(option, REP_SERVER, &rep_server(&export.name));
                    out.extend(option_reply(option, REP_ACK, &[]));
                    out
                } else {
                    option_reply(option, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data")
                };
                send(s, out).await?;
            }
            OPT_INFO | OPT_GO => {
                let (out, chosen) = info_or_go(option, &data, export);
                send(s, out).await?;
                if chosen {
                    return Ok(Outcome::Transmission);
                }
            }
            OPT_STARTTLS => match tls {
                Tls::Off => send(s, option_reply(option, REP_ERR_POLICY, b"TLS is not offered")).await?,
                Tls::Established => send(s, option_reply(option, REP_ERR_INVALID, b"TLS is on already")).await?,
                Tls::Required if !data.is_empty() => {
                    send(s, option_reply(option, REP_ERR_INVALID, b"NBD_OPT_STARTTLS takes no data")).await?
                }
                Tls::Required => {
                    send(s, option_reply(option, REP_ACK, &[])).await?;
                    return Ok(Outcome::StartTls);
                }
            },
            _ => send(s, option_reply(option, REP_ERR_UNSUP, b"option not supported")).await?,
        }
    }
    Err(HandshakeError::TooManyOptions(MAX_OPTIONS))
}

/// The replies to NBD_OPT_INFO / NBD_OPT_GO, and whether the export was chosen (GO).
fn info_or_go(option: u32, data: &[u8], export: &ExportInfo) -> (Vec<u8>, bool) {
    let req = match decode_info_request(data) {
        Ok(r) => r,
        Err(e) => return (option_reply(option, REP_ERR_INVALID, e.to_string().as_bytes()), false),
    };
    if req.name.len() > MAX_NAME {
        return (option_reply(option, REP_ERR_INVALID, b"export name too long"), false);
    }
    if !req.name.is_empty() && req.name != export.name.as_bytes() {
        let msg =
            format!("no export named {:?}; this server exports {:?}", String::from_utf8_lossy(&req.name), export.name);
        return (option_reply(option, REP_ERR_UNKNOWN, msg.as_bytes()), false);
    }
    let mut out = option_reply(option, REP_INFO, &info_export(export));
    if req.infos.contains(&INFO_NAME) {
        out.extend(option_reply(option, REP_INFO, &info_name(INFO_NAME, &export.name)));
    }
    if req.infos.contains(&INFO_DESCRIPTION) && !export.description.is_empty() {
        out.extend(option_reply(option, REP_INFO, &info_name(INFO_DESCRIPTION, &export.description)));
    }
    out.extend(option_reply(option, REP_INFO, &info_block_size()));
    out.extend(option_reply(option, REP_ACK, &[]));
    (out, option == OPT_GO)
}

async fn send<S: AsyncWrite + Unpin>(s: &mut S, bytes: Vec<u8>) -> std::io::Result<()> {
    s.write_all(&bytes).await?;
    s.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::DuplexStream;

    fn export() -> ExportInfo {
        ExportInfo { name: "disk0".into(), size: 1 << 30, flags: 0x17d, description: "VDI disk0".into() }
    }

    /// Runs the server on one end of a pipe and `client` on the other.
    async fn with_server<F, Fut>(client: F) -> Result<Outcome, HandshakeError>
    where
        F: FnOnce(DuplexStream) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let server = async move { negotiate(&mut a, &export()).await };
        let (r, ()) = tokio::join!(server, client(b));
        r
    }

    async fn greet(c: &mut DuplexStream, flags: u32) {
        let mut g = [0u8; 18];
        c.read_exact(&mut g).await.unwrap();
        assert_eq!(g, server_greeting());
        c.write_u32(flags).await.unwrap();
    }

    async fn option(c: &mut DuplexStream, option: u32, data: &[u8]) {
        c.write_all(b"IHAVEOPT").await.unwrap();
        c.write_u32(option).await.unwrap();
        c.write_u32(data.len() as u32).await.unwrap();
        c.write_all(data).await.unwrap();
    }

    /// Reads one option reply: (option, type, data).
    async fn reply(c: &mut DuplexStream) -> (u32, u32, Vec<u8>) {
        assert_eq!(c.read_u64().await.unwrap(), REPLY_MAGIC);
        let (opt, kind, len) = (c.read_u32().await.unwrap(), c.read_u32().await.unwrap(), c.read_u32().await.unwrap());
        let mut data = vec![0; len as usize];
        c.read_exact(&mut data).await.unwrap();
        (opt, kind, data)
    }

    fn info_data(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            d.extend_from_slice(&i.to_be_bytes());
        }
        d
    }

    #[tokio::test]
    async fn with_tls_required_only_starttls_is_answered_then_options_go_on_over_it() {
        let (mut a, mut c) = tokio::io::duplex(1 << 16);
        let server = async move {
            let no_zeroes = super::greet(&mut a).await?;
            let first = options(&mut a, &export(), Tls::Required, no_zeroes).await?;
            // Here the TLS handshake would run; the options go on over the encrypted stream.
            let then = options(&mut a, &export(), Tls::Established, no_zeroes).await?;
            Ok::<_, HandshakeError>((first, then))
        };
        let client = async move {
            greet(&mut c, CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES).await;
            for opt in [OPT_LIST, OPT_GO, OPT_INFO] {
                option(&mut c, opt, &info_data("disk0", &[])).await;
                assert_eq!(reply(&mut c).await.1, REP_ERR_TLS_REQD, "option {opt} before TLS");
            }
            option(&mut c, OPT_STARTTLS, b"x").await;
            assert_eq!(reply(&mut c).await.1, REP_ERR_INVALID);
            option(&mut c, OPT_STARTTLS, &[]).await;
            assert_eq!(reply(&mut c).await, (OPT_STARTTLS, REP_ACK, vec![]));
            option(&mut c, OPT_STARTTLS, &[]).await;
            assert_eq!(reply(&mut c).await.1, REP_ERR_INVALID, "a second STARTTLS");
            option(&mut c, OPT_GO, &info_data("disk0", &[])).await;
            assert_eq!(reply(&mut c).await, (OPT_GO, REP_INFO, info_export(&export())));
            assert_eq!(reply(&mut c).await, (OPT_GO, REP_INFO, info_block_size()));
            assert_eq!(reply(&mut c).await, (OPT_GO, REP_ACK, vec![]));
        };
        let (r, ()) = tokio::join!(server, client);
        assert_eq!(r.unwrap(), (Outcome::StartTls, Outcome::Transmission));
    }

    #[tokio::test]
    async fn with_tls_required_export_name_in_the_clear_is_closed() {
        let (mut a, mut c) = tokio::io::duplex(1 << 16);
        let server = async move {
            let no_zeroes = super::greet(&mut a).await?;
            options(&mut a, &export(), Tls::Required, no_zeroes).await
        };
        let client = async move {
            greet(&mut c, CLIENT_FIXED_NEWSTYLE).await;
            option(&mut c, OPT_EXPORT_NAME, b"disk0").await;
        };
        let (r, ()) = tokio::join!(server, client);
        assert!(matches!(r, Err(HandshakeError::TlsRequired)), "{r:?}");
    }

    #[tokio::test]
    async fn list_unsupported_info_then_go() {
        let r = with_server(|mut c| async move {
            greet(&mut c, CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES).await;
            option(&mut c, OPT_LIST, &[]).await;
            assert_eq!(reply(&mut c).await, (OPT_LIST, REP_SERVER, rep_server("disk0")));
            assert_eq!(reply(&mut c).await, (OPT_LIST, REP_ACK, vec![]));
            option(&mut c, OPT_STRUCTURED_REPLY, &[]).await;
            assert_eq!(reply(&mut c).await.1, REP_ERR_UNSUP);
            option(&mut c, 11, &[1, 2, 3]).await; // extended headers, say
            assert_eq!(reply(&mut c).await.1, REP_ERR_UNSUP);
            option(&mut c, OPT_INFO, &info_data("nope", &[])).await;
            assert_eq!(reply(&mut c).await.1, REP_ERR_UNKNOWN);
            option(&mut c, OPT_INFO, &info_data("disk0", &[INFO_NAME, INFO_BLOCK_SIZE])).await;
            assert_eq!(reply(&mut c).await, (OPT_INFO, REP_INFO, info_export(&export())));
            assert_eq!(reply(&mut c).await, (OPT_INFO, REP_INFO, info_name(INFO_NAME, "disk0")));
            assert_eq!(reply(&mut c).await, (OPT_INFO, REP_INFO, info_block_size()));
            assert_eq!(reply(&mut c).await, (OPT_INFO, REP_ACK, vec![]));
            option(&mut c, OPT_GO, &[0, 0, 0, 5, b'd']).await; // malformed
            assert_eq!(reply(&mut c).await.1, REP_ERR_INVALID);
            option(&mut c, OPT_GO, &info_data("", &[])).await; // the default export
            assert_eq!(reply(&mut c).await, (OPT_GO, REP_INFO, info_export(&export())));
            assert_eq!(reply(&mut c).await, (OPT_GO, REP_INFO, info_block_size()));
            assert_eq!(reply(&mut c).await, (OPT_GO, REP_ACK, vec![]));
        })
        .await;
        assert_eq!(r.unwrap(), Outcome::Transmission);
    }

    #[tokio::test]
    async fn export_name_with_and_without_zeroes() {
        for (flags, len) in [(CLIENT_FIXED_NEWSTYLE, 134), (CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES, 10)] {
            let r = with_server(|mut c| async move {
                greet(&mut c, flags).await;
                option(&mut c, OPT_EXPORT_NAME, b"disk0").await;
                let mut b = vec![0u8; len];
                c.read_exact(&mut b).await.unwrap();
                assert_eq!(&b[0..8], &(1u64 << 30).to_be_bytes());
            })
            .await;
            assert_eq!(r.unwrap(), Outcome::Transmission);
        }
        let r = with_server(|mut c| async move {
            greet(&mut c, CLIENT_FIXED_NEWSTYLE).await;
            option(&mut c, OPT_EXPORT_NAME, b"other").await;
        })
        .await;
        assert!(matches!(r, Err(HandshakeError::UnknownExport(n)) if n == "other"));
    }

    #[tokio::test]
    async fn abort_bad_magic_bad_flags_and_big_options() {
        let r = with_server(|mut c| async move {
            greet(&mut c, CLIENT_FIXED_NEWSTYLE).await;
            option(&mut c, OPT_ABORT, &[]).await;
            assert_eq!(reply(&mut c).await, (OPT_ABORT, REP_ACK, vec![]));
        })
        .await;
        assert_eq!(r.unwrap(), Outcome::Aborted);
        let r = with_server(|mut c| async move {
            greet(&mut c, CLIENT_FIXED_NEWSTYLE).await;
            c.write_all(b"IHAVEOPX\0\0\0\x07\0\0\0\0").await.unwrap();
        })
        .await;
        assert!(matches!(r, Err(HandshakeError::Proto(ProtoError::BadOptionMagic(_)))));
        let r = with_server(|mut c| async move { greet(&mut c, 0).await }).await;
        assert!(matches!(r, Err(HandshakeError::ClientFlags(0))));
        let r = with_server(|mut c| async move { greet(&mut c, CLIENT_FIXED_NEWSTYLE | 4).await }).await;
        assert!(matches!(r, Err(HandshakeError::ClientFlags(5))));
        // Too big to use but small enough to skip: refused, and the handshake goes on.
        let r = with_server(|mut c| async move {
            greet(&mut c, CLIENT_FIXED_NEWSTYLE).await;
            option(&mut c, OPT_INFO, &vec![0u8; (MAX_OPTION + 1) as usize]).await;
            assert_eq!(reply(&mut c).await.1, REP_ERR_TOO_BIG);
            option(&mut c, OPT_ABORT, &[]).await;
        })
        .await;
        assert_eq!(r.unwrap(), Outcome::Aborted);
        // Too big to skip: the connection ends.
        let r = with_server(|mut c| async move {
            greet(&mut c, CLIENT_FIXED_NEWSTYLE).await;
            c.write_all(b"IHAVEOPT\0\0\0\x07\x10\0\0\0").await.unwrap();
        })
        .await;
        assert!(matches!(r, Err(HandshakeError::OptionTooBig { option: 7, len: 0x1000_0000 })));
        // The client hangs up in the middle.
        let r = with_server(|mut c| async move {
            greet(&mut c, CLIENT_FIXED_NEWSTYLE).await;
            c.write_all(b"IHAVE").await.unwrap();
        })
        .await;
        assert!(matches!(r, Err(HandshakeError::Io(_))));
    }
}
