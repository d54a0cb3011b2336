//! The retry loops of the engine: one request to every replica of an object (writes,
//! zeroing, removal), or to one replica after another (reads), across epoch changes, within a
//! bounded time.

use std::rc::Rc;
use std::time::Duration;

use futures::future::join_all;
use sheep_core::object::ObjectId;
use sheep_rpc::error::ErrorCode;
use tokio::time::Instant;

use super::cluster::Cluster;
use super::error::{NodeError, VdiError};

/// After a failure that no new epoch explains, the pause before the next try.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// The longest wait for a new epoch before trying again anyway.
const EPOCH_WAIT: Duration = Duration::from_secs(1);

/// A write-like request, sent the same way to every replica.
#[derive(Clone, Copy)]
pub(crate) enum Op<'a> {
    /// Into an existing object.
    Write { offset: u32, data: &'a [u8], fua: bool },
    /// Creates the object (zeros, or a copy of `base`) if absent, then writes.
    Create { object_size: u32, base: u64, offset: u32, data: &'a [u8], fua: bool },
    /// Makes a range of an existing object read as zeros.
    Zero { offset: u32, len: u32, fua: bool },
}

/// `fence`: the writer's lock token (0: none), checked by the node against the VDI's lock.
async fn send(
    cluster: &Cluster,
    addr: &str,
    epoch: u32,
    oid: ObjectId,
    op: Op<'_>,
    fence: u64,
) -> Result<(), NodeError> {
    let pool = cluster.pool();
    match op {
        Op::Write { offset, data, fua } => pool.write(addr, epoch, oid.raw(), offset, data, fua, fence).await,
        Op::Create { object_size, base, offset, data, fua } => {
            pool.create_and_write(addr, epoch, oid.raw(), object_size, base, offset, data, fua, fence).await
        }
        Op::Zero { offset, len, fua } => pool.zero(addr, epoch, oid.raw(), offset, len, fua, fence).await,
    }
}

/// Pauses after a failed round: until a newer epoch when a node is gone or refused our
/// epoch (at most [`EPOCH_WAIT`]), else briefly. Never past `deadline`.
async fn pause(cluster: &Cluster, epoch: u32, wants_epoch: bool, deadline: Instant) {
    let now = Instant::now();
    if wants_epoch {
        cluster.wait_newer(epoch, deadline.min(now + EPOCH_WAIT)).await;
    } else {
        tokio::time::sleep_until(deadline.min(now + RETRY_PAUSE)).await;
    }
}

fn give_up(what: impl FnOnce() -> String, started: Instant, last: Option<String>) -> VdiError {
    VdiError::Io { what: what(), after: started.elapsed(), last: last.unwrap_or_else(|| "no storage node".into()) }
}

/// Sends `op` to every replica of `oid` in the current epoch, in parallel; succeeds when
/// all acknowledged. A round with failures is retried whole (the requests are idempotent)
/// on the then current epoch until `retry_for` is spent. Returns the addresses written.
/// `fence`: the writer's lock token; a node's `fenced` refusal ends it at once (the lock
/// moved to another writer: no retry can succeed, and none may).
pub(crate) async fn to_all(
    cluster: &Cluster,
    oid: ObjectId,
    copies: usize,
    op: Op<'_>,
    retry_for: Duration,
    fence: u64,
) -> Result<Vec<String>, VdiError> {
    let started = Instant::now();
    let deadline = started + retry_for;
    let policy = cluster.policy();
    let min = usize::from(policy.min_copies_for(u8::try_from(copies).unwrap_or(u8::MAX)));
    // Below the minimum of replicas, a write is held this long (for more storage nodes).
    let held_until = started + Duration::from_millis(policy.hold_ms());
    let mut last: Option<String> = None;
    loop {
        let view = cluster.view();
        let addrs: Vec<String> = view.ring.replicas(oid, copies).into_iter().map(|n| n.addr.clone()).collect();
        if addrs.len() < min {
            let why = format!(
                "only {} of the {copies} copies of object {oid} have a storage node in epoch {}, fewer than the {min} \
                 a write needs (cluster format --min-copies): held for more storage nodes",
                addrs.len(),
                view.epoch
            );
            if Instant::now() >= held_until {
                return Err(give_up(|| format!("writing object {oid}"), started, Some(why)));
            }
            tracing::debug!("{why}");
            cluster.wait_newer(view.epoch, held_until.min(Instant::now() + EPOCH_WAIT)).await;
            continue;
        }
        let mut wants_epoch = addrs.is_empty();
        if !addrs.is_empty() {
            let results = join_all(addrs.iter().map(|a| send(cluster, a, view.epoch, oid, op, fence))).await;
            let errors: Vec<NodeError> = results.into_iter().filter_map(Result::err).collect();
            if errors.is_empty() {
                return Ok(addrs);
            }
            if let Some(e) = errors.iter().find(|e| e.is_fenced()) {
                return Err(VdiError::Fenced(e.clone()));
            }
            if let Some(e) = errors.iter().find(|e| e.is_final()) {
                return Err(VdiError::Node(e.clone()));
            }
            wants_epoch = errors.iter().any(NodeError::wants_new_epoch);
            for e in &errors {
                tracing::debug!("write {oid} at epoch {}: {e}", view.epoch);
            }
            last = errors.first().map(ToString::to_string);
        }
        if Instant::now() >= deadline {
            return Err(give_up(|| format!("writing object {oid}"), started, last));
        }
        pause(cluster, view.epoch, wants_epoch, deadline).await;
    }
}

/// Reads `buf.len()` bytes at `offset` of `oid` from one replica: starting with replica
/// number `first` (to spread reads), then the next on any error; after a round where every
/// replica failed, waits (for a new epoch, or briefly) and tries again, until `retry_for`.
pub(crate) async fn read_one(
    cluster: &Cluster,
    oid: ObjectId,
    copies: usize,
    first: usize,
    offset: u32,
    buf: &mut [u8],
    retry_for: Duration,
) -> Result<(), VdiError> {
    let started = Instant::now();
    let deadline = started + retry_for;
    let mut last: Option<String> = None;
    loop {
        let view = cluster.view();
        let nodes = view.ring.replicas(oid, copies);
        let mut wants_epoch = nodes.is_empty();
        for addr in read_order(cluster, &nodes, first) {
            match cluster.pool().read(addr, view.epoch, oid.raw(), offset, buf).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_code(ErrorCode::BadRequest) || e.is_code(ErrorCode::Denied) => {
                    return Err(VdiError::Node(e));
                }
                Err(e) => {
                    tracing::debug!("read {oid} at epoch {}: {e}", view.epoch);
                    wants_epoch |= e.wants_new_epoch();
                    last = Some(e.to_string());
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(give_up(|| format!("reading object {oid}"), started, last));
        }
        pause(cluster, view.epoch, wants_epoch, deadline).await;
    }
}

/// The replicas' addresses in the order to try them: from number `first` on, nodes that
/// recently failed last.
fn read_order<'a>(cluster: &Cluster, nodes: &[&'a sheep_core::epoch::NodeInfo], first: usize) -> Vec<&'a str> {
    let n = nodes.len();
    let rotated = (0..n).map(|k| nodes[(first + k) % n].addr.as_str());
    let (mut good, suspect): (Vec<&str>, Vec<&str>) = rotated.partition(|a| !cluster.pool().is_suspect(a));
    good.extend(suspect);
    good
}

/// Asks every address in `addrs` to flush; an address that fails and is not in the current
/// epoch any more is dropped (its objects are recovered from the other replicas, which are
/// flushed too). Retried until `retry_for`.
pub(crate) async fn flush_all(cluster: &Cluster, mut addrs: Vec<String>, retry_for: Duration) -> Result<(), VdiError> {
    let started = Instant::now();
    let deadline = started + retry_for;
    let mut last: Option<String> = None;
    while !addrs.is_empty() {
        let view = cluster.view();
        let results = join_all(addrs.iter().map(|a| cluster.pool().flush(a, view.epoch))).await;
        let mut failed = Vec::new();
        let mut wants_epoch = false;
        for (addr, r) in addrs.into_iter().zip(results) {
            if let Err(e) = r {
                tracing::debug!("flush at epoch {}: {e}", view.epoch);
                let in_ring = view.ring.nodes().iter().any(|n| n.addr == addr);
                if in_ring || !e.wants_new_epoch() {
                    wants_epoch |= e.wants_new_epoch();
                    last = Some(e.to_string());
                    failed.push(addr);
                }
            }
        }
        addrs = failed;
        if addrs.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(give_up(|| "flush".into(), started, last));
        }
        pause(cluster, view.epoch, wants_epoch, deadline).await;
    }
    Ok(())
}

/// Removes `oid` from each of its replicas in the current epoch (absent already is fine).
/// Returns whether some replica held it.
pub(crate) async fn remove_everywhere(
    cluster: &Rc<Cluster>,
    oid: ObjectId,
    copies: u8,
    retry_for: Duration,
) -> Result<bool, VdiError> {
    let started = Instant::now();
    // Across tries: a replica emptied by an earlier try answers "no object" the next time.
    let mut held = false;
    loop {
        let view = cluster.view();
        let mut failed = None;
        for n in view.ring.replicas(oid, usize::from(copies)) {
            match cluster.pool().remove(&n.addr, view.epoch, oid.raw()).await {
                Ok(()) => held = true,
                Err(e) if e.is_code(ErrorCode::NoObject) => {}
                Err(e) => failed = Some(e),
            }
        }
        let Some(e) = failed else { return Ok(held) };
        if started.elapsed() >= retry_for {
            return Err(VdiError::Io {
                what: format!("removing {oid}"),
                after: started.elapsed(),
                last: e.to_string(),
            });
        }
        cluster.wait_newer(view.epoch, Instant::now() + Duration::from_secs(1)).await;
    }
}
