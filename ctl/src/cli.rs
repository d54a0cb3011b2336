//! The command line: every command, flag and its help.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use sheep_core::size::{format_size, parse_size};

/// The command line of Sheepdog in Rust: administer a cluster, or run a local one.
#[derive(Parser, Debug)]
#[command(name = "sheepctl", version, propagate_version = true)]
pub struct Cli {
    /// groupd addresses to talk to, comma-separated ("ip:port,ip:port"); any member will do
    /// (`up` and `down` use their DIR's own)
    #[arg(long, global = true, env = "SHEEP_GROUPD", default_value = "127.0.0.1:7000", value_name = "ADDR[,ADDR...]")]
    pub groupd: String,

    /// Print machine-readable JSON on stdout instead of tables
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// The cluster as a whole: format, info, shutdown, recover
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Storage nodes
    #[command(subcommand)]
    Node(NodeCmd),
    /// Start a local cluster on this host: per node a groupd on 127.0.0.N:PORT and a
    /// storaged on 127.0.0.N:PORT+1, detached, logs and pid files in DIR; format it if new
    Up(UpArgs),
    /// Stop the local cluster of DIR: shut the cluster down, then stop exactly the
    /// processes of DIR's pid files
    Down(DownArgs),
}

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Format the cluster: give it an identity and its data layout
    Format(FormatArgs),
    /// Show the cluster: status, identity, groupd members, storage nodes, epoch history
    Info,
    /// Shut the cluster down cleanly: every storage node stops; when they are all back the
    /// cluster runs again in the same epoch
    Shutdown,
    /// Recover a shut-down cluster
    #[command(subcommand)]
    Recover(RecoverCmd),
}

#[derive(Subcommand, Debug)]
pub enum RecoverCmd {
    /// Go on without the storage nodes that are not back after a shutdown (new epoch)
    Force,
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// List the storage nodes: those of the current epoch and those joining
    List,
    /// Show a storage node's own copy of the epoch history (asked of its storaged)
    Epochs {
        /// The storage node's address (its id), "ip:port"
        #[arg(value_name = "ADDR")]
        addr: String,
    },
}

#[derive(Args, Debug)]
pub struct FormatArgs {
    /// How many copies of each object the cluster keeps (1..=31)
    #[arg(long, value_name = "N", default_value_t = sheep_core::group::DEFAULT_COPIES,
          value_parser = clap::value_parser!(u8).range(1..=31))]
    pub copies: u8,

    /// Object size: a power of two from 1M to 4G (K/M/G suffixes, powers of 1024)
    #[arg(long, value_name = "SIZE", default_value = "4M", value_parser = parse_object_size)]
    pub object_size: u8,

    /// How many groupd instances vote (the master and its submasters): 1, 3 or 5
    #[arg(long, value_name = "N", default_value_t = sheep_core::group::DEFAULT_VOTERS,
          value_parser = parse_voters)]
    pub voters: u8,

    /// Format even if the cluster is formatted already: a new cluster id and a new epoch
    /// history (stores of the old cluster are then refused)
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// How many nodes (1..=32); on an existing DIR, the number it was created with
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=32))]
    pub nodes: Option<u8>,

    /// Directory of the local cluster: data, logs and pid files of every node (a relative
    /// path is taken from the current directory)
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DIR)]
    pub dir: PathBuf,

    /// groupd port of every node (storaged listens on PORT+1) [default: 7000]; on an
    /// existing DIR, the port it was created with
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..=65534))]
    pub port_base: Option<u16>,

    /// Copies of each object when `up` formats a new cluster [default: min(3, nodes)]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=31))]
    pub copies: Option<u8>,

    /// How long to wait for every node to start and join, in seconds
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
}

#[derive(Args, Debug)]
pub struct DownArgs {
    /// Directory of the local cluster, as given to `up` (a relative path is taken from the
    /// current directory)
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DIR)]
    pub dir: PathBuf,
}

/// Where `up` and `down` keep a local cluster unless told otherwise (relative to the
/// current directory).
pub const DEFAULT_DIR: &str = "sheep-cluster";

/// Parses an object size into its shift: a power of two from 1 MiB to 4 GiB.
pub fn parse_object_size(s: &str) -> Result<u8, String> {
    let bytes = parse_size(s)?;
    if !bytes.is_power_of_two() || !((1u64 << 20)..=(1u64 << 32)).contains(&bytes) {
        return Err(format!(
            "object size must be a power of two from 1M to 4G, not {s} ({})",
            format_size(bytes)
        ));
    }
    Ok(bytes.trailing_zeros() as u8)
}

fn parse_voters(s: &str) -> Result<u8, String> {
    match s.trim() {
        "1" => Ok(1),
        "3" => Ok(3),
        "5" => Ok(5),
        _ => Err(format!("voters must be 1, 3 or 5, not {s:?}")),
    }
}

/// clap's message without its usage and tips, on one line.
pub fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The subcommands named on a command line ("sheepctl cluster format"), for help hints.
pub fn command_path(args: impl IntoIterator<Item = String>) -> String {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    let mut path = vec!["sheepctl".to_string()];
    for a in args.into_iter().skip(1) {
        if let Some(sub) = cmd.find_subcommand(&a).cloned() {
            path.push(a);
            cmd = sub;
        }
    }
    path.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("sheepctl").chain(args.iter().copied()))
    }

    #[test]
    fn format_defaults() {
        let cli = parse(&["cluster", "format"]).unwrap();
        let Cmd::Cluster(ClusterCmd::Format(f)) = cli.cmd else { panic!("not format") };
        assert_eq!((f.copies, f.object_size, f.voters, f.force), (3, 22, 3, false));
        assert!(!cli.json);
    }

    #[test]
    fn format_flags() {
        let cli = parse(&["--json", "cluster", "format", "--copies", "2", "--object-size", "1M", "--voters", "5", "--force"])
            .unwrap();
        let Cmd::Cluster(ClusterCmd::Format(f)) = cli.cmd else { panic!("not format") };
        assert_eq!((f.copies, f.object_size, f.voters, f.force), (2, 20, 5, true));
        assert!(cli.json);
        // Global flags go after the subcommand too.
        let cli = parse(&["cluster", "info", "--json", "--groupd", "127.0.0.2:7000,127.0.0.3:7000"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.groupd, "127.0.0.2:7000,127.0.0.3:7000");
    }

    #[test]
    fn object_sizes() {
        assert_eq!(parse_object_size("4M"), Ok(22));
        assert_eq!(parse_object_size("4MiB"), Ok(22));
        assert_eq!(parse_object_size("1048576"), Ok(20));
        assert_eq!(parse_object_size("4G"), Ok(32));
        for bad in ["3M", "512K", "8G", "4X", "", "-1", "1.5M"] {
            assert!(parse_object_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_input_is_one_line() {
        for bad in [
            &["cluster", "format", "--copies", "0"][..],
            &["cluster", "format", "--copies", "x"],
            &["cluster", "format", "--object-size", "3M"],
            &["cluster", "format", "--voters", "4"],
            &["cluster", "frobnicate"],
            &["cluster", "info", "--bogus"],
            &["up", "--nodes", "0"],
            &["up", "--port-base", "65535"],
        ] {
            let e = parse(bad).unwrap_err();
            let line = one_line(&e.to_string());
            assert!(line.starts_with("error: ") && !line.contains('\n'), "{bad:?}: {line}");
        }
        // A missing subcommand shows the help of its group (exit 2).
        let e = parse(&["node"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand);
        let e = parse(&["cluster", "format", "--object-size", "3M"]).unwrap_err();
        assert!(one_line(&e.to_string()).contains("power of two"));
    }

    #[test]
    fn help_hints_name_the_subcommand() {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(command_path(args("sheepctl cluster format --bogus")), "sheepctl cluster format");
        assert_eq!(command_path(args("sheepctl --json node list -x")), "sheepctl node list");
        assert_eq!(command_path(args("sheepctl frob")), "sheepctl");
    }

    #[test]
    fn node_epochs_needs_an_address() {
        let cli = parse(&["node", "epochs", "127.0.0.1:7001"]).unwrap();
        let Cmd::Node(NodeCmd::Epochs { addr }) = cli.cmd else { panic!("not node epochs") };
        assert_eq!(addr, "127.0.0.1:7001");
        assert!(parse(&["node", "epochs"]).is_err());
    }

    #[test]
    fn up_and_down() {
        let cli = parse(&["up"]).unwrap();
        let Cmd::Up(u) = cli.cmd else { panic!("not up") };
        assert_eq!((u.nodes, u.port_base, u.copies, u.timeout), (None, None, None, 60));
        assert_eq!(u.dir, PathBuf::from(DEFAULT_DIR));
        let cli = parse(&["down", "--dir", "/tmp/x"]).unwrap();
        let Cmd::Down(d) = cli.cmd else { panic!("not down") };
        assert_eq!(d.dir, PathBuf::from("/tmp/x"));
    }
}
