//! The nemesis: a fault schedule drawn from a seed, then applied to a [`Cluster`]'s
//! processes. The schedule depends on the seed alone (which nodes are down is tracked while
//! drawing it), so a failing run is replayed by its seed.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::netns::Links;
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
    /// Storaged `i` restarts with a disk fault set by a failpoint (builds with failpoints
    /// only). It counts as down: its `Restart` starts it without the fault.
    Inject(usize, Injection),
    /// Every storaged that is up restarts set to crash in its next write, each at a point
    /// of its own (after the crcs or after the data): a write cut off on every replica at
    /// once, as a power loss cuts it. They count as down.
    CutEverywhere(Vec<(usize, Injection)>),
    /// groupd `g` (not the master) restarts set to tear its next raft log write and crash;
    /// after `Duration` it starts again without the fault.
    TearLog(usize, Duration),
    /// Storaged `i`'s links to these peers are cut for `Duration`, then whole again (in a
    /// network namespace of the test's own only, see `crate::netns`). The node runs on.
    Cut(usize, Peers, Duration),
    /// groupd `g`'s links to the other groupd are cut for `Duration` (a raft partition: it is
    /// the minority; clients and storaged still reach it), then whole again.
    CutGroup(usize, Duration),
}

/// The peers a cut separates a storage node from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peers {
    /// Every groupd: its lease runs out while clients still reach it.
    Groupd,
    /// The other storage nodes (recovery, repairs).
    Storage,
    /// The clients (the writers, sheepctl, the NBD export): groupd still sees it alive.
    Clients,
    /// Everyone.
    All,
}

impl Peers {
    const ALL: [Peers; 4] = [Peers::Groupd, Peers::Storage, Peers::Clients, Peers::All];
}

/// A disk fault storaged's failpoints inject (see `storaged/src/objects`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injection {
    /// Crashes in a write (1 in 20) after its crcs, before its data.
    CrashBeforeData,
    /// Crashes in a write (1 in 20) after its data, before its settled version.
    CrashBeforeVersion,
    /// Writes fail with EIO: the disk fails.
    WriteEio,
    /// Syncs fail with EIO: the disk fails.
    SyncEio,
    /// Writes fail as on a full disk.
    NoSpace,
}

impl Injection {
    const ALL: [Injection; 5] = [
        Injection::CrashBeforeData,
        Injection::CrashBeforeVersion,
        Injection::WriteEio,
        Injection::SyncEio,
        Injection::NoSpace,
    ];

    /// `FAILPOINTS` for it; `first_write`: the crash comes in the very next write.
    pub fn failpoints(self, first_write: bool) -> String {
        let crash = if first_write { "1*return(crash)" } else { "5%return(crash)" };
        match self {
            Injection::CrashBeforeData => format!("object-write-before-data={crash}"),
            Injection::CrashBeforeVersion => format!("object-write-before-version={crash}"),
            Injection::WriteEio => "object-write=return(eio)".into(),
            Injection::SyncEio => "object-sync=return(eio)".into(),
            Injection::NoSpace => "object-no-space=return".into(),
        }
    }
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
            Fault::Inject(i, what) => write!(f, "restart storaged {i} with {what:?}"),
            Fault::CutEverywhere(n) => write!(f, "cut the next write of every storaged up off: {n:?}"),
            Fault::TearLog(g, d) => write!(f, "tear the next raft log write of groupd {g}, back after {d:?}"),
            Fault::Cut(i, peers, d) => write!(f, "cut storaged {i} from {peers:?} for {d:?}"),
            Fault::CutGroup(g, d) => write!(f, "cut groupd {g} from the other groupd for {d:?}"),
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

/// Draws a schedule of about `secs` seconds for `nodes` storaged with lease `lease`;
/// `failpoints`: the daemons take failpoints, so disk faults, cut-off writes and torn log
/// writes are drawn too; `cuts`: links can be cut (see `crate::netns`).
pub fn schedule(seed: u64, nodes: usize, lease: Duration, secs: u64, failpoints: bool, cuts: bool) -> Vec<Step> {
    let mut r = Rng::new(seed);
    let mut down: Vec<usize> = Vec::new();
    let mut steps = Vec::new();
    let mut total = Duration::ZERO;
    let lease_ms = lease.as_millis() as u64;
    while total < Duration::from_secs(secs) {
        let up: Vec<usize> = (0..nodes).filter(|i| !down.contains(i)).collect();
        let (fail_rolls, cut_rolls) = (if failpoints { 15 } else { 0 }, if cuts { 13 } else { 0 });
        let roll = r.below(100 + fail_rolls + cut_rolls);
        // Past 100: the failpoint faults (when drawn), then the cuts.
        let roll = if roll >= 100 + fail_rolls { 200 + roll - 100 - fail_rolls } else { roll };
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
        } else if roll < 100 && r.below(2) == 0 {
            // A snapshot with writes in flight, then at once a node the new copy-on-write
            // objects are on hangs or dies: their replicas' versions differ as the epoch
            // changes, and the next epoch's writes land while recovery still plans (how an
            // acknowledged write was once lost, found by fio through the NBD export).
            let then = ms(&mut r, 100, 1500);
            total += then;
            steps.push(Step { fault: Fault::Snapshot, then });
            let i = up[r.below(up.len() as u64) as usize];
            if r.below(2) == 0 {
                down.push(i);
                Fault::Kill(vec![i])
            } else {
                Fault::Pause(i, ms(&mut r, lease_ms + 500, lease_ms + 2500))
            }
        } else if roll < 100 {
            Fault::Snapshot
        } else if roll < 107 {
            let i = up[r.below(up.len() as u64) as usize];
            down.push(i);
            Fault::Inject(i, Injection::ALL[r.below(Injection::ALL.len() as u64) as usize])
        } else if roll < 110 {
            let points = [Injection::CrashBeforeData, Injection::CrashBeforeVersion];
            let cut: Vec<(usize, Injection)> = up.iter().map(|&i| (i, points[r.below(2) as usize])).collect();
            down.extend(&up);
            Fault::CutEverywhere(cut)
        } else if roll < 200 {
            // groupd 0..3; which one is the master is seen only when applied.
            Fault::TearLog(r.below(3) as usize, ms(&mut r, 1000, 4000))
        } else if roll < 203 {
            // groupd 0..3; which one is the master is seen only when applied.
            Fault::CutGroup(r.below(3) as usize, ms(&mut r, 1000, lease_ms * 3))
        } else {
            let i = up[r.below(up.len() as u64) as usize];
            let peers = Peers::ALL[r.below(Peers::ALL.len() as u64) as usize];
            Fault::Cut(i, peers, ms(&mut r, 1000, lease_ms * 2))
        };
        let then = ms(&mut r, 300, 3000);
        total += then
            + match &fault {
                Fault::Pause(_, d)
                | Fault::KillMaster(d)
                | Fault::TearLog(_, d)
                | Fault::Cut(_, _, d)
                | Fault::CutGroup(_, d) => *d,
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

/// Applies one fault to the cluster's processes. `snapshot` takes the snapshot; `links`
/// cuts links (drawn only when there are).
pub fn apply(
    c: &mut Cluster,
    fault: &Fault,
    log: &mut Log,
    snapshot: &mut dyn FnMut(&Cluster, &mut Log),
    links: Option<&Links>,
) {
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
        Fault::Inject(i, what) => {
            c.storageds[*i].kill();
            c.storageds[*i].failpoints = Some(what.failpoints(false));
            c.storageds[*i].restart();
        }
        Fault::CutEverywhere(nodes) => {
            for &(i, _) in nodes {
                c.storageds[i].kill();
            }
            for &(i, what) in nodes {
                c.storageds[i].failpoints = Some(what.failpoints(true));
                c.storageds[i].restart();
            }
        }
        Fault::TearLog(g, d) => {
            // Not the master: its crash would be a master kill; a submaster's log write is
            // torn (it takes every entry the master sends).
            let master = c.master(0).or_else(|| c.master(1)).or_else(|| c.master(2));
            let g = if master == Some(*g) { (*g + 1) % c.groupds.len() } else { *g };
            c.groupds[g].kill();
            c.groupds[g].failpoints = Some("raft-log-append=1*return(torn)".into());
            c.groupds[g].restart();
            std::thread::sleep(*d);
            if !c.groupds[g].is_running() {
                log.note(format!("groupd {g} crashed in a torn log write"));
            }
            c.groupds[g].kill();
            c.groupds[g].failpoints = None;
            c.groupds[g].restart();
        }
        Fault::Cut(i, peers, d) => {
            let Some(links) = links else { return log.note("no links to cut here: nothing done") };
            let ip = |addr: &String| addr.parse::<SocketAddr>().expect("a daemon's ip:port").ip();
            let node = ip(&c.storaged_addrs[*i]);
            let groupds: Vec<IpAddr> = c.groupd_addrs.iter().map(ip).collect();
            let storage: Vec<IpAddr> = c.storaged_addrs.iter().map(ip).collect();
            let clients = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
            let others = match peers {
                Peers::Groupd => groupds,
                Peers::Storage => storage,
                Peers::Clients => clients,
                Peers::All => [groupds, storage, clients].concat(),
            };
            links.cut(node, &others);
            std::thread::sleep(*d);
            links.heal();
        }
        Fault::CutGroup(g, d) => {
            let Some(links) = links else { return log.note("no links to cut here: nothing done") };
            let ip = |addr: &String| addr.parse::<SocketAddr>().expect("a daemon's ip:port").ip();
            let groupds: Vec<IpAddr> = c.groupd_addrs.iter().map(ip).collect();
            if c.master(0).or_else(|| c.master(1)).or_else(|| c.master(2)) == Some(*g) {
                log.note(format!("groupd {g} is the master"));
            }
            links.cut(groupds[*g], &groupds);
            std::thread::sleep(*d);
            links.heal();
        }
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
    c.storageds[i].failpoints = None;
    c.storageds[i].restart();
}

/// Every process up again: the storaged that are down are started, in order.
pub fn heal(c: &mut Cluster, log: &mut Log) {
    for g in 0..c.groupds.len() {
        if !c.groupds[g].is_running() || c.groupds[g].failpoints.is_some() {
            log.note(format!("heal: groupd {g}"));
            c.groupds[g].kill();
            c.groupds[g].failpoints = None;
            c.groupds[g].restart();
        }
    }
    for i in 0..c.storageds.len() {
        let faulty = c.storageds[i].failpoints.is_some() || failed_dir(c, i).exists();
        if !c.storageds[i].is_running() || faulty {
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
        for (failpoints, cuts) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = schedule(7, 5, Duration::from_secs(3), 1000, failpoints, cuts);
            let b = schedule(7, 5, Duration::from_secs(3), 1000, failpoints, cuts);
            assert_eq!(format!("{a:?}"), format!("{b:?}"));
            never_restarts_a_running_node(&a);
            let snapshot_then_fault = a.windows(2).any(|w| {
                matches!(w[0].fault, Fault::Snapshot)
                    && w[0].then <= Duration::from_millis(1500)
                    && matches!(w[1].fault, Fault::Kill(_) | Fault::Pause(..))
            });
            assert!(snapshot_then_fault, "a snapshot with a node lost right after it");
            let drew = a.iter().any(|s| matches!(s.fault, Fault::Inject(..) | Fault::CutEverywhere(_)));
            assert_eq!(drew, failpoints, "failpoint faults drawn only for a build with failpoints");
            let cut = a.iter().any(|s| matches!(s.fault, Fault::Cut(..)));
            assert_eq!(cut, cuts, "cuts drawn only where links can be cut");
            let group_cut = a.iter().any(|s| matches!(s.fault, Fault::CutGroup(..)));
            assert_eq!(group_cut, cuts, "groupd cuts drawn only where links can be cut");
        }
    }

    fn never_restarts_a_running_node(a: &[Step]) {
        let mut down = Vec::new();
        for s in a {
            match &s.fault {
                Fault::Kill(n) => {
                    assert!(n.iter().all(|i| !down.contains(i)), "{n:?} killed while down");
                    down.extend(n);
                }
                Fault::FailDisk(i) | Fault::Inject(i, _) => {
                    assert!(!down.contains(i), "{i} failed while down");
                    down.push(*i);
                }
                Fault::CutEverywhere(n) => {
                    assert!(n.iter().all(|(i, _)| !down.contains(i)), "{n:?} cut while down");
                    down.extend(n.iter().map(|(i, _)| *i));
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
