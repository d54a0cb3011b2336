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

/// The new working VDI after a snapshot froze `old`'s id. Writes must not go on under that
/// id, so the daemon stops if it cannot open it within [`REOPEN_FOR`].
async fn open_working(old: &Vdi, working: sheep_core::namespace::VdiEntry) -> Vdi {
    let started = tokio::time::Instant::now();
    loop {
        match Vdi::open_entry(old.cluster().clone(), working.clone(), old.options()).await {
            Ok(v) => return v,
            Err(e) if started.elapsed() < REOPEN_FOR => {
                tracing::warn!("opening {} (id {}) after the snapshot: {e}; trying again", working.name, working.vid);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                tracing::error!(
                    "cannot open {} (id {}) after the snapshot: {e}: stopping, so as not to write into the snapshot",
                    working.name,
                    working.vid
                );
                std::process::exit(1);
            }
        }
    }
}

/// How long the daemon tries to open the working VDI a snapshot made.
const REOPEN_FOR: Duration = Duration::from_secs(60);

async fn take_snapshot(group: &Rc<GroupClient>, backend: &VdiBackend, session: SessionId, tag: &str) {
    let taken = backend
        .switch(|old| async move {
            let (snap, working) = lifecycle::snapshot(&old, group, session, tag).await?;
            Ok::<_, sheep_client::vdi::VdiError>((snap, Rc::new(open_working(&old, working).await)))
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
