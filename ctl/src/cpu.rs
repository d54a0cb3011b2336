//! CPU time of processes from `/proc/PID/stat`: the bench's CPU per operation, per process.

use anyhow::{Context, Result};
use serde::Serialize;

/// A process's user + system CPU time so far.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuTime {
    pub pid: u32,
    pub name: String,
    pub seconds: f64,
}

/// What a process spent on a job, per operation.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessCpu {
    pub pid: u32,
    pub name: String,
    pub us_per_op: f64,
}

/// The process name and user + system time (in clock ticks) of a `/proc/PID/stat` line.
/// The name is in parentheses and may hold spaces or parentheses itself: the fields after it
/// are found from its last `)`.
pub fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    // After the name: state (field 3) ... utime (14), stime (15).
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

fn ticks_per_second() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as u64,
        // Linux reports /proc times in USER_HZ, 100 wherever sysconf could not say.
        _ => 100,
    }
}

/// The CPU time of `pid` now.
pub fn sample(pid: u32) -> Result<CpuTime> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path} (is process {pid} running?)"))?;
    let (name, ticks) = parse_stat(&stat).with_context(|| format!("{path} is not a stat line"))?;
    Ok(CpuTime { pid, name, seconds: ticks as f64 / ticks_per_second() as f64 })
}

/// This process and each of `pids` now.
pub fn sample_all(pids: &[u32]) -> Result<Vec<CpuTime>> {
    std::iter::once(std::process::id()).chain(pids.iter().copied()).map(sample).collect()
}

/// Each process's CPU time between `before` and `after` (same processes, same order), per
/// one of `ops` operations, in microseconds.
pub fn per_op(before: &[CpuTime], after: &[CpuTime], ops: u64) -> Vec<ProcessCpu> {
    assert_eq!(before.len(), after.len(), "samples of the same processes");
    before
        .iter()
        .zip(after)
        .map(|(b, a)| {
            debug_assert_eq!(b.pid, a.pid);
            let spent = (a.seconds - b.seconds).max(0.0);
            ProcessCpu { pid: a.pid, name: a.name.clone(), us_per_op: spent * 1e6 / ops.max(1) as f64 }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_past_odd_names() {
        let line = "4242 (storaged (x) 1) S 1 4242 4242 0 -1 4194560 500 0 0 0 150 25 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_stat(line), Some(("storaged (x) 1".to_string(), 175)));
        assert_eq!(parse_stat("12 (short) S 1 2"), None);
        assert_eq!(parse_stat("no parentheses"), None);
    }

    #[test]
    fn this_process_is_sampled() {
        let now = sample_all(&[]).unwrap();
        assert_eq!(now.len(), 1);
        assert_eq!(now[0].pid, std::process::id());
        assert!(sample(u32::MAX).is_err());
    }

    #[test]
    fn cpu_per_op_is_the_difference_over_the_ops() {
        let t = |s| CpuTime { pid: 7, name: "groupd".into(), seconds: s };
        let r = per_op(&[t(1.0)], &[t(1.5)], 1000);
        assert_eq!(r.len(), 1);
        assert!((r[0].us_per_op - 500.0).abs() < 1e-9);
    }
}
