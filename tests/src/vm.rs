//! Runs a bash script inside a VM whose kernel has `ublk_drv` (Debian's 6.12, under QEMU's
//! software emulation), through `ci/vm/build` and `ci/vm/run` (see `ci/vm/README.md`).
//!
//! In the guest the host's root is mounted read-only and chrooted into, so the repository and
//! its `target/` binaries are at the same paths; `/tmp` is a fresh tmpfs, `$VM_OUT` a writable
//! directory shared with the host. Every wait is bounded: the build, and the run (boot, script
//! and power-off) by the caller's timeout, after which QEMU is killed by its pid.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{geteuid, Pid};

/// How one VM run ended.
#[derive(Debug)]
pub struct VmOutcome {
    /// The script's exit code; `None` when it did not finish (see `error`).
    pub exit_code: Option<i32>,
    /// The guest's console (the script's stdout and stderr, kernel warnings) and `ci/vm/run`'s
    /// own messages.
    pub output: String,
    /// Why the script did not finish: the VM failed to build or boot, crashed, or timed out.
    pub error: Option<String>,
    /// Wall time of the run, boot to power-off.
    pub elapsed: Duration,
    /// The writable share, `$VM_OUT` in the guest: files the script left there (removed when
    /// the outcome is dropped).
    pub out: Option<tempfile::TempDir>,
}

impl VmOutcome {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }

    /// Panics, with the console, unless the script exited 0.
    pub fn assert_success(&self) {
        assert!(
            self.success(),
            "VM run failed: exit {:?}, error {:?}\n----- console -----\n{}",
            self.exit_code,
            self.error,
            self.output
        );
    }
}

/// The repository's root (the parent of this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root").to_path_buf()
}

/// The directory where `ci/vm/build` keeps the kernel and initramfs.
pub fn vm_dir() -> PathBuf {
    std::env::var_os("SHEEP_VM_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target/vm"))
}

/// True when run by CI (`CI=true`), where a test must not skip for a missing prerequisite.
pub fn under_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"))
}

/// Whether a VM test should run. Under CI (`CI=true`) always (a VM that cannot start is then a
/// failure, not a skip). Locally the VM needs root (ci/vm/build installs packages, the guest's
/// files are created as root): without it, prints why the test is skipped and returns false.
pub fn should_run(test: &str) -> bool {
    if under_ci() {
        return true;
    }
    if !geteuid().is_root() {
        eprintln!(
            "SKIPPED {test}: the ublk VM needs root (qemu, the kernel download of ci/vm/build); \
             run as root or with CI=true"
        );
        return false;
    }
    true
}

/// One VM at a time per test process: each one takes two emulated CPUs.
static ONE_VM: Mutex<()> = Mutex::new(());

/// Builds the VM pieces if needed (bounded by 20 minutes: a first build downloads packages).
pub fn build() -> Result<(), String> {
    let log = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    let child = command_logged(Command::new(repo_root().join("ci/vm/build")), log.path())?;
    let (status, _) = wait_bounded(child, Duration::from_secs(20 * 60));
    let out = read_lossy(log.path());
    match status {
        Some(0) => Ok(()),
        Some(c) => Err(format!("ci/vm/build exited {c}:\n{out}")),
        None => Err(format!("ci/vm/build did not finish in 20 minutes:\n{out}")),
    }
}

/// Runs `script` (bash source) in the VM, in the repository's root, with `timeout` for the
/// whole run (boot, script, power-off).
pub fn run(script: &str, timeout: Duration) -> VmOutcome {
    let file = tempfile::Builder::new().prefix("sheep-vm-script.").suffix(".sh").tempfile().expect("temp script");
    std::fs::write(file.path(), script).expect("write script");
    run_file(file.path(), timeout, &[])
}

/// Runs the script file `path` in the VM (in place, so `$0` is its path, unless it is under
/// the host's /tmp, which the guest does not see), in the repository's root, with `env`
/// (`NAME=VALUE`) set for it.
///
/// A guest kernel that crashes (seen under software emulation, a few times in tens of runs: an
/// int3 oops in early boot, a double fault in the dentry cache mid-run) is booted once more,
/// the first console kept in the output; a script that fails, or a run that times out, is
/// never retried.
pub fn run_file(path: &Path, timeout: Duration, env: &[&str]) -> VmOutcome {
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    if let Err(e) = build() {
        return VmOutcome {
            exit_code: None,
            output: String::new(),
            error: Some(e),
            elapsed: started.elapsed(),
            out: None,
        };
    }
    let (first, crashed) = boot(path, timeout, env);
    if !crashed {
        return first;
    }
    let when = if first.output.contains(BOOTED_MARKER) { "while running the script" } else { "while booting" };
    eprintln!("the VM's kernel crashed {when}; booting it once more. Its console:\n{}", first.output);
    let (mut second, _) = boot(path, timeout, env);
    second.output = format!("{}\n----- the first boot, which crashed {when} -----\n{}", second.output, first.output);
    second
}

/// What the guest's init prints once it has booted, before it runs the script (ci/vm/init.sh).
const BOOTED_MARKER: &str = "SHEEP-VM-BOOTED:";
/// One boot of the VM running the script, and whether the VM failed (neither the script's exit
/// nor a timeout ended it).
fn boot(path: &Path, timeout: Duration, env: &[&str]) -> (VmOutcome, bool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let share = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("run.log");
    let status = dir.path().join("status");
    let mut cmd = Command::new(repo_root().join("ci/vm/run"));
    cmd.arg(path)
        .args(["--no-build", "--timeout", &timeout.as_secs().max(1).to_string()])
        .arg("--status")
        .arg(&status)
        .arg("--out")
        .arg(share.path())
        .current_dir(repo_root());
    for e in env {
        cmd.args(["--env", e]);
    }
    let started = Instant::now();
    let child = match command_logged(cmd, &log) {
        Ok(c) => c,
        Err(e) => {
            let outcome = VmOutcome {
                exit_code: None,
                output: String::new(),
                error: Some(e),
                elapsed: started.elapsed(),
                out: None,
            };
            return (outcome, false);
        }
    };
    // ci/vm/run enforces the timeout itself; this is the backstop.
    let (code, killed) = wait_bounded(child, timeout + Duration::from_secs(60));
    let elapsed = started.elapsed();
    let output = read_lossy(&log);
    let status = std::fs::read_to_string(&status).unwrap_or_default();
    let status = status.trim();
    let (exit_code, error) = if let Some(n) = status.strip_prefix("exit ") {
        (n.parse().ok(), None)
    } else if killed {
        (None, Some(format!("ci/vm/run did not finish in {:?}; killed", timeout + Duration::from_secs(60))))
    } else if status == "timeout" {
        (None, Some(format!("the VM run timed out after {timeout:?}")))
    } else {
        (None, Some(format!("the VM failed to boot or crashed (ci/vm/run exit {code:?}, status {status:?})")))
    };
    let crashed = exit_code.is_none() && !killed && status != "timeout";
    (VmOutcome { exit_code, output, error, elapsed, out: Some(share) }, crashed)
}

fn command_logged(mut cmd: Command, log: &Path) -> Result<Child, String> {
    let out = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    cmd.spawn().map_err(|e| format!("spawn {cmd:?}: {e}"))
}

/// Waits for `child` at most `limit`; past it, SIGTERM (so ci/vm/run kills its QEMU), then
/// SIGKILL after 15 s. Returns the exit code (None if killed by a signal) and whether it had to
/// be killed.
fn wait_bounded(mut child: Child, limit: Duration) -> (Option<i32>, bool) {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return (st.code(), false);
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The pid of a child we spawned and have not reaped.
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let grace = Instant::now() + Duration::from_secs(15);
    while Instant::now() < grace {
        if let Ok(Some(st)) = child.try_wait() {
            return (st.code(), true);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let st = child.wait().ok().and_then(|s| s.code());
    (st, true)
}

fn read_lossy(path: &Path) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}
