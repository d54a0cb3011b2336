//! Deletions that give back what nothing references any more: a snapshot, a VDI with its
//! snapshots, the working VDI a rollback replaces.
//!
//! The storage nodes remove every object of a VDI the namespace made collectable (nothing
//! descends from it). A VDI that something still descends from is only retired, and its
//! objects stay — but some of them, and some of its ancestors', may be named by no live
//! table any more once a VDI that shared them is gone. [`deleting`] removes those:
//!
//! 1. the namespace before, and the tables of the VDIs about to go (read first: once the
//!    deletion is applied, the storage nodes may be removing a collectable VDI's inode);
//! 2. the deletion itself (the groupd call the caller passes);
//! 3. the namespace after it, the live VDIs of the family
//!    ([`sheep_core::reclaim::remaining`]) and their tables, from storage;
//! 4. the objects the deleted tables name and no live table does
//!    ([`sheep_core::reclaim::unreferenced`]), removed from every replica.
//!
//! Safe against writers: a live table only ever moves away from an ancestor's object
//! (copy-on-write), never towards it, and a new VDI (snapshot, clone, rollback) starts as
//! the table of a live snapshot, which step 3 read. Conservative otherwise: when a table
//! cannot be read, or while storage nodes recover (they move objects, and one removed now
//! could come back from an old holder), nothing is removed, and the outcome says why.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use futures::stream::{self, StreamExt, TryStreamExt};
use serde::Serialize;
use sheep_core::namespace::VdiEntry;
use sheep_core::object::VdiId;
use sheep_core::reclaim::{remaining, unreferenced, Remaining};
use tokio::time::Instant;

use super::cluster::Cluster;
use super::engine::{Vdi, VdiOptions};
use super::error::VdiError;
use super::replicate::remove_everywhere;
use crate::group::VdiListing;

/// How long the namespace may take to show a deletion (a groupd that serves reads from its
/// own applied state may be a little behind the master that applied it).
const SHOWN_WITHIN: Duration = Duration::from_secs(10);
/// How long a deletion waits for storage nodes to finish recovering before it gives up
/// removing anything.
const RECOVERY_WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(300);
/// Tables read, and objects removed, at once.
const IN_FLIGHT: usize = 8;

/// What a deletion gave back.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Reclaim {
    /// Data objects removed: named by a deleted VDI and by no live one, and held by some
    /// replica (the storage nodes remove collectable VDIs' objects by themselves; those are
    /// not counted).
    pub removed: usize,
    /// Why not everything that nothing references was removed (`None`: it all was). When
    /// set, what is left stays until the whole family is deleted.
    pub incomplete: Option<String>,
}

impl Reclaim {
    /// Nothing removed, for `why` (the caller reports it).
    fn stopped(why: String) -> Reclaim {
        Reclaim { removed: 0, incomplete: Some(why) }
    }
}

/// Runs `delete` (a groupd call that takes the entries `doomed` selects out of the
/// namespace), then removes the objects that no live VDI references any more (see the
/// module documentation). An error of `delete` is returned as it is (nothing was deleted);
/// what happened to the objects is in the [`Reclaim`], never an error, since the deletion
/// itself is done by then.
pub async fn deleting<T, Fut>(
    cluster: &Rc<Cluster>,
    doomed: impl Fn(&VdiEntry) -> bool,
    delete: impl FnOnce() -> Fut,
) -> Result<(T, Reclaim), VdiError>
where
    Fut: Future<Output = Result<T, crate::group::Error>>,
{
    let before = cluster.group().vdi_listing().await?;
    let gone: Vec<VdiEntry> = before.vdis.iter().filter(|e| doomed(e)).cloned().collect();
    let tables = if gone.is_empty() { Ok(Vec::new()) } else { read_tables(cluster, gone.iter()).await };
    let done = delete().await?;
    let reclaim = match tables {
        _ if gone.is_empty() => Reclaim::default(),
        Ok(tables) => give_back(cluster, &before, &gone, &tables).await,
        Err(why) => Reclaim::stopped(why),
    };
    Ok((done, reclaim))
}

/// Steps 3 and 4 of the module documentation, after `gone` (whose tables are `tables`)
/// left the namespace `before`.
async fn give_back(cluster: &Rc<Cluster>, before: &VdiListing, gone: &[VdiEntry], tables: &[Vec<u32>]) -> Reclaim {
    let after = match listing_without(cluster, gone).await {
        Ok(l) => l,
        Err(why) => return Reclaim::stopped(why),
    };
    let known = before.vdis.iter().chain(&before.retired).chain(&after.retired);
    let rem = remaining(gone, &after.vdis, known);
    if let Remaining::All { unknown, .. } = &rem {
        tracing::info!("the parent of {unknown} is not known: every live VDI's table decides");
    }
    let rest = match read_tables(cluster, rem.entries().iter().copied()).await {
        Ok(t) => t,
        Err(why) => return Reclaim::stopped(why),
    };
    let live: HashSet<VdiId> = after.vdis.iter().map(|e| e.vid).collect();
    let collected: HashSet<VdiId> = after.deleted.iter().copied().collect();
    let gone_tables: Vec<&[u32]> = tables.iter().map(Vec::as_slice).collect();
    let rest_tables: Vec<&[u32]> = rest.iter().map(Vec::as_slice).collect();
    let plan = unreferenced(&gone_tables, &rest_tables, |o| live.contains(&o) || collected.contains(&o));
    if plan.is_empty() {
        return Reclaim::default();
    }
    // Only removals need recovery done (reads recover what they ask for first).
    if let Some(why) = recovered(cluster).await {
        return Reclaim::stopped(why);
    }
    // A family shares its copies (snapshots and clones take their base's); the owner's own
    // entry says it where it is known.
    let copies: HashMap<VdiId, u8> = before
        .vdis
        .iter()
        .chain(&before.retired)
        .chain(&after.retired)
        .chain(gone)
        .map(|e| (e.vid, e.copies))
        .collect();
    let retry_for = VdiOptions::default().retry_for;
    let removed = Cell::new(0);
    let result = stream::iter(plan.iter().map(Ok))
        .try_for_each_concurrent(IN_FLIGHT, |&oid| {
            let copies = copies.get(&oid.vid()).copied().unwrap_or(gone[0].copies);
            let removed = &removed;
            async move {
                if remove_everywhere(cluster, oid, copies, retry_for).await? {
                    removed.set(removed.get() + 1);
                }
                Ok::<_, VdiError>(())
            }
        })
        .await;
    let removed = removed.get();
    match result {
        Ok(()) => Reclaim { removed, incomplete: None },
        Err(e) => Reclaim {
            removed,
            incomplete: Some(format!("removing the {} object(s) nothing references stopped: {e}", plan.len())),
        },
    }
}

/// The raw tables of `entries`, from storage, in their order; the first that cannot be read
/// says why.
async fn read_tables<'a>(
    cluster: &Rc<Cluster>,
    entries: impl Iterator<Item = &'a VdiEntry>,
) -> Result<Vec<Vec<u32>>, String> {
    stream::iter(entries)
        .map(|e| async move {
            let vdi = Vdi::open_entry(cluster.clone(), e.clone(), VdiOptions::default())
                .await
                .map_err(|err| format!("cannot read the inode of {} (id {}): {err}", e.label(), e.vid))?;
            Ok(vdi.table())
        })
        .buffered(IN_FLIGHT)
        .try_collect()
        .await
}

/// The namespace once it shows none of `gone` any more.
async fn listing_without(cluster: &Cluster, gone: &[VdiEntry]) -> Result<VdiListing, String> {
    let deadline = Instant::now() + SHOWN_WITHIN;
    loop {
        let l = cluster.group().vdi_listing().await.map_err(|e| format!("cannot list the VDIs: {e}"))?;
        let still = l.vdis.iter().find(|e| gone.iter().any(|g| g.vid == e.vid));
        match still {
            None => return Ok(l),
            Some(e) if Instant::now() >= deadline => {
                return Err(format!(
                    "the namespace still lists {} (id {}) {}s after its deletion",
                    e.label(),
                    e.vid,
                    SHOWN_WITHIN.as_secs()
                ))
            }
            Some(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// `None` once no storage node of the epoch is recovering (waiting a bounded time), else why.
async fn recovered(cluster: &Cluster) -> Option<String> {
    let deadline = Instant::now() + RECOVERY_WAIT;
    loop {
        let busy = cluster.recovering().await;
        if busy.is_empty() {
            return None;
        }
        if Instant::now() >= deadline {
            return Some(format!(
                "recovery in progress on {} (an object removed now could come back from a node that held it \
                    before)",
                busy.join(", ")
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}
