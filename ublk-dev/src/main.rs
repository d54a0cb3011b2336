//! ublk-dev: serves one VDI as a block device: `ublk-dev ublk` is the ublk target (what
//! `sheepctl add` starts), `ublk-dev nbd` the NBD export (what `sheepctl export` runs).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use sheep_client::group;
use ublk_dev::nbd::server::{self, ExportConfig};
use ublk_dev::nbd::transmission::Limits;

/// Serves one VDI of a Sheepdog-in-Rust cluster as a block device.
#[derive(Parser, Debug)]
#[command(name = "ublk-dev", version, propagate_version = true)]
struct Cli {
    /// groupd addresses to talk to, comma-separated ("ip:port,ip:port"); any member will do
    #[arg(long, global = true, env = "SHEEP_GROUPD", default_value = "127.0.0.1:7000", value_name = "ADDR[,ADDR...]")]
    groupd: String,

    #[command(flatten)]
    keys: sheep_rpc::keyfile::KeyArgs,

    // --config: the whole file applies to the subcommand given (its flags and the ones above).
    #[command(flatten)]
    config: sheep_client::cli::config::ConfigArgs,

    /// Serve Prometheus metrics of the VDI's requests at http://ADDR/metrics (off unless given)
    #[arg(long, global = true, value_name = "ADDR")]
    metrics: Option<SocketAddr>,

    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve a VDI as /dev/ublkbN until SIGTERM or SIGINT (or `sheepctl del`); the VDI is
    /// locked in groupd while it is served. Prints /dev/ublkbN on stdout once it is live.
    Ublk(UblkArgs),
    /// Export a VDI over NBD (for QEMU's nbd:// and for hosts without ublk_drv) until
    /// SIGTERM or SIGINT; the VDI is locked in groupd while it is served. Prints
    /// nbd://ADDR/NAME on stdout once it is listening.
    Nbd(NbdArgs),
}

#[derive(Args, Debug)]
struct NbdArgs {
    /// The VDI to export (its name is also the NBD export name)
    #[arg(long, value_name = "NAME")]
    vdi: String,

    /// Address ("ip:port") to listen on; port 0 picks a free one (printed)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:10809")]
    listen: SocketAddr,

    /// Requests in flight per connection (1..=1024)
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = clap::value_parser!(u16).range(1..=1024))]
    queue_depth: u16,

    /// Serve on an address other than loopback without TLS: NBD then goes in the clear, and
    /// anyone who reaches it can read and write the VDI
    #[arg(long)]
    insecure_listen: bool,

    /// Require TLS of every client with this PEM certificate (chain): what QEMU's
    /// `tls-creds-x509` checks against its CA; any address may then be listened on
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,

    /// The PEM private key of --tls-cert
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

#[derive(Args, Debug)]
struct UblkArgs {
    /// The VDI to serve (with --recover: optional, checked against the device's)
    #[arg(long, value_name = "NAME", required_unless_present = "recover")]
    vdi: Option<String>,

    /// Hardware queues, each served by its own thread (default: one per CPU)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    queues: Option<u16>,

    /// Requests in flight per queue
    #[arg(long, value_name = "D", default_value_t = 128, value_parser = clap::value_parser!(u16).range(1..=4096))]
    depth: u16,

    /// Re-attach /dev/ublkbID, whose daemon died, instead of creating a device
    #[arg(long, value_name = "ID")]
    recover: Option<u32>,
}

fn main() {
    // The command line with the settings of its --config file (flags win over it); the
    // file applies to the subcommand given.
    let cli: Cli = sheep_client::cli::config::parse("ublk-dev");
    sheep_client::cli::init_logging("info");
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let identity = cli.keys.identity(false).map_err(anyhow::Error::msg)?;
    sheep_rpc::transport::set_identity(identity).map_err(anyhow::Error::msg)?;
    let groupd = group::parse_addrs(&cli.groupd);
    let mut registry = sheep_metrics::daemon_registry(match cli.cmd {
        Cmd::Ublk(_) => "ublk",
        Cmd::Nbd(_) => "nbd",
    });
    let metrics = ublk_dev::metrics::register(&mut registry);
    if let Some(addr) = cli.metrics {
        sheep_metrics::serve(addr, registry)?;
    }
    match cli.cmd {
        Cmd::Ublk(a) => serve_ublk(a, groupd, metrics),
        Cmd::Nbd(a) => serve_nbd(a, groupd, metrics),
    }
}

/// The ublk target runs its own threads (queues and engine), no runtime here.
fn serve_ublk(a: UblkArgs, groupd: Vec<String>, metrics: sheep_metrics::OpFamilies) -> Result<()> {
    if let Some(v) = &a.vdi {
        sheep_core::object::validate_vdi_name(v)?;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()).min(64) as u16;
    ublk_dev::ublk::run(ublk_dev::ublk::UblkConfig {
        vdi: a.vdi,
        groupd,
        queues: a.queues.unwrap_or(cpus),
        depth: a.depth,
        recover: a.recover,
        metrics,
    })
}

fn serve_nbd(a: NbdArgs, groupd: Vec<String>, metrics: sheep_metrics::OpFamilies) -> Result<()> {
    if groupd.is_empty() {
        bail!("--groupd needs at least one address");
    }
    sheep_core::object::validate_vdi_name(&a.vdi)?;
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => Some(ublk_dev::nbd::tls::server_config(cert, key)?),
        _ => None,
    };
    server::check_listen(a.listen, a.insecure_listen, tls.is_some())?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the runtime")?;
    let local = tokio::task::LocalSet::new();
    let limits = Limits { queue_depth: usize::from(a.queue_depth), ..Limits::default() };
    local.block_on(&rt, server::run(ExportConfig { vdi: a.vdi, listen: a.listen, groupd, limits, tls, metrics }))?;
    // Tasks left on the runtime (the engine's watch) are not waited for.
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}
