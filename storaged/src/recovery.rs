//! Recovery: after every epoch change (and every new session), pull every object this node
//! owns in the new epoch from the nodes that hold it, move what it no longer owns to
//! `.stale/`, remove the objects of deleted VDIs, and report to groupd once everything is
//! held and every node's list was complete. Objects a client asks for meanwhile are pulled
//! at once ([`recover_one`]).
//!
//! Which copy is pulled: a live copy (from a node's `obj/`) whenever one was listed; only
//! when no node lists a live copy, a stale one, and then only among those last live in the
//! newest epoch (a copy that went stale earlier may have missed writes).

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use sheep_client::group::GroupClient;
use sheep_core::epoch::Epoch;
use sheep_core::object::ObjectId;
use sheep_core::store::Listing;
use sheep_rpc::error::ErrorCode;
use tracing::{debug, info, warn};

use crate::blocking::blocking;
use crate::node::{EpochRing, Node};
use crate::objects::StoreError;
use crate::recovery_progress::{Holder, Progress};

/// Objects pulled at the same time by one pass.
const PARALLEL_PULLS: usize = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long a node that left the previous epoch is given to list its objects.
const LEAVER_WAIT: Duration = Duration::from_secs(2);

/// Picks the copies worth pulling: every live one if any; else the stale ones last live in
/// the newest epoch. Peers come before this node (`me`).
pub fn best_holders(mut holders: Vec<Holder>, me: &str) -> Vec<Holder> {
    if holders.iter().any(|h| h.stale_epoch == 0) {
        holders.retain(|h| h.stale_epoch == 0);
    } else if let Some(newest) = holders.iter().map(|h| h.stale_epoch).max() {
        holders.retain(|h| h.stale_epoch == newest);
    }
    holders.sort_by_key(|h| h.addr == me);
    holders
}

/// Whether this node holds `oid` in the epoch of `ring`.
fn owns(node: &Node, ring: &EpochRing, oid: ObjectId) -> bool {
    ring.replicas(oid, node.copies_of(oid.vid())).iter().any(|n| n.id == node.info.id)
}

/// The outcome of one pass.
#[derive(Debug, PartialEq, Eq)]
enum Pass {
    /// Everything held and reported (or nothing to do).
    Finished,
    /// Something is missing or could not be asked: try again later.
    Incomplete(String),
}

/// Runs recovery for the rest of the process: a pass whenever the epoch changes or the
/// node is kicked, again with backoff while a pass is incomplete.
pub async fn run(node: Rc<Node>, client: Rc<GroupClient>) {
    let mut epochs = node.watch_epoch();
    let mut kicks = node.watch_kicks();
    let mut backoff = FIRST_BACKOFF;
    loop {
        epochs.borrow_and_update();
        kicks.borrow_and_update();
        let outcome = tokio::select! {
            r = pass(&node, &client) => Some(r),
            r = epochs.changed() => { if r.is_err() { return } None }
            r = kicks.changed() => { if r.is_err() { return } None }
        };
        let wait = match outcome {
            None => continue,
            Some(Pass::Finished) => {
                backoff = FIRST_BACKOFF;
                None
            }
            Some(Pass::Incomplete(why)) => {
                warn!("recovery to epoch {} is not complete yet: {why}; trying again in {backoff:?}", node.epoch());
                let w = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                Some(w)
            }
        };
        let sleep = async {
            match wait {
                Some(w) => tokio::time::sleep(w).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {}
            r = epochs.changed() => { if r.is_err() { return } backoff = FIRST_BACKOFF }
            r = kicks.changed() => { if r.is_err() { return } backoff = FIRST_BACKOFF }
        }
    }
}

async fn pass(node: &Rc<Node>, client: &GroupClient) -> Pass {
    if node.session() == 0 {
        // Not joined (yet, or any more): joining kicks a new pass.
        return Pass::Finished;
    }
    let epoch = node.epoch();
    let Some(ring) = node.ring(epoch) else { return Pass::Finished };
    if !ring.record.nodes.iter().any(|n| n.id == node.info.id) {
        debug!("not a member of epoch {epoch}: nothing to recover");
        return Pass::Finished;
    }
    {
        let mut p = node.recovery.borrow_mut();
        if p.epoch != epoch {
            let purge_for = p.purge_for;
            *p = Progress { epoch, purge_for, ..Progress::default() };
        }
    }
    match client.vdi_list().await {
        Ok((vdis, deleted)) => node.set_vdis(&vdis, &deleted),
        Err(e) => return Pass::Incomplete(format!("cannot list the VDIs: {e}")),
    }
    let deleted = node.deleted_vdis();
    let objects = node.objects.clone();
    match blocking(move || objects.remove_vdis(&deleted)).await {
        Ok(0) => {}
        Ok(n) => info!("removed {n} object(s) of deleted VDIs"),
        Err(e) => return Pass::Incomplete(format!("cannot remove objects of deleted VDIs: {e}")),
    }

    let (holders, local, failed) = list_everyone(node, &ring, epoch).await;
    let listed = failed.is_empty();

    // Objects no longer owned move to .stale (still served to peers by fetch).
    let give_up: Vec<ObjectId> = local.live.iter().copied().filter(|&o| !owns(node, &ring, o)).collect();
    if !give_up.is_empty() {
        let objects = node.objects.clone();
        let last_live = epoch.saturating_sub(1);
        let n = give_up.len();
        let moved = blocking(move || {
            for oid in give_up {
                objects.move_to_stale(oid, last_live)?;
            }
            objects.sync_dirs()
        })
        .await;
        match moved {
            Ok(()) => info!("moved {n} object(s) this node no longer owns to .stale"),
            Err(e) => return Pass::Incomplete(format!("cannot move objects to .stale: {e}")),
        }
    }

    let me = node.info.id.clone();
    let mut pending = HashMap::new();
    let mut total = 0u64;
    for (oid, hs) in holders {
        if node.is_deleted(oid.vid()) || !owns(node, &ring, oid) {
            continue;
        }
        total += 1;
        if hs.iter().any(|h| h.addr == me && h.stale_epoch == 0) {
            continue;
        }
        pending.insert(oid, best_holders(hs, &me));
    }
    let todo: Vec<ObjectId> = pending.keys().copied().collect();
    {
        let mut p = node.recovery.borrow_mut();
        p.total = total;
        p.done = total - pending.len() as u64;
        p.listed = listed;
        p.complete = false;
        p.pending = pending;
    }
    if !todo.is_empty() {
        info!("epoch {epoch}: pulling {} object(s) of {total} owned", todo.len());
    }
    stream::iter(todo)
        .for_each_concurrent(PARALLEL_PULLS, |oid| async move {
            if let Err(e) = recover_one(node, oid).await {
                debug!("pulling {oid}: {e}");
            }
        })
        .await;

    let missing = node.recovery.borrow().pending.len();
    if !listed {
        return Pass::Incomplete(format!("could not list the objects of {}", failed.join(", ")));
    }
    if missing > 0 {
        return Pass::Incomplete(format!("{missing} object(s) could not be pulled"));
    }
    report(node, client, epoch).await
}

/// Lists every node of the epoch (this one from its own store). Returns, per object, who
/// holds it; this node's own listing; and the nodes that could not be listed.
///
/// Nodes of the previous epoch that left are asked too, briefly and without requiring an
/// answer (a node that left is normally gone): their copies count as stale copies last
/// live in the previous epoch, used only where no node of this epoch has a live one.
async fn list_everyone(
    node: &Node,
    ring: &EpochRing,
    epoch: Epoch,
) -> (BTreeMap<ObjectId, Vec<Holder>>, Listing, Vec<String>) {
    let objects = node.objects.clone();
    let mut failed = Vec::new();
    let local = match blocking(move || objects.list()).await {
        Ok(l) => l,
        Err(e) => {
            failed.push(format!("this node ({e})"));
            Listing::default()
        }
    };
    let peers: Vec<&str> = ring.record.nodes.iter().filter(|n| n.id != node.info.id).map(|n| n.addr.as_str()).collect();
    let answers = futures::future::join_all(peers.iter().map(|addr| node.peers.list(addr, epoch))).await;
    let previous = epoch.checked_sub(1).and_then(|e| node.ring(e));
    let leavers: Vec<String> = previous
        .iter()
        .flat_map(|r| r.record.nodes.iter())
        .filter(|n| !ring.record.nodes.iter().any(|m| m.id == n.id))
        .map(|n| n.addr.clone())
        .collect();
    // A node that left may or may not know the new epoch yet: ask in the one it knows.
    let left_answers = futures::future::join_all(leavers.iter().map(|addr| async move {
        match tokio::time::timeout(LEAVER_WAIT, node.peers.list(addr, epoch - 1)).await {
            Ok(Err(e)) if e.is_code(ErrorCode::StaleEpoch) => {
                tokio::time::timeout(LEAVER_WAIT, node.peers.list(addr, epoch)).await
            }
            other => other,
        }
    }))
    .await;
    let mut holders: BTreeMap<ObjectId, Vec<Holder>> = BTreeMap::new();
    let mut add = |addr: &str, l: &Listing| {
        for &oid in &l.live {
            holders.entry(oid).or_default().push(Holder { addr: addr.to_string(), stale_epoch: 0 });
        }
        for &(oid, e) in &l.stale_only {
            holders.entry(oid).or_default().push(Holder { addr: addr.to_string(), stale_epoch: e.max(1) });
        }
    };
    add(&node.info.id, &local);
    for (addr, answer) in peers.iter().zip(answers) {
        match answer {
            Ok(l) => add(addr, &l),
            Err(e) => failed.push(e.to_string()),
        }
    }
    for (addr, answer) in leavers.iter().zip(left_answers) {
        if let Ok(Ok(l)) = answer {
            let as_stale = Listing {
                live: Vec::new(),
                stale_only: l.live.iter().map(|&o| (o, epoch - 1)).chain(l.stale_only.iter().copied()).collect(),
            };
            add(addr, &as_stale);
        }
    }
    (holders, local, failed)
}

async fn report(node: &Node, client: &GroupClient, epoch: Epoch) -> Pass {
    let session = node.session();
    if session == 0 {
        return Pass::Incomplete("not joined: cannot report".into());
    }
    if let Err(e) = client.recovery_done(session, epoch).await {
        return Pass::Incomplete(format!("cannot report to groupd: {e}"));
    }
    let purge = {
        let mut p = node.recovery.borrow_mut();
        if p.epoch != epoch {
            return Pass::Incomplete("the epoch changed".into());
        }
        p.complete = true;
        p.purge_for == Some(epoch)
    };
    info!("recovery to epoch {epoch} complete ({} object(s) owned)", node.recovery.borrow().total);
    if purge {
        purge_stale(node).await;
    }
    Pass::Finished
}

/// Every node of `epoch` recovered: stale copies may go, once this node is complete too.
pub async fn recovery_complete(node: &Node, epoch: Epoch) {
    let now = {
        let mut p = node.recovery.borrow_mut();
        p.purge_for = Some(epoch);
        p.epoch == epoch && p.complete
    };
    if now && node.epoch() == epoch {
        purge_stale(node).await;
    }
}

async fn purge_stale(node: &Node) {
    let objects = node.objects.clone();
    match blocking(move || objects.purge_stale()).await {
        Ok(0) => {}
        Ok(n) => info!("purged {n} stale object(s)"),
        Err(e) => warn!("cannot purge .stale: {e}"),
    }
}

/// Pulls `oid` now if this node should hold it and a recovery is under way. `Ok(true)`:
/// the object is here now; `Ok(false)`: no node has it (a new object).
pub async fn recover_one(node: &Node, oid: ObjectId) -> Result<bool, StoreError> {
    let epoch = node.epoch();
    let plan = {
        let p = node.recovery.borrow();
        if !p.unsettled(epoch) {
            return Ok(false);
        }
        if p.epoch != epoch {
            None // the plan is of an older epoch
        } else {
            match p.pending.get(&oid) {
                Some(h) => Some(h.clone()),
                None if p.listed => return Ok(false),
                None => None,
            }
        }
    };
    let got = match plan {
        Some(holders) => match pull_from(node, epoch, oid, &holders).await {
            Some(d) => Found::Data(d),
            None if planned(node, epoch, oid) => Found::Unknown,
            None => return Ok(node.objects.contains(oid)), // pulled meanwhile by another request
        },
        None => pull_unplanned(node, epoch, oid).await,
    };
    let data = match got {
        Found::Data(d) => d,
        Found::Absent => return Ok(false),
        Found::Unknown => {
            return Err(StoreError::Io(format!("object {oid} may exist on a node that did not answer; try again")))
        }
    };
    let objects = node.objects.clone();
    blocking(move || objects.install_if_absent(oid, &data)).await?;
    let mut p = node.recovery.borrow_mut();
    if p.epoch == epoch && p.pending.remove(&oid).is_some() {
        p.done += 1;
        // Every pending object is counted in `total` and leaves `pending` once.
        assert!(p.done <= p.total, "recovery progress {} of {}", p.done, p.total);
    }
    Ok(true)
}

/// True if the plan of `epoch` says some node holds `oid` (so not finding it is a failure).
fn planned(node: &Node, epoch: Epoch, oid: ObjectId) -> bool {
    let p = node.recovery.borrow();
    p.epoch == epoch && p.pending.contains_key(&oid)
}

/// The object from the first of `holders` that gives it.
async fn pull_from(node: &Node, epoch: Epoch, oid: ObjectId, holders: &[Holder]) -> Option<Vec<u8>> {
    for h in holders {
        if h.addr == node.info.id {
            let objects = node.objects.clone();
            match blocking(move || objects.fetch(oid)).await {
                Ok(d) => return Some(d),
                Err(e) => debug!("own stale copy of {oid}: {e}"),
            }
            continue;
        }
        match node.peers.fetch(&h.addr, epoch, oid.raw()).await {
            Ok(f) => return Some(f.data),
            Err(e) => debug!("fetch {oid}: {e}"),
        }
    }
    None
}

/// What asking for an object found.
enum Found {
    Data(Vec<u8>),
    /// Every node answered: nobody has it.
    Absent,
    /// Not found, but some node did not answer.
    Unknown,
}

/// Before the lists are in: asks every other node of the epoch. A live copy is taken at
/// once; stale copies only if every node answered and none had a live one (the newest).
async fn pull_unplanned(node: &Node, epoch: Epoch, oid: ObjectId) -> Found {
    let Some(ring) = node.ring(epoch) else { return Found::Unknown };
    let mut best: Option<(u32, Vec<u8>)> = None;
    let mut all_answered = true;
    for n in ring.record.nodes.iter().filter(|n| n.id != node.info.id) {
        match node.peers.fetch(&n.addr, epoch, oid.raw()).await {
            Ok(f) if !f.is_stale() => return Found::Data(f.data),
            Ok(f) => {
                let e = f.stale_epoch;
                if best.as_ref().is_none_or(|(b, _)| e > *b) {
                    best = Some((e, f.data));
                }
            }
            Err(e) if e.is_code(ErrorCode::NoObject) => {}
            Err(e) => {
                debug!("fetch {oid}: {e}");
                all_answered = false;
            }
        }
    }
    let objects = node.objects.clone();
    let own = blocking(move || objects.fetch_any(oid)).await.ok().filter(|w| w.stale_epoch > 0);
    if let Some(w) = own {
        if best.as_ref().is_none_or(|(b, _)| w.stale_epoch > *b) {
            best = Some((w.stale_epoch, w.data));
        }
    }
    match (best, all_answered) {
        (Some((_, d)), true) => Found::Data(d),
        (None, true) => Found::Absent,
        (_, false) => Found::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(addr: &str, e: u32) -> Holder {
        Holder { addr: addr.into(), stale_epoch: e }
    }

    #[test]
    fn live_copies_win_then_the_newest_stale_ones() {
        let me = "me";
        assert_eq!(best_holders(vec![h("a", 3), h("b", 0), h(me, 5)], me), vec![h("b", 0)]);
        assert_eq!(best_holders(vec![h(me, 5), h("a", 3), h("b", 5)], me), vec![h("b", 5), h(me, 5)]);
        assert_eq!(best_holders(vec![h("a", 2), h(me, 4)], me), vec![h(me, 4)]);
        assert!(best_holders(vec![], me).is_empty());
    }
}
