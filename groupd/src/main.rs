//! groupd: the group communication daemon of the cluster. A small replicated state machine
//! (`sheep_core::group::GroupState`) ordered by Raft (openraft) among the groupd instances:
//! the leader is the master, the other voters are submasters, further instances are
//! non-voting members. See the schema `rpc-schema/schema/groupd.capnp` for the API.

mod bootstrap;
mod forward;
mod leader;
mod log_store;
mod log_writer;
mod metrics;
mod network;
mod node;
mod propose;
mod rights;
mod server;
mod state_machine;
mod types;

use std::cell::RefCell;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sheep_core::lease::LeaseTable;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;

use crate::log_store::{LogFiles, LogStore};
use crate::metrics::GroupMetrics;
use crate::network::{Network, Peers};
use crate::node::Node;
use crate::state_machine::StateMachine;
use crate::types::{raft_config, Raft};

/// How long every groupd keeps serving after applying a cluster shutdown, so that storage
/// nodes and the caller see it.
const SHUTDOWN_LINGER: Duration = Duration::from_secs(2);
/// How long a master waits for the voters to have the shutdown entry.
const SHUTDOWN_REPLICATE: Duration = Duration::from_secs(5);
/// How long stopping Raft may take.
const RAFT_STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// The group communication daemon: membership, epochs, VDI locks and a total order of
/// cluster events, replicated by Raft among the groupd instances.
#[derive(Parser, Debug)]
#[command(name = "groupd", version = VERSION)]
struct Cli {
    /// Address (ip:port) to serve the groupd API on. Other groupd instances, storage nodes and
    /// clients reach this groupd there; it is also this groupd's address in the group. Port 0
    /// picks a free port (see the "listening" log line).
    #[arg(long, value_name = "ADDR")]
    listen: String,

    #[command(flatten)]
    keys: sheep_rpc::keyfile::KeyArgs,

    #[command(flatten)]
    config: sheep_client::cli::config::ConfigArgs,

    /// Directory of this groupd's state: Raft log, vote, snapshot and Raft id. Created if
    /// missing; one groupd per directory.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,

    /// Addresses of running groupd instances (comma-separated) to join through on the first
    /// start. Without it, the first start creates a new group with this groupd as its only
    /// voter. Ignored when the data directory already holds Raft state.
    #[arg(long, value_name = "ADDR[,ADDR...]", value_delimiter = ',')]
    join: Vec<String>,

    /// Session lease in milliseconds: the master expires a session that sent no keepalive for
    /// this long.
    #[arg(long, value_name = "MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u32).range(100..=3_600_000))]
    lease_ms: u32,

    /// How long a client's ticket is valid, in seconds: storage nodes go on taking a removed
    /// client (`sheepctl auth rm`) or its old capabilities for at most this long.
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = clap::value_parser!(u32).range(2..=86_400))]
    ticket_secs: u32,

    /// Lower bound of the Raft election timeout in milliseconds (the upper bound is twice
    /// it): how long followers wait without hearing from the master before electing a new
    /// one. The master's heartbeat is every 250 ms.
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(500..=60_000))]
    election_timeout_ms: u64,

    /// Take a snapshot of the replicated state every this many Raft log entries; the log
    /// behind a snapshot is purged (a member too far behind gets the snapshot instead).
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(10..))]
    snapshot_every: u64,

    /// Serve Prometheus metrics at http://ADDR/metrics (off unless given).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
}

enum Stop {
    Signal(&'static str),
    ClusterShutdown(u64),
    Fatal(String),
}

/// `--version`; a build with failpoints says so (the tests that inject faults check it).
const VERSION: &str = if cfg!(feature = "failpoints") {
    concat!(env!("CARGO_PKG_VERSION"), " (failpoints)")
} else {
    env!("CARGO_PKG_VERSION")
};

fn main() -> ExitCode {
    // The command line with the settings of its --config file (flags win over it).
    let cli: Cli = sheep_client::cli::config::parse("groupd");
    if std::env::var_os("FAILPOINTS").is_some() && !cfg!(feature = "failpoints") {
        eprintln!("groupd: error: FAILPOINTS is set, but this groupd was built without the failpoints feature");
        return ExitCode::FAILURE;
    }
    // Failpoints named in FAILPOINTS (a build with the feature; nothing otherwise).
    let _failpoints = fail::FailScenario::setup();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=off"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("groupd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let identity = cli.keys.identity(true).map_err(anyhow::Error::msg)?;
    if matches!(identity, sheep_rpc::transport::Identity::Insecure) {
        tracing::warn!("running --insecure: no keys, anyone who reaches {} can do anything", cli.listen);
    }
    sheep_rpc::transport::set_identity(identity).map_err(anyhow::Error::msg)?;
    let (_lock, raft_id) = bootstrap::prepare_data_dir(&cli.data)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start tokio")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, serve(cli, raft_id))
}

/// Becomes ready when Raft stops by itself (a storage error): returns why.
async fn raft_stopped(raft: &Raft) -> String {
    let mut m = raft.metrics();
    loop {
        if let Err(e) = &m.borrow_and_update().running_state {
            return e.to_string();
        }
        if m.changed().await.is_err() {
            return "raft stopped".into();
        }
    }
}

async fn serve(cli: Cli, raft_id: u64) -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let listener = TcpListener::bind(&cli.listen).await.with_context(|| format!("cannot listen on {}", cli.listen))?;
    let local_addr = listener.local_addr().with_context(|| format!("cannot listen on {}", cli.listen))?;
    if local_addr.ip().is_unspecified() {
        tracing::warn!(
            %local_addr,
            "listening on an unspecified address: other groupd instances cannot reach it there"
        );
    }
    let addr = local_addr.to_string();
    if !local_addr.ip().is_unspecified() {
        // Its peers see its raft connections come from the address they know it by.
        sheep_rpc::transport::set_source_ip(local_addr.ip());
    }
    // Bound before Raft starts, so that a bad address fails the start before anything else.
    let group_metrics = match cli.metrics {
        Some(at) => {
            let mut registry = sheep_metrics::daemon_registry("groupd");
            let gauges = GroupMetrics::register(&mut registry);
            sheep_metrics::serve(at, registry)?;
            Some(gauges)
        }
        None => None,
    };

    let files =
        LogFiles::open(&cli.data).with_context(|| format!("cannot open the raft log in {}", cli.data.display()))?;
    let fresh = files.is_empty();
    let replay_upto = files.last_log_id().map_or(0, |l| l.index);
    let log = LogStore::new(files).context("cannot start the raft log's writer")?;
    let sm = StateMachine::open(&cli.data, replay_upto)?;
    let peers = Rc::new(Peers::default());
    let config = Arc::new(raft_config(cli.election_timeout_ms, cli.snapshot_every)?);
    let raft = Raft::new(raft_id, config, Network { peers: peers.clone() }, log, sm.clone())
        .await
        .context("cannot start raft")?;

    let node = Rc::new(Node {
        id: raft_id,
        addr: addr.clone(),
        raft: raft.clone(),
        proposer: propose::Proposer::new(raft.clone()),
        sm: sm.clone(),
        peers,
        lease_ms: cli.lease_ms,
        ticket_ms: cli.ticket_secs * 1000,
        quorum_ms: cli.election_timeout_ms,
        leases: RefCell::new(LeaseTable::new(Duration::from_millis(cli.lease_ms as u64))),
        join_order: RefCell::new(Vec::new()),
        promote_now: Notify::new(),
        membership_changes: tokio::sync::Mutex::new(()),
    });
    if let Some(gauges) = group_metrics {
        tokio::task::spawn_local(metrics::follow(gauges, raft.clone(), sm.clone()));
    }
    tokio::task::spawn_local(server::serve(listener, node.clone()));
    tracing::info!(%addr, raft_id, data = %cli.data.display(), "groupd listening");

    let mut shutdown = sm.subscribe_shutdown();

    let joined = tokio::select! {
        r = bootstrap::join_or_init(&node, &cli.join, fresh) => Some(r),
        _ = sigterm.recv() => None,
        _ = sigint.recv() => None,
    };
    let stop = match joined {
        None => Stop::Signal("a signal during start-up"),
        Some(Err(e)) => {
            stop_raft(&raft).await;
            return Err(e);
        }
        Some(Ok(())) => {
            tokio::task::spawn_local(leader::run(node.clone()));
            tokio::select! {
                _ = sigterm.recv() => Stop::Signal("SIGTERM"),
                _ = sigint.recv() => Stop::Signal("SIGINT"),
                r = shutdown.wait_for(|s| s.is_some()) => Stop::ClusterShutdown(r.ok().and_then(|s| *s).unwrap_or(0)),
                e = raft_stopped(&raft) => Stop::Fatal(e),
            }
        }
    };
    match stop {
        Stop::Signal(what) => tracing::info!("received {what}: stopping"),
        Stop::ClusterShutdown(index) => {
            tracing::info!(index, "cluster shutdown: this groupd stops");
            if node.is_leader() {
                leader::wait_voters_have(&node, index, SHUTDOWN_REPLICATE).await;
            }
            tokio::time::sleep(SHUTDOWN_LINGER).await;
        }
        Stop::Fatal(e) => {
            stop_raft(&raft).await;
            anyhow::bail!("raft stopped: {e}");
        }
    }
    stop_raft(&raft).await;
    tracing::info!("groupd stopped");
    Ok(())
}

async fn stop_raft(raft: &Raft) {
    if tokio::time::timeout(RAFT_STOP_TIMEOUT, raft.shutdown()).await.is_err() {
        tracing::warn!("raft did not stop in time");
    }
}
