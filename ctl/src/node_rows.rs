//! The storage nodes as `node list`, `node info`, `node recovery` and `cluster info` show them:
//! those of the current epoch, and those with a live session not in it (yet).

use serde::Serialize;
use sheep_core::group::ClusterInfo;

/// A storage node as `node list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeRow {
    pub id: String,
    pub addr: String,
    pub zone: u32,
    pub weight: u32,
    /// `up`: in the current epoch with a live session; `down`: in the current epoch
    /// without one (a shut-down cluster waiting for it); `joining`: a live session, not in
    /// the current epoch (yet); `failed`: its disk failed, so it left the data membership
    /// (its session lives on until it stops).
    pub state: &'static str,
    /// Why it failed (`failed` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Its live storage session, if any.
    pub session: Option<u64>,
}

/// The nodes of the current epoch and the ones with a live session, by id.
pub fn rows(info: &ClusterInfo) -> (u32, Vec<NodeRow>) {
    let latest = info.epochs.last();
    let epoch = latest.map_or(0, |e| e.epoch);
    let session_of = |id: &str| {
        info.sessions.iter().find(|s| s.failed.is_none() && s.node().is_some_and(|n| n.id == id)).map(|s| s.id)
    };
    let mut out: Vec<NodeRow> = Vec::new();
    for n in latest.map(|e| e.nodes.as_slice()).unwrap_or_default() {
        let session = session_of(&n.id);
        out.push(NodeRow {
            id: n.id.clone(),
            addr: n.addr.clone(),
            zone: n.zone,
            weight: n.weight,
            state: if session.is_some() { "up" } else { "down" },
            reason: None,
            session,
        });
    }
    for s in &info.sessions {
        if let Some(n) = s.node() {
            if !out.iter().any(|r| r.id == n.id) {
                out.push(NodeRow {
                    id: n.id.clone(),
                    addr: n.addr.clone(),
                    zone: n.zone,
                    weight: n.weight,
                    state: if s.failed.is_some() { "failed" } else { "joining" },
                    reason: s.failed.clone(),
                    session: Some(s.id),
                });
            }
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    (epoch, out)
}
