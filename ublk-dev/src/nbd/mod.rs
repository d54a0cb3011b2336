//! The NBD export: a VDI served over the network block device protocol, for QEMU
//! (`nbd://`) and for hosts without `ublk_drv`.
//!
//! - [`proto`]: the wire format, pure encoding and decoding;
//! - [`handshake`]: the fixed newstyle negotiation (NBD_OPT_GO/INFO/EXPORT_NAME/LIST/ABORT);
//! - [`transmission`]: one connection's requests, many in flight, replies as they complete;
//! - [`server`]: the daemon: listener, VDI lock, connections, clean stop;
//! - [`tls`]: NBD_OPT_STARTTLS with an x509 certificate (QEMU's `tls-creds-x509`).
//!
//! What is served is a [`crate::backend::Backend`], as for the ublk target.

pub mod handshake;
pub mod proto;
pub mod server;
pub mod tls;
pub mod transmission;
