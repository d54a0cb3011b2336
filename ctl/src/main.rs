//! sheepctl: the command line of Sheepdog in Rust.

mod attach;
mod bench;
mod check;
mod cli;
mod cluster;
mod export;
mod local;
mod local_disk;
mod node;
mod node_stat;
mod output;
mod procs;
mod vdi;
mod vdi_family;
mod vdi_file;
mod vdi_lock;

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use nix::sys::signal::{signal, SigHandler, Signal};
use sheep_client::group::{self, GroupClient, Options};

use crate::cli::{Cli, Cmd};

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
    local.block_on(&rt, async move {
        match &cli.cmd {
            Cmd::Cluster(c) => cluster::run(&client(&cli.groupd)?, c, cli.json).await,
            Cmd::Node(n) => node::run(&cli.groupd, n, cli.json).await,
            Cmd::Vdi(v) => vdi::run(&cli.groupd, v, cli.json).await,
            Cmd::Bench(b) => bench::run(&cli.groupd, b, cli.json).await,
            Cmd::Up(a) => local::up(a, cli.json).await,
            Cmd::Down(a) => local::down(a, cli.json).await,
            Cmd::Export(a) => export::run(&cli.groupd, a),
            Cmd::Add(a) => attach::add(&cli.groupd, a, cli.json),
            Cmd::Del(a) => attach::del(a, cli.json),
            Cmd::List => attach::list(cli.json),
        }
    })
}

/// Time limits of one command: a groupd that does not answer is reported within 5 s.
pub fn cli_options() -> Options {
    Options {
        connect_timeout: Duration::from_secs(1),
        call_timeout: Duration::from_secs(2),
        retry_for: Duration::from_millis(4200),
        wait_for_groupd: false,
    }
}

pub fn client(addrs: &str) -> Result<GroupClient> {
    let list = group::parse_addrs(addrs);
    if list.is_empty() {
        anyhow::bail!("--groupd needs at least one address");
    }
    Ok(GroupClient::new(list, cli_options())?)
}
