//! Snapshots (their deletion, with the reclaim of objects, is in [`super::reclaim`]).
//!
//! A snapshot is taken by the VDI's writer, between two of its writes: the daemon holding
//! the VDI's lock if it is attached (asked through a group broadcast, [`HolderRequest`]),
//! else whoever asks, after taking the lock itself. The writer flushes, makes sure its inode
//! object exists ([`Vdi::materialize`]: a snapshot's table is always readable from its own
//! inode), then asks groupd to freeze it; writes after that go to the new working VDI, whose
//! table starts as the snapshot's (copy-on-write from there).

use std::time::Duration;

use sheep_core::group::SessionId;
use sheep_core::namespace::VdiEntry;
use sheep_core::object::VdiId;
use tokio::time::Instant;

use super::engine::Vdi;
use super::error::VdiError;
use crate::group::GroupClient;
use crate::ErrorCode;

/// How long a snapshot whose answer was lost is asked for again: its outcome must be known
/// before its writer writes again (a write under an id the snapshot froze would change it).
const SETTLE_FOR: Duration = Duration::from_secs(60);
const ASK_AGAIN: Duration = Duration::from_secs(1);

pub use sheep_core::group::holder::HolderRequest;

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
    let (name, vid) = (vdi.entry().name.clone(), vdi.entry().vid);
    let started = Instant::now();
    loop {
        let e = match group.vdi_snapshot(session, &name, tag).await {
            Ok(taken) => return Ok(taken),
            Err(e) => e,
        };
        if e.is_code(ErrorCode::VdiExists) {
            // The tag exists: taken by an earlier try whose answer was lost if it froze this
            // writer's id, else a tag in use from before.
            return match taken_before(group, &name, vid, tag, started + SETTLE_FOR).await {
                Some(Some(taken)) => Ok(taken),
                Some(None) => Err(e.into()),
                None => Err(VdiError::SnapshotUnknown {
                    name,
                    tag: tag.into(),
                    after: started.elapsed(),
                    last: format!("{e}, and the VDI list did not show which snapshot it is"),
                }),
            };
        }
        // A refusal is an answer (nothing was taken), but for no master right now.
        if e.code().is_some_and(|c| c != ErrorCode::NoMaster) {
            return Err(e.into());
        }
        if started.elapsed() >= SETTLE_FOR {
            return Err(VdiError::SnapshotUnknown {
                name,
                tag: tag.into(),
                after: started.elapsed(),
                last: e.to_string(),
            });
        }
        tracing::warn!("snapshot {tag} of {name}: {e}; asking again (its outcome must be known before writes go on)");
        tokio::time::sleep(ASK_AGAIN).await;
    }
}

/// The snapshot `tag` of `name` that froze id `vid`, and the working VDI after it, once a
/// groupd shows them (it may lag the one that refused): `Some(None)` if `tag` froze another
/// id; None if no groupd showed it by `until`.
async fn taken_before(
    group: &GroupClient,
    name: &str,
    vid: VdiId,
    tag: &str,
    until: Instant,
) -> Option<Option<(VdiEntry, VdiEntry)>> {
    loop {
        if let Ok((vdis, _)) = group.vdi_list().await {
            let tagged = vdis.iter().find(|v| v.name == name && v.snapshot.as_deref() == Some(tag));
            match tagged {
                Some(s) if s.vid != vid => return Some(None),
                Some(s) => {
                    if let Some(w) = vdis.iter().find(|v| v.name == name && !v.is_snapshot()) {
                        return Some(Some((s.clone(), w.clone())));
                    }
                }
                None => {}
            }
        }
        if Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(ASK_AGAIN).await;
    }
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
