//! `sheepctl export NAME --listen ADDR`: serves a VDI over NBD in the foreground. The work
//! is done by the `ublk-dev` binary installed next to sheepctl, which this process becomes
//! (exec), so that Ctrl-C and SIGTERM reach the server directly and it stops cleanly.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct NbdExportArgs {
    /// The VDI to serve; it is also the NBD export name (nbd://ADDR/NAME)
    #[arg(value_name = "NAME")]
    pub name: String,

    /// Address ("ip:port") to listen on; port 0 picks a free one
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:10809")]
    pub listen: SocketAddr,

    /// NBD requests in flight per connection (1..=1024)
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub queue_depth: u16,

    /// Serve on an address other than loopback without TLS: NBD then goes in the clear, and
    /// anyone who reaches it can read and write the VDI
    #[arg(long)]
    pub insecure_listen: bool,

    /// Require TLS of every client with this PEM certificate (chain), as QEMU's
    /// `tls-creds-x509` checks it; any address may then be listened on
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Serve Prometheus metrics of the export's requests at http://ADDR/metrics
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
}

/// The `ublk-dev` binary next to this executable.
fn server_binary() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let path = me.with_file_name("ublk-dev");
    if !path.is_file() {
        bail!(
            "the NBD server binary {} is missing: build it with `cargo build -p ublk-dev` (or install it next to \
                sheepctl)",
            path.display()
        );
    }
    Ok(path)
}

/// Becomes `ublk-dev nbd …`; returns only if that could not be started.
pub fn run(groupd: &str, a: &NbdExportArgs) -> Result<()> {
    use std::os::unix::process::CommandExt;
    sheep_core::object::validate_vdi_name(&a.name)?;
    let bin = server_binary()?;
    let mut cmd = std::process::Command::new(&bin);
    cmd.arg("--groupd").arg(groupd).args(crate::keys::child_flags());
    if let Some(addr) = a.metrics {
        cmd.arg("--metrics").arg(addr.to_string());
    }
    cmd.arg("nbd")
        .arg("--vdi")
        .arg(&a.name)
        .arg("--listen")
        .arg(a.listen.to_string())
        .arg("--queue-depth")
        .arg(a.queue_depth.to_string());
    if a.insecure_listen {
        cmd.arg("--insecure-listen");
    }
    if let (Some(cert), Some(key)) = (&a.tls_cert, &a.tls_key) {
        cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
    }
    let err = cmd.exec();
    bail!("cannot run {}: {err}", bin.display())
}
