//! The nemesis: a fault schedule drawn from a seed, then applied to a [`Cluster`]'s
//! processes. The schedule depends on the seed alone (which nodes are down is tracked while
//! drawing it), so a failing run is replayed by its seed.

use std::fmt;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::rand::Rng;
use crate::Cluster;

/// One step of the schedule.
#[derive(Clone, Debug)]
pub enum Fault {
    /// `kill -9` these storaged, at once; they stay down until a `Restart`.
    Kill(Vec<usize>),
    /// Starts these (down) storaged again, one after the other in this order, `gap` apart.
    Restart(Vec<usize>, Duration),
    /// SIGSTOP storaged `i` for `Duration` (longer than the lease: it is dropped), then SIGCONT.
    Pause(usize, Duration),
    /// `kill -9` the groupd master; it starts again after `Duration`.
    KillMaster(Duration),
    /// Storaged `i`'s disk fails: its object directory vanishes under it (renamed away). It
    /// counts as down: its `Restart` stops it, puts the directory back (the disk repaired)
    /// and starts it.
    FailDisk(usize),
    /// A snapshot of the NBD writer's VDI, taken through `sheepctl vdi snapshot`.
    Snapshot,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill(n) => write!(f, "kill -9 storaged {n:?}"),
            Fault::Restart(n, gap) => write!(f, "restart storaged {n:?}, {gap:?} apart"),
            Fault::Pause(i, d) => write!(f, "SIGSTOP storaged {i} for {d:?}"),
            Fault::KillMaster(d) => write!(f, "kill -9 the groupd master, back after {d:?}"),
            Fault::FailDisk(i) => write!(f, "fail the disk of storaged {i}"),
            Fault::Snapshot => write!(f, "snapshot"),
        }
    }
}

/// A step and the pause after it.
#[derive(Clone, Debug)]
pub struct Step {
    pub fault: Fault,
    pub then: Duration,
}

fn ms(r: &mut Rng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(lo + r.below(hi - lo + 1))
}

fn shuffle(r: &mut Rng, v: &mut [usize]) {
    for i in (1..v.len()).rev() {
        v.swap(i, r.below(i as u64 + 1) as usize);
    }
}

/// Draws a schedule of about `secs` seconds for `nodes` storaged with lease `lease`.
pub fn schedule(seed: u64, nodes: usize, lease: Duration, secs: u64) -> Vec<Step> {
    let mut r = Rng::new(seed);
    let mut down: Vec<usize> = Vec::new();
    let mut steps = Vec::new();
    let mut total = Duration::ZERO;
    let lease_ms = lease.as_millis() as u64;
    while total < Duration::from_secs(secs) {
        let up: Vec<usize> = (0..nodes).filter(|i| !down.contains(i)).collect();
        let roll = r.below(100);
        let fault = if !down.is_empty() && (roll < 35 || up.is_empty()) {
            let mut back = down.clone();
            shuffle(&mut r, &mut back);
            back.truncate(1 + r.below(back.len() as u64) as usize);
            down.retain(|i| !back.contains(i));
            Fault::Restart(back, ms(&mut r, 0, 1500))
        } else if roll < 60 {
            let i = up[r.below(up.len() as u64) as usize];
            down.push(i);
            Fault::Kill(vec![i])
        } else if roll < 70 {
            let mut which = up.clone();
            shuffle(&mut r, &mut which);
            // Several at once, now and then every one that is up (a whole-cluster crash).
            let n = if r.below(3) == 0 { which.len() } else { 2.min(which.len()) };
            which.truncate(n);
            down.extend(&which);
            Fault::Kill(which)
        } else if roll < 76 {
            Fault::Pause(up[r.below(up.len() as u64) as usize], ms(&mut r, lease_ms + 500, lease_ms + 2500))
        } else if roll < 80 {
            let i = up[r.below(up.len() as u64) as usize];
            down.push(i);
            Fault::FailDisk(i)
        } else if roll < 87 {
            Fault::KillMaster(ms(&mut r, 500, 4000))
        } else {
            Fault::Snapshot
        };
        let then = ms(&mut r, 300, 3000);
        total += then
            + match &fault {
                Fault::Pause(_, d) | Fault::KillMaster(d) => *d,
                Fault::Restart(n, gap) => *gap * n.len() as u32,
                _ => Duration::ZERO,
            };
        steps.push(Step { fault, then });
    }
    steps
}

/// What the nemesis did, for the report of a failed run.
pub struct Log {
    start: Instant,
    pub lines: Vec<String>,
}

impl Log {
    pub fn new() -> Log {
        Log { start: Instant::now(), lines: Vec::new() }
    }

    pub fn note(&mut self, what: impl fmt::Display) {
        let line = format!("{:>7.1}s {what}", self.start.elapsed().as_secs_f64());
        eprintln!("chaos: {line}");
        self.lines.push(line);
    }
}

impl Default for Log {
    fn default() -> Self {
        Log::new()
    }
}

/// Applies one fault to the cluster's processes. `snapshot` takes the snapshot.
pub fn apply(c: &mut Cluster, fault: &Fault, log: &mut Log, snapshot: &mut dyn FnMut(&Cluster, &mut Log)) {
    log.note(fault);
    match fault {
        Fault::Kill(nodes) => {
            for &i in nodes {
                c.storageds[i].kill();
            }
        }
        Fault::Restart(nodes, gap) => {
            for &i in nodes {
                restart(c, i);
                std::thread::sleep(*gap);
            }
        }
        Fault::FailDisk(i) => {
            let obj = c.path(&format!("storaged{}/obj", i + 1));
            if let Err(e) = std::fs::rename(&obj, failed_dir(c, *i)) {
                log.note(format!("cannot fail the disk of storaged {i}: {e}"));
            }
        }
        Fault::Pause(i, d) => {
            c.storageds[*i].signal(Signal::SIGSTOP);
            std::thread::sleep(*d);
            c.storageds[*i].signal(Signal::SIGCONT);
        }
        Fault::KillMaster(d) => match c.master(0).or_else(|| c.master(1)).or_else(|| c.master(2)) {
            Some(m) => {
                c.groupds[m].kill();
                std::thread::sleep(*d);
                c.groupds[m].restart();
            }
            None => log.note("no master seen: nothing killed"),
        },
        Fault::Snapshot => snapshot(c, log),
    }
}

fn failed_dir(c: &Cluster, i: usize) -> std::path::PathBuf {
    c.path(&format!("storaged{}/obj.failed", i + 1))
}

/// Starts storaged `i` again: stopped first if its disk had failed (its directory put back).
fn restart(c: &mut Cluster, i: usize) {
    let failed = failed_dir(c, i);
    if failed.exists() {
        c.storageds[i].kill();
        std::fs::rename(&failed, c.path(&format!("storaged{}/obj", i + 1))).expect("put the object directory back");
    }
    c.storageds[i].kill();
    c.storageds[i].restart();
}

/// Every process up again: the storaged that are down are started, in order.
pub fn heal(c: &mut Cluster, log: &mut Log) {
    for g in 0..c.groupds.len() {
        if !c.groupds[g].is_running() {
            log.note(format!("heal: groupd {g}"));
            c.groupds[g].kill();
            c.groupds[g].restart();
        }
    }
    for i in 0..c.storageds.len() {
        if !c.storageds[i].is_running() || failed_dir(c, i).exists() {
            log.note(format!("heal: storaged {i}"));
            restart(c, i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_schedule_that_never_restarts_a_running_node() {
        let a = schedule(7, 5, Duration::from_secs(3), 60);
        let b = schedule(7, 5, Duration::from_secs(3), 60);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        let mut down = Vec::new();
        for s in &a {
            match &s.fault {
                Fault::Kill(n) => {
                    assert!(n.iter().all(|i| !down.contains(i)), "{n:?} killed while down");
                    down.extend(n);
                }
                Fault::FailDisk(i) => {
                    assert!(!down.contains(i), "{i} failed while down");
                    down.push(*i);
                }
                Fault::Restart(n, _) => {
                    assert!(n.iter().all(|i| down.contains(i)), "{n:?} restarted while up");
                    down.retain(|i| !n.contains(i));
                }
                Fault::Pause(i, d) => {
                    assert!(!down.contains(i));
                    assert!(*d > Duration::from_secs(3), "a pause longer than the lease");
                }
                _ => {}
            }
        }
    }
}
