//! The object operations behind the RPC methods: the epoch rule, disk work off the RPC
//! thread (but for small reads and writes), objects pulled at once while a recovery is
//! under way, and repair of corrupt copies from a replica.

use std::rc::Rc;
use std::time::Duration;

use sheep_core::epoch::Epoch;
use sheep_core::object::ObjectId;
use sheep_core::store::{Listing, StoreStat, WholeObject};
use sheep_rpc::error::{refusal, ErrorCode};
use tracing::{info, warn};

use crate::blocking::blocking;
use crate::node::Node;
use crate::objects::StoreError;
use crate::recovery;

/// How long a request from a newer epoch waits for this node to catch up.
pub const EPOCH_WAIT: Duration = Duration::from_secs(10);
/// Reads, writes and zeroings (without FUA) up to this size run on the RPC thread; larger ones, syncs,
/// creates and whole objects go to the blocking pool.
const INLINE_MAX: u64 = 64 << 10;
/// Attempts of one repair (each fetches the object anew).
const REPAIR_TRIES: usize = 3;

pub fn bad_request(text: impl std::fmt::Display) -> capnp::Error {
    refusal(ErrorCode::BadRequest, text)
}

/// The fencing rule (see `fence`): a write whose VDI lock token is stale is refused with
/// `fenced`, before it touches the disk (inline fast path included).
pub async fn fence_gate(node: &Node, oid: ObjectId, fence: u64) -> Result<(), capnp::Error> {
    node.check_fence(oid.vid(), fence).await.map_err(|e| {
        info!("refused a write to object {oid}: {e}");
        refusal(ErrorCode::Fenced, e)
    })
}

fn stale_epoch(asked: Epoch, have: Epoch) -> capnp::Error {
    refusal(ErrorCode::StaleEpoch, format!("request of epoch {asked}, this node is at epoch {have}"))
}

/// The epoch rule: older → staleEpoch; newer → wait (bounded) until this node has it.
/// A node whose disk failed refuses every object request first (`diskFailed`).
pub async fn gate(node: &Node, epoch: Epoch) -> Result<(), capnp::Error> {
    if let Some(refused) = node.disk.refusal() {
        return Err(refused);
    }
    let have = node.epoch();
    if epoch < have {
        return Err(stale_epoch(epoch, have));
    }
    if epoch == have {
        return Ok(());
    }
    let mut rx = node.watch_epoch();
    let caught_up = tokio::time::timeout(EPOCH_WAIT, rx.wait_for(|&e| e >= epoch)).await;
    let have = node.epoch();
    match caught_up {
        Ok(Ok(_)) if have == epoch => Ok(()),
        _ => Err(stale_epoch(epoch, have)),
    }
}

/// [`gate`] for a request on an object, which also waits for recovery to plan the epoch (see
/// `recovery::wait_for_plan`): a copy used before could be replaced by the one pulled.
async fn object_gate(node: &Node, epoch: Epoch) -> Result<(), capnp::Error> {
    gate(node, epoch).await?;
    recovery::wait_for_plan(node, epoch).await.map_err(|e| node.disk.refuse(&e))?;
    let have = node.epoch();
    if have != epoch {
        return Err(stale_epoch(epoch, have));
    }
    Ok(())
}

/// True if recovery has still to pull `oid` here: a newer copy is elsewhere, or it is
/// missing. The local copy, if any, must not be used before.
fn pulling(node: &Node, oid: ObjectId) -> bool {
    node.recovery.borrow().is_pending(node.epoch(), oid)
}

/// Runs `op` (unless `first` is its result already, from the RPC thread); if the object
/// is missing while a recovery is under way, pulls it first and runs `op` again. An object
/// recovery has still to pull is pulled before `op` runs (`first` is `None` then).
async fn with_recovery<T: Send + 'static>(
    node: &Rc<Node>,
    oid: ObjectId,
    first: Option<Result<T, StoreError>>,
    op: impl Fn() -> Result<T, StoreError> + Send + Sync + Clone + 'static,
) -> Result<T, StoreError> {
    if first.is_none() && pulling(node, oid) {
        recovery::recover_one(node, oid).await?;
    }
    let r = match first {
        Some(r) => r,
        None => blocking(op.clone()).await,
    };
    match r {
        Err(StoreError::NoObject(_)) if node.recovery.borrow().unsettled(node.epoch()) => {
            if recovery::recover_one(node, oid).await? {
                blocking(op).await
            } else {
                Err(StoreError::NoObject(oid))
            }
        }
        other => other,
    }
}

/// After a corrupt answer: repair in the background, then answer with the error.
fn on_error<T>(node: &Rc<Node>, epoch: Epoch, oid: ObjectId, r: Result<T, StoreError>) -> Result<T, capnp::Error> {
    r.map_err(|e| {
        if matches!(e, StoreError::Corrupt { .. }) {
            warn!("{e}; repairing it from a replica");
            tokio::task::spawn_local(repair(node.clone(), epoch, oid));
        }
        node.disk.refuse(&e)
    })
}

pub async fn read(
    node: &Rc<Node>,
    epoch: Epoch,
    oid: ObjectId,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, capnp::Error> {
    object_gate(node, epoch).await?;
    // Small reads the page cache holds take microseconds: done here, they cost no hop to a
    // disk thread and back. One that would wait (for the disk, or for a disk task holding
    // the object) goes to the disk threads (`ObjectStore::try_read`).
    let first = if len <= INLINE_MAX && !pulling(node, oid) { node.objects.try_read(oid, offset, len) } else { None };
    let objects = node.objects.clone();
    let r = with_recovery(node, oid, first, move || objects.read(oid, offset, len)).await;
    on_error(node, epoch, oid, r)
}

pub async fn write(
    node: &Rc<Node>,
    epoch: Epoch,
    oid: ObjectId,
    offset: u64,
    data: &[u8],
    fua: bool,
    fence: u64,
) -> Result<(), capnp::Error> {
    object_gate(node, epoch).await?;
    fence_gate(node, oid, fence).await?;
    // Small writes without FUA land in the page cache: done here (see `read`).
    let first = if !fua && data.len() as u64 <= INLINE_MAX && !pulling(node, oid) {
        node.objects.try_write(oid, offset, data, epoch)
    } else {
        None
    };
    if matches!(first, Some(Ok(()))) {
        return Ok(());
    }
    // The disk thread needs its own copy of the data.
    let objects = node.objects.clone();
    let data = std::sync::Arc::new(data.to_vec());
    let r = with_recovery(node, oid, first, move || objects.write(oid, offset, &data, fua, epoch)).await;
    on_error(node, epoch, oid, r)
}

/// Makes a range of an existing object read as zeros (see `ObjectStore::zero`); never
/// creates the object.
pub async fn zero(
    node: &Rc<Node>,
    epoch: Epoch,
    oid: ObjectId,
    offset: u64,
    len: u64,
    fua: bool,
    fence: u64,
) -> Result<(), capnp::Error> {
    object_gate(node, epoch).await?;
    fence_gate(node, oid, fence).await?;
    // Small zeroings without FUA are a page-cache write or a small punch: done here (see
    // `read`).
    let first = if !fua && len <= INLINE_MAX && !pulling(node, oid) {
        node.objects.try_zero(oid, offset, len, epoch)
    } else {
        None
    };
    let objects = node.objects.clone();
    let r = with_recovery(node, oid, first, move || objects.zero(oid, offset, len, fua, epoch)).await;
    on_error(node, epoch, oid, r)
}

#[allow(clippy::too_many_arguments, reason = "one argument per field of the wire request")]
pub async fn create_and_write(
    node: &Rc<Node>,
    epoch: Epoch,
    oid: ObjectId,
    object_size: u32,
    base: Option<ObjectId>,
    offset: u64,
    data: Vec<u8>,
    fua: bool,
    fence: u64,
) -> Result<(), capnp::Error> {
    object_gate(node, epoch).await?;
    fence_gate(node, oid, fence).await?;
    // An object this node should hold already may be on its way: pull it first, so that
    // the write lands on its data and not on zeros.
    if (!node.objects.contains(oid) && node.recovery.borrow().unsettled(node.epoch())) || pulling(node, oid) {
        recovery::recover_one(node, oid).await.map_err(|e| node.disk.refuse(&e))?;
    }
    let base_data = match base {
        Some(b) if !node.objects.contains(oid) => Some(base_object(node, epoch, b).await?),
        _ => None,
    };
    let objects = node.objects.clone();
    let r =
        blocking(move || objects.create_and_write(oid, object_size, base_data.as_deref(), offset, &data, fua, epoch))
            .await;
    on_error(node, epoch, oid, r).map(|_| ())
}

/// The whole base object of a copy-on-write: from this node if it holds it, else from the
/// base's replicas in the current epoch (live copies only).
async fn base_object(node: &Rc<Node>, epoch: Epoch, base: ObjectId) -> Result<Vec<u8>, capnp::Error> {
    let objects = node.objects.clone();
    if objects.contains(base) {
        match blocking(move || objects.read_all(base)).await {
            Ok(d) => return Ok(d),
            Err(e) => warn!("base object {base} here: {e}; trying its replicas"),
        }
    }
    let mut last = format!("base object {base} is on none of its replicas");
    let Some(ring) = node.ring(epoch) else { return Err(refusal(ErrorCode::NoObject, last)) };
    let copies = node.copies_of(base.vid());
    for n in ring.replicas(base, copies).into_iter().filter(|n| n.id != node.info.id) {
        match node.peers.fetch(&n.addr, epoch, base.raw()).await {
            Ok(f) if !f.is_stale() => return Ok(f.data),
            Ok(_) => {}
            Err(e) => last = format!("base object {base}: {e}"),
        }
    }
    Err(refusal(ErrorCode::NoObject, last))
}

pub async fn remove(node: &Node, epoch: Epoch, oid: ObjectId) -> Result<(), capnp::Error> {
    gate(node, epoch).await?;
    let objects = node.objects.clone();
    blocking(move || objects.remove(oid)).await.map_err(|e| node.disk.refuse(&e))
}

pub async fn list(node: &Node, epoch: Epoch) -> Result<Listing, capnp::Error> {
    gate(node, epoch).await?;
    let objects = node.objects.clone();
    blocking(move || objects.list()).await.map_err(|e| node.disk.refuse(&e))
}

/// `repair`: a corrupt live copy is repaired from a replica (else only reported).
pub async fn fetch(node: &Rc<Node>, epoch: Epoch, oid: ObjectId, repair: bool) -> Result<WholeObject, capnp::Error> {
    gate(node, epoch).await?;
    let objects = node.objects.clone();
    let r = blocking(move || objects.fetch_any(oid)).await;
    if repair && matches!(r, Err(StoreError::Corrupt { .. })) && node.objects.contains(oid) {
        return on_error(node, epoch, oid, r);
    }
    r.map_err(|e| node.disk.refuse(&e))
}

pub async fn flush(node: &Node, epoch: Epoch) -> Result<(), capnp::Error> {
    gate(node, epoch).await?;
    let objects = node.objects.clone();
    blocking(move || objects.flush()).await.map_err(|e| node.disk.refuse(&e))
}

pub async fn stat(node: &Node) -> Result<StoreStat, capnp::Error> {
    if let Some(refused) = node.disk.refusal() {
        return Err(refused);
    }
    let objects = node.objects.clone();
    blocking(move || objects.stat()).await.map_err(|e| node.disk.refuse(&e))
}

/// Replaces this node's corrupt copy of `oid` by a good one from another replica of the
/// epoch. A write that lands meanwhile makes the repair fetch again.
pub async fn repair(node: Rc<Node>, epoch: Epoch, oid: ObjectId) {
    for _ in 0..REPAIR_TRIES {
        if !node.objects.begin_repair(oid) {
            return; // one is under way
        }
        let mut good = fetch_good_copy(&node, epoch, oid).await;
        let local = node.objects.live_version(oid).unwrap_or(0);
        if let Some((_, v)) = good.as_ref().filter(|(_, v)| *v < local) {
            // Never an older copy over a newer one: the corrupt blocks stay reported.
            warn!(
                "not repairing object {oid}: the replicas' copy (version {v:#x}) is older than this one ({local:#x})"
            );
            good = None;
        }
        let objects = node.objects.clone();
        let found = good.is_some();
        match blocking(move || objects.finish_repair(oid, good.as_ref().map(|(d, v)| (d.as_slice(), *v)))).await {
            Ok(true) => {
                info!("repaired object {oid} from a replica");
                return;
            }
            Ok(false) if found => continue, // written meanwhile: fetch again
            Ok(false) => {
                warn!("cannot repair object {oid}: no replica could give a good copy");
                return;
            }
            Err(e) => {
                warn!("cannot repair object {oid}: {e}");
                return;
            }
        }
    }
    warn!("gave up repairing object {oid}: it kept being written");
}

/// The newest live copy of `oid` among its other replicas in the epoch, with its version.
async fn fetch_good_copy(node: &Node, epoch: Epoch, oid: ObjectId) -> Option<(Vec<u8>, u64)> {
    let epoch = epoch.max(node.epoch());
    let ring = node.ring(epoch)?;
    let mut best: Option<(Vec<u8>, u64)> = None;
    for n in ring.replicas(oid, node.copies_of(oid.vid())).into_iter().filter(|n| n.id != node.info.id) {
        match node.peers.fetch(&n.addr, epoch, oid.raw()).await {
            Ok(f) if !f.is_stale() && best.as_ref().is_none_or(|(_, v)| f.version > *v) => {
                best = Some((f.data, f.version))
            }
            Ok(_) => {}
            Err(e) => tracing::debug!("repair {oid}: {e}"),
        }
    }
    best
}
