//! Snapshots and the reclaim of deleted snapshots' objects.
//!
//! A snapshot is taken by the VDI's writer, between two of its writes: the daemon holding
//! the VDI's lock if it is attached (asked through a group broadcast, [`HolderRequest`]),
//! else whoever asks, after taking the lock itself. The writer flushes, makes sure its inode
//! object exists ([`Vdi::materialize`]: a snapshot's table is always readable from its own
//! inode), then asks groupd to freeze it; writes after that go to the new working VDI, whose
//! table starts as the snapshot's (copy-on-write from there).

use std::rc::Rc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sheep_core::group::SessionId;
use sheep_core::namespace::VdiEntry;
use sheep_core::object::{ObjectId, VdiId};
use sheep_rpc::error::ErrorCode;
use tokio::time::Instant;

use super::cluster::Cluster;
use super::engine::{Vdi, VdiOptions};
use super::error::VdiError;
use crate::group::GroupClient;

/// The prefix of a broadcast payload addressed to the holder of a VDI.
const REQUEST_PREFIX: &[u8] = b"sheep-holder-request:";

/// What the holder of a VDI is asked to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum HolderRequest {
    /// Take snapshot `tag` of `vdi` between two writes.
    Snapshot { vdi: String, tag: String },
    /// The holder could not (sent back by the holder, so the asker need not time out).
    SnapshotFailed { vdi: String, tag: String, error: String },
}

impl HolderRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = REQUEST_PREFIX.to_vec();
        out.extend(serde_json::to_vec(self).expect("a request always encodes"));
        out
    }

    /// `None` for broadcasts that are not holder requests.
    pub fn decode(payload: &[u8]) -> Option<HolderRequest> {
        serde_json::from_slice(payload.strip_prefix(REQUEST_PREFIX)?).ok()
    }
}

/// Takes snapshot `tag` of the open working VDI `vdi`, whose writes the caller has stopped
/// (and whose lock `session` holds, if it is locked). Returns (the snapshot, the new working
/// VDI); the caller goes on with a [`Vdi`] opened on the latter.
pub async fn snapshot(
    vdi: &Vdi,
    group: &GroupClient,
    session: SessionId,
    tag: &str,
) -> Result<(VdiEntry, VdiEntry), VdiError> {
    vdi.flush().await?;
    vdi.materialize().await?;
    Ok(group.vdi_snapshot(session, &vdi.entry().name, tag).await?)
}

/// After snapshot `gone` was deleted while other VDIs still descend from it: removes its
/// objects that no live VDI reads any more (the rest stay until the storage nodes remove the
/// whole VDI, once nothing descends from it). Safe against concurrent writers: a VDI's table
/// only ever moves away from an ancestor's object (copy-on-write), never towards it, and no
/// new descendant of a deleted snapshot can appear. Returns how many objects were removed.
pub async fn reclaim(cluster: &Rc<Cluster>, gone: &VdiEntry, live: &[VdiEntry]) -> Result<usize, VdiError> {
    let opts = VdiOptions::default();
    // The deleted snapshot's own table, from its inode (materialized before it was taken).
    let as_working = VdiEntry { snapshot: None, parent: None, ..gone.clone() };
    let snap = Vdi::open_entry(cluster.clone(), as_working, opts).await?;
    let owned: Vec<u32> = (0..snap.max_objects()).filter(|&i| snap.owner(i) == Some(gone.vid)).collect();
    let mut still_read = std::collections::HashSet::new();
    for e in live.iter().filter(|e| e.object_size_shift == gone.object_size_shift && e.vid != gone.vid) {
        let v = Vdi::open_entry(cluster.clone(), VdiEntry { snapshot: None, ..e.clone() }, opts).await?;
        still_read.extend(owned.iter().copied().filter(|&i| i < v.max_objects() && v.owner(i) == Some(gone.vid)));
    }
    let mut removed = 0;
    for idx in owned.into_iter().filter(|i| !still_read.contains(i)) {
        remove_everywhere(cluster, ObjectId::data(gone.vid, idx), gone.copies, opts.retry_for).await?;
        removed += 1;
    }
    Ok(removed)
}

/// Removes `oid` from each of its replicas in the current epoch (absent already is fine).
pub(crate) async fn remove_everywhere(
    cluster: &Rc<Cluster>,
    oid: ObjectId,
    copies: u8,
    retry_for: Duration,
) -> Result<(), VdiError> {
    let started = Instant::now();
    loop {
        let view = cluster.view();
        let mut failed = None;
        for n in view.ring.replicas(oid, usize::from(copies)) {
            match cluster.pool().remove(&n.addr, view.epoch, oid.raw()).await {
                Ok(()) => {}
                Err(e) if e.is_code(ErrorCode::NoObject) => {}
                Err(e) => failed = Some(e),
            }
        }
        let Some(e) = failed else { return Ok(()) };
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

/// The ids a VDI reads through its ancestry, nearest first, from the live entries it knows
/// (a retired snapshot in between ends the walk).
pub fn ancestry(e: &VdiEntry, live: &[VdiEntry]) -> Vec<VdiId> {
    let mut out = Vec::new();
    let mut next = e.parent;
    while let Some(v) = next {
        if out.contains(&v) || out.len() > live.len() {
            break;
        }
        out.push(v);
        next = live.iter().find(|x| x.vid == v).and_then(|x| x.parent);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_other_payloads_are_ignored() {
        let r = HolderRequest::Snapshot { vdi: "disk0".into(), tag: "t1".into() };
        assert_eq!(HolderRequest::decode(&r.encode()), Some(r));
        assert_eq!(HolderRequest::decode(b"hello"), None);
        assert_eq!(HolderRequest::decode(b"sheep-holder-request:{not json"), None);
    }
}
