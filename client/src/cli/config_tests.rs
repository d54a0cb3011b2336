use std::ffi::OsString;
use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

use super::*;

/// A daemon's kind of command line: required flags, a list, a bounded number, a switch, an
/// environment variable.
#[derive(Parser, Debug)]
#[command(name = "d")]
struct Daemon {
    #[arg(long)]
    listen: String,
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, value_delimiter = ',')]
    join: Vec<String>,
    /// A list taken as one comma string (storaged's --groupd).
    #[arg(long)]
    groupd: Option<String>,
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(100..=3_600_000))]
    lease_ms: u32,
    #[arg(long)]
    insecure: bool,
    #[arg(long, env = "SHEEP_CONFIG_TEST_KEYRING")]
    keyring: Option<PathBuf>,
    #[command(flatten)]
    config: ConfigArgs,
}

/// A command with subcommands and global flags, as ublk-dev.
#[derive(Parser, Debug)]
#[command(name = "f")]
struct Front {
    #[arg(long, global = true, default_value = "127.0.0.1:7000")]
    groupd: String,
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    cmd: FrontCmd,
}

#[derive(Subcommand, Debug)]
enum FrontCmd {
    Nbd {
        #[arg(long)]
        vdi: String,
        #[arg(long, default_value_t = 128)]
        queue_depth: u16,
    },
    Ublk {
        #[arg(long)]
        vdi: String,
    },
}

/// A config file of its own, removed at the end of the test.
struct File(PathBuf);

impl File {
    fn new(text: &str) -> File {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("sheep-config-test-{}-{n}.toml", std::process::id()));
        std::fs::write(&p, text).expect("write the config file");
        File(p)
    }
    fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for File {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn argv(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn daemon(args: &[&str]) -> Result<Daemon, ParseError> {
    try_parse_from::<Daemon>(argv(args))
}

fn error(r: Result<impl std::fmt::Debug, ParseError>) -> String {
    r.expect_err("refused").to_string()
}

#[test]
fn the_file_applies() {
    let f = File::new(
        "listen = \"10.0.0.1:7000\"\ndata = \"/var/lib/sheep/g1\"\nlease-ms = 7000\ninsecure = true\n\
         groupd = \"10.0.0.1:7000,10.0.0.2:7000\"\n",
    );
    let d = daemon(&["d", "--config", &f.path()]).expect("parsed");
    assert_eq!(d.listen, "10.0.0.1:7000");
    assert_eq!(d.data, Some(PathBuf::from("/var/lib/sheep/g1")));
    assert_eq!(d.lease_ms, 7000);
    assert!(d.insecure);
    assert_eq!(d.groupd.as_deref(), Some("10.0.0.1:7000,10.0.0.2:7000"));
    assert_eq!(d.config.config, Some(f.0.clone()));
}

#[test]
fn a_flag_wins_over_the_file() {
    let f = File::new("listen = \"10.0.0.1:7000\"\nlease-ms = 7000\njoin = [\"10.0.0.2:7000\", \"10.0.0.3:7000\"]\n");
    // Before or after --config, with `=` or not.
    let d = daemon(&["d", "--lease-ms", "9000", "--config", &f.path(), "--join=10.0.0.9:7000"]).expect("parsed");
    assert_eq!(d.lease_ms, 9000);
    assert_eq!(d.listen, "10.0.0.1:7000");
    // A list given on the command line replaces the file's whole list.
    assert_eq!(d.join, ["10.0.0.9:7000"]);
    // The real flag's own bad value is reported as the flag's, not the file's.
    let e = error(daemon(&["d", "--config", &f.path(), "--lease-ms", "abc"]));
    assert!(e.contains("'abc'") && !e.contains("config file"), "{e}");
}

#[test]
fn a_false_switch_leaves_the_default() {
    let f = File::new("listen = \"a:1\"\ninsecure = false\n");
    assert!(!daemon(&["d", "--config", &f.path()]).expect("parsed").insecure);
    // The flag still turns it on.
    assert!(daemon(&["d", "--config", &f.path(), "--insecure"]).expect("parsed").insecure);
}

#[test]
fn list_values() {
    let f = File::new(
        "listen = \"a:1\"\njoin = [\"10.0.0.2:7000\", \"10.0.0.3:7000\"]\ngroupd = [\"g1:7000\", \"g2:7000\"]\n",
    );
    let d = daemon(&["d", "--config", &f.path()]).expect("parsed");
    assert_eq!(d.join, ["10.0.0.2:7000", "10.0.0.3:7000"]);
    // A single-valued flag takes the list as its comma string.
    assert_eq!(d.groupd.as_deref(), Some("g1:7000,g2:7000"));
    // A comma string for a list flag, as on the command line.
    let f = File::new("listen = \"a:1\"\njoin = \"10.0.0.2:7000,10.0.0.3:7000\"\n");
    assert_eq!(daemon(&["d", "--config", &f.path()]).expect("parsed").join, ["10.0.0.2:7000", "10.0.0.3:7000"]);
}

#[test]
fn an_unknown_key_names_itself_and_the_file() {
    let f = File::new("listen = \"a:1\"\nlease_ms = 7000\n");
    let e = error(daemon(&["d", "--config", &f.path()]));
    assert!(e.contains(&f.path()) && e.contains("unknown setting `lease_ms`") && e.contains("lease-ms"), "{e}");
    // Neither help nor config are settings.
    let f = File::new("help = true\n");
    assert!(error(daemon(&["d", "--config", &f.path()])).contains("unknown setting `help`"));
    let f = File::new("config = \"/etc/other.toml\"\n");
    assert!(error(daemon(&["d", "--config", &f.path()])).contains("`config` cannot be set in a config file"));
}

#[test]
fn a_value_of_the_wrong_type_is_refused() {
    let f = File::new("listen = \"a:1\"\ninsecure = \"yes\"\n");
    let e = error(daemon(&["d", "--config", &f.path()]));
    assert!(e.contains(&f.path()) && e.contains("`insecure` must be true or false, not string"), "{e}");
    let f = File::new("listen = \"a:1\"\n[data]\nx = 1\n");
    assert!(error(daemon(&["d", "--config", &f.path()])).contains("`data` must be a string"));
    // A value clap refuses names the file and the key.
    let f = File::new("listen = \"a:1\"\nlease-ms = 5\n");
    let e = error(daemon(&["d", "--config", &f.path()]));
    assert!(e.starts_with(&format!("config file {}: `lease-ms`: invalid value '5'", f.path())), "{e}");
    let f = File::new("listen = \"a:1\"\nlease-ms = \"soon\"\n");
    assert!(error(daemon(&["d", "--config", &f.path()])).contains("`lease-ms`: invalid value 'soon'"));
    // Also when the command line gives that flag: the file is wrong either way.
    let f = File::new("listen = \"a:1\"\ninsecure = 1\n");
    assert!(error(daemon(&["d", "--config", &f.path(), "--insecure"])).contains("must be true or false"));
}

#[test]
fn bad_files() {
    let e = error(daemon(&["d", "--config", "/nonexistent/sheep.toml"]));
    assert!(e.contains("cannot read config file /nonexistent/sheep.toml"), "{e}");
    let f = File::new("listen = \"a:1\"\nlease-ms = \n");
    let e = error(daemon(&["d", "--config", &f.path()]));
    assert!(e.contains("is not valid TOML: line 2, column 12: ") && !e.contains('\n'), "{e}");
}

#[test]
fn without_a_file_nothing_changes() {
    let args = argv(&["d", "--listen", "a:1"]);
    let m = merge(&Daemon::command(), args.clone()).expect("merged");
    assert_eq!(m, Merged { args, file: None, from_file: vec![] });
    // A required flag missing is clap's error as before.
    assert!(matches!(daemon(&["d"]), Err(ParseError::Clap(_))));
    // --help is left to clap.
    let e = daemon(&["d", "--help"]).expect_err("help");
    assert!(matches!(e, ParseError::Clap(ref c) if c.kind() == clap::error::ErrorKind::DisplayHelp));
}

#[test]
fn the_environment_wins_over_the_file() {
    // The variable is this test's own: no other test reads or sets it.
    std::env::set_var("SHEEP_CONFIG_TEST_KEYRING", "/from/env");
    let f = File::new("listen = \"a:1\"\nkeyring = \"/from/file\"\n");
    let d = daemon(&["d", "--config", &f.path()]).expect("parsed");
    let flag = daemon(&["d", "--config", &f.path(), "--keyring", "/from/flag"]).expect("parsed");
    std::env::remove_var("SHEEP_CONFIG_TEST_KEYRING");
    assert_eq!(d.keyring, Some(PathBuf::from("/from/env")));
    assert_eq!(flag.keyring, Some(PathBuf::from("/from/flag")));
    assert_eq!(daemon(&["d", "--config", &f.path()]).expect("parsed").keyring, Some(PathBuf::from("/from/file")));
}

#[test]
fn a_subcommand_takes_the_whole_file() {
    let f = File::new("vdi = \"disk0\"\nqueue-depth = 32\ngroupd = [\"g1:7000\", \"g2:7000\"]\n");
    for args in [
        vec!["f", "--config", &f.path(), "nbd"],
        vec!["f", "nbd", "--config", &f.path()],
        vec!["f", "--groupd", "x:1", "nbd", "--config", &f.path()],
    ] {
        let c = try_parse_from::<Front>(argv(&args)).expect("parsed");
        let FrontCmd::Nbd { vdi, queue_depth } = c.cmd else { panic!("not nbd: {c:?}") };
        assert_eq!((vdi.as_str(), queue_depth), ("disk0", 32), "{args:?}");
        let want = if args.contains(&"x:1") { "x:1" } else { "g1:7000,g2:7000" };
        assert_eq!(c.groupd, want, "{args:?}");
    }
    // The file's arguments go right after the subcommand's name.
    let m = merge(&Front::command(), argv(&["f", "--groupd", "nbd", "nbd", "--config", &f.path()])).expect("merged");
    assert_eq!(m.args[..4], argv(&["f", "--groupd", "nbd", "nbd"])[..]);
    assert_eq!(m.from_file, ["queue-depth", "vdi"]);
    // A setting of the other subcommand is unknown to this one.
    let e = error(try_parse_from::<Front>(argv(&["f", "ublk", "--config", &f.path()])));
    assert!(e.contains("unknown setting `queue-depth`"), "{e}");
    // No subcommand: clap's error, the file unread.
    assert!(matches!(try_parse_from::<Front>(argv(&["f", "--config", "/nonexistent"])), Err(ParseError::Clap(_))));
}
