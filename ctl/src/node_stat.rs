//! `sheepctl node info` and `node recovery`: what each storage node says about its store.

use std::time::Duration;

use anyhow::Result;
use futures::future::join_all;
use serde::Serialize;
use sheep_client::vdi::{CallLimits, StorePool};
use sheep_core::size::format_size;
use sheep_core::store::StoreStat;

use crate::node_rows::rows;
use crate::output::{print_json, table};

pub fn pool() -> StorePool {
    StorePool::new(CallLimits { connect: Duration::from_secs(1), call: Duration::from_secs(3) })
}

#[derive(Serialize)]
struct InfoRow {
    id: String,
    state: &'static str,
    capacity: Option<u64>,
    used: Option<u64>,
    free: Option<u64>,
    objects: Option<u64>,
    error: Option<String>,
}

#[derive(Serialize)]
struct Info {
    epoch: u32,
    nodes: Vec<InfoRow>,
    total: Totals,
}

#[derive(Serialize, Default, Debug, PartialEq, Eq)]
struct Totals {
    capacity: u64,
    used: u64,
    free: u64,
    objects: u64,
    /// Nodes whose file system another node listed before counts already.
    shared: usize,
}

impl Totals {
    /// Used space and objects add up; capacity and free space are the file systems', so
    /// nodes that share one (a local cluster on one disk) count it once.
    fn of<'a>(stats: impl IntoIterator<Item = &'a StoreStat>) -> Totals {
        let mut seen = std::collections::HashSet::new();
        let mut t = Totals::default();
        for s in stats {
            t.used += s.used;
            t.objects += s.objects;
            if s.filesystem != 0 && !seen.insert(s.filesystem) {
                t.shared += 1;
                continue;
            }
            t.capacity += s.capacity;
            t.free += s.free;
        }
        t
    }
}

/// Per-node capacity and use, from every node of the current epoch and every joining one.
pub async fn info(groupd: &str, json: bool) -> Result<()> {
    let info = crate::client(groupd)?.info().await?;
    let (epoch, nodes) = rows(&info);
    let pool = pool();
    let stats = join_all(nodes.iter().map(|n| pool.stat(&n.addr))).await;
    let total = Totals::of(stats.iter().flatten());
    let rows: Vec<InfoRow> = nodes
        .iter()
        .zip(stats)
        .map(|(n, s)| match s {
            Ok(s) => InfoRow {
                id: n.id.clone(),
                state: n.state,
                capacity: Some(s.capacity),
                used: Some(s.used),
                free: Some(s.free),
                objects: Some(s.objects),
                error: None,
            },
            Err(e) => InfoRow {
                id: n.id.clone(),
                state: n.state,
                capacity: None,
                used: None,
                free: None,
                objects: None,
                error: Some(e.to_string()),
            },
        })
        .collect();
    if json {
        return print_json(&Info { epoch, nodes: rows, total });
    }
    if rows.is_empty() {
        println!("no storage nodes (epoch {epoch})");
        return Ok(());
    }
    let size = |v: Option<u64>| v.map_or("-".into(), format_size);
    let pct = |used: Option<u64>, cap: Option<u64>| match (used, cap) {
        (Some(u), Some(c)) if c > 0 => format!("{:.1}%", u as f64 * 100.0 / c as f64),
        _ => "-".into(),
    };
    let mut cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.state.to_string(),
                size(r.capacity),
                size(r.used),
                size(r.free),
                r.objects.map_or("-".into(), |o| o.to_string()),
                pct(r.used, r.capacity),
                r.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    cells.push(vec![
        "total".into(),
        String::new(),
        format_size(total.capacity),
        format_size(total.used),
        format_size(total.free),
        total.objects.to_string(),
        pct(Some(total.used), Some(total.capacity)),
        String::new(),
    ]);
    println!("storage nodes (epoch {epoch})");
    print!("{}", table("", &["ID", "STATE", "CAPACITY", "USED", "FREE", "OBJECTS", "USE", "ERROR"], &cells));
    if total.shared > 0 {
        println!(
            "({} node(s) share a file system with another: its capacity and free space are counted once)",
            total.shared
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct RecoveryRow {
    id: String,
    epoch: Option<u32>,
    done: Option<u64>,
    total: Option<u64>,
    listed: Option<bool>,
    complete: Option<bool>,
    /// Objects that wait for a node that may hold a newer copy, and those nodes.
    waiting: Option<u64>,
    waiting_for: Vec<String>,
    error: Option<String>,
    /// Why its disk failed: it left the data membership and recovers nothing (not asked).
    #[serde(skip_serializing_if = "Option::is_none")]
    failed: Option<String>,
}

#[derive(Serialize)]
struct Recovery {
    epoch: u32,
    nodes: Vec<RecoveryRow>,
}

/// Per-node recovery progress. A node whose disk failed is not asked (it left the data
/// membership and recovers nothing): it is shown failed, with the reason.
pub async fn recovery(groupd: &str, json: bool) -> Result<()> {
    let info = crate::client(groupd)?.info().await?;
    let (epoch, nodes) = rows(&info);
    let pool = pool();
    let asked = nodes.iter().filter(|n| n.reason.is_none());
    let mut states = join_all(asked.map(|n| pool.recovery(&n.addr))).await.into_iter();
    let rows: Vec<RecoveryRow> = nodes
        .iter()
        .map(|n| {
            let row = RecoveryRow {
                id: n.id.clone(),
                epoch: None,
                done: None,
                total: None,
                listed: None,
                complete: None,
                waiting: None,
                waiting_for: Vec::new(),
                error: None,
                failed: n.reason.clone(),
            };
            if row.failed.is_some() {
                return row;
            }
            match states.next().expect("one state per node asked") {
                Ok(r) => RecoveryRow {
                    epoch: Some(r.epoch),
                    done: Some(r.done),
                    total: Some(r.total),
                    listed: Some(r.listed),
                    complete: Some(r.complete),
                    waiting: Some(r.waiting),
                    waiting_for: r.waiting_for,
                    ..row
                },
                Err(e) => RecoveryRow { error: Some(e.to_string()), ..row },
            }
        })
        .collect();
    if json {
        return print_json(&Recovery { epoch, nodes: rows });
    }
    if rows.is_empty() {
        println!("no storage nodes (epoch {epoch})");
        return Ok(());
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let state = match (r.complete, r.listed, &r.error) {
                _ if r.failed.is_some() => {
                    format!("disk failed ({}): left the data membership", r.failed.as_deref().unwrap_or_default())
                }
                (_, _, Some(e)) => e.clone(),
                (Some(true), _, _) => "complete".into(),
                _ if !r.waiting_for.is_empty() => format!(
                    "waiting for {} (down; newer copies, or the only ones, may be there){}",
                    r.waiting_for.join(", "),
                    match r.waiting.unwrap_or(0) {
                        0 => String::new(),
                        n => format!(": {n} object(s) held"),
                    }
                ),
                (_, Some(false), _) => "listing".into(),
                _ => "recovering".into(),
            };
            let progress = match (r.done, r.total, r.listed) {
                (Some(d), Some(t), Some(true)) => format!("{d}/{t}"),
                (Some(d), _, Some(false)) => format!("{d}/?"),
                _ => "-".into(),
            };
            vec![r.id.clone(), r.epoch.map_or("-".into(), |e| e.to_string()), progress, state]
        })
        .collect();
    let asked = rows.iter().filter(|r| r.failed.is_none()).count();
    let complete = rows.iter().filter(|r| r.complete == Some(true)).count();
    println!("recovery to epoch {epoch}: {complete} of {asked} nodes complete");
    print!("{}", table("", &["ID", "EPOCH", "OBJECTS", "STATE"], &cells));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_on_one_file_system_count_its_space_once() {
        let st = |capacity, used, free, filesystem| StoreStat { capacity, used, free, objects: 2, filesystem };
        let stats = [st(100, 10, 50, 7), st(100, 20, 50, 7), st(80, 5, 40, 9), st(60, 1, 30, 0), st(60, 1, 30, 0)];
        let t = Totals::of(&stats);
        assert_eq!(
            t,
            Totals { capacity: 100 + 80 + 60 + 60, used: 37, free: 50 + 40 + 30 + 30, objects: 10, shared: 1 }
        );
    }
}
