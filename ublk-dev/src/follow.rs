//! What the daemon holding a VDI does for the rest of the cluster while it serves it: it
//! takes the snapshots asked of it (between two requests, see `VdiBackend::switch`) and
//! follows a resize of its VDI. Both come through groupd's total order.

use std::rc::Rc;
use std::time::Duration;

use sheep_client::group::{GroupClient, Watcher};
use sheep_client::vdi::lifecycle::{self, HolderRequest};
use sheep_client::vdi::Vdi;
use sheep_core::group::{EventKind, SessionId};
use sheep_core::namespace::VdiEntry;

use crate::backend::VdiBackend;

/// Follows the group's events from `from` for as long as the caller polls it. `resized` is
/// told the new size after the VDI grew.
pub async fn follow(
    group: Rc<GroupClient>,
    backend: Rc<VdiBackend>,
    session: SessionId,
    from: u64,
    resized: impl Fn(u64),
) {
    let mut watch = Watcher::new(group.clone(), from, 256, Duration::from_secs(5));
    loop {
        let batch = match watch.next_batch().await {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!("watching the group: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for e in batch {
            let name = backend.current().entry().name.clone();
            match e.kind {
                EventKind::Broadcast { payload, .. } => {
                    if let Some(HolderRequest::Snapshot { vdi, tag }) = HolderRequest::decode(&payload) {
                        if vdi == name {
                            take_snapshot(&group, &backend, session, &tag).await;
                        }
                    }
                }
                EventKind::VdiResized(entry) if entry.vid == backend.current().vid() => {
                    let size = entry.size;
                    match reopen(&backend, entry).await {
                        Ok(()) => {
                            tracing::info!("VDI {name} grew to {size} bytes");
                            resized(size);
                        }
                        Err(e) => tracing::error!("VDI {name} grew to {size} bytes, but reopening it failed: {e}"),
                    }
                }
                _ => {}
            }
        }
    }
}

async fn take_snapshot(group: &Rc<GroupClient>, backend: &VdiBackend, session: SessionId, tag: &str) {
    let taken = backend
        .switch(|old| async move {
            let (snap, working) = lifecycle::snapshot(&old, group, session, tag).await?;
            // No I/O from here: writes must not go on under the id the snapshot froze.
            let next = old.after_snapshot(working).unwrap_or_else(|e| {
                tracing::error!("the working VDI after snapshot {tag}: {e}: stopping, so as not to write into it");
                std::process::exit(1)
            });
            Ok::<_, sheep_client::vdi::VdiError>((snap, Rc::new(next)))
        })
        .await;
    let name = backend.current().entry().name.clone();
    match taken {
        Ok(snap) => tracing::info!(
            "took snapshot {} (id {}); going on as id {}",
            snap.label(),
            snap.vid,
            backend.current().vid()
        ),
        Err(e @ sheep_client::vdi::VdiError::SnapshotUnknown { .. }) => {
            // Its old id may be the snapshot now: a write under it would change the snapshot.
            // Stop rather than guess (a ublk device waits for `sheepctl add --recover`).
            tracing::error!("{e}: stopping, so as not to write into a snapshot");
            std::process::exit(1);
        }
        Err(e) => {
            tracing::error!("snapshot {tag} of {name} failed: {e}");
            let answer = HolderRequest::SnapshotFailed { vdi: name, tag: tag.into(), error: e.to_string() };
            if let Err(e) = group.propose(session, &answer.encode()).await {
                tracing::warn!("cannot report the failed snapshot: {e}");
            }
        }
    }
}

async fn reopen(backend: &VdiBackend, entry: VdiEntry) -> Result<(), sheep_client::vdi::VdiError> {
    backend
        .switch(|old| async move {
            old.flush().await?;
            let next = Vdi::open_entry(old.cluster().clone(), entry, old.options()).await?;
            Ok(((), Rc::new(next)))
        })
        .await
}
