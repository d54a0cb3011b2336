//! Processes of a local cluster: finding the daemons' binaries, starting them detached,
//! pid files, and making sure a pid still is the process it was written for before
//! signalling it.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{setsid, Pid};

/// The daemon binary `name`: next to sheepctl's own executable, else in `$PATH`.
pub fn find_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().ok();
    let beside = exe.as_deref().and_then(Path::parent).map(|d| d.join(name));
    if let Some(p) = beside.as_ref().filter(|p| p.is_file()) {
        return Ok(p.clone());
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let beside = beside.map_or_else(|| "sheepctl".to_string(), |p| p.display().to_string());
    bail!("cannot find the {name} binary: not at {beside} nor in $PATH")
}

/// Starts `bin args` detached from this process: its own session (setsid), stdin from
/// /dev/null, stdout and stderr appended to `log`. Writes its pid to `pid_file`.
pub fn spawn_detached(bin: &Path, args: &[String], log: &Path, pid_file: &Path) -> Result<Child> {
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let err = out.try_clone().with_context(|| format!("cannot open {}", log.display()))?;
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: setsid() is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| setsid().map(drop).map_err(std::io::Error::from));
    }
    let child = cmd.spawn().with_context(|| format!("cannot start {}", bin.display()))?;
    write_pid(pid_file, child.id())?;
    Ok(child)
}

fn write_pid(pid_file: &Path, pid: u32) -> Result<()> {
    let mut tmp = pid_file.as_os_str().to_owned();
    tmp.push(".tmp");
    fs::write(&tmp, format!("{pid}\n")).with_context(|| format!("cannot write {}", pid_file.display()))?;
    fs::rename(&tmp, pid_file).with_context(|| format!("cannot write {}", pid_file.display()))
}

/// The pid in `pid_file`; `None` if there is no such file.
pub fn read_pid(pid_file: &Path) -> Result<Option<i32>> {
    match fs::read_to_string(pid_file) {
        Ok(text) => match text.trim().parse::<i32>() {
            Ok(pid) if pid > 1 => Ok(Some(pid)),
            _ => bail!("{} does not hold a pid", pid_file.display()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", pid_file.display())),
    }
}

/// True if process `pid` is alive and is `daemon` with `--data data_dir`: a pid file is
/// never trusted alone, the pid may have been reused by another program.
pub fn is_ours(pid: i32, daemon: &str, data_dir: &Path) -> bool {
    if is_gone(pid) {
        return false;
    }
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => cmdline_matches(&cmdline, daemon, data_dir),
        Err(_) => false,
    }
}

/// Whether a /proc cmdline (NUL-separated arguments) is `daemon … --data data_dir …`.
pub fn cmdline_matches(cmdline: &[u8], daemon: &str, data_dir: &Path) -> bool {
    let args: Vec<&OsStr> = cmdline.split(|&b| b == 0).map(OsStr::from_bytes).collect();
    let Some(argv0) = args.first() else { return false };
    if Path::new(argv0).file_name() != Some(OsStr::new(daemon)) {
        return false;
    }
    let dir = data_dir.as_os_str();
    let mut with_eq = OsStr::new("--data=").to_os_string();
    with_eq.push(dir);
    args.windows(2).any(|w| w[0] == "--data" && w[1] == dir) || args.contains(&with_eq.as_os_str())
}

/// True once process `pid` no longer runs (no such process, or a zombie waiting for its
/// parent to reap it).
pub fn is_gone(pid: i32) -> bool {
    match fs::read(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat_state(&stat).is_none_or(|s| s == b'Z' || s == b'X'),
        Err(_) => true,
    }
}

/// The state letter of a /proc/PID/stat line: the first field after the `(comm)`.
fn stat_state(stat: &[u8]) -> Option<u8> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    stat.get(close + 2).copied()
}

/// Sends `sig` to `pid`.
pub fn signal(pid: i32, sig: Signal) -> std::io::Result<()> {
    kill(Pid::from_raw(pid), sig).map_err(std::io::Error::from)
}

/// The last `n` lines of a log file, for error messages.
pub fn log_tail(log: &Path, n: usize) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdlines_must_name_the_daemon_and_its_data_dir() {
        let dir = Path::new("/tmp/c/node1/groupd");
        let ok = b"/usr/bin/groupd\x00--listen\x00127.0.0.1:7000\x00--data\x00/tmp/c/node1/groupd\x00";
        assert!(cmdline_matches(ok, "groupd", dir));
        assert!(cmdline_matches(b"groupd\0--data=/tmp/c/node1/groupd\0", "groupd", dir));
        assert!(!cmdline_matches(ok, "storaged", dir));
        assert!(!cmdline_matches(ok, "groupd", Path::new("/tmp/c/node2/groupd")));
        assert!(!cmdline_matches(b"/usr/bin/groupd-old\0--data\0/tmp/c/node1/groupd\0", "groupd", dir));
        assert!(!cmdline_matches(b"/bin/sleep\x00100\x00", "groupd", dir));
        assert!(!cmdline_matches(b"", "groupd", dir));
        // The data dir must be the value of --data, not any argument.
        assert!(!cmdline_matches(b"groupd\0--join\0/tmp/c/node1/groupd\0", "groupd", dir));
    }

    #[test]
    fn reads_the_state_of_a_process() {
        assert_eq!(stat_state(b"42 (sleep) S 1 42 42"), Some(b'S'));
        assert_eq!(stat_state(b"42 (a) b) Z 1"), Some(b'Z'));
        assert_eq!(stat_state(b"garbage"), None);
        assert!(!is_gone(std::process::id() as i32));
        assert!(is_gone(i32::MAX));
    }

    #[test]
    fn pid_files() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("x.pid");
        assert_eq!(read_pid(&f).unwrap(), None);
        write_pid(&f, 1234).unwrap();
        assert_eq!(read_pid(&f).unwrap(), Some(1234));
        fs::write(&f, "nonsense").unwrap();
        assert!(read_pid(&f).is_err());
        fs::write(&f, "1").unwrap();
        assert!(read_pid(&f).is_err(), "init is never ours");
    }

    #[test]
    fn a_started_process_is_recognised_and_stopped() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        // `sleep` stands in for a daemon: argv0 "sleep", and a --data argument it ignores
        // would make it fail, so check the negative and the liveness part only.
        let mut child =
            spawn_detached(Path::new("/bin/sleep"), &["30".into()], &tmp.path().join("log"), &tmp.path().join("p.pid"))
                .unwrap();
        let pid = read_pid(&tmp.path().join("p.pid")).unwrap().unwrap();
        assert_eq!(pid as u32, child.id());
        assert!(!is_gone(pid));
        assert!(!is_ours(pid, "groupd", &data));
        signal(pid, Signal::SIGTERM).unwrap();
        child.wait().unwrap();
        assert!(is_gone(pid));
    }
}
