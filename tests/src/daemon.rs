//! One daemon process started by a test: killed (SIGKILL) and reaped when dropped.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub use crate::bins::bin;

pub struct Daemon {
    pub name: String,
    pub args: Vec<String>,
    pub log: PathBuf,
    /// `FAILPOINTS` for the next start (see [`failpoints_built`]); none by default.
    pub failpoints: Option<String>,
    child: Option<Child>,
}

/// True if the daemons under test were built with the `failpoints` feature (`ci/test`
/// builds them so); then `FAILPOINTS` injects faults into them.
pub fn failpoints_built() -> bool {
    ["groupd", "storaged"].iter().all(|name| {
        let out = Command::new(bin(name)).arg("--version").output().expect("run --version");
        String::from_utf8_lossy(&out.stdout).contains("(failpoints)")
    })
}

/// For a test that injects faults with failpoints: false (and says why) if the daemons were
/// built without them, which fails the test under CI (`CI=true`).
pub fn require_failpoints(test: &str) -> bool {
    if failpoints_built() {
        return true;
    }
    let why = "groupd/storaged were built without the `failpoints` feature \
               (cargo build --workspace --features storaged/failpoints,groupd/failpoints, as ci/test does)";
    assert!(!crate::vm::under_ci(), "{test}: {why}");
    eprintln!("skipping {test}: {why}");
    false
}

impl Daemon {
    /// Starts `program args…`, stdout and stderr appended to `log`.
    pub fn start(program: &str, args: Vec<String>, log: PathBuf) -> Daemon {
        Daemon::start_failing(program, args, log, None)
    }

    /// [`Daemon::start`] with `FAILPOINTS` set from its first start (see [`failpoints_built`]).
    pub fn start_failing(program: &str, args: Vec<String>, log: PathBuf, failpoints: Option<String>) -> Daemon {
        let mut d = Daemon { name: program.to_string(), args, log, failpoints, child: None };
        d.restart();
        d
    }

    /// Starts the process again with the same arguments (it must not be running).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is still running", self.name);
        let out = File::options().create(true).append(true).open(&self.log).expect("open log");
        let err = out.try_clone().expect("dup log");
        let mut cmd = crate::keys::command(&self.name);
        cmd.args(&self.args).env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
        match &self.failpoints {
            Some(f) => cmd.env("FAILPOINTS", f),
            None => cmd.env_remove("FAILPOINTS"),
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.name));
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends `sig` to the process we started and have not reaped yet (never by name).
    pub fn signal(&self, sig: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(pid as i32), sig);
        }
    }

    /// `kill -9` and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits (bounded) for the process to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> Option<i32> {
        let start = std::time::Instant::now();
        loop {
            let c = self.child.as_mut()?;
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                return Some(status.code().unwrap_or(-1));
            }
            if start.elapsed() > timeout {
                panic!("{} did not exit within {timeout:?}; log:\n{}", self.name, self.log_tail());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}
