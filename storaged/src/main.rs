//! storaged: the storage node daemon. Membership (join the cluster with a session, keep it
//! alive, follow the epochs and the VDI namespace, keep a copy of the epoch history in the
//! data dir, leave on SIGTERM), the object store (`objects`: checksummed files under
//! `DIR/obj/`), the object API (`server`, `ops`), and recovery after every epoch change
//! (`recovery`, pulling from other nodes through the client's `StorePool`).

mod blocking;
mod disk_health;
mod disk_watch;
mod fence;
mod membership;
mod metrics;
mod node;
mod objects;
mod ops;
mod recovery;
mod recovery_plan;
mod recovery_progress;
mod server;
mod store_dir;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use sheep_client::group::{self, GroupClient, Options};
use sheep_core::epoch::NodeInfo;
use sheep_rpc::error::ErrorCode;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::membership::Outcome;
use crate::metrics::StoreMetrics;
use crate::node::Node;
use crate::objects::ObjectStore;
use crate::store_dir::StoreDir;

/// The storage node daemon of Sheepdog in Rust.
///
/// Joins the cluster through groupd, keeps its session alive, and keeps a copy of the epoch
/// history in its data dir. Stops by itself when the cluster is shut down; SIGTERM or
/// SIGINT makes it leave the cluster and stop.
#[derive(Parser, Debug)]
#[command(name = "storaged", version = VERSION)]
struct Args {
    /// Address ("ip:port") to serve the storaged API on; it is also the node's id, so it needs
    /// a fixed port and an address the other nodes and clients can reach
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    listen: SocketAddr,

    #[command(flatten)]
    keys: sheep_rpc::keyfile::KeyArgs,

    #[command(flatten)]
    config: sheep_client::cli::config::ConfigArgs,

    /// Data directory of the store (created if missing; must be writable)
    #[arg(long, value_name = "DIR")]
    data: PathBuf,

    /// groupd addresses to join through, comma-separated ("ip:port,ip:port")
    #[arg(long, value_name = "ADDR[,ADDR...]")]
    groupd: String,

    /// Failure domain of the node: the replicas of one object go to distinct zones
    #[arg(long, value_name = "Z", default_value_t = 0)]
    zone: u32,

    /// Relative capacity of the node (its share of the placement ring), at least 1
    #[arg(long, value_name = "W", default_value_t = 1, value_parser = parse_weight)]
    weight: u32,

    /// How long to keep trying to join while groupd is unreachable or has no master, in
    /// seconds; then the node gives up with an error
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    join_timeout: u64,

    /// How many MiB of data the node's handlers work on at once, over all its connections
    /// (writes' data, the data reads answer); past it requests wait. With each connection's
    /// own limits it bounds the node's memory: see the README's "Memory"
    #[arg(long, value_name = "MIB", default_value_t = 64, value_parser = clap::value_parser!(u64).range(4..=4096))]
    inflight_mib: u64,

    /// Serve Prometheus metrics at http://ADDR/metrics (off unless given)
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
}

/// `--version`; a build with failpoints says so (the tests that inject faults check it).
const VERSION: &str = if cfg!(feature = "failpoints") {
    concat!(env!("CARGO_PKG_VERSION"), " (failpoints)")
} else {
    env!("CARGO_PKG_VERSION")
};

fn main() {
    // The command line with the settings of its --config file (flags win over it).
    let args: Args = sheep_client::cli::config::parse("storaged");
    sheep_client::cli::init_logging("info");
    if std::env::var_os("FAILPOINTS").is_some() && !cfg!(feature = "failpoints") {
        eprintln!("error: FAILPOINTS is set, but this storaged was built without the failpoints feature");
        std::process::exit(1);
    }
    // Failpoints named in FAILPOINTS (a build with the feature; nothing otherwise).
    let _failpoints = fail::FailScenario::setup();
    match run(args) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// The node's address is its identity in the cluster and in its store: neither a port chosen at
/// bind time (`:0`, another one at every start) nor an address nobody can connect to (`0.0.0.0`).
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s.parse().map_err(|e| format!("{s:?} is not an ip:port address ({e})"))?;
    if addr.port() == 0 {
        return Err(format!(
            "{s}: port 0 would give the node another address (its id) at every start; give a fixed port"
        ));
    }
    if addr.ip().is_unspecified() {
        return Err(format!(
            "{s}: the other nodes and the clients cannot connect to {}; give this host's address",
            addr.ip()
        ));
    }
    Ok(addr)
}

fn parse_weight(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(w) if w >= 1 => Ok(w),
        _ => Err(format!("the weight must be a whole number from 1 to {}, not {s:?}", u32::MAX)),
    }
}

fn run(args: Args) -> Result<()> {
    let addrs = group::parse_addrs(&args.groupd);
    if addrs.is_empty() {
        anyhow::bail!("--groupd needs at least one address");
    }
    let identity = args.keys.identity(true).map_err(anyhow::Error::msg)?;
    if matches!(identity, sheep_rpc::transport::Identity::Insecure) {
        tracing::warn!("running --insecure: no keys, anyone who reaches {} can do anything", args.listen);
    }
    sheep_rpc::transport::set_identity(identity).map_err(anyhow::Error::msg)?;
    let store = StoreDir::open(&args.data)?;
    let id = args.listen.to_string();
    // Peers see this node's connections come from its own address.
    sheep_client::rpc::set_source_ip(args.listen.ip());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(blocking::DISK_THREADS)
        .build()
        .context("cannot start the runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        // Listen first: a node that cannot serve claims nothing in its store.
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        // Counted from the start; served only if asked for (else the registry goes).
        let (metrics, registry) = StoreMetrics::new();
        if let Some(addr) = args.metrics {
            sheep_metrics::serve(addr, registry)?;
        }
        let config = store.claim(&id)?;
        let epochs = match store.load_epochs() {
            Ok(log) => Some(log),
            Err(e) => {
                warn!("the local epoch history is unreadable ({e:#}); it is rebuilt from groupd after joining");
                None
            }
        };
        let objects = ObjectStore::open(&args.data).context("cannot open the object store")?;
        // Objects from before this start may have missed writes while the node was away:
        // they are never served to clients, only pulled again by recovery if still current.
        let last_live = epochs.as_ref().map_or(0, |l| l.current());
        let quarantined = objects.quarantine_all(last_live).context("cannot quarantine the objects")?;
        if quarantined > 0 {
            info!("{quarantined} object(s) from before this start wait in .stale for recovery");
        }
        let info = NodeInfo { id: id.clone(), addr: id.clone(), zone: args.zone, weight: args.weight };
        let node = Rc::new(Node::new(info, store, Arc::new(objects), config, epochs, metrics));
        info!(
            "storaged {id} serving, data dir {}, cluster {}",
            args.data.display(),
            if node.cluster_id().is_empty() { "(none yet)".to_string() } else { node.cluster_id() }
        );
        tokio::task::spawn_local(server::serve(listener, node.clone(), (args.inflight_mib as usize) << 20));

        let opts = Options {
            connect_timeout: Duration::from_secs(1),
            call_timeout: Duration::from_secs(3),
            retry_for: Duration::from_secs(5),
            wait_for_groupd: false,
        };
        let client = Rc::new(GroupClient::new(addrs, opts)?);
        node.set_group(client.clone());
        tokio::task::spawn_local(recovery::run(node.clone(), client.clone()));
        tokio::task::spawn_local(disk_watch::probe(node.clone()));
        let refreshed = node.clone();
        tokio::task::spawn_local(async move { refreshed.metrics.refresh(&refreshed.objects, &refreshed.disk).await });
        let mut term = signal(SignalKind::terminate()).context("cannot catch SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot catch SIGINT")?;
        let join_for = Duration::from_secs(args.join_timeout);
        tokio::select! {
            r = membership::run(node.clone(), client.clone(), join_for) => {
                match r? {
                    Outcome::ClusterShutdown => info!("the cluster was shut down; storaged stops"),
                    Outcome::DiskFailed(why) => {
                        let hint = "restart storaged once the disk is replaced or repaired";
                        anyhow::bail!("the disk failed ({why}) and the session is gone: {hint}")
                    }
                }
            }
            _ = term.recv() => leave(&node, &client, "SIGTERM").await,
            _ = int.recv() => leave(&node, &client, "SIGINT").await,
        }
        anyhow::Ok(())
    })
}

/// Graceful leave: closes the session, so the cluster makes a new epoch at once instead of
/// waiting for the lease to run out.
async fn leave(node: &Node, client: &GroupClient, why: &str) {
    let session = node.session();
    if session == 0 {
        info!("{why}: stopping (not joined)");
        return;
    }
    info!("{why}: leaving the cluster (closing session {session})");
    match tokio::time::timeout(Duration::from_secs(5), client.close_session(session)).await {
        Ok(Ok(())) => info!("left the cluster"),
        Ok(Err(e)) if e.is_code(ErrorCode::NoSession) => info!("session {session} was already gone"),
        Ok(Err(e)) => warn!("could not close session {session}: {e}"),
        Err(_) => warn!("could not close session {session}: groupd did not answer in time"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sheep_client::cli::one_line;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("storaged").chain(args.iter().copied()))
    }

    #[test]
    fn parses_flags_with_defaults() {
        let a = parse(&["--listen", "127.0.0.1:7001", "--data", "/tmp/x", "--groupd", "127.0.0.1:7000"]).unwrap();
        assert_eq!(a.listen.to_string(), "127.0.0.1:7001");
        assert_eq!((a.zone, a.weight, a.join_timeout), (0, 1, 60));
        assert_eq!(a.metrics, None, "no metrics endpoint unless asked for");
        let a =
            parse(&["--listen", "127.0.0.1:7001", "--data", "/x", "--groupd", "a:1", "--metrics", "127.0.0.1:9101"])
                .unwrap();
        assert_eq!(a.metrics, Some("127.0.0.1:9101".parse().unwrap()));
        let e = parse(&["--listen", "127.0.0.1:7001", "--data", "/x", "--groupd", "a:1", "--metrics", "nowhere"]);
        assert!(one_line(&e.unwrap_err().to_string()).contains("--metrics"));
    }

    #[test]
    fn refuses_bad_flags_on_one_line() {
        for bad in [
            &["--listen", "nowhere", "--data", "/x", "--groupd", "a:1"][..],
            &["--listen", "127.0.0.1:1", "--data", "/x", "--groupd", "a:1", "--weight", "0"],
            &["--listen", "127.0.0.1:1", "--data", "/x"],
            &["--listen", "127.0.0.1:1", "--data", "/x", "--groupd", "a:1", "--bogus"],
        ] {
            let e = parse(bad).unwrap_err();
            let line = one_line(&e.to_string());
            assert!(line.starts_with("error: ") && !line.contains('\n'), "{line}");
        }
        let e = parse(&["--listen", "127.0.0.1:1", "--data", "/x"]).unwrap_err();
        assert!(one_line(&e.to_string()).contains("--groupd"));
        for (listen, why) in
            [("127.0.0.1:0", "fixed port"), ("0.0.0.0:7001", "cannot connect"), ("[::]:7001", "cannot connect")]
        {
            let e = parse(&["--listen", listen, "--data", "/x", "--groupd", "a:1"]).unwrap_err();
            assert!(one_line(&e.to_string()).contains(why), "{listen}: {e}");
        }
    }
}
