//! `sheepctl node …`.

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use sheep_client::vdi::{CallLimits, StorePool};
use sheep_core::epoch::EpochRecord;

use crate::cli::NodeCmd;
use crate::node_rows::{rows, NodeRow};
use crate::output::{list, print_json, table, time};

pub const HEADERS: &[&str] = &["ID", "ADDR", "ZONE", "WEIGHT", "STATE", "SESSION"];

#[derive(Serialize)]
struct NodeList {
    epoch: u32,
    nodes: Vec<NodeRow>,
}

pub async fn run(groupd: &str, cmd: &NodeCmd, json: bool) -> Result<()> {
    match cmd {
        NodeCmd::Epochs { addr } => epochs(addr, json).await,
        NodeCmd::Info => crate::node_stat::info(groupd, json).await,
        NodeCmd::Recovery => crate::node_stat::recovery(groupd, json).await,
        NodeCmd::Stat(a) => crate::io_stat::node(groupd, a, json).await,
        NodeCmd::List => {
            let info = crate::client(groupd)?.info().await?;
            let (epoch, nodes) = rows(&info);
            if json {
                print_json(&NodeList { epoch, nodes })
            } else {
                if nodes.is_empty() {
                    println!("no storage nodes (epoch {epoch})");
                } else {
                    print!("{}", table("", HEADERS, &cells(&nodes)));
                }
                Ok(())
            }
        }
    }
}

/// `node epochs ADDR`: the history as the storage node itself keeps it.
async fn epochs(addr: &str, json: bool) -> Result<()> {
    let pool = StorePool::new(CallLimits { connect: Duration::from_secs(1), call: Duration::from_secs(3) });
    let status = pool.status(addr).await?;
    let epochs = pool.epoch_log(addr).await?;
    if json {
        return print_json(&epochs);
    }
    let cluster = if status.cluster_id.is_empty() { "none yet".to_string() } else { status.cluster_id };
    let state = if status.joined { format!("joined, session {}", status.session) } else { "not joined".to_string() };
    println!("storage node {addr} (cluster {cluster}, {state}): epoch history, newest first");
    print!("{}", epoch_table("", &epochs));
    Ok(())
}

/// An epoch history as a table, newest first.
pub fn epoch_table(indent: &str, epochs: &[EpochRecord]) -> String {
    if epochs.is_empty() {
        return format!("{indent}(none)\n");
    }
    let rows: Vec<Vec<String>> = epochs
        .iter()
        .rev()
        .map(|e| {
            let ids: Vec<String> = e.nodes.iter().map(|n| n.id.clone()).collect();
            vec![e.epoch.to_string(), time(e.time_ms), list(&ids)]
        })
        .collect();
    table(indent, &["EPOCH", "TIME", "NODES"], &rows)
}

pub fn cells(rows: &[NodeRow]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.addr.clone(),
                r.zone.to_string(),
                r.weight.to_string(),
                match &r.reason {
                    Some(why) => format!("{} ({why})", r.state),
                    None => r.state.to_string(),
                },
                r.session.map_or("-".into(), |s| s.to_string()),
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sheep_core::epoch::{EpochRecord, NodeInfo};
    use sheep_core::group::{ClusterInfo, ClusterStatus, Session, SessionKind};

    fn node(n: u8) -> NodeInfo {
        let id = format!("127.0.0.{n}:7001");
        NodeInfo { id: id.clone(), addr: id, zone: 0, weight: 1 }
    }

    #[test]
    fn states_of_nodes() {
        let info = ClusterInfo {
            status: ClusterStatus::Shutdown,
            config: None,
            members: vec![],
            epochs: vec![EpochRecord { epoch: 5, time_ms: 0, nodes: vec![node(2), node(1)] }],
            sessions: vec![
                Session { id: 8, kind: SessionKind::Storage(node(1)), opened_ms: 0, failed: None },
                Session { id: 9, kind: SessionKind::Storage(node(3)), opened_ms: 0, failed: None },
                Session { id: 10, kind: SessionKind::Storage(node(4)), opened_ms: 0, failed: Some("EIO".into()) },
            ],
            locks: vec![],
            missing: vec![node(2)],
            clean_epoch: 0,
            applied_seq: 0,
            answered_by: String::new(),
        };
        let (epoch, rows) = rows(&info);
        assert_eq!(epoch, 5);
        let states: Vec<(&str, &str, Option<u64>)> = rows.iter().map(|r| (r.id.as_str(), r.state, r.session)).collect();
        assert_eq!(
            states,
            vec![
                ("127.0.0.1:7001", "up", Some(8)),
                ("127.0.0.2:7001", "down", None),
                ("127.0.0.3:7001", "joining", Some(9)),
                ("127.0.0.4:7001", "failed", Some(10))
            ]
        );
        assert_eq!(
            table("", HEADERS, &cells(&rows)),
            "\
ID              ADDR            ZONE  WEIGHT  STATE         SESSION
127.0.0.1:7001  127.0.0.1:7001  0     1       up            8
127.0.0.2:7001  127.0.0.2:7001  0     1       down          -
127.0.0.3:7001  127.0.0.3:7001  0     1       joining       9
127.0.0.4:7001  127.0.0.4:7001  0     1       failed (EIO)  10
"
        );
    }
}
