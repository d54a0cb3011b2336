//! The I/O of a check: gather the objects of the VDIs in scope, scan every replica, then
//! repair under each owning VDI's lock (see the module documentation of `check`).

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use futures::future::join_all;
use futures::stream::{self, StreamExt};
use sheep_core::namespace::VdiEntry;
use sheep_core::object::{ObjectId, VdiId};
use sheep_rpc::error::ErrorCode;

use super::plan::{decide, Digest, Plan, Seen};
use super::{Action, CheckError, CheckOptions, ObjectProblem, ReplicaState, Report, Scope};
use crate::group::attach_lock::{AttachError, AttachLock};
use crate::vdi::{Cluster, NodeError, Vdi, VdiOptions};

/// How long opening a VDI (reading its inode, with failover between replicas) may take.
const OPEN_FOR: Duration = Duration::from_secs(10);
/// Looks at a repaired object again this many times before calling it unrepaired: a node
/// may be finishing its own repair of a corrupt copy that our scan's fetch set off.
const VERIFY_TRIES: usize = 3;
const VERIFY_PAUSE: Duration = Duration::from_millis(300);

/// An object to check, and what it belongs to.
struct Target {
    owner: VdiId,
    vdi: String,
    index: Option<u32>,
    copies: usize,
}

/// What the scan found wrong with one object.
struct Found {
    oid: ObjectId,
    nodes: Vec<String>,
    seen: Vec<Seen>,
    plan: Plan,
    extra: Vec<String>,
}

/// Runs a check of `scope`. `progress(done, total)` is called as objects are scanned.
pub async fn run(
    cluster: &Rc<Cluster>,
    scope: &Scope,
    opts: CheckOptions,
    progress: &dyn Fn(u64, u64),
) -> Result<Report, CheckError> {
    let view = cluster.view();
    let epoch = view.epoch;
    if view.ring.is_empty() {
        return Err(CheckError::NoNodes(epoch));
    }
    // An unknown VDI is said first, whatever else is going on.
    let (entries, _deleted) = cluster.group().vdi_list().await?;
    let selected: Vec<&VdiEntry> = match scope {
        Scope::Cluster => entries.iter().collect(),
        Scope::Vdi(name) => {
            // The working VDI of that name (its snapshots share the name).
            let found = entries
                .iter()
                .find(|e| &e.name == name && e.snapshot.is_none())
                .or_else(|| entries.iter().find(|e| &e.name == name));
            vec![found.ok_or_else(|| CheckError::NoVdi(name.clone()))?]
        }
    };
    let mut report = Report { epoch, dry_run: opts.dry_run, ..Report::default() };
    let addrs: Vec<String> = view.ring.nodes().iter().map(|n| n.addr.clone()).collect();
    if let Some(why) = recovering(cluster).await {
        report.skipped = Some(why);
        return Ok(report);
    }

    report.vdis = selected.len();
    let by_vid: HashMap<VdiId, &VdiEntry> = entries.iter().map(|e| (e.vid, e)).collect();
    let holders = list_all(cluster, epoch, &addrs, &mut report.errors).await;
    let targets = gather(cluster, &selected, &by_vid, &holders, &mut report.errors).await;
    report.objects = targets.len();

    // Scan: a bounded number of objects at once, each with all its replicas in flight.
    let total = targets.len() as u64;
    progress(0, total);
    let mut found: Vec<Found> = Vec::new();
    {
        let ring = &view.ring;
        let holders = &holders;
        let mut scans = stream::iter(targets.iter())
            .map(|(&oid, t)| async move {
                let nodes: Vec<String> = ring.replicas(oid, t.copies).into_iter().map(|n| n.addr.clone()).collect();
                let (seen, _) = observe_all(cluster, epoch, oid, &nodes, false).await;
                let plan = decide(&seen);
                let extra: Vec<String> = holders
                    .get(&oid.raw())
                    .map(|h| h.iter().filter(|a| !nodes.contains(a)).cloned().collect())
                    .unwrap_or_default();
                (plan != Plan::Ok || !extra.is_empty()).then_some(Found { oid, nodes, seen, plan, extra })
            })
            .buffer_unordered(opts.parallel.max(1));
        let mut done = 0;
        while let Some(f) = scans.next().await {
            done += 1;
            progress(done, total);
            found.extend(f);
        }
    }
    found.sort_by_key(|f| f.oid);

    let moved = cluster.epoch() != epoch;
    if moved {
        report.errors.push(format!(
            "the epoch changed from {epoch} to {} during the check: objects are moving; nothing was repaired, run \
                the check again once recovery is complete",
            cluster.epoch()
        ));
    }
    for f in &found {
        let action = match &f.plan {
            Plan::Ok => Action::None,
            Plan::Unrepairable(u) => Action::Unrepairable(u.to_string()),
            Plan::Repair { source, targets, tie } if opts.dry_run => {
                Action::WouldRepair { source: f.nodes[*source].clone(), targets: names(&f.nodes, targets), tie: *tie }
            }
            Plan::Repair { .. } if moved => Action::Unrepairable("not repaired: the epoch changed".into()),
            // Decided in the repair phase below.
            Plan::Repair { .. } => Action::Settled,
        };
        let t = &targets[&f.oid];
        report.problems.push(ObjectProblem {
            oid: f.oid,
            vdi: t.vdi.clone(),
            index: t.index,
            replicas: states(&f.nodes, &f.seen, &f.plan),
            extra: f.extra.clone(),
            action,
        });
    }
    if opts.dry_run || moved {
        return Ok(report);
    }

    // Repair, grouped by the VDI owning the objects: its lock is held meanwhile.
    let mut by_owner: BTreeMap<VdiId, Vec<usize>> = BTreeMap::new();
    for (i, f) in found.iter().enumerate() {
        if matches!(f.plan, Plan::Repair { .. }) {
            by_owner.entry(targets[&f.oid].owner).or_default().push(i);
        }
    }
    for (owner, items) in by_owner {
        let lock = match by_vid.get(&owner) {
            Some(e) => match AttachLock::acquire(
                cluster.group().clone(),
                &e.name,
                &format!("sheepctl check pid {}", std::process::id()),
            )
            .await
            {
                Ok(l) => Some(l),
                Err(err) => {
                    let why = match err {
                        AttachError::Held(msg) => {
                            format!("not repaired: {msg} (detach it, or run the check with --dry-run)")
                        }
                        other => format!("not repaired: {other}"),
                    };
                    for i in items {
                        report.problems[i].action = Action::Unrepairable(why.clone());
                    }
                    continue;
                }
            },
            // The owner is gone from the namespace (a deleted parent still referenced):
            // no one can lock or write it, so no lock is needed.
            None => None,
        };
        let token = lock.as_ref().map_or(0, AttachLock::token);
        for i in items {
            let f = &found[i];
            report.problems[i].action = repair_one(cluster, epoch, f.oid, &f.nodes, token).await;
        }
        if let Some(l) = lock {
            l.release().await;
        }
    }
    Ok(report)
}

fn names(nodes: &[String], idx: &[usize]) -> Vec<String> {
    idx.iter().map(|&i| nodes[i].clone()).collect()
}

fn states(nodes: &[String], seen: &[Seen], plan: &Plan) -> Vec<ReplicaState> {
    let winner = match plan {
        Plan::Repair { source, .. } => Some(&seen[*source]),
        Plan::Ok => seen.first(),
        Plan::Unrepairable(_) => None,
    };
    nodes
        .iter()
        .zip(seen)
        .map(|(n, s)| ReplicaState { node: n.clone(), seen: s.describe(), good: Some(s) == winner })
        .collect()
}

/// `Some(why)` while a node of the epoch has not finished recovering to it.
async fn recovering(cluster: &Cluster) -> Option<String> {
    let busy = cluster.recovering().await;
    (!busy.is_empty()).then(|| {
        format!(
            "recovery in progress on {}: it moves the objects a check would judge; run the check again once \
                `sheepctl node recovery` shows every node complete",
            busy.join(", ")
        )
    })
}

/// Which nodes hold a live copy of each object (by raw id).
async fn list_all(
    cluster: &Cluster,
    epoch: u32,
    addrs: &[String],
    errors: &mut Vec<String>,
) -> HashMap<u64, Vec<String>> {
    let lists = join_all(addrs.iter().map(|a| cluster.pool().list(a, epoch))).await;
    let mut holders: HashMap<u64, Vec<String>> = HashMap::new();
    for (addr, l) in addrs.iter().zip(lists) {
        match l {
            Ok(listing) => {
                for o in listing.live {
                    holders.entry(o.raw()).or_default().push(addr.clone());
                }
            }
            Err(e) => errors.push(format!("cannot list the objects of {addr}: {e}")),
        }
    }
    holders
}

fn display_name(e: &VdiEntry) -> String {
    match &e.snapshot {
        Some(tag) => format!("{}@{tag}", e.name),
        None => e.name.clone(),
    }
}

/// The distinct objects of the selected VDIs: each one's inode (if it exists) and every
/// written data object, under the VDI owning it.
async fn gather(
    cluster: &Rc<Cluster>,
    selected: &[&VdiEntry],
    by_vid: &HashMap<VdiId, &VdiEntry>,
    holders: &HashMap<u64, Vec<String>>,
    errors: &mut Vec<String>,
) -> BTreeMap<ObjectId, Target> {
    let mut targets = BTreeMap::new();
    let opts = VdiOptions { retry_for: OPEN_FOR, read_replica: Some(0), ..VdiOptions::default() };
    for e in selected {
        let vdi = match Vdi::open_entry(cluster.clone(), (*e).clone(), opts).await {
            Ok(v) => v,
            Err(err) => {
                errors.push(format!("VDI {}: cannot read its inode: {err}", display_name(e)));
                continue;
            }
        };
        // Whether the VDI wrote anything itself: a VDI that goes on from a snapshot and has not
        // been written since reads through the snapshot's table and has no inode of its own yet.
        let mut written = false;
        for idx in 0..vdi.max_objects() {
            let Some(owner) = vdi.owner(idx) else { continue };
            written |= owner == e.vid;
            targets.entry(ObjectId::data(owner, idx)).or_insert_with(|| {
                let o = by_vid.get(&owner);
                Target {
                    owner,
                    vdi: o.map_or_else(|| format!("vid {owner}"), |o| display_name(o)),
                    index: Some(idx),
                    copies: usize::from(o.map_or(e.copies, |o| o.copies)),
                }
            });
        }
        // The inode exists once the VDI wrote anything; a VDI whose first write stopped
        // between creating it and recording an entry has one too, seen in the listings.
        let inode = vdi.inode_oid();
        if written || holders.contains_key(&inode.raw()) {
            targets.insert(
                inode,
                Target { owner: e.vid, vdi: display_name(e), index: None, copies: usize::from(e.copies) },
            );
        } else {
            // No inode anywhere reads as a VDI never written: if data objects of it are on
            // the nodes all the same, its table was lost, which no replica can repair.
            let orphans = holders
                .keys()
                .filter_map(|&raw| ObjectId::from_raw(raw).ok())
                .filter(|o| o.is_data() && o.vid() == e.vid)
                .count();
            if orphans > 0 {
                errors.push(format!(
                    "VDI {}: its inode object is on no node, yet {orphans} of its data objects are: its object table \
                        is lost",
                    display_name(e)
                ));
            }
        }
    }
    targets
}

/// Fetches `oid` from every node of `nodes` at once. `keep`: return the valid copies' data.
async fn observe_all(
    cluster: &Cluster,
    epoch: u32,
    oid: ObjectId,
    nodes: &[String],
    keep: bool,
) -> (Vec<Seen>, Vec<Option<Vec<u8>>>) {
    let all = join_all(nodes.iter().map(|a| async move {
        match cluster.pool().inspect(a, epoch, oid.raw()).await {
            Ok(whole) if whole.is_stale() => (Seen::StaleOnly, None),
            Ok(whole) => (Seen::Data(Digest::of(&whole.data), whole.version), keep.then_some(whole.data)),
            Err(e) if e.is_code(ErrorCode::NoObject) => (Seen::Missing, None),
            Err(e) if e.is_code(ErrorCode::Corrupt) => (Seen::Corrupt, None),
            Err(e) => (Seen::Unknown(short_error(&e)), None),
        }
    }))
    .await;
    all.into_iter().unzip()
}

fn short_error(e: &NodeError) -> String {
    match e {
        NodeError::Refused { message, .. } | NodeError::Rpc { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// Looks at `oid` again (the lock is held now), copies the winning content to the replicas
/// lacking it, and verifies.
async fn repair_one(cluster: &Cluster, epoch: u32, oid: ObjectId, nodes: &[String], token: u64) -> Action {
    let (seen, mut data) = observe_all(cluster, epoch, oid, nodes, true).await;
    let (source, targets, tie) = match decide(&seen) {
        Plan::Ok => return Action::Settled,
        Plan::Unrepairable(u) => return Action::Unrepairable(u.to_string()),
        Plan::Repair { source, targets, tie } => (source, targets, tie),
    };
    let Some(content) = data.get_mut(source).and_then(Option::take) else {
        return Action::Unrepairable("the source copy was not kept".into());
    };
    drop(data); // only the winning copy stays in memory
    let puts = join_all(targets.iter().map(|&t| put(cluster, &nodes[t], epoch, oid, &content, token))).await;
    let failed: Vec<String> = puts.into_iter().filter_map(Result::err).map(|e| e.to_string()).collect();
    if !failed.is_empty() {
        return Action::Unrepairable(format!("repair failed: {}", failed.join("; ")));
    }
    drop(content);
    let mut last = Vec::new();
    for attempt in 0..VERIFY_TRIES {
        if attempt > 0 {
            tokio::time::sleep(VERIFY_PAUSE).await;
        }
        let (after, _) = observe_all(cluster, epoch, oid, nodes, false).await;
        if decide(&after) == Plan::Ok {
            return Action::Repaired { source: nodes[source].clone(), targets: names(nodes, &targets), tie };
        }
        last = after;
    }
    let now: Vec<String> = nodes.iter().zip(&last).map(|(n, s)| format!("{n}: {}", s.describe())).collect();
    Action::Unrepairable(format!("still inconsistent after the repair ({})", now.join(", ")))
}

/// Writes the whole content to one replica: created if absent, written over from offset 0
/// if present (every block rewritten, durable before the answer). A copy that cannot be
/// written into (corrupt blocks, another object size) is removed first and created anew.
async fn put(
    cluster: &Cluster,
    addr: &str,
    epoch: u32,
    oid: ObjectId,
    data: &[u8],
    token: u64,
) -> Result<(), NodeError> {
    let size = u32::try_from(data.len()).map_err(|_| {
        NodeError::bad_request(addr, format!("object {oid} of {} bytes is too large for the object API", data.len()))
    })?;
    let pool = cluster.pool();
    let put_whole = || pool.create_and_write(addr, epoch, oid.raw(), size, 0, 0, data, true, token);
    match put_whole().await {
        Err(e) if e.is_code(ErrorCode::Corrupt) || e.is_code(ErrorCode::BadRequest) => {
            tracing::debug!("repair {oid} on {addr}: {e}; replacing the copy");
            pool.remove(addr, epoch, oid.raw()).await?;
            put_whole().await
        }
        other => other,
    }
}
