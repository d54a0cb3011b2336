//! `sheepctl status`: the cluster's health at a glance, like `ceph -s` — healthy, degraded
//! (nodes down, failed or joining, fewer zones than copies, recovery under way, with its
//! progress and an estimate of when it ends) or halted (shut down, every storage node gone,
//! fewer zones than a write needs), with the reasons. Recovery is asked of every storage
//! node twice, a second apart, for its rate.

use std::time::Duration;

use anyhow::Result;
use futures::future::join_all;
use serde::Serialize;
use sheep_core::group::{ClusterInfo, ClusterStatus, MemberRole};
use sheep_core::store::RecoveryStatus;

use crate::node_rows::{rows, NodeRow};
use crate::output::print_json;

/// How long recovery is watched for its rate.
const RATE_OVER: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Healthy,
    Degraded,
    Halted,
    Unformatted,
}

impl Health {
    fn word(self) -> &'static str {
        match self {
            Health::Healthy => "HEALTHY",
            Health::Degraded => "DEGRADED",
            Health::Halted => "HALTED",
            Health::Unformatted => "UNFORMATTED",
        }
    }
}

/// One storage node's recovery, where it is not complete.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Recovering {
    pub node: String,
    pub epoch: u32,
    pub done: u64,
    pub total: u64,
    /// Objects per second over the last second.
    pub per_sec: f64,
    /// Seconds left at that rate (`None`: no progress to go by, or waiting for nodes).
    pub eta_secs: Option<f64>,
    /// Nodes it waits for (a newer copy may be there).
    pub waiting_for: Vec<String>,
}

#[derive(Debug, PartialEq, Serialize)]
pub struct Status {
    pub health: Health,
    /// Why it is not healthy, one sentence each.
    pub reasons: Vec<String>,
    pub epoch: u32,
    pub nodes_up: usize,
    pub nodes: usize,
    pub voters: usize,
    pub master: Option<String>,
    pub recovering: Vec<Recovering>,
    pub vdis: usize,
    pub locks: usize,
}

/// The health of the cluster from what groupd says and what each node said of its recovery
/// `RATE_OVER` apart (`None`: that node was not asked or did not answer). Pure.
pub fn assess(
    info: &ClusterInfo,
    nodes: &[NodeRow],
    before: &[Option<RecoveryStatus>],
    after: &[Result<RecoveryStatus, String>],
    vdis: usize,
) -> Status {
    let (epoch, _) = rows(info);
    let mut reasons = Vec::new();
    let mut health = if info.status == ClusterStatus::Unformatted { Health::Unformatted } else { Health::Healthy };
    // Halted outranks degraded; an unformatted cluster stays that.
    let mut worsen = |h: Health, reason: String, reasons: &mut Vec<String>| {
        if health != Health::Unformatted && (h == Health::Halted || health == Health::Healthy) {
            health = h;
        }
        reasons.push(reason);
    };
    match info.status {
        ClusterStatus::Unformatted => reasons.push("not formatted: `sheepctl cluster format`".into()),
        ClusterStatus::Shutdown => worsen(
            Health::Halted,
            format!("shut down: waiting for every node of epoch {epoch} ({})", names(&info.missing)),
            &mut reasons,
        ),
        ClusterStatus::Halted => worsen(
            Health::Halted,
            format!(
                "halted: every storage node left; waiting for those of epoch {epoch} ({}), or `cluster recover force`",
                names(&info.missing)
            ),
            &mut reasons,
        ),
        ClusterStatus::Running => {}
    }
    if info.status == ClusterStatus::Running && nodes.iter().all(|n| n.state != "up") {
        worsen(Health::Halted, "no storage node is up: nothing can be stored".into(), &mut reasons);
    }
    for (state, what) in [("down", "down"), ("failed", "failed (its disk)"), ("joining", "joining")] {
        let these: Vec<&str> = nodes.iter().filter(|n| n.state == state).map(|n| n.id.as_str()).collect();
        if !these.is_empty() {
            worsen(
                Health::Degraded,
                format!("{} storage node(s) {what}: {}", these.len(), these.join(", ")),
                &mut reasons,
            );
        }
    }
    if let (Some(c), Some(last)) = (&info.config, info.epochs.last()) {
        if info.status == ClusterStatus::Running && !last.nodes.is_empty() {
            let zones = sheep_core::group::policy::zones(&last.nodes);
            let min = usize::from(c.policy.min_copies_for(c.copies));
            if zones < min {
                let why = format!("{zones} zone(s) up, fewer than the {min} copies a write needs: writes are held");
                worsen(Health::Halted, why, &mut reasons);
            } else if zones < usize::from(c.copies) {
                let why = format!("{zones} zone(s) up for {} copies: objects are under-replicated", c.copies);
                worsen(Health::Degraded, why, &mut reasons);
            }
        }
    }
    let mut recovering = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        match after.get(i) {
            Some(Ok(r)) if !r.complete => {
                let earlier = before.get(i).and_then(Option::as_ref).filter(|b| b.epoch == r.epoch);
                let per_sec = earlier.map_or(0.0, |b| r.done.saturating_sub(b.done) as f64 / RATE_OVER.as_secs_f64());
                let left = r.total.saturating_sub(r.done);
                let eta_secs = (per_sec > 0.0 && r.listed && r.waiting_for.is_empty()).then(|| left as f64 / per_sec);
                recovering.push(Recovering {
                    node: n.id.clone(),
                    epoch: r.epoch,
                    done: r.done,
                    total: r.total,
                    per_sec,
                    eta_secs,
                    waiting_for: r.waiting_for.clone(),
                });
            }
            Some(Err(e)) if n.state == "up" => {
                worsen(Health::Degraded, format!("storage node {} did not answer: {e}", n.id), &mut reasons);
            }
            _ => {}
        }
    }
    if !recovering.is_empty() {
        let left: u64 = recovering.iter().map(|r| r.total.saturating_sub(r.done)).sum();
        let why = format!("recovery under way on {} node(s): {left} object copies still to pull", recovering.len());
        worsen(Health::Degraded, why, &mut reasons);
    }
    let master = info.members.iter().find(|m| m.role == MemberRole::Master).map(|m| m.addr.clone());
    if info.status != ClusterStatus::Unformatted && master.is_none() {
        worsen(Health::Degraded, "no groupd master is known right now".into(), &mut reasons);
    }
    Status {
        health,
        reasons,
        epoch,
        nodes_up: nodes.iter().filter(|n| n.state == "up").count(),
        nodes: nodes.len(),
        voters: info.members.iter().filter(|m| m.role != MemberRole::Member).count(),
        master,
        recovering,
        vdis,
        locks: info.locks.len(),
    }
}

fn names(nodes: &[sheep_core::epoch::NodeInfo]) -> String {
    if nodes.is_empty() {
        return "none named".into();
    }
    nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>().join(", ")
}

fn eta(secs: f64) -> String {
    match secs {
        s if s < 90.0 => format!("{s:.0} s"),
        s if s < 5400.0 => format!("{:.0} min", s / 60.0),
        s => format!("{:.1} h", s / 3600.0),
    }
}

fn render(s: &Status) -> String {
    let mut out = format!("health: {}\n", s.health.word());
    for r in &s.reasons {
        out.push_str(&format!("  - {r}\n"));
    }
    out.push_str(&format!(
        "groupd: {} voter(s), master {}\nstorage: {} of {} node(s) up, epoch {}\ndata: {} VDI(s), {} lock(s) held\n",
        s.voters,
        s.master.as_deref().unwrap_or("unknown"),
        s.nodes_up,
        s.nodes,
        s.epoch,
        s.vdis,
        s.locks
    ));
    for r in &s.recovering {
        let pct = if r.total > 0 { r.done as f64 * 100.0 / r.total as f64 } else { 0.0 };
        let when = match (r.eta_secs, r.waiting_for.is_empty()) {
            (_, false) => format!("waiting for {}", r.waiting_for.join(", ")),
            (Some(e), true) => format!("{:.0} objects/s, about {} left", r.per_sec, eta(e)),
            (None, true) => "no progress in the last second".into(),
        };
        out.push_str(&format!(
            "recovery: {} to epoch {}: {} of {} objects ({pct:.0}%), {when}\n",
            r.node, r.epoch, r.done, r.total
        ));
    }
    out
}

pub async fn run(groupd: &str, json: bool) -> Result<()> {
    let client = crate::client(groupd)?;
    let pool = crate::node_stat::pool();
    let info = client.info().await?;
    let (_, nodes) = rows(&info);
    let ask = || {
        join_all(nodes.iter().map(|n| {
            let pool = &pool;
            let asked = n.state == "up" || n.state == "joining";
            async move {
                if asked {
                    pool.recovery(&n.addr).await.map_err(|e| e.to_string())
                } else {
                    Err(format!("not asked: {}", n.state))
                }
            }
        }))
    };
    let before: Vec<Option<RecoveryStatus>> = ask().await.into_iter().map(Result::ok).collect();
    let after = if before.iter().flatten().any(|r| !r.complete) {
        tokio::time::sleep(RATE_OVER).await;
        ask().await
    } else {
        before.iter().map(|r| r.clone().ok_or_else(|| "did not answer".to_string())).collect()
    };
    let vdis = client.vdi_list().await.map(|(v, _)| v.iter().filter(|e| !e.is_snapshot()).count()).unwrap_or(0);
    let status = assess(&info, &nodes, &before, &after, vdis);
    if json {
        print_json(&status)
    } else {
        print!("{}", render(&status));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use sheep_core::epoch::{EpochRecord, NodeInfo};
    use sheep_core::group::GroupMember;

    use super::*;

    fn node(id: &str, state: &'static str) -> NodeRow {
        NodeRow { id: id.into(), addr: id.into(), zone: 0, weight: 1, state, reason: None, session: Some(1) }
    }

    fn info(status: ClusterStatus) -> ClusterInfo {
        let nodes: Vec<NodeInfo> =
            (1..=3).map(|n| NodeInfo { id: format!("n{n}"), addr: format!("n{n}"), zone: n, weight: 1 }).collect();
        ClusterInfo {
            status,
            config: None,
            members: vec![GroupMember { raft_id: 1, addr: "g1".into(), role: MemberRole::Master }],
            epochs: vec![EpochRecord { epoch: 4, time_ms: 0, nodes }],
            sessions: Vec::new(),
            locks: Vec::new(),
            missing: Vec::new(),
            clean_epoch: 4,
            applied_seq: 10,
            answered_by: "g1".into(),
        }
    }

    fn rec(done: u64, total: u64, complete: bool) -> RecoveryStatus {
        RecoveryStatus { epoch: 4, done, total, complete, listed: true, waiting: 0, waiting_for: Vec::new() }
    }

    #[test]
    fn all_up_and_recovered_is_healthy() {
        let nodes = [node("n1", "up"), node("n2", "up"), node("n3", "up")];
        let done = || Some(rec(10, 10, true));
        let s = assess(
            &info(ClusterStatus::Running),
            &nodes,
            &[done(), done(), done()],
            &[Ok(rec(10, 10, true)), Ok(rec(10, 10, true)), Ok(rec(10, 10, true))],
            2,
        );
        assert_eq!(s.health, Health::Healthy, "{s:?}");
        assert!(s.reasons.is_empty());
        assert_eq!((s.nodes_up, s.nodes, s.voters, s.vdis), (3, 3, 1, 2));
        assert!(render(&s).starts_with("health: HEALTHY\n"));
    }

    #[test]
    fn a_down_node_and_a_recovery_are_degraded_with_an_estimate() {
        let nodes = [node("n1", "up"), node("n2", "up"), node("n3", "down")];
        let before = [Some(rec(100, 400, false)), Some(rec(10, 10, true)), None];
        let after = [Ok(rec(150, 400, false)), Ok(rec(10, 10, true)), Err("not asked: down".to_string())];
        let s = assess(&info(ClusterStatus::Running), &nodes, &before, &after, 1);
        assert_eq!(s.health, Health::Degraded);
        assert!(s.reasons.iter().any(|r| r == "1 storage node(s) down: n3"), "{:?}", s.reasons);
        assert!(s.reasons.iter().any(|r| r.contains("250 object copies still to pull")), "{:?}", s.reasons);
        assert_eq!(s.recovering.len(), 1);
        assert_eq!((s.recovering[0].per_sec, s.recovering[0].eta_secs), (50.0, Some(5.0)));
        let text = render(&s);
        assert!(
            text.contains("recovery: n1 to epoch 4: 150 of 400 objects (38%), 50 objects/s, about 5 s left"),
            "{text}"
        );
    }

    #[test]
    fn halted_and_shut_down_clusters_say_what_they_wait_for() {
        let nodes = [node("n1", "down"), node("n2", "down"), node("n3", "down")];
        let mut i = info(ClusterStatus::Halted);
        i.missing = i.epochs[0].nodes.clone();
        let none = [None, None, None];
        let gone = || Err::<RecoveryStatus, _>("not asked: down".to_string());
        let s = assess(&i, &nodes, &none, &[gone(), gone(), gone()], 0);
        assert_eq!(s.health, Health::Halted);
        assert!(s.reasons[0].contains("waiting for those of epoch 4 (n1, n2, n3)"), "{:?}", s.reasons);
        assert!(s.reasons.iter().any(|r| r.starts_with("3 storage node(s) down")), "still says which are down");
        let mut u = info(ClusterStatus::Unformatted);
        u.epochs.clear();
        let s = assess(&u, &[], &[], &[], 0);
        assert_eq!(s.health, Health::Unformatted);
    }

    #[test]
    fn a_node_waiting_for_others_has_no_estimate() {
        let nodes = [node("n1", "up")];
        let mut waiting = rec(5, 9, false);
        waiting.waiting_for = vec!["n3".into()];
        let s = assess(&info(ClusterStatus::Running), &nodes, &[Some(rec(1, 9, false))], &[Ok(waiting)], 0);
        assert_eq!(s.recovering[0].eta_secs, None);
        assert!(render(&s).contains("waiting for n3"));
        assert!(eta(30.0) == "30 s" && eta(600.0) == "10 min" && eta(7200.0) == "2.0 h");
    }
}
