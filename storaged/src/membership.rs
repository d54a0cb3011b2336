//! The node's membership: join the group with a storage session, keep it alive, follow the
//! events (cluster identity, epochs, shutdown), and join again when the session is gone.

use std::rc::Rc;
use std::time::Duration;

use anyhow::{bail, Result};
use sheep_client::group::{Error as GroupError, GroupClient, Watcher};
use sheep_core::epoch::EpochRecord;
use sheep_core::group::{Event, EventKind, SessionId};
use sheep_rpc::error::ErrorCode;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{info, warn};

use crate::blocking::blocking;
use crate::disk_watch;
use crate::node::Node;
use crate::recovery;

/// How long one watch call waits for events.
const WATCH_WAIT: Duration = Duration::from_secs(5);
const WATCH_BATCH: u32 = 256;
/// Pause after a failed call before the next try.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Why the membership loop ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The cluster was shut down (`cluster shutdown`): the node stops.
    ClusterShutdown,
    /// The disk failed and the session is gone: the node does not join again (it would
    /// come back into the data membership); it stops.
    DiskFailed(String),
}

/// Runs until the cluster is shut down, or a fatal error: the store belongs to another
/// cluster, or the node could not join within `join_for`.
pub async fn run(node: Rc<Node>, client: Rc<GroupClient>, join_for: Duration) -> Result<Outcome> {
    loop {
        let (session, lease) = join(&node, &client, join_for).await?;
        node.set_session(session);
        info!("joined the cluster: session {session}, lease {} ms", lease.as_millis());
        let keepalive = AbortOnDrop(tokio::task::spawn_local(keepalive(client.clone(), session, lease)));
        let _report = AbortOnDrop(tokio::task::spawn_local(disk_watch::report(node.clone(), client.clone(), session)));
        let followed = follow(&node, &client, session, keepalive).await?;
        node.set_session(0);
        match followed {
            Followed::Shutdown => return Ok(Outcome::ClusterShutdown),
            Followed::SessionGone if node.disk.failure().is_some() => {
                return Ok(Outcome::DiskFailed(node.disk.failure().unwrap_or_default()))
            }
            Followed::SessionGone => {
                warn!("session {session} is gone; joining again");
                quarantine(&node).await;
            }
        }
    }
}

/// A node that lost its session may have missed writes: its objects move to `.stale/`
/// (never served to clients again) and recovery pulls what it owns afresh.
pub async fn quarantine(node: &Node) {
    let objects = node.objects.clone();
    let last_live = node.epoch();
    match blocking(move || objects.quarantine_all(last_live)).await {
        Ok(0) => {}
        Ok(n) => info!("quarantined {n} object(s) in .stale until recovery"),
        Err(e) => warn!("cannot quarantine the local objects: {e}"),
    }
}

/// Opens the storage session, trying again while groupd is unreachable or has no master,
/// for at most `join_for`. A refusal (another cluster's store, a bad request) is final.
async fn join(node: &Node, client: &GroupClient, join_for: Duration) -> Result<(SessionId, Duration)> {
    let deadline = Instant::now() + join_for;
    let mut tries = 0u32;
    loop {
        match client.join(&node.info, &node.cluster_id()).await {
            Ok(joined) => return Ok(joined),
            Err(e) if is_transient(&e) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    bail!("could not join the cluster within {} s: {e}", join_for.as_secs());
                }
                if tries.is_multiple_of(10) {
                    warn!("cannot join the cluster yet ({e}); trying again for up to {} s", join_for.as_secs());
                }
                tries += 1;
                tokio::time::sleep(RETRY_PAUSE.min(left)).await;
            }
            Err(e) if e.is_code(ErrorCode::WrongCluster) => bail!("groupd refused this node: {e}"),
            Err(e) => bail!("groupd refused this node: {e}"),
        }
    }
}

/// Errors that go away by themselves: no groupd reachable, no master (an election), a
/// broken connection.
fn is_transient(e: &GroupError) -> bool {
    match e {
        GroupError::Unreachable(_) | GroupError::Timeout { .. } | GroupError::Rpc { .. } => true,
        GroupError::Refused { code, .. } => *code == ErrorCode::NoMaster,
        GroupError::Usage(_) => false,
    }
}

/// Keeps the session alive every lease/3; returns when groupd says it is gone.
async fn keepalive(client: Rc<GroupClient>, session: SessionId, lease: Duration) {
    let period = (lease / 3).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        match client.keepalive(session, lease).await {
            Ok(()) => {
                if failing {
                    info!("keepalive of session {session} works again");
                }
                failing = false;
            }
            Err(e) if e.is_code(ErrorCode::NoSession) => {
                warn!("groupd no longer knows session {session} (its lease ran out or it was closed)");
                return;
            }
            Err(e) => {
                if !failing {
                    warn!("keepalive of session {session} failed: {e}");
                }
                failing = true;
            }
        }
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum Followed {
    Shutdown,
    SessionGone,
}

/// What one event asks of the loop.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Continue,
    /// The cluster was formatted anew: remove every object, then go on.
    Wipe,
    Resync,
    Shutdown,
    SessionGone,
}

/// Follows the events until the cluster shuts down or the session is gone.
async fn follow(
    node: &Rc<Node>,
    client: &Rc<GroupClient>,
    session: SessionId,
    mut keepalive: AbortOnDrop,
) -> Result<Followed> {
    let mut watcher = Watcher::new(client.clone(), 1, WATCH_BATCH, WATCH_WAIT);
    // Set once the watch has passed this session's own `joined` event: events before it are
    // history (an old shutdown, an old format), not news.
    let mut joined_seen = false;
    let mut need_sync = true;
    let mut pause = false;
    let mut failing = false;
    loop {
        let step = async {
            if pause {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            if need_sync {
                let info = client.info().await?;
                sync(node, &info.epochs, info.config.as_ref().map(|c| c.cluster_id.as_str()))?;
                if let Some(c) = &info.config {
                    node.set_cluster_copies(c.copies);
                    sheep_rpc::transport::set_cluster_secure(c.policy.secure);
                }
                node.set_clean_epoch(info.clean_epoch);
                // The watch starts after `info`: the locks held now, with their tokens, are
                // what the earlier Locked events would have told (fencing starts from them).
                node.fences().sync(info.locks.iter().map(|l| (l.lock.vdi.as_str(), l.lock.token)));
                // And the VDI names the locks are by; failing that, writes ask for them.
                match client.vdi_list().await {
                    Ok((vdis, deleted)) => node.set_vdis(&vdis, &deleted),
                    Err(e) => warn!("cannot list the VDIs: {e}"),
                }
                // A new session or a resynchronisation: recovery takes stock again.
                node.kick_recovery();
                joined_seen = info.sessions.iter().any(|s| s.id == session);
                watcher.seek(info.applied_seq + 1);
                need_sync = false;
            }
            let events = watcher.next_batch().await?;
            let mut step = Step::Continue;
            for e in events {
                step = apply(node, session, &mut joined_seen, &e)?;
                if step == Step::Wipe {
                    // Before any later event: requests of the new cluster's epochs wait
                    // until the node has them.
                    wipe(node).await;
                    node.kick_recovery();
                    step = Step::Continue;
                }
                if step != Step::Continue {
                    break;
                }
            }
            anyhow::Ok(step)
        };
        let result = tokio::select! {
            _ = &mut keepalive.0 => return Ok(Followed::SessionGone),
            r = step => r,
        };
        pause = false;
        match result {
            Ok(Step::Continue | Step::Wipe) => failing = false,
            Ok(Step::Resync) => need_sync = true,
            Ok(Step::Shutdown) => return Ok(Followed::Shutdown),
            Ok(Step::SessionGone) => return Ok(Followed::SessionGone),
            Err(e) => {
                if e.downcast_ref::<GroupError>().is_some_and(|g| g.is_code(ErrorCode::Compacted)) {
                    need_sync = true;
                } else {
                    if !failing {
                        warn!("following the cluster's events failed: {e:#}; trying again");
                    }
                    failing = true;
                    pause = true;
                }
            }
        }
    }
}

/// Takes the group's state as `info` shows it: the store adopts the cluster id if it has
/// none, and the local epoch history is brought in line.
fn sync(node: &Node, epochs: &[EpochRecord], cluster_id: Option<&str>) -> Result<()> {
    if let Some(id) = cluster_id {
        if node.cluster_id().is_empty() {
            info!("the store now belongs to cluster {id}");
            node.adopt_cluster(id)?;
        }
    }
    node.sync_epochs(epochs)?;
    if let Some(rec) = epochs.last() {
        info!("epoch {} with {} node(s)", rec.epoch, rec.nodes.len());
    }
    Ok(())
}

fn apply(node: &Rc<Node>, session: SessionId, joined_seen: &mut bool, e: &Event) -> Result<Step> {
    // The lock table follows every lock event, whoever's session.
    match &e.kind {
        EventKind::Locked(l) => node.fences().locked(&l.vdi, l.token),
        EventKind::Unlocked { vdi, .. } => node.fences().unlocked(vdi),
        EventKind::Shutdown => node.fences().all_unlocked(),
        EventKind::Formatted(_) => node.fences().clear(),
        _ => {}
    }
    match &e.kind {
        EventKind::Joined(s) if s.id == session => *joined_seen = true,
        EventKind::Left { session: s, expired } if *s == session => {
            if *expired {
                warn!("session {session} expired: its lease ran out");
            } else {
                warn!("session {session} was closed");
            }
            return Ok(Step::SessionGone);
        }
        EventKind::Formatted(cfg) => {
            // Before this session's own join, a format is history: a later one may follow.
            let old = node.cluster_id();
            if *joined_seen || old.is_empty() {
                info!(
                    "cluster formatted: id {}, {} copies, object size 2^{}",
                    cfg.cluster_id, cfg.copies, cfg.object_size_shift
                );
                node.adopt_cluster(&cfg.cluster_id)?;
                if !old.is_empty() && old != cfg.cluster_id {
                    // A new cluster reuses VDI ids: no object of the old one may survive.
                    warn!("the cluster was formatted anew: removing every object of cluster {old}");
                    node.reset_epochs()?;
                    node.set_cluster_copies(cfg.copies);
                    return Ok(Step::Wipe);
                }
            }
            node.reset_epochs()?;
            node.set_cluster_copies(cfg.copies);
            sheep_rpc::transport::set_cluster_secure(cfg.policy.secure);
            node.kick_recovery();
        }
        EventKind::VdiCreated(vdi) => node.vdi_created(vdi),
        EventKind::VdiDeleted(vdi) if node.vdi_deleted(vdi.vid) => {
            info!("VDI {} ({}) deleted: removing its objects", vdi.name, vdi.vid);
            let objects = node.objects.clone();
            let vids = [vdi.vid].into_iter().collect();
            tokio::task::spawn_local(async move {
                if let Err(e) = blocking(move || objects.remove_vdis(&vids)).await {
                    warn!("cannot remove the objects of a deleted VDI: {e}");
                }
            });
        }
        EventKind::RecoveryComplete(epoch) => {
            info!("every node of epoch {epoch} recovered");
            node.set_clean_epoch(*epoch);
            tokio::task::spawn_local(recovery_complete(node.clone(), *epoch));
        }
        EventKind::Epoch(rec) => {
            if !node.record_epoch(rec)? {
                warn!("epoch {} does not follow the local history; resynchronising", rec.epoch);
                return Ok(Step::Resync);
            }
            let ids: Vec<&str> = rec.nodes.iter().map(|n| n.id.as_str()).collect();
            info!("epoch {}: {}", rec.epoch, ids.join(", "));
        }
        EventKind::Shutdown if *joined_seen => {
            info!("the cluster is shut down");
            return Ok(Step::Shutdown);
        }
        EventKind::Halted => warn!("every storage node left: the cluster waits for the last epoch's nodes"),
        EventKind::Resumed => info!("the cluster runs again"),
        _ => {}
    }
    Ok(Step::Continue)
}

async fn recovery_complete(node: Rc<Node>, epoch: u32) {
    recovery::recovery_complete(&node, epoch).await;
}

/// Removes every object of the store (live and stale).
async fn wipe(node: &Node) {
    let objects = node.objects.clone();
    let wiped = blocking(move || {
        objects.quarantine_all(0)?;
        objects.purge_stale()
    })
    .await;
    match wiped {
        Ok(n) => info!("removed {n} object(s) of the old cluster"),
        Err(e) => warn!("cannot remove the old cluster's objects: {e}"),
    }
}
