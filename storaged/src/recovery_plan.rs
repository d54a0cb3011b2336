//! Which copy of an object recovery may take, or whether it must wait (pure).
//!
//! Every write of epoch `j` is acknowledged only once every replica of the object in `j`
//! (`R_j`) holds it, and a copy's version names the epoch of its last write. So if the
//! newest copy found was last written in epoch `k`, a newer one can exist only if the object
//! was written in some epoch `j > k` — and then every node of `R_j` holds it. One node of
//! `R_j` that answered (whatever it holds, live or stale, or nothing) rules that out for `j`.
//! Epochs before the cluster's clean epoch (every node recovered then) need no witness.
//! The current epoch needs none either: this node is one of the object's replicas in it and
//! does not hold it yet, so no write of this epoch was acknowledged. If some `j` in between
//! has no witness, the newest copy may be on a node that is down: the object waits.
//!
//! A live copy here last written in the current epoch was settled by an earlier plan of
//! this epoch (no object is used before its epoch is planned): it holds every write the
//! epoch acknowledged, and stays. Counts of writes within one epoch do not compare across
//! nodes (a pulled copy carries its source's count; a retried write counts twice), so a
//! peer's higher count of this epoch is no reason to pull over it.

use std::collections::BTreeSet;

use sheep_core::epoch::Epoch;
use sheep_core::store::{is_settled, version_epoch, written_in, Version};

/// Where a copy of an object is: a node's address; 0 for a live copy or the last epoch in
/// which a stale copy was live; and the copy's version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub addr: String,
    pub stale_epoch: u32,
    pub version: Version,
}

/// What to do about one object this node owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// This node's live copy is the newest: nothing to pull.
    Settled,
    /// Pull from one of these (the copies of the newest version, best first). An unsettled
    /// copy pulled is settled here (see [`Plan::Settle`]).
    Pull(Vec<Holder>),
    /// This node's live copy is the newest but unsettled (a write to it was cut off, here
    /// and on every node holding that version), and it is the one every replica takes:
    /// settle it in place.
    Settle,
    /// No node holds it (and none that is down may): a new object.
    Absent,
    /// A newer copy may be on these nodes, which did not answer.
    Wait(Vec<String>),
}

/// The replicas (node ids) of the object in one epoch.
pub struct EpochReplicas {
    pub epoch: Epoch,
    pub nodes: Vec<String>,
}

/// Plans the recovery of one object here (`me`) from the copies `holders` answered with.
/// `answered`: the nodes whose listing came in; `history`: the object's replicas in every
/// epoch from the clean one up to (not including) the current one, `epoch`.
pub fn plan(
    me: &str,
    holders: &[Holder],
    answered: &BTreeSet<String>,
    history: &[EpochReplicas],
    clean: Epoch,
    epoch: Epoch,
) -> Plan {
    if holders.iter().any(|h| h.addr == me && h.stale_epoch == 0 && written_in(h.version, epoch)) {
        return Plan::Settled;
    }
    let newest = holders.iter().map(|h| h.version).max();
    let from = newest.map_or(0, |v| version_epoch(v).saturating_add(1)).max(clean);
    let mut waits: Vec<String> = Vec::new();
    for r in history.iter().filter(|r| r.epoch >= from) {
        if !r.nodes.iter().any(|n| answered.contains(n)) {
            for n in &r.nodes {
                if !waits.contains(n) {
                    waits.push(n.clone());
                }
            }
        }
    }
    if !waits.is_empty() {
        return Plan::Wait(waits);
    }
    let Some(newest) = newest else { return Plan::Absent };
    if !is_settled(newest) {
        // Unsettled copies of one version may differ, block by block: every owner takes the
        // same one (live before stale, then the lowest id), and settles it.
        let chosen = holders
            .iter()
            .filter(|h| h.version == newest)
            .min_by_key(|h| (h.stale_epoch != 0, h.addr.as_str()))
            .expect("the newest version is some holder's");
        if chosen.addr == me && chosen.stale_epoch == 0 {
            return Plan::Settle;
        }
        return Plan::Pull(vec![chosen.clone()]);
    }
    if holders.iter().any(|h| h.addr == me && h.stale_epoch == 0 && h.version >= newest) {
        return Plan::Settled;
    }
    let mut best: Vec<Holder> = holders.iter().filter(|h| h.version == newest).cloned().collect();
    // This node's own (stale) copy first: restored in place, it costs no copy; then live
    // copies before stale ones.
    best.sort_by_key(|h| (h.addr != me, h.stale_epoch != 0));
    Plan::Pull(best)
}

/// The nodes of an epoch since the clean one that did not answer, where they span so many
/// zones that some object may have had all its replicas among them (as many zones as its
/// copies, or as the epoch has): such an object is listed by nobody up, and this node may be one of its
/// owners now. Until one of them answers, recovery is not complete. `epochs`: (node id,
/// zone) of every node of each epoch; `copies`: the fewest copies of any VDI.
pub fn hidden_on(epochs: &[Vec<(String, u32)>], answered: &BTreeSet<String>, copies: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for nodes in epochs {
        let mut zones: Vec<u32> = nodes.iter().map(|(_, z)| *z).collect();
        zones.sort_unstable();
        zones.dedup();
        let down: Vec<&(String, u32)> = nodes.iter().filter(|(id, _)| !answered.contains(id)).collect();
        // The replicas of an object are in distinct zones: all of them can be down only if
        // the down nodes span as many zones as an object has replicas.
        let mut down_zones: Vec<u32> = down.iter().map(|(_, z)| *z).collect();
        down_zones.sort_unstable();
        down_zones.dedup();
        if !down.is_empty() && down_zones.len() >= copies.min(zones.len()) {
            for (id, _) in down {
                if !out.contains(id) {
                    out.push(id.clone());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The current epoch of every plan below.
    const NOW: Epoch = 7;

    /// A settled copy: the `n`th write of `epoch`.
    fn h(addr: &str, stale_epoch: u32, epoch: u32, n: u64) -> Holder {
        Holder { addr: addr.into(), stale_epoch, version: (u64::from(epoch) << 32) | (2 * n) }
    }

    /// A copy whose `n`th write of `epoch` was cut off.
    fn cut(addr: &str, stale_epoch: u32, epoch: u32, n: u64) -> Holder {
        Holder { addr: addr.into(), stale_epoch, version: (u64::from(epoch) << 32) | (2 * n - 1) }
    }

    fn answered(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    fn epoch(e: u32, nodes: &[&str]) -> EpochReplicas {
        EpochReplicas { epoch: e, nodes: nodes.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn the_newest_version_wins_live_or_stale() {
        let holders = [h("a", 0, 4, 2), h("b", 5, 4, 7), h("me", 5, 3, 9)];
        let history = [epoch(4, &["a", "b", "me"])];
        let p = plan("me", &holders, &answered(&["a", "b", "me"]), &history, 1, NOW);
        assert_eq!(p, Plan::Pull(vec![h("b", 5, 4, 7)]), "a stale copy newer than a live one");
        let holders = [h("me", 0, 4, 7), h("b", 0, 4, 7)];
        assert_eq!(plan("me", &holders, &answered(&["b", "me"]), &history, 1, NOW), Plan::Settled);
        let holders = [h("me", 3, 4, 7), h("b", 0, 4, 7)];
        let p = plan("me", &holders, &answered(&["b", "me"]), &history, 1, NOW);
        assert_eq!(p, Plan::Pull(vec![h("me", 3, 4, 7), h("b", 0, 4, 7)]), "the own copy first: no copying");
    }

    #[test]
    fn unsettled_copies_of_the_newest_version_become_one() {
        let history = [epoch(4, &["a", "b", "me"])];
        let all = answered(&["a", "b", "me"]);
        // Cut off on every replica: all take a's (the lowest id), which a settles in place.
        let holders = [cut("me", 0, 4, 3), cut("b", 0, 4, 3), cut("a", 0, 4, 3)];
        assert_eq!(plan("me", &holders, &all, &history, 1, NOW), Plan::Pull(vec![cut("a", 0, 4, 3)]));
        assert_eq!(plan("b", &holders, &all, &history, 1, NOW), Plan::Pull(vec![cut("a", 0, 4, 3)]));
        assert_eq!(plan("a", &holders, &all, &history, 1, NOW), Plan::Settle);
        // A live copy before a stale one, even of a lower id.
        let holders = [cut("a", 5, 4, 3), cut("me", 0, 4, 3)];
        assert_eq!(plan("me", &holders, &all, &history, 1, NOW), Plan::Settle);
        // Where the write completed somewhere, that copy is newer: the cut-off ones take it.
        let holders = [cut("me", 0, 4, 3), h("b", 0, 4, 3), cut("a", 0, 4, 3)];
        assert_eq!(plan("me", &holders, &all, &history, 1, NOW), Plan::Pull(vec![h("b", 0, 4, 3)]));
        assert_eq!(plan("b", &holders, &all, &history, 1, NOW), Plan::Settled);
        // A cut-off write on one replica only, never completed: the newest all the same.
        let holders = [cut("me", 0, 4, 4), h("b", 0, 4, 3), h("a", 0, 4, 3)];
        assert_eq!(plan("me", &holders, &all, &history, 1, NOW), Plan::Settle);
        assert_eq!(plan("a", &holders, &all, &history, 1, NOW), Plan::Pull(vec![cut("me", 0, 4, 4)]));
    }

    #[test]
    fn an_object_waits_while_every_replica_of_a_later_epoch_is_down() {
        // Written last in epoch 4 as far as anyone answering knows; in epochs 5 and 6 its
        // replicas were x, y, z, all down now: one of them may hold a write of epoch 6.
        let holders = [h("me", 3, 4, 2), h("b", 3, 4, 2)];
        let history = [epoch(4, &["me", "b", "x"]), epoch(5, &["b", "x", "y"]), epoch(6, &["x", "y", "z"])];
        let up = answered(&["me", "b"]);
        assert_eq!(plan("me", &holders, &up, &history, 1, NOW), Plan::Wait(vec!["x".into(), "y".into(), "z".into()]));
        // One of them answers (holding nothing newer): no write of epoch 6 exists.
        let up = answered(&["me", "b", "y"]);
        assert_eq!(plan("me", &holders, &up, &history, 1, NOW), Plan::Pull(vec![h("me", 3, 4, 2), h("b", 3, 4, 2)]));
        // Epochs before the clean one need no witness.
        let history = [epoch(4, &["me", "b", "x"]), epoch(5, &["x", "y", "z"]), epoch(6, &["b", "me", "q"])];
        assert!(matches!(plan("me", &holders, &answered(&["me", "b"]), &history, 6, NOW), Plan::Pull(_)));
    }

    #[test]
    fn objects_may_hide_on_the_down_nodes_only_when_they_are_as_many_as_the_copies() {
        let epoch = |ids: &[(&str, u32)]| ids.iter().map(|(i, z)| (i.to_string(), *z)).collect::<Vec<_>>();
        let five = epoch(&[("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5)]);
        assert!(
            hidden_on(std::slice::from_ref(&five), &answered(&["a", "b", "c", "d"]), 3).is_empty(),
            "one down of 3 copies"
        );
        assert!(hidden_on(std::slice::from_ref(&five), &answered(&["a", "b", "c"]), 3).is_empty(), "two down");
        let hidden = hidden_on(std::slice::from_ref(&five), &answered(&["a", "b"]), 3);
        assert_eq!(hidden, vec!["c".to_string(), "d".into(), "e".into()], "three down: some object had them all");
        // Two zones: every object has a replica in each; one zone down leaves the other.
        let two_zones = epoch(&[("a", 1), ("b", 1), ("c", 2)]);
        assert!(hidden_on(std::slice::from_ref(&two_zones), &answered(&["a", "b"]), 3).is_empty());
        assert_eq!(hidden_on(&[two_zones], &answered(&["a"]), 3), vec!["b".to_string(), "c".into()]);
    }

    #[test]
    fn nobody_holding_an_object_is_absent_only_with_a_witness_for_every_epoch() {
        let history = [epoch(2, &["a", "b"]), epoch(3, &["c", "d"])];
        assert_eq!(plan("me", &[], &answered(&["a", "c", "me"]), &history, 1, NOW), Plan::Absent);
        assert_eq!(
            plan("me", &[], &answered(&["a", "me"]), &history, 1, NOW),
            Plan::Wait(vec!["c".into(), "d".into()])
        );
        assert_eq!(plan("me", &[], &answered(&["me"]), &[], 1, NOW), Plan::Absent, "a new cluster");
    }

    #[test]
    fn a_copy_written_in_the_current_epoch_stays() {
        let history = [epoch(4, &["me", "b", "x"])];
        let up = answered(&["me", "b"]);
        // b counts more writes of epoch 5 (it pulled early, or took a write twice): no
        // reason to pull over this copy, which took the epoch's writes as well.
        let p = plan("me", &[h("me", 0, 5, 1), h("b", 0, 5, 5)], &up, &history, 1, 5);
        assert_eq!(p, Plan::Settled);
        // The same counts of an earlier epoch: b's copy is the newer one.
        let p = plan("me", &[h("me", 0, 4, 1), h("b", 0, 4, 5)], &up, &history, 1, 5);
        assert_eq!(p, Plan::Pull(vec![h("b", 0, 4, 5)]));
        // A write of this epoch cut off here did not complete: the usual rule.
        let p = plan("me", &[cut("me", 0, 5, 2), h("b", 0, 5, 5)], &up, &history, 1, 5);
        assert_eq!(p, Plan::Pull(vec![h("b", 0, 5, 5)]));
        let v = |h: Holder| h.version;
        assert!(written_in(v(h("me", 0, 5, 1)), 5) && !written_in(v(cut("me", 0, 5, 1)), 5));
        assert!(!written_in(v(h("me", 0, 4, 1)), 5) && !written_in(0, 5));
    }
}
