//! sheepctl: the command line of Sheepdog in Rust.

mod attach;
mod auth;
mod bench;
mod check;
mod cli;
mod cluster;
mod connect;
mod cpu;
mod export;
mod io_stat;
mod keys;
mod local;
mod local_disk;
mod node;
mod node_rows;
mod node_stat;
mod output;
mod procs;
mod status;
mod vdi;
mod vdi_family;
mod vdi_file;
mod vdi_io;
mod vdi_lock;

use anyhow::{Context, Result};
use clap::Parser;
use nix::sys::signal::{signal, SigHandler, Signal};

use crate::cli::{Cli, Cmd};
// `crate::client(groupd)` for the commands, defined in `connect` below them: this file calls the
// commands, so they must not call into it.
pub use crate::connect::{cli_options, client};

fn main() {
    // Printing into a closed pipe (`sheepctl cluster info | head -1`) ends the process
    // quietly, as it does for other command-line tools, instead of a panic in println!.
    // SAFETY: called first thing, before any other thread exists; the default action
    // runs no handler of ours.
    unsafe {
        let _ = signal(Signal::SIGPIPE, SigHandler::SigDfl);
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => sheep_client::cli::exit_clap(e, &cli::command_path(std::env::args())),
    };
    sheep_client::cli::init_logging("warn");
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the runtime")?;
    let local = tokio::task::LocalSet::new();
    match &cli.cmd {
        Cmd::Auth(cli::AuthCmd::Init { .. }) | Cmd::Up(_) | Cmd::Down(_) => {}
        // Local device management works without a keyring where it can.
        Cmd::List | Cmd::Del(_) => {
            let _ = keys::use_keys(&cli.keys);
        }
        _ => keys::use_keys(&cli.keys)?,
    }
    local.block_on(&rt, async move {
        match &cli.cmd {
            Cmd::Auth(a) => auth::run(&cli.groupd, a, cli.json).await,
            Cmd::Cluster(c) => cluster::run(&client(&cli.groupd)?, c, cli.json).await,
            Cmd::Node(n) => node::run(&cli.groupd, n, cli.json).await,
            Cmd::Status => status::run(&cli.groupd, cli.json).await,
            Cmd::Vdi(v) => vdi::run(&cli.groupd, v, cli.json).await,
            Cmd::Bench(b) => bench::run(&cli.groupd, b, cli.json).await,
            Cmd::Up(a) => local::up(a, &cli.keys, cli.json).await,
            Cmd::Down(a) => local::down(a, cli.json).await,
            Cmd::Export(a) => export::run(&cli.groupd, a),
            Cmd::Add(a) => attach::add(&cli.groupd, a, cli.json),
            Cmd::Del(a) => attach::del(a, cli.json),
            Cmd::List => attach::list(cli.json),
        }
    })
}
