//! Cut links between a test's daemons. The test runs again inside a network namespace of its
//! own (`unshare --net`, as root), whose loopback carries the cluster's `127.x.y.N`
//! addresses; there nftables rules drop the packets between two addresses (on input, so a
//! cut link loses packets silently, as a broken network does). Nothing outside the namespace
//! is touched, and it goes with the test's process.

use std::net::IpAddr;
use std::process::Command;

/// Set in the environment of the run inside the namespace.
const INSIDE: &str = "SHEEP_TEST_IN_NETNS";
/// The nftables table and chain of the cuts.
const TABLE: &str = "sheep_test";
const CHAIN: &str = "cuts";

/// Where a test that cuts links runs.
pub enum Netns {
    /// This process is the run inside the namespace: links can be cut.
    Inside(Links),
    /// The test ran inside a namespace, in a child process; `true` if it passed.
    RanInside(bool),
    /// No namespace can be made here (not root, or `unshare` or `nft` missing): why.
    Unavailable(String),
}

/// Runs test `name` of this test binary again inside a new network namespace, unless this
/// process is that run already (then it brings the namespace's loopback up).
pub fn enter(name: &str) -> Netns {
    if std::env::var_os(INSIDE).is_some() {
        return match bring_up() {
            Ok(links) => Netns::Inside(links),
            Err(e) => Netns::Unavailable(e),
        };
    }
    if !nix::unistd::geteuid().is_root() {
        return Netns::Unavailable("not root: no network namespace".into());
    }
    for tool in ["unshare", "nft", "ip"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Netns::Unavailable(format!("`{tool}` is missing (ci/install-deps installs it)"));
        }
    }
    let exe = std::env::current_exe().expect("current_exe");
    let status = Command::new("unshare")
        .arg("--net")
        .arg("--")
        .arg(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .status()
        .expect("run unshare");
    Netns::RanInside(status.success())
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd).args(args).output().map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn bring_up() -> Result<Links, String> {
    run("ip", &["link", "set", "lo", "up"])?;
    run("nft", &["add", "table", "ip", TABLE])?;
    run("nft", &["add", "chain", "ip", TABLE, CHAIN, "{ type filter hook input priority 0; policy accept; }"])?;
    Ok(Links { _private: () })
}

/// The cuts of the namespace this process runs in.
pub struct Links {
    _private: (),
}

impl Links {
    /// Cuts every link between `a` and each of `others`, both ways.
    pub fn cut(&self, a: IpAddr, others: &[IpAddr]) {
        for b in others.iter().filter(|&&b| b != a) {
            for (from, to) in [(a, *b), (*b, a)] {
                let (from, to) = (from.to_string(), to.to_string());
                let rule = ["add", "rule", "ip", TABLE, CHAIN, "ip", "saddr", &from, "ip", "daddr", &to, "drop"];
                run("nft", &rule).expect("nft add rule");
            }
        }
    }

    /// Every link whole again.
    pub fn heal(&self) {
        run("nft", &["flush", "chain", "ip", TABLE, CHAIN]).expect("nft flush chain");
    }
}
