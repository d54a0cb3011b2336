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

    #[command(flatten)]
    pub keys: sheep_rpc::keyfile::KeyArgs,

    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Keys: make a cluster's keyring
    #[command(subcommand)]
    Auth(AuthCmd),
    /// The cluster's health at a glance: healthy, degraded or halted, why, and how far
    /// recovery is (like `ceph -s`)
    Status,
    /// The cluster as a whole: format, info, shutdown, recover
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Storage nodes
    #[command(subcommand)]
    Node(NodeCmd),
    /// Virtual disk images (VDIs): create, list, delete, read, write, import, export
    #[command(subcommand)]
    Vdi(VdiCmd),
    /// Measure the data path: random 4 KiB and sequential 1 MiB I/O through the VDI engine
    Bench(BenchArgs),
    /// Start a local cluster on this host: per node a groupd on 127.0.0.N:PORT and a
    /// storaged on 127.0.0.N:PORT+1, detached, logs and pid files in DIR; format it if new
    Up(UpArgs),
    /// Stop the local cluster of DIR: shut the cluster down, then stop exactly the
    /// processes of DIR's pid files
    Down(DownArgs),
    /// Attach a VDI as a block device, /dev/ublkbN (needs ublk_drv and root); prints the device
    Add(crate::attach::AddArgs),
    /// Detach a block device made by `add` (refused while it is mounted, unless --force)
    Del(crate::attach::DelArgs),
    /// The block devices made by `add` on this host: device, VDI, daemon pid, queues, state
    List,
    /// Serve a VDI over NBD in the foreground until Ctrl-C or SIGTERM (QEMU: nbd://ADDR/NAME);
    /// the VDI is locked while it is served, so no one else attaches it
    Export(crate::export::NbdExportArgs),
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
    /// Check that every object of every VDI has its replicas on the right nodes with the
    /// same valid content; repair what is not (unless --dry-run)
    Check(crate::check::ClusterCheckArgs),
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
    /// Capacity, space used and objects held by every storage node (asked of each storaged)
    Info,
    /// Recovery progress of every storage node: its epoch, objects done of total
    Recovery,
    /// Reads and writes per second, bytes per second and latency percentiles of every
    /// storage node (asked of each storaged twice, an interval apart)
    Stat(crate::io_stat::StatArgs),
}

#[derive(Subcommand, Debug)]
pub enum VdiCmd {
    /// Reads and writes per second, bytes per second and latency percentiles of each busy
    /// VDI (or of NAME and its snapshots), from every storage node's counters, like `rbd
    /// perf image iostat`
    Stat {
        #[arg(value_name = "NAME")]
        name: Option<String>,
        #[command(flatten)]
        args: crate::io_stat::StatArgs,
    },
    /// Create a VDI (its space is allocated as it is written)
    Create {
        /// The VDI's name: 1..=255 bytes, no '/', no control characters
        #[arg(value_name = "NAME")]
        name: String,
        /// Its size in bytes, with an optional K/M/G/T/P/E suffix (powers of 1024); a multiple of 512
        #[arg(value_name = "SIZE", value_parser = parse_size)]
        size: u64,
        /// Full copies of each object (1..=31; erasure coding, D:P, is not supported) [default: the cluster's]
        #[arg(long, value_name = "N", value_parser = parse_copies)]
        copies: Option<u8>,
        /// Accept more copies than the storage nodes span zones (under-replicated)
        #[arg(long)]
        allow_fewer_zones: bool,
    },
    /// List the VDIs and their snapshots: name, snapshot tag, id, size, used and shared
    /// space (one copy), copies, creation time
    List,
    /// Delete a VDI with its snapshots, or one snapshot (--snapshot); objects nothing reads
    /// any more are removed (a node that is down does so when it comes back)
    Delete {
        /// The VDI's name
        #[arg(value_name = "NAME")]
        name: String,
        /// Delete only this snapshot of it
        #[arg(long, value_name = "TAG")]
        snapshot: Option<String>,
    },
    /// Take a snapshot: the VDI as it is now becomes read-only snapshot TAG, and the VDI goes
    /// on from it (copy-on-write). An attached VDI is snapshotted by its daemon, between two
    /// writes.
    Snapshot {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(long, value_name = "TAG")]
        tag: String,
    },
    /// Make a new VDI NEW from snapshot TAG of NAME (copy-on-write: nothing is copied now)
    Clone {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(long, value_name = "TAG")]
        snapshot: String,
        #[arg(value_name = "NEW")]
        new_name: String,
    },
    /// Throw away the VDI's changes since snapshot TAG (refused while it is attached)
    Rollback {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(long, value_name = "TAG")]
        snapshot: String,
    },
    /// Grow a VDI (an attached device sees the new size); shrinking is refused
    Resize {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(value_name = "SIZE", value_parser = parse_size)]
        size: u64,
    },
    /// The VDIs as a tree: each under the snapshot it goes on from or was cloned from
    Tree,
    /// Set attribute KEY of a VDI to VALUE (or stdin), ordered through groupd
    Setattr {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(value_name = "KEY")]
        key: String,
        #[arg(value_name = "VALUE")]
        value: Option<String>,
        /// Fail if the attribute exists already
        #[arg(long)]
        exclusive: bool,
        /// Delete the attribute
        #[arg(long, conflicts_with = "exclusive")]
        delete: bool,
    },
    /// Print attribute KEY of a VDI, with a newline after it unless it ends with one
    Getattr {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(value_name = "KEY")]
        key: String,
        /// Print the value's bytes exactly as stored, adding no newline
        #[arg(long)]
        raw: bool,
    },
    /// Copy a VDI's bytes to stdout: all of it, or LEN bytes from OFFSET
    Read(ReadArgs),
    /// Copy stdin into a VDI at OFFSET: all of stdin, or exactly LEN bytes
    Write(RangeArgs),
    /// Copy a file (or block device) into a VDI from its start; all-zero blocks of objects
    /// never written are skipped
    Import(FileArgs),
    /// Copy a whole VDI into a file; never-written and all-zero parts become holes
    Export(ExportArgs),
    /// Objects of a VDI
    #[command(subcommand)]
    Object(ObjectCmd),
    /// VDI locks: list them, or release one whoever holds it
    #[command(subcommand)]
    Lock(crate::vdi_lock::VdiLockCmd),
    /// Check that every object of a VDI has its replicas on the right nodes with the same
    /// valid content; repair what is not (unless --dry-run)
    Check(crate::check::VdiCheckArgs),
}

#[derive(Subcommand, Debug)]
pub enum AuthCmd {
    /// Make the keyring of a new cluster (its secret and the administrator's key, client.admin)
    /// in a new file, mode 0600; an existing file is never overwritten
    Init {
        /// The file to write
        #[arg(long, value_name = "FILE")]
        out: std::path::PathBuf,
    },
    /// Add a client with capabilities, e.g. `auth add client.host1 --caps 'vdi=vm-*:rw,
    /// vdi=golden:r'`, and print its keyring (or write it to --out); give that to the host
    Add {
        /// The client's name: `client.NAME`
        #[arg(value_name = "ENTITY")]
        entity: String,
        /// What it may touch: `vdi=PATTERN:r` or `vdi=PATTERN:rw`, comma-separated (`*` any
        /// run of characters, `?` one); a VDI's snapshots go by its name
        #[arg(long, value_name = "CAPS")]
        caps: String,
        /// Write the keyring to this new file (mode 0600) instead of printing it
        #[arg(long, value_name = "FILE")]
        out: Option<std::path::PathBuf>,
    },
    /// Print a client's keyring again (or write it to --out)
    Get {
        #[arg(value_name = "ENTITY")]
        entity: String,
        #[arg(long, value_name = "FILE")]
        out: Option<std::path::PathBuf>,
    },
    /// Change a client's capabilities (groupd applies them at once; storage nodes when the
    /// client's ticket is renewed, within groupd's --ticket-secs)
    Caps {
        #[arg(value_name = "ENTITY")]
        entity: String,
        #[arg(long, value_name = "CAPS")]
        caps: String,
    },
    /// Revoke a client: groupd refuses it at once, storage nodes once its ticket expires
    /// (groupd's --ticket-secs, 300 s by default); its key never works again
    Rm {
        #[arg(value_name = "ENTITY")]
        entity: String,
    },
    /// The clients and their capabilities (client.admin, not listed, may do everything)
    List,
}

#[derive(Subcommand, Debug)]
pub enum ObjectCmd {
    /// Every written object of a VDI: index, object id, the nodes holding it in this epoch
    Map {
        /// The VDI's name
        #[arg(value_name = "NAME")]
        name: String,
    },
}

#[derive(Args, Debug)]
pub struct RangeArgs {
    /// The VDI's name
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Where to start, in bytes (K/M/G/T/P/E suffixes allowed)
    #[arg(value_name = "OFFSET", value_parser = parse_size, default_value = "0")]
    pub offset: u64,
    /// How many bytes (K/M/G/T/P/E suffixes allowed) [default: read: to the end; write: all of stdin]
    #[arg(value_name = "LEN", value_parser = parse_size)]
    pub len: Option<u64>,
}

#[derive(Args, Debug)]
pub struct ReadArgs {
    #[command(flatten)]
    pub range: RangeArgs,
    #[command(flatten)]
    pub replica: ReplicaArg,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub file: FileArgs,
    #[command(flatten)]
    pub replica: ReplicaArg,
}

#[derive(Args, Debug, Default)]
pub struct ReplicaArg {
    /// Read each object from its N-th replica first (0 = the primary), to check one copy;
    /// another replica is still used if that one fails [default: spread over the replicas]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=30))]
    pub replica: Option<u8>,
    /// Read snapshot TAG of the VDI instead of the VDI itself
    #[arg(long, value_name = "TAG")]
    pub snapshot: Option<String>,
}

#[derive(Args, Debug)]
pub struct FileArgs {
    /// The VDI's name
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The local file
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The VDI to run on (created, and deleted afterwards, if it does not exist)
    #[arg(value_name = "NAME", default_value = "sheep-bench")]
    pub name: String,
    /// Seconds per job
    #[arg(long, value_name = "SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub runtime: u64,
    /// The part of the VDI the jobs use, from its start (K/M/G/T/P/E suffixes allowed)
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "256M")]
    pub size: u64,
    /// Jobs to run, comma-separated, in this order, from: seqwrite, randwrite1, randwrite32,
    /// randread1, randread32, seqread
    #[arg(
        long,
        value_name = "JOB[,JOB...]",
        default_value = "seqwrite,randwrite1,randwrite32,randread1,randread32,seqread"
    )]
    pub jobs: String,
    /// Also report the CPU time these processes (e.g. the cluster's daemons on this host)
    /// spend per operation of each job, beside sheepctl's own
    #[arg(long, value_name = "PID[,PID...]", value_delimiter = ',')]
    pub cpu_of: Vec<u32>,
}

#[derive(Args, Debug)]
pub struct FormatArgs {
    /// How many full copies of each object the cluster keeps (1..=31; erasure coding, D:P, is
    /// not supported)
    #[arg(long, value_name = "N", default_value_t = sheep_core::group::DEFAULT_COPIES,
          value_parser = parse_copies)]
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

    /// A write is acknowledged only once at least N replicas hold it; with fewer storage
    /// nodes for an object, writes are held, then fail [default: copies - copies/2, e.g. 2 of 3]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=31))]
    pub min_copies: Option<u8>,

    /// How long writes are held below --min-copies before they fail, in seconds
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub min_copies_wait: u64,

    /// Accept more copies than the storage nodes span zones (copies then share zones, or are
    /// missing: objects are under-replicated) for this cluster and every VDI of it
    #[arg(long)]
    pub allow_fewer_zones: bool,

    /// Encrypt every session (AES-256-GCM), not only check its integrity: for networks others
    /// can read. Costs CPU on every request (see `ci/bench`)
    #[arg(long)]
    pub secure: bool,
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

    /// groupd port of every node (storaged listens on PORT+1, their metrics on PORT+2 and
    /// PORT+3) [default: 7000]; on an existing DIR, the port it was created with
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..=65532))]
    pub port_base: Option<u16>,

    /// Session lease of the groupd instances, in ms: how long a node or a VDI holder may go
    /// without a keepalive before it is taken for dead [default: groupd's, 5000]. Slow or
    /// overloaded machines (an emulated VM) want more; kept in DIR for later `up`s
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u32).range(100..=3_600_000))]
    pub lease_ms: Option<u32>,

    /// Copies of each object when `up` formats a new cluster [default: min(3, nodes)]
    #[arg(long, value_name = "N", value_parser = parse_copies)]
    pub copies: Option<u8>,

    /// How long to wait for every node to start and join, in seconds
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,

    /// Size of the VDI `disk0` that `up` creates (if missing) and attaches: as /dev/ublkbN where
    /// ublk_drv is loaded, else as an NBD export
    #[arg(long, value_name = "SIZE", default_value = "10G", value_parser = parse_size)]
    pub disk_size: u64,

    /// Do not create or attach `disk0`
    #[arg(long)]
    pub no_disk: bool,
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
pub use crate::keys::DEFAULT_DIR;

/// Parses an object size into its shift: a power of two from 1 MiB to 4 GiB.
pub fn parse_object_size(s: &str) -> Result<u8, String> {
    let bytes = parse_size(s)?;
    if !bytes.is_power_of_two() || !((1u64 << 20)..=(1u64 << 32)).contains(&bytes) {
        return Err(format!("object size must be a power of two from 1M to 4G, not {s} ({})", format_size(bytes)));
    }
    Ok(bytes.trailing_zeros() as u8)
}

/// `--copies N`: a whole number of full copies, 1..=31. Sheepdog's erasure coding (`D:P`, data
/// and parity strips) is not implemented: said so rather than "invalid digit".
pub fn parse_copies(s: &str) -> Result<u8, String> {
    let t = s.trim();
    if let Some((d, p)) = t.split_once(':') {
        return Err(format!(
            "erasure coding ({d}:{p}, data:parity) is not supported: --copies takes a number of full copies, 1 to 31"
        ));
    }
    match t.parse::<u8>() {
        Ok(n @ 1..=31) => Ok(n),
        _ => Err(format!("--copies takes a number of full copies, 1 to 31, not {s:?}")),
    }
}

fn parse_voters(s: &str) -> Result<u8, String> {
    match s.trim() {
        "1" => Ok(1),
        "3" => Ok(3),
        "5" => Ok(5),
        _ => Err(format!("voters must be 1, 3 or 5, not {s:?}")),
    }
}

/// The subcommands named on a command line ("sheepctl cluster format"), for help hints: up to
/// the first word that is not one (an unknown subcommand, or an argument), so that the hint for
/// `node md info` is `sheepctl node`, not `sheepctl node info`. A flag's value (`--groupd ADDR`)
/// is skipped.
pub fn command_path(args: impl IntoIterator<Item = String>) -> String {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    cmd.build();
    let mut path = vec!["sheepctl".to_string()];
    let mut args = args.into_iter().skip(1);
    while let Some(a) = args.next() {
        if a == "--" {
            break;
        }
        if let Some(flag) = a.strip_prefix('-') {
            // `--name value` and `-n value` take the next word; `--name=value` does not.
            let takes_value = match flag.strip_prefix('-') {
                Some(long) if !long.contains('=') => {
                    cmd.get_arguments().any(|arg| arg.get_long() == Some(long) && arg.get_action().takes_values())
                }
                Some(_) => false,
                None => {
                    let mut chars = flag.chars();
                    let short = chars.next();
                    chars.next().is_none()
                        && cmd
                            .get_arguments()
                            .any(|arg| arg.get_short() == short && short.is_some() && arg.get_action().takes_values())
                }
            };
            if takes_value {
                args.next();
            }
            continue;
        }
        match cmd.find_subcommand(&a).cloned() {
            Some(sub) => {
                path.push(a);
                cmd = sub;
            }
            None => break,
        }
    }
    path.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use sheep_client::cli::one_line;

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
        let cli =
            parse(&["--json", "cluster", "format", "--copies", "2", "--object-size", "1M", "--voters", "5", "--force"])
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
        // An unknown subcommand stops the path: its group's help is the right one.
        assert_eq!(command_path(args("sheepctl node md info")), "sheepctl node");
        assert_eq!(command_path(args("sheepctl vdi frob list")), "sheepctl vdi");
        // Flag values are not subcommands, wherever the flags are.
        assert_eq!(command_path(args("sheepctl --groupd info node list -x")), "sheepctl node list");
        assert_eq!(command_path(args("sheepctl --groupd=a:1 vdi --keyring k lock list")), "sheepctl vdi lock list");
        assert_eq!(command_path(args("sheepctl vdi read disk0 list")), "sheepctl vdi read");
        let e = parse(&["node", "md", "info"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::InvalidSubcommand);
    }

    #[test]
    fn copies_say_what_they_take() {
        assert_eq!(parse_copies("3"), Ok(3));
        assert_eq!(parse_copies("31"), Ok(31));
        assert_eq!(
            parse_copies("4:2").unwrap_err(),
            "erasure coding (4:2, data:parity) is not supported: --copies takes a number of full copies, 1 to 31"
        );
        for bad in ["0", "32", "x", "", "-1", "2.5"] {
            let e = parse_copies(bad).unwrap_err();
            assert!(e.starts_with("--copies takes a number of full copies, 1 to 31, not "), "{bad}: {e}");
        }
        for args in [
            &["cluster", "format", "--copies", "4:2"][..],
            &["vdi", "create", "v", "1G", "--copies", "4:2"],
            &["up", "--copies", "4:2"],
        ] {
            let line = one_line(&parse(args).unwrap_err().to_string());
            assert!(line.contains("erasure coding (4:2, data:parity) is not supported"), "{args:?}: {line}");
        }
        let cli = parse(&["vdi", "create", "v", "1G", "--copies", "2"]).unwrap();
        assert!(matches!(cli.cmd, Cmd::Vdi(VdiCmd::Create { copies: Some(2), .. })));
    }

    #[test]
    fn getattr_raw() {
        let cli = parse(&["vdi", "getattr", "v", "k"]).unwrap();
        assert!(matches!(cli.cmd, Cmd::Vdi(VdiCmd::Getattr { raw: false, .. })));
        let cli = parse(&["vdi", "getattr", "v", "k", "--raw"]).unwrap();
        assert!(matches!(cli.cmd, Cmd::Vdi(VdiCmd::Getattr { raw: true, .. })));
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
    #[test]
    fn vdi_commands() {
        let cli = parse(&["vdi", "create", "disk0", "10G", "--copies", "2"]).unwrap();
        let Cmd::Vdi(VdiCmd::Create { name, size, copies, .. }) = cli.cmd else { panic!("not vdi create") };
        assert_eq!((name.as_str(), size, copies), ("disk0", 10 << 30, Some(2)));
        let cli = parse(&["vdi", "read", "disk0", "4K", "1M"]).unwrap();
        let Cmd::Vdi(VdiCmd::Read(r)) = cli.cmd else { panic!("not vdi read") };
        assert_eq!((r.range.offset, r.range.len, r.replica.replica), (4096, Some(1 << 20), None));
        let cli = parse(&["vdi", "export", "disk0", "/tmp/x", "--replica", "2"]).unwrap();
        let Cmd::Vdi(VdiCmd::Export(e)) = cli.cmd else { panic!("not vdi export") };
        assert_eq!(e.replica.replica, Some(2));
        let cli = parse(&["vdi", "write", "disk0"]).unwrap();
        let Cmd::Vdi(VdiCmd::Write(r)) = cli.cmd else { panic!("not vdi write") };
        assert_eq!((r.offset, r.len), (0, None));
        assert!(parse(&["vdi", "object", "map", "disk0"]).is_ok());
        assert!(parse(&["vdi", "import", "disk0", "/tmp/x"]).is_ok());
        for bad in [
            &["vdi", "create", "disk0", "1.5G"][..],
            &["vdi", "create", "disk0", "1G", "--copies", "0"],
            &["vdi", "read", "disk0", "-1"],
            &["vdi", "export", "disk0"],
        ] {
            let e = parse(bad).unwrap_err();
            assert!(one_line(&e.to_string()).starts_with("error: "), "{bad:?}");
        }
        let cli = parse(&["bench"]).unwrap();
        let Cmd::Bench(b) = cli.cmd else { panic!("not bench") };
        assert_eq!((b.name.as_str(), b.runtime, b.size), ("sheep-bench", 5, 256 << 20));
    }
}
