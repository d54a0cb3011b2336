//! NBD exports in tests: `sheepctl export` as a daemon on the test's loopback block, and
//! QEMU's `qemu-io` (Debian's qemu-utils) as the client, every run bounded.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{wait_until, Cluster, Daemon};

/// Every export start and tool run is bounded by this.
pub const LIMIT: Duration = Duration::from_secs(60);

/// An address of the cluster's loopback block that no daemon uses, port 0 (picked by the
/// server and printed).
pub fn listen_addr(c: &Cluster) -> String {
    format!("{}:0", c.net.ip(200))
}

/// `sheepctl export NAME --listen ADDR` as a daemon, logging to `log` (in the test's dir).
pub fn start_export(c: &Cluster, name: &str, listen: &str, log: &str) -> Daemon {
    let args = ["--groupd", &c.groupd_addrs.join(","), "export", name, "--listen", listen];
    Daemon::start("sheepctl", args.iter().map(|s| s.to_string()).collect(), c.path(log))
}

/// Waits until the export prints its URL (`Ok(url)`) or exits (`Err(its log)`).
pub fn url_or_exit(d: &mut Daemon) -> Result<String, String> {
    wait_until(LIMIT, "the export to print its nbd:// address or to exit", || {
        let text = std::fs::read_to_string(&d.log).unwrap_or_default();
        if let Some(url) = text.lines().find(|l| l.starts_with("nbd://")) {
            return Ok(Ok(url.trim().to_string()));
        }
        if !d.is_running() {
            return Ok(Err(text));
        }
        Err(text.lines().last().unwrap_or("").to_string())
    })
}

/// An export of VDI `name` that is serving, and its nbd:// URL; panics if it stopped.
pub fn serving(c: &Cluster, name: &str, log: &str) -> (Daemon, String) {
    let mut d = start_export(c, name, &listen_addr(c), log);
    match url_or_exit(&mut d) {
        Ok(url) => (d, url),
        Err(log) => panic!("the export stopped:\n{log}\n{}", c.logs()),
    }
}

/// Runs a tool with a time limit; kills it (and panics) if it overruns.
pub fn run_tool(program: &str, args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}): install qemu-utils (ci/install-deps does)"));
    let start = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!("{program} {args:?} took more than {limit:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("wait")
}

/// `qemu-io -f raw URL -c CMD…`: (every command succeeded, stdout + stderr).
pub fn qemu_io(url: &str, cmds: &[&str]) -> (bool, String) {
    let mut args = vec!["-f", "raw", url];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    let out = run_tool("qemu-io", &args, LIMIT);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let bad = text.lines().any(|l| l.contains("failed") || l.contains("error") || l.contains("Error"));
    (out.status.success() && !bad, text)
}

/// Like [`qemu_io`]; panics unless every command succeeded. Returns the output.
pub fn qemu_io_ok(url: &str, cmds: &[&str]) -> String {
    let (ok, text) = qemu_io(url, cmds);
    assert!(ok, "qemu-io {cmds:?}:\n{text}");
    text
}
