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
        Err(e) => exit_clap(e),
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Help and version as clap prints them (exit 0); a usage error on one line (exit 2).
fn exit_clap(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            std::process::exit(0);
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
            let _ = e.print();
            std::process::exit(2);
        }
        _ => {
            let text = e.to_string();
            let line: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
                .collect();
            eprintln!("{}; see 'ublk-dev --help'", line.join(" "));
            std::process::exit(2);
        }
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
