//! Recovery: after every epoch change (and every new session), pull every object this node
//! owns in the new epoch from the nodes that hold it, move what it no longer owns to
//! `.stale/`, remove the objects of deleted VDIs, and report to groupd once everything is
//! held and every node's list was complete. Objects a client asks for meanwhile are pulled
//! at once ([`recover_one`]).
//!
//! Which copy is pulled: the newest version listed, live or stale, once a newer one cannot
//! be on a node that is down (see `recovery_plan`); until then the object waits.
//!
//! No copy is read or written in a new epoch before that epoch's plan is made
//! ([`wait_for_plan`]), and one object is pulled by one task at a time: else a write of the
//! new epoch could land here first and then be replaced by a pulled copy that its source
//! took before that write reached it (an acknowledged write lost on this replica).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use sheep_client::group::GroupClient;
use sheep_core::epoch::Epoch;
use sheep_core::object::ObjectId;
use sheep_core::placement::PlacementRing;
use sheep_core::store::{is_settled, settled_version, Listing, WholeObject};
use sheep_rpc::error::ErrorCode;
use tracing::{debug, info, warn};

use crate::blocking::blocking;
use crate::node::{EpochRing, Node};
use crate::objects::StoreError;
use crate::recovery_plan::{hidden_on, plan, EpochReplicas, Plan};
use crate::recovery_progress::{Holder, Progress};

/// Objects pulled at the same time by one pass.
const PARALLEL_PULLS: usize = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long a node that left the previous epoch is given to list its objects.
const LEAVER_WAIT: Duration = Duration::from_secs(2);
/// How long a request on an object waits for recovery to plan a new epoch before it is
/// refused (the client tries again).
const PLAN_WAIT: Duration = Duration::from_secs(10);

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
    if node.session() == 0 || node.disk.failure().is_some() {
        // Not joined (yet, or any more): joining kicks a new pass. A failed disk holds
        // nothing to recover onto.
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
        node.metrics.recovery_changed(&p);
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

    let clean = node.clean_epoch().max(1);
    let rings = rings_since(node, clean, epoch);
    let (holders, local, answered, failed) = list_everyone(node, &ring, &rings, epoch).await;
    let listed = failed.is_empty();
    let epochs: Vec<Vec<(String, u32)>> =
        (clean..epoch).map(|e| node.epoch_nodes(e).into_iter().map(|n| (n.id, n.zone)).collect()).collect();
    let hidden = hidden_on(&epochs, &answered, node.min_copies());

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
        match plan(&me, &hs, &answered, &history(node, &rings, oid), clean, epoch) {
            Plan::Settled | Plan::Absent => {}
            p => {
                pending.insert(oid, p);
            }
        }
    }
    let todo: Vec<ObjectId> = pending.keys().copied().collect();
    {
        let mut p = node.recovery.borrow_mut();
        p.total = total;
        p.done = total - pending.len() as u64;
        p.listed = listed;
        p.complete = false;
        p.pending = pending;
        p.answered = answered;
        p.rings = rings;
        p.clean = clean;
        p.hidden_on = hidden.clone();
        p.planned = true;
        node.metrics.recovery_changed(&p);
    }
    node.plan_made();
    if !todo.is_empty() {
        let own = |p: &Plan| matches!(p, Plan::Pull(h) if h.first().is_some_and(|h| h.addr == me && h.stale_epoch > 0));
        let restore = node.recovery.borrow().pending.values().filter(|p| own(p)).count();
        info!(
            "epoch {epoch}: {} object(s) of {total} owned to pull from peers, {restore} to restore from .stale",
            todo.len() - restore
        );
    }
    stream::iter(todo)
        .for_each_concurrent(PARALLEL_PULLS, |oid| async move {
            if let Err(e) = recover_one(node, oid).await {
                debug!("pulling {oid}: {e}");
            }
        })
        .await;

    let (missing, waits) = {
        let p = node.recovery.borrow();
        (p.pending.len(), p.waits().1)
    };
    if !listed {
        return Pass::Incomplete(format!("could not list the objects of {}", failed.join(", ")));
    }
    if !hidden.is_empty() {
        return Pass::Incomplete(format!(
            "objects this node owns may be only on {}, which are down (every replica of some objects was \
             there): waiting for one of them",
            hidden.join(", ")
        ));
    }
    if !waits.is_empty() {
        let nodes: Vec<String> = waits.into_iter().collect();
        return Pass::Incomplete(format!(
            "{missing} object(s) not pulled; some wait for {}, which may hold newer copies",
            nodes.join(", ")
        ));
    }
    if missing > 0 {
        return Pass::Incomplete(format!("{missing} object(s) could not be pulled"));
    }
    report(node, client, epoch).await
}

/// The placement rings of the epochs from `clean` up to (not including) `epoch`.
fn rings_since(node: &Node, clean: Epoch, epoch: Epoch) -> Vec<(Epoch, Rc<PlacementRing>)> {
    (clean..epoch).filter_map(|e| node.ring_of(e).map(|r| (e, Rc::new(r.ring)))).collect()
}

/// The replicas of `oid` in each epoch of `rings`.
fn history(node: &Node, rings: &[(Epoch, Rc<PlacementRing>)], oid: ObjectId) -> Vec<EpochReplicas> {
    let copies = node.copies_of(oid.vid());
    rings
        .iter()
        .map(|(e, r)| EpochReplicas {
            epoch: *e,
            nodes: r.replicas(oid, copies).iter().map(|n| n.id.clone()).collect(),
        })
        .collect()
}

/// Per object, who holds which copy.
type Holdings = BTreeMap<ObjectId, Vec<Holder>>;

/// Lists every node of the epoch (this one from its own store) and, briefly and without
/// requiring an answer, every node of the epochs in `rings` that is not in this one (a node
/// that left is normally gone). Returns who holds which copy of each object, this node's own
/// listing, the nodes that answered, and the nodes of this epoch that could not be listed.
async fn list_everyone(
    node: &Node,
    ring: &EpochRing,
    rings: &[(Epoch, Rc<PlacementRing>)],
    epoch: Epoch,
) -> (Holdings, Listing, BTreeSet<String>, Vec<String>) {
    let objects = node.objects.clone();
    let mut failed = Vec::new();
    let mut answered = BTreeSet::new();
    let local = match blocking(move || objects.list()).await {
        Ok(l) => {
            answered.insert(node.info.id.clone());
            l
        }
        Err(e) => {
            failed.push(format!("this node ({e})"));
            Listing::default()
        }
    };
    let peers: Vec<&str> = ring.record.nodes.iter().filter(|n| n.id != node.info.id).map(|n| n.addr.as_str()).collect();
    let answers = futures::future::join_all(peers.iter().map(|addr| node.peers.list(addr, epoch))).await;
    let mut leavers: Vec<String> = Vec::new();
    for (e, _) in rings {
        for n in node.epoch_nodes(*e) {
            if !ring.record.nodes.iter().any(|m| m.id == n.id) && !leavers.contains(&n.addr) {
                leavers.push(n.addr);
            }
        }
    }
    // A node that left may or may not know the new epoch yet: ask in the one before first.
    let left_answers = futures::future::join_all(leavers.iter().map(|addr| async move {
        match tokio::time::timeout(LEAVER_WAIT, node.peers.list(addr, epoch - 1)).await {
            Ok(Err(e)) if e.is_code(ErrorCode::StaleEpoch) => {
                tokio::time::timeout(LEAVER_WAIT, node.peers.list(addr, epoch)).await
            }
            other => other,
        }
    }))
    .await;
    let mut holders: Holdings = BTreeMap::new();
    let mut add = |addr: &str, l: &Listing| {
        let version = |oid: &ObjectId| l.versions.get(oid).copied().unwrap_or(0);
        for oid in &l.live {
            let h = Holder { addr: addr.to_string(), stale_epoch: 0, version: version(oid) };
            holders.entry(*oid).or_default().push(h);
        }
        for (oid, e) in &l.stale_only {
            let h = Holder { addr: addr.to_string(), stale_epoch: (*e).max(1), version: version(oid) };
            holders.entry(*oid).or_default().push(h);
        }
    };
    add(&node.info.id, &local);
    for (addr, answer) in peers.iter().zip(answers) {
        match answer {
            Ok(l) => {
                add(addr, &l);
                answered.insert(addr.to_string());
            }
            Err(e) => failed.push(e.to_string()),
        }
    }
    for (addr, answer) in leavers.iter().zip(left_answers) {
        if let Ok(Ok(l)) = answer {
            // Not a member now: its live copies count as stale ones (they take no writes).
            let as_stale = Listing {
                live: Vec::new(),
                stale_only: l.live.iter().map(|&o| (o, epoch - 1)).chain(l.stale_only.iter().copied()).collect(),
                versions: l.versions.clone(),
            };
            add(addr, &as_stale);
            answered.insert(addr.clone());
        }
    }
    (holders, local, answered, failed)
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
        node.metrics.recovery_changed(&p);
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

/// True if a request on an object of `epoch` must wait for recovery to plan that epoch:
/// this node is joined, a member of it, and has not planned it yet.
fn plan_missing(node: &Node, epoch: Epoch) -> bool {
    node.session() != 0
        && node.disk.failure().is_none()
        && node.recovery.borrow().unplanned(epoch)
        && node.ring(epoch).is_some_and(|r| r.record.nodes.iter().any(|n| n.id == node.info.id))
}

/// Waits (bounded) until recovery planned `epoch`, or the node moved on from it. Until the
/// plan says which copies are pulled, no copy here may be used: a write landing now could
/// be replaced by the pull.
pub async fn wait_for_plan(node: &Node, epoch: Epoch) -> Result<(), StoreError> {
    if !plan_missing(node, epoch) {
        return Ok(());
    }
    let mut plans = node.watch_plans();
    let mut epochs = node.watch_epoch();
    let waited = tokio::time::timeout(PLAN_WAIT, async {
        while node.epoch() == epoch && plan_missing(node, epoch) {
            // A pass that cannot plan (groupd away) or a lost session does not say so: look
            // again now and then.
            tokio::select! {
                _ = plans.changed() => {}
                _ = epochs.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    })
    .await;
    match waited {
        Ok(()) => Ok(()),
        Err(_) => Err(StoreError::NotYet(format!("recovery to epoch {epoch} has not planned yet; try again"))),
    }
}

/// The turn of one task to recover an object (see [`Node::pulls`]); gives the object's
/// entry up when no other task waits for it.
struct PullTurn<'a> {
    node: &'a Node,
    oid: ObjectId,
    lock: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl Drop for PullTurn<'_> {
    fn drop(&mut self) {
        // The map's reference and this one: nobody else holds or waits for the turn.
        if std::sync::Arc::strong_count(&self.lock) == 2 {
            self.node.pulls.borrow_mut().remove(&self.oid);
        }
    }
}

/// Pulls `oid` now if this node should hold it and a recovery is under way. `Ok(true)`:
/// the object is here now; `Ok(false)`: no node has it (a new object). `NotYet`: a newer
/// copy may be on a node that is down, or some node did not answer: try again. An I/O
/// error of this node's store fails its disk (recovery would never get past it).
///
/// The work is a task of its own, which runs to its end even if the caller goes away (a
/// request given up, a pass dropped for a new epoch): cut off between its install, which
/// the disk thread finishes anyway, and the look at who owns the object now, a copy pulled
/// for an old epoch would stay live on a node that no longer owns it, taking no writes.
pub async fn recover_one(node: &Rc<Node>, oid: ObjectId) -> Result<bool, StoreError> {
    match tokio::task::spawn_local(recover_to_the_end(node.clone(), oid)).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(StoreError::NotYet(format!("the recovery of object {oid} was cut off: {e}"))),
    }
}

async fn recover_to_the_end(node: Rc<Node>, oid: ObjectId) -> Result<bool, StoreError> {
    let node = &*node;
    let epoch = node.epoch();
    wait_for_plan(node, epoch).await?;
    let lock = node.pulls.borrow_mut().entry(oid).or_default().clone();
    let turn = PullTurn { node, oid, lock };
    let r = {
        let _one_at_a_time = turn.lock.lock().await;
        recover_one_here(node, epoch, oid).await
    };
    drop(turn);
    if let Err(StoreError::Io(why)) = &r {
        node.disk.fail(why);
    }
    if matches!(r, Ok(true)) && node.epoch() != epoch {
        // The copy was made for an older epoch; the new epoch's pass may have listed this
        // node's objects before it landed, and would leave it live on a node that no longer
        // owns it (a copy that takes no writes and goes out of date): give it up now.
        let now = node.epoch();
        if node.ring(now).is_some_and(|ring| !owns(node, &ring, oid)) {
            let objects = node.objects.clone();
            blocking(move || objects.move_to_stale(oid, now.saturating_sub(1))).await?;
            return Err(StoreError::NotYet(format!("the epoch changed to {now} while object {oid} was pulled")));
        }
    }
    r
}

async fn recover_one_here(node: &Node, epoch: Epoch, oid: ObjectId) -> Result<bool, StoreError> {
    let todo = {
        let p = node.recovery.borrow();
        if !p.unsettled(epoch) {
            return Ok(false);
        }
        if p.epoch == epoch && p.planned && !p.pending.contains_key(&oid) && node.objects.contains(oid) {
            return Ok(true); // pulled by the task whose turn came first, or never missing
        }
        if p.epoch != epoch {
            Todo::Unplanned // the plan is of an older epoch
        } else {
            match p.pending.get(&oid) {
                Some(Plan::Wait(nodes)) => return Err(waits(oid, nodes)),
                Some(Plan::Pull(h)) => Todo::Pull(h.clone()),
                Some(Plan::Settle) => Todo::Settle,
                Some(Plan::Settled | Plan::Absent) => return Ok(node.objects.contains(oid)),
                // Listed by nobody: new, unless a node that is down may hold it.
                None if p.listed => {
                    let me = &node.info.id;
                    return match plan(me, &[], &p.answered, &history(node, &p.rings, oid), p.clean, epoch) {
                        Plan::Wait(nodes) => Err(waits(oid, &nodes)),
                        _ => Ok(false),
                    };
                }
                None => Todo::Unplanned,
            }
        }
    };
    let got = match todo {
        Todo::Pull(holders) => match pull_from(node, epoch, oid, &holders).await {
            Some(found) => found,
            None if planned(node, epoch, oid) => Found::Unknown,
            None => return Ok(node.objects.contains(oid)), // pulled meanwhile by another request
        },
        Todo::Settle => Found::OwnLive,
        Todo::Unplanned => pull_unplanned(node, epoch, oid).await,
    };
    let objects = node.objects.clone();
    match got {
        Found::Data(w) => {
            // An unsettled copy is taken as it is and settled, as its holder settles it.
            let version = settled_version(w.version, epoch);
            blocking(move || objects.install(oid, &w.data, version, epoch)).await?;
        }
        Found::OwnStale(version) => {
            let restored = blocking(move || {
                let restored = objects.restore_stale(oid, version)?;
                if restored && !is_settled(version) {
                    objects.settle(oid, epoch)?;
                }
                Ok::<_, StoreError>(restored)
            });
            if !restored.await? {
                return Err(StoreError::NotYet(format!("object {oid} changed while being restored; try again")));
            }
        }
        Found::OwnLive => {
            blocking(move || objects.settle(oid, epoch)).await?;
        }
        Found::Absent => return Ok(false),
        Found::Unknown => {
            return Err(StoreError::NotYet(format!("object {oid} may exist on a node that did not answer; try again")))
        }
    }
    let mut p = node.recovery.borrow_mut();
    if p.epoch == epoch && p.pending.remove(&oid).is_some() {
        p.done += 1;
        // Every pending object is counted in `total` and leaves `pending` once.
        assert!(p.done <= p.total, "recovery progress {} of {}", p.done, p.total);
        node.metrics.recovery_pulled(&p);
    }
    Ok(true)
}

fn waits(oid: ObjectId, nodes: &[String]) -> StoreError {
    StoreError::NotYet(format!("object {oid} waits for {}: a newer copy may be there", nodes.join(", ")))
}

/// True if the plan of `epoch` says some node holds `oid` (so not finding it is a failure).
fn planned(node: &Node, epoch: Epoch, oid: ObjectId) -> bool {
    let p = node.recovery.borrow();
    p.epoch == epoch && p.pending.contains_key(&oid)
}

/// The object from the first of `holders` that gives it (all hold the same version): this
/// node's own stale copy is restored in place (nothing copied), a peer's fetched.
async fn pull_from(node: &Node, epoch: Epoch, oid: ObjectId, holders: &[Holder]) -> Option<Found> {
    for h in holders {
        if h.addr == node.info.id {
            if h.stale_epoch > 0 {
                return Some(Found::OwnStale(h.version));
            }
            continue;
        }
        match node.peers.fetch(&h.addr, epoch, oid.raw()).await {
            Ok(w) if w.version >= h.version => return Some(Found::Data(w)),
            Ok(w) => debug!("{}'s copy of {oid} is at version {:#x} now, not {:#x}", h.addr, w.version, h.version),
            Err(e) => debug!("fetch {oid}: {e}"),
        }
    }
    None
}

/// What recovering one object does.
enum Todo {
    /// Pull it from one of these.
    Pull(Vec<Holder>),
    /// Settle this node's own live copy.
    Settle,
    /// No plan of this epoch yet: ask everyone.
    Unplanned,
}

/// What asking for an object found.
enum Found {
    Data(WholeObject),
    /// This node's own live copy is the one to take (and settle).
    OwnLive,
    /// This node's own stale copy is the one to take, at this version.
    OwnStale(u64),
    /// Every node answered: nobody has it.
    Absent,
    /// Not found, but some node did not answer (or may hold a newer copy).
    Unknown,
}

/// Before the lists are in: asks every other node of the epoch and takes the newest copy,
/// once no node that is down may hold a newer one (see `recovery_plan`).
async fn pull_unplanned(node: &Node, epoch: Epoch, oid: ObjectId) -> Found {
    let Some(ring) = node.ring(epoch) else { return Found::Unknown };
    let me = node.info.id.clone();
    let mut answered = BTreeSet::new();
    let mut holders = Vec::new();
    let mut copies: Vec<(String, WholeObject)> = Vec::new();
    let mut consider = |addr: &str, w: WholeObject, holders: &mut Vec<Holder>| {
        holders.push(Holder { addr: addr.to_string(), stale_epoch: w.stale_epoch, version: w.version });
        copies.push((addr.to_string(), w));
    };
    for n in ring.record.nodes.iter().filter(|n| n.id != me) {
        match node.peers.fetch(&n.addr, epoch, oid.raw()).await {
            Ok(w) => {
                answered.insert(n.id.clone());
                consider(&n.id, w, &mut holders);
            }
            Err(e) if e.is_code(ErrorCode::NoObject) => {
                answered.insert(n.id.clone());
            }
            Err(e) => debug!("fetch {oid}: {e}"),
        }
    }
    let objects = node.objects.clone();
    match blocking(move || objects.fetch_any(oid)).await {
        Ok(w) => {
            answered.insert(me.clone());
            consider(&me, w, &mut holders);
        }
        Err(StoreError::NoObject(_)) => {
            answered.insert(me.clone());
        }
        Err(e) => debug!("own copy of {oid}: {e}"),
    }
    let clean = node.clean_epoch().max(1);
    let rings = rings_since(node, clean, epoch);
    match plan(&me, &holders, &answered, &history(node, &rings, oid), clean, epoch) {
        Plan::Pull(from) if from.first().is_some_and(|h| h.addr == me && h.stale_epoch > 0) => {
            Found::OwnStale(from[0].version)
        }
        // The copy of the plan's first choice (all of one version; only it when unsettled).
        Plan::Pull(from) => {
            let first = from.first().map(|h| h.addr.clone());
            match copies.into_iter().find(|(addr, _)| Some(addr) == first.as_ref()) {
                Some((_, w)) => Found::Data(w),
                None => Found::Unknown,
            }
        }
        Plan::Settle => Found::OwnLive,
        Plan::Absent if answered.len() == ring.record.nodes.len() => Found::Absent,
        _ => Found::Unknown,
    }
}
