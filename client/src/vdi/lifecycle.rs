//! Snapshots (their deletion, with the reclaim of objects, is in [`super::reclaim`]).
//!
//! A snapshot is taken by the VDI's writer, between two of its writes: the daemon holding
//! the VDI's lock if it is attached (asked through a group broadcast, [`HolderRequest`]),
//! else whoever asks, after taking the lock itself. The writer flushes, makes sure its inode
//! object exists ([`Vdi::materialize`]: a snapshot's table is always readable from its own
//! inode), then asks groupd to freeze it; writes after that go to the new working VDI, whose
//! table starts as the snapshot's (copy-on-write from there).

use serde::{Deserialize, Serialize};
use sheep_core::group::SessionId;
use sheep_core::namespace::VdiEntry;

use super::engine::Vdi;
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
