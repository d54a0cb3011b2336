//! `sheepctl node stat` and `vdi stat`: I/O rates and latency percentiles, from every
//! storage node's request counters (`ioStats`, see `sheep_core::iostat`) read twice an
//! interval apart — as `rbd perf image iostat` reads the OSDs'. Latencies are the nodes'
//! (from taking a request to answering it); a VDI's writes are counted once, not once per
//! replica; a clone's reads of what it still shares with its snapshot count under the
//! snapshot, whose objects they are.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use futures::future::join_all;
use serde::Serialize;
use sheep_client::vdi::StorePool;
use sheep_core::iostat::{IoRate, NodeIo, ReadWrite};
use sheep_core::namespace::VdiEntry;
use sheep_core::object::VdiId;
use sheep_core::size::format_size;

use crate::node_rows::{rows, NodeRow};
use crate::output::table;

#[derive(Args, Debug)]
pub struct StatArgs {
    /// Print a report every SECS seconds (each over the last SECS) until interrupted,
    /// instead of one report over one second
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub watch: Option<f64>,
    /// With --watch: stop after N reports
    #[arg(long, value_name = "N", requires = "watch", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        Ok(v) => Err(format!("{v} is not between 0.1 and 3600 seconds")),
        Err(_) => Err(format!("{s:?} is not a number of seconds")),
    }
}

impl StatArgs {
    fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.watch.unwrap_or(1.0))
    }

    /// How many reports: one without --watch, else --count or no end.
    fn reports(&self) -> u64 {
        match (self.watch, self.count) {
            (None, _) => 1,
            (Some(_), Some(n)) => n,
            (Some(_), None) => u64::MAX,
        }
    }
}

/// Every node's answer at one moment: counters, or why there are none.
type Sample = HashMap<String, Result<NodeIo, String>>;

async fn sample(pool: &StorePool, nodes: &[NodeRow]) -> Sample {
    let answers = join_all(nodes.iter().map(|n| pool.io_stats(&n.addr))).await;
    nodes.iter().zip(answers).map(|(n, a)| (n.id.clone(), a.map_err(|e| e.to_string()))).collect()
}

/// What a node did between two samples, and over how long by its own clock (so that the
/// time a call took does not count); after a restart, since it started.
fn node_delta(later: &NodeIo, earlier: Option<&NodeIo>) -> (ReadWrite, HashMap<VdiId, ReadWrite>, f64) {
    let earlier = earlier.filter(|e| e.uptime_ms <= later.uptime_ms);
    let secs = (later.uptime_ms - earlier.map_or(0, |e| e.uptime_ms)) as f64 / 1000.0;
    let before: HashMap<VdiId, ReadWrite> = earlier.map(|e| e.vdis.iter().copied().collect()).unwrap_or_default();
    let vdis = later.vdis.iter().map(|(vid, rw)| (*vid, before.get(vid).map_or(*rw, |b| rw.since(b)))).collect();
    let total = earlier.map_or(later.total, |e| later.total.since(&e.total));
    (total, vdis, secs.max(0.001))
}

#[derive(Serialize)]
struct NodeStatRow {
    id: String,
    state: &'static str,
    read: Option<IoRate>,
    write: Option<IoRate>,
    error: Option<String>,
}

#[derive(Serialize)]
struct NodeStat {
    interval_secs: f64,
    nodes: Vec<NodeStatRow>,
}

/// `sheepctl node stat`: each storage node's reads and writes per second.
pub async fn node(groupd: &str, a: &StatArgs, json: bool) -> Result<()> {
    let client = crate::client(groupd)?;
    let pool = crate::node_stat::pool();
    let (_, mut nodes) = rows(&client.info().await?);
    let mut before = sample(&pool, &nodes).await;
    for report in 0..a.reports() {
        tokio::time::sleep(a.interval()).await;
        let now = sample(&pool, &nodes).await;
        let stat = NodeStat {
            interval_secs: a.interval().as_secs_f64(),
            nodes: nodes
                .iter()
                .map(|n| {
                    let (read, write, error) = match now.get(&n.id) {
                        Some(Ok(io)) => {
                            let (total, _, secs) = node_delta(io, before.get(&n.id).and_then(|b| b.as_ref().ok()));
                            (Some(IoRate::of(&total.read, secs, 1.0)), Some(IoRate::of(&total.write, secs, 1.0)), None)
                        }
                        Some(Err(e)) => (None, None, Some(e.clone())),
                        None => (None, None, Some("not asked".into())),
                    };
                    NodeStatRow { id: n.id.clone(), state: n.state, read, write, error }
                })
                .collect(),
        };
        print_report(&stat, json, report, node_table)?;
        before = now;
        if report + 1 < a.reports() {
            // Nodes that joined or left since: asked from the next report on.
            let (_, fresh) = rows(&client.info().await?);
            if fresh.iter().map(|n| &n.id).ne(nodes.iter().map(|n| &n.id)) {
                nodes = fresh;
                before = sample(&pool, &nodes).await;
            }
        }
    }
    Ok(())
}

fn node_table(s: &NodeStat) -> String {
    if s.nodes.is_empty() {
        return "no storage nodes\n".into();
    }
    let cells: Vec<Vec<String>> = s
        .nodes
        .iter()
        .map(|n| {
            let mut row = vec![n.id.clone(), n.state.to_string()];
            match (&n.read, &n.write) {
                (Some(r), Some(w)) => row.extend(rate_cells(r, w)),
                _ => row.extend(["-", "-", "-", "-", "-", "-", "-"].map(String::from)),
            }
            row.push(n.error.clone().unwrap_or_default());
            row
        })
        .collect();
    table(
        "",
        &["NODE", "STATE", "READ/S", "WRITE/S", "READ B/S", "WRITE B/S", "READ LAT", "WRITE LAT", "ERR/S", "ERROR"],
        &cells,
    )
}

#[derive(Serialize)]
struct VdiStatRow {
    name: String,
    /// Set for a snapshot's row.
    snapshot: Option<String>,
    vid: u32,
    read: IoRate,
    write: IoRate,
}

#[derive(Serialize)]
struct VdiStat {
    interval_secs: f64,
    vdis: Vec<VdiStatRow>,
    /// Storage nodes that did not answer: their share is missing.
    unanswered: Vec<String>,
}

/// `sheepctl vdi stat [NAME]`: each VDI's reads and writes per second, busiest first (only
/// the busy ones, unless a NAME is given: then that VDI and its snapshots, busy or not).
pub async fn vdi(groupd: &str, name: Option<&str>, a: &StatArgs, json: bool) -> Result<()> {
    let client = crate::client(groupd)?;
    let pool = crate::node_stat::pool();
    let (_, nodes) = rows(&client.info().await?);
    let (mut entries, _) = client.vdi_list().await?;
    if let Some(name) = name {
        sheep_core::object::validate_vdi_name(name)?;
        entries.retain(|e| e.name == name);
        if entries.is_empty() {
            bail!("there is no VDI named {name:?} (see `sheepctl vdi list`)");
        }
    }
    let mut before = sample(&pool, &nodes).await;
    for report in 0..a.reports() {
        tokio::time::sleep(a.interval()).await;
        let now = sample(&pool, &nodes).await;
        let stat = vdi_rates(&entries, &before, &now, name.is_some(), a.interval().as_secs_f64());
        print_report(&stat, json, report, vdi_table)?;
        before = now;
        if report + 1 < a.reports() && name.is_none() {
            // VDIs created meanwhile get their names.
            entries = client.vdi_list().await?.0;
        }
    }
    Ok(())
}

/// Sums every node's part of each VDI's requests (pure, for the tests). A VDI's writes
/// reach each of its `copies` replicas: counted once.
fn vdi_rates(entries: &[VdiEntry], before: &Sample, now: &Sample, all: bool, interval_secs: f64) -> VdiStat {
    let mut sums: HashMap<VdiId, (ReadWrite, f64)> = HashMap::new();
    let mut unanswered = Vec::new();
    for (id, answer) in now {
        match answer {
            Ok(io) => {
                let (_, vdis, secs) = node_delta(io, before.get(id).and_then(|b| b.as_ref().ok()));
                for (vid, rw) in vdis {
                    let (sum, longest) = sums.entry(vid).or_default();
                    sum.add(&rw);
                    *longest = longest.max(secs);
                }
            }
            Err(e) => unanswered.push(format!("{id}: {e}")),
        }
    }
    unanswered.sort();
    let mut vdis: Vec<VdiStatRow> = entries
        .iter()
        .filter_map(|e| {
            let (rw, secs) = sums.get(&e.vid).copied().unwrap_or_default();
            let busy = rw.read.ops + rw.write.ops > 0;
            (busy || all).then(|| {
                let secs = if secs > 0.0 { secs } else { interval_secs };
                VdiStatRow {
                    name: e.name.clone(),
                    snapshot: e.snapshot.clone(),
                    vid: e.vid.get(),
                    read: IoRate::of(&rw.read, secs, 1.0),
                    write: IoRate::of(&rw.write, secs, 1.0 / f64::from(e.copies.max(1))),
                }
            })
        })
        .collect();
    vdis.sort_by(|x, y| {
        let ops = |r: &VdiStatRow| r.read.ops_per_sec + r.write.ops_per_sec;
        ops(y).total_cmp(&ops(x)).then_with(|| x.name.cmp(&y.name))
    });
    VdiStat { interval_secs, vdis, unanswered }
}

fn vdi_table(s: &VdiStat) -> String {
    let mut out = if s.vdis.is_empty() {
        "no VDI did any I/O\n".to_string()
    } else {
        let cells: Vec<Vec<String>> = s
            .vdis
            .iter()
            .map(|v| {
                let name = match &v.snapshot {
                    Some(tag) => format!("{}@{tag}", v.name),
                    None => v.name.clone(),
                };
                let mut row = vec![name];
                row.extend(rate_cells(&v.read, &v.write));
                row
            })
            .collect();
        table("", &["VDI", "READ/S", "WRITE/S", "READ B/S", "WRITE B/S", "READ LAT", "WRITE LAT", "ERR/S"], &cells)
    };
    for node in &s.unanswered {
        out.push_str(&format!("(not counted: {node})\n"));
    }
    out
}

/// Operations, bytes and latencies (p50/p99) per second of a read and a write rate.
fn rate_cells(r: &IoRate, w: &IoRate) -> [String; 7] {
    [
        format!("{:.0}", r.ops_per_sec),
        format!("{:.0}", w.ops_per_sec),
        bytes_per_sec(r.bytes_per_sec),
        bytes_per_sec(w.bytes_per_sec),
        latencies(r),
        latencies(w),
        format!("{:.0}", r.errors_per_sec + w.errors_per_sec),
    ]
}

fn bytes_per_sec(b: f64) -> String {
    format!("{}/s", format_size(b as u64))
}

/// `p50/p99`, e.g. `120µs/3.2ms`; `-` without requests.
fn latencies(r: &IoRate) -> String {
    match (r.p50_us, r.p99_us) {
        (Some(p50), Some(p99)) => format!("{}/{}", latency(p50), latency(p99)),
        _ => "-".into(),
    }
}

fn latency(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0}µs")
    } else if us < 1_000_000.0 {
        format!("{:.1}ms", us / 1000.0)
    } else {
        format!("{:.2}s", us / 1_000_000.0)
    }
}

/// A report: a table (a blank line between two), or one JSON object per line.
fn print_report<T: Serialize>(value: &T, json: bool, report: u64, text: impl Fn(&T) -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(value)?);
    } else {
        if report > 0 {
            println!();
        }
        print!("{}", text(value));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sheep_core::iostat::{Direction, IoTable};

    fn entry(name: &str, vid: u32, copies: u8) -> VdiEntry {
        let mut e: VdiEntry = serde_json::from_value(serde_json::json!({
            "name": name, "vid": vid, "size": 1 << 30, "copies": copies, "object_size_shift": 22, "created_ms": 0
        }))
        .unwrap_or_else(|e| panic!("a VdiEntry from JSON: {e}"));
        e.vid = VdiId::new(vid).unwrap();
        e
    }

    #[test]
    fn a_vdis_writes_count_once_over_its_replicas_and_its_reads_where_they_went() {
        let vid = VdiId::new(5).unwrap();
        let (mut a, mut b) = (IoTable::default(), IoTable::default());
        let before: Sample =
            [("a".to_string(), Ok(a.snapshot(1000))), ("b".to_string(), Ok(b.snapshot(1000)))].into_iter().collect();
        for _ in 0..30 {
            a.record(Some(vid), Direction::Write, 100, 4096, true);
            b.record(Some(vid), Direction::Write, 300, 4096, true);
        }
        for _ in 0..10 {
            a.record(Some(vid), Direction::Read, 80, 4096, true);
        }
        let now: Sample = [
            ("a".to_string(), Ok(a.snapshot(3000))),
            ("b".to_string(), Ok(b.snapshot(3000))),
            ("c".to_string(), Err("cannot connect".to_string())),
        ]
        .into_iter()
        .collect();
        let entries = [entry("disk0", 5, 2), entry("idle", 6, 2)];
        let stat = vdi_rates(&entries, &before, &now, false, 1.0);
        assert_eq!(stat.vdis.len(), 1, "only the busy VDI");
        let v = &stat.vdis[0];
        assert_eq!(v.name, "disk0");
        assert_eq!(v.write.ops_per_sec, 15.0, "60 replica writes of copies 2 in 2 s");
        assert_eq!(v.write.bytes_per_sec, 15.0 * 4096.0);
        assert_eq!(v.read.ops_per_sec, 5.0);
        assert!(v.write.p99_us.is_some_and(|p| p > 200.0), "the slower replica shows: {:?}", v.write.p99_us);
        assert_eq!(stat.unanswered, ["c: cannot connect"]);
        let all = vdi_rates(&entries, &before, &now, true, 1.0);
        assert_eq!(all.vdis.len(), 2, "a named VDI shows idle too");
        assert_eq!(all.vdis[1].read.ops_per_sec, 0.0);
        assert!(vdi_table(&stat).contains("disk0"));
    }

    #[test]
    fn a_node_that_restarted_counts_from_its_start() {
        let vid = VdiId::new(5).unwrap();
        let mut old = IoTable::default();
        for _ in 0..100 {
            old.record(Some(vid), Direction::Read, 100, 512, true);
        }
        let mut fresh = IoTable::default();
        fresh.record(Some(vid), Direction::Read, 100, 512, true);
        let (total, vdis, secs) = node_delta(&fresh.snapshot(500), Some(&old.snapshot(90_000)));
        assert_eq!((total.read.ops, vdis[&vid].read.ops, secs), (1, 1, 0.5));
    }

    #[test]
    fn latencies_read_in_the_unit_that_fits() {
        assert_eq!(latency(85.4), "85µs");
        assert_eq!(latency(3210.0), "3.2ms");
        assert_eq!(latency(2_500_000.0), "2.50s");
        assert_eq!(parse_secs("0.05").unwrap_err(), "0.05 is not between 0.1 and 3600 seconds");
        assert!(parse_secs("x").is_err());
        assert_eq!(parse_secs("2").unwrap(), 2.0);
    }
}
