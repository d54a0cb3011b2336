//! ublk-dev: serves one VDI as a block device. `ublk-dev nbd` is the NBD export (what
//! `sheepctl export` runs); the ublk target comes later in this same binary.

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

    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
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
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => sheep_client::cli::exit_clap(e, "ublk-dev"),
    };
    sheep_client::cli::init_logging("info");
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}


fn run(cli: Cli) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        match cli.cmd {
            Cmd::Nbd(a) => {
                let groupd = group::parse_addrs(&cli.groupd);
                if groupd.is_empty() {
                    bail!("--groupd needs at least one address");
                }
                sheep_core::object::validate_vdi_name(&a.vdi)?;
                let limits = Limits { queue_depth: usize::from(a.queue_depth), ..Limits::default() };
                server::run(ExportConfig { vdi: a.vdi, listen: a.listen, groupd, limits }).await
            }
        }
    })?;
    // Tasks left on the runtime (the engine's watch) are not waited for.
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}
