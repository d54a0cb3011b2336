//! The raw storaged calls a check needs beyond the engine's (`fetch`, `list`, and a
//! fenced whole-object `createAndWrite`/`remove`), on the cluster's connection pool. Kept
//! here rather than in `vdi/store.rs` so that the check does not depend on that file's
//! changing call signatures.

use std::collections::HashSet;

use sheep_core::object::ObjectId;

use crate::vdi::{Cluster, NodeError};

/// A whole object as one node gave it.
pub struct Fetched {
    pub data: Vec<u8>,
    /// It came from the node's `.stale/`: not a live copy.
    pub stale: bool,
}

pub async fn fetch(cluster: &Cluster, addr: &str, epoch: u32, oid: ObjectId) -> Result<Fetched, NodeError> {
    cluster
        .pool()
        .call(addr, |c| async move {
            let mut req = c.fetch_request();
            req.get().set_epoch(epoch);
            req.get().set_oid(oid.raw());
            let resp = req.send().promise.await?;
            let r = resp.get()?;
            Ok(Fetched { data: r.get_data()?.to_vec(), stale: r.get_stale() })
        })
        .await
}

/// The objects `addr` holds live (in `obj/`, not only in `.stale/`).
pub async fn list_live(cluster: &Cluster, addr: &str, epoch: u32) -> Result<HashSet<u64>, NodeError> {
    cluster
        .pool()
        .call(addr, |c| async move {
            let mut req = c.list_request();
            req.get().set_epoch(epoch);
            let resp = req.send().promise.await?;
            let r = resp.get()?;
            let stale: HashSet<u64> = r.get_stale()?.iter().collect();
            Ok(r.get_oids()?.iter().filter(|o| !stale.contains(o)).collect())
        })
        .await
}

/// Puts `data` as the whole content of `oid` on `addr`: created if absent, written over
/// from offset 0 if present (every block is rewritten, so old content cannot survive).
/// `fence`: the lock token of the VDI owning the object (0 without a lock).
pub async fn put_whole(
    cluster: &Cluster,
    addr: &str,
    epoch: u32,
    oid: ObjectId,
    data: &[u8],
    fence: u64,
) -> Result<(), NodeError> {
    let object_size = u32::try_from(data.len()).map_err(|_| NodeError::Refused {
        addr: addr.into(),
        code: "badRequest".into(),
        message: format!("object {oid} of {} bytes is too large for the object API", data.len()),
    })?;
    cluster
        .pool()
        .call(addr, |c| async move {
            let mut req = c.create_and_write_request();
            let mut p = req.get();
            p.set_epoch(epoch);
            p.set_oid(oid.raw());
            p.set_object_size(object_size);
            p.set_base_oid(0);
            p.set_offset(0);
            p.set_data(data);
            p.set_fua(true);
            p.set_fence(fence);
            req.send().promise.await?;
            Ok(())
        })
        .await
}

/// Removes `oid` from `addr` (its live and stale copies).
pub async fn remove(cluster: &Cluster, addr: &str, epoch: u32, oid: ObjectId) -> Result<(), NodeError> {
    cluster
        .pool()
        .call(addr, |c| async move {
            let mut req = c.remove_request();
            req.get().set_epoch(epoch);
            req.get().set_oid(oid.raw());
            req.send().promise.await?;
            Ok(())
        })
        .await
}
