//! `sheepctl cluster …`.

use anyhow::Result;
use serde_json::json;
use sheep_client::group::GroupClient;
use sheep_core::group::{ClusterInfo, ClusterStatus, MemberRole, SessionKind};
use sheep_core::size::format_size;

use crate::cli::{ClusterCmd, FormatArgs, RecoverCmd};
use crate::node;
use crate::output::{fields, list, print_json, table, time};

pub async fn run(client: &GroupClient, cmd: &ClusterCmd, json: bool) -> Result<()> {
    match cmd {
        ClusterCmd::Format(args) => format(client, args, json).await,
        ClusterCmd::Info => {
            let info = client.info().await?;
            if json {
                print_json(&info)
            } else {
                // A client without keys reached it: the cluster runs without keys too.
                if sheep_rpc::transport::is_insecure() {
                    println!(
                        "INSECURE: this cluster runs without keys (--insecure): anyone who reaches its ports can \
                         read and write every VDI"
                    );
                }
                print!("{}", render_info(&info));
                Ok(())
            }
        }
        ClusterCmd::Shutdown => {
            client.shutdown().await?;
            if json {
                print_json(&json!({ "status": "shutdown" }))
            } else {
                println!(
                    "cluster shut down: every storage node stops; start them all again and the cluster resumes \
                    in the same epoch"
                );
                Ok(())
            }
        }
        ClusterCmd::Check(a) => crate::check::cluster(&client.addrs().join(","), a, json).await,
        ClusterCmd::Recover(RecoverCmd::Force) => {
            client.recover_force().await?;
            let info = client.info().await?;
            let epoch = info.epochs.last().map_or(0, |e| e.epoch);
            let nodes = info.epochs.last().map_or(0, |e| e.nodes.len());
            if json {
                print_json(&json!({ "status": "running", "epoch": epoch, "nodes": nodes }))
            } else {
                println!("cluster recovered: running in epoch {epoch} with {nodes} storage node(s)");
                Ok(())
            }
        }
    }
}

async fn format(client: &GroupClient, args: &FormatArgs, json: bool) -> Result<()> {
    let policy = sheep_core::group::Policy {
        min_copies: args.min_copies.unwrap_or(0),
        hold_ms: args.min_copies_wait * 1000,
        allow_fewer_zones: args.allow_fewer_zones,
        secure: args.secure,
    };
    let cfg = client.format_with(args.copies, args.object_size, args.voters, args.force, policy).await?;
    if json {
        return print_json(&cfg);
    }
    println!(
        "cluster formatted: id {}, {} (writes acknowledged on at least {}), object size {}, {} voters, sessions {}",
        cfg.cluster_id,
        copies(cfg.copies),
        cfg.policy.min_copies_for(cfg.copies),
        format_size(cfg.object_size()),
        cfg.voters,
        session_protection(cfg.policy.secure)
    );
    Ok(())
}

/// `cluster info`'s status while the cluster runs with no storage node in its epoch (none has
/// joined since the format: no epoch yet).
pub const NO_STORAGE_NODE: &str = "running, but no storage node has joined: nothing can be stored until one does";

fn status_word(s: ClusterStatus) -> &'static str {
    match s {
        ClusterStatus::Unformatted => "unformatted",
        ClusterStatus::Running => "running",
        ClusterStatus::Shutdown => "shutdown",
        ClusterStatus::Halted => "halted",
    }
}

/// `cluster info` for people.
pub fn render_info(info: &ClusterInfo) -> String {
    let addrs = |role: MemberRole| -> Vec<String> {
        let mut v: Vec<String> = info.members.iter().filter(|m| m.role == role).map(|m| m.addr.clone()).collect();
        v.sort();
        v
    };
    let master = addrs(MemberRole::Master);
    let status = match info.status {
        ClusterStatus::Unformatted => "unformatted (run `sheepctl cluster format`)".to_string(),
        ClusterStatus::Shutdown if !info.missing.is_empty() => {
            "shutdown (waiting for every node of the last epoch to come back)".to_string()
        }
        ClusterStatus::Halted => "halted: every storage node is gone; waiting for every node of the last epoch \
                                  to come back (they hold the newest data), or `sheepctl cluster recover force`"
            .to_string(),
        ClusterStatus::Running if info.epochs.last().is_none_or(|e| e.nodes.is_empty()) => NO_STORAGE_NODE.to_string(),
        s => status_word(s).to_string(),
    };
    let mut pairs = vec![("Status", status)];
    match &info.config {
        Some(c) => pairs.extend([
            ("Cluster id", c.cluster_id.clone()),
            ("Created", time(c.created_ms)),
            ("Copies", c.copies.to_string()),
            ("Replication", replication(c, info.epochs.last().map_or(&[][..], |e| &e.nodes))),
            ("Object size", format_size(c.object_size())),
            ("Voters", c.voters.to_string()),
            ("Encryption", session_protection(c.policy.secure).to_string()),
        ]),
        None => pairs.push(("Cluster id", "-".into())),
    }
    pairs.push(("Master", if master.is_empty() { "none (election in progress)".into() } else { list(&master) }));
    pairs.push(("Submasters", list(&addrs(MemberRole::Submaster))));
    pairs.push(("Members", list(&addrs(MemberRole::Member))));
    let epoch = info.epochs.last();
    pairs.push((
        "Epoch",
        epoch.map_or("-".into(), |e| format!("{} ({} storage node{})", e.epoch, e.nodes.len(), plural(e.nodes.len()))),
    ));
    if matches!(info.status, ClusterStatus::Shutdown | ClusterStatus::Halted) {
        pairs.push(("Waiting for", list(&info.missing.iter().map(|n| n.id.clone()).collect::<Vec<_>>())));
    }
    let storage = info.sessions.iter().filter(|s| s.kind.is_storage()).count();
    let clients = info.sessions.iter().filter(|s| matches!(s.kind, SessionKind::Client { .. })).count();
    pairs.push(("Sessions", format!("{storage} storage, {clients} client")));
    pairs.push(("Answered by", format!("{} (applied seq {})", info.answered_by, info.applied_seq)));

    let mut out = fields(&pairs);
    let (_, rows) = crate::node_rows::rows(info);
    out.push_str("\nStorage nodes:\n");
    if rows.is_empty() {
        out.push_str("  (none)\n");
    } else {
        out.push_str(&table("  ", node::HEADERS, &node::cells(&rows)));
    }
    if !info.locks.is_empty() {
        out.push_str("\nLocks:\n");
        let rows: Vec<Vec<String>> = info
            .locks
            .iter()
            .map(|l| vec![l.lock.vdi.clone(), l.lock.session.to_string(), l.lock.token.to_string(), l.holder.clone()])
            .collect();
        out.push_str(&table("  ", &["VDI", "SESSION", "TOKEN", "HOLDER"], &rows));
    }
    out.push_str("\nEpoch history (newest first):\n");
    out.push_str(&node::epoch_table("  ", &info.epochs));
    out
}

/// How the cluster's copies fit its storage nodes now: fully replicated, degraded (fewer
/// zones than copies: under-replicated), or below the minimum (writes are held, then fail).
pub fn replication(c: &sheep_core::group::ClusterConfig, nodes: &[sheep_core::epoch::NodeInfo]) -> String {
    let zones = sheep_core::group::policy::zones(nodes);
    let min = usize::from(c.policy.min_copies_for(c.copies));
    let wait = c.policy.hold_ms() / 1000;
    if zones < min {
        format!(
            "halted: {zones} zone(s) up, fewer than the {min} copies a write needs: writes are held {wait} s, then fail"
        )
    } else if zones < usize::from(c.copies) {
        format!("degraded: {zones} zone(s) up for {}: under-replicated (writes need {min})", copies(c.copies))
    } else {
        format!("ok (writes need {min} of {})", copies(c.copies))
    }
}

/// How the cluster's sessions are protected (after the keyed handshake).
pub fn session_protection(secure: bool) -> &'static str {
    if secure {
        "encrypted (--secure)"
    } else {
        "integrity-checked, not encrypted (format --secure to encrypt)"
    }
}

/// "1 copy", "3 copies".
pub fn copies(n: u8) -> String {
    if n == 1 {
        "1 copy".into()
    } else {
        format!("{n} copies")
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sheep_core::epoch::{EpochRecord, NodeInfo};
    use sheep_core::group::{ClusterConfig, GroupMember, Session};

    fn node(n: u8) -> NodeInfo {
        let id = format!("127.0.0.{n}:7001");
        NodeInfo { id: id.clone(), addr: id, zone: u32::from(n), weight: 1 }
    }

    pub(crate) fn sample() -> ClusterInfo {
        let member = |n: u8, role| GroupMember { raft_id: u64::from(n), addr: format!("127.0.0.{n}:7000"), role };
        ClusterInfo {
            status: ClusterStatus::Running,
            config: Some(ClusterConfig {
                cluster_id: "c0ffee".into(),
                created_ms: 1_795_000_000_000,
                copies: 3,
                object_size_shift: 22,
                voters: 3,
                policy: Default::default(),
            }),
            members: vec![
                member(2, MemberRole::Submaster),
                member(1, MemberRole::Master),
                member(3, MemberRole::Submaster),
            ],
            epochs: vec![
                EpochRecord { epoch: 1, time_ms: 1_795_000_001_000, nodes: vec![node(1), node(2)] },
                EpochRecord { epoch: 2, time_ms: 1_795_000_002_000, nodes: vec![node(1)] },
            ],
            sessions: vec![
                Session { id: 4, kind: SessionKind::Storage(node(1)), opened_ms: 0, failed: None },
                Session { id: 7, kind: SessionKind::Storage(node(3)), opened_ms: 0, failed: None },
                Session { id: 9, kind: SessionKind::Client { name: "sheepctl".into() }, opened_ms: 0, failed: None },
            ],
            locks: vec![],
            missing: vec![],
            clean_epoch: 0,
            applied_seq: 12,
            answered_by: "127.0.0.1:7000".into(),
        }
    }

    #[test]
    fn renders_info_for_people() {
        let text = render_info(&sample());
        let expected = "\
Status:       running
Cluster id:   c0ffee
Created:      2026-11-18 11:06:40 UTC
Copies:       3
Replication:  halted: 1 zone(s) up, fewer than the 2 copies a write needs: writes are held 60 s, then fail
Object size:  4.0 MiB
Voters:       3
Encryption:   integrity-checked, not encrypted (format --secure to encrypt)
Master:       127.0.0.1:7000
Submasters:   127.0.0.2:7000, 127.0.0.3:7000
Members:      -
Epoch:        2 (1 storage node)
Sessions:     2 storage, 1 client
Answered by:  127.0.0.1:7000 (applied seq 12)

Storage nodes:
  ID              ADDR            ZONE  WEIGHT  STATE    SESSION
  127.0.0.1:7001  127.0.0.1:7001  1     1       up       4
  127.0.0.3:7001  127.0.0.3:7001  3     1       joining  7

Epoch history (newest first):
  EPOCH  TIME                     NODES
  2      2026-11-18 11:06:42 UTC  127.0.0.1:7001
  1      2026-11-18 11:06:41 UTC  127.0.0.1:7001, 127.0.0.2:7001
";
        assert_eq!(text, expected, "got:\n{text}");
    }

    #[test]
    fn renders_an_unformatted_cluster() {
        let info = ClusterInfo {
            status: ClusterStatus::Unformatted,
            config: None,
            members: vec![],
            epochs: vec![],
            sessions: vec![],
            locks: vec![],
            missing: vec![],
            clean_epoch: 0,
            applied_seq: 0,
            answered_by: "127.0.0.1:7000".into(),
        };
        let text = render_info(&info);
        assert!(
            text.starts_with("Status:       unformatted (run `sheepctl cluster format`)\nCluster id:   -\n"),
            "{text}"
        );
        assert!(text.contains("Master:       none (election in progress)"));
        assert!(text.contains("Storage nodes:\n  (none)\n"));
        // Formatted, running, and no storage node yet (no epoch), or none in the epoch.
        let mut info = ClusterInfo { status: ClusterStatus::Running, ..sample() };
        info.epochs.clear();
        info.sessions.clear();
        let text = render_info(&info);
        assert!(text.starts_with(&format!("Status:       {NO_STORAGE_NODE}\nCluster id:   c0ffee\n")), "{text}");
        assert!(NO_STORAGE_NODE.starts_with("running, but no storage node has joined: nothing can be stored"));
        info.epochs.push(EpochRecord { epoch: 1, time_ms: 0, nodes: vec![] });
        assert!(render_info(&info).starts_with(&format!("Status:       {NO_STORAGE_NODE}\n")));
        let v = serde_json::to_value(&info).unwrap();
        assert_eq!(v["status"], "Running", "the JSON status stays machine-readable");
    }

    #[test]
    fn info_json_is_the_cluster_info() {
        let v = serde_json::to_value(sample()).unwrap();
        assert_eq!(v["status"], "Running");
        assert_eq!(v["config"]["cluster_id"], "c0ffee");
        assert_eq!(v["epochs"][1]["epoch"], 2);
        assert_eq!(v["members"][1]["role"], "Master");
        assert_eq!(v["sessions"][0]["kind"]["Storage"]["id"], "127.0.0.1:7001");
        assert_eq!(v["sessions"][2]["kind"]["Client"]["name"], "sheepctl");
    }
}
