//! Which data objects a deletion leaves that no remaining VDI references (pure: the client
//! reads the tables and removes the objects).
//!
//! A VDI's table names, per index, the object holding its data: one of its own, or one of an
//! ancestor's that it still shares copy-on-write. When a VDI leaves the namespace (a deleted
//! snapshot or working VDI, a VDI replaced by a rollback), the objects its table named may be
//! named by nobody else any more — its own, and its ancestors' too: deleting the last
//! snapshot that still shared an object of a deleted older one leaves that object behind.
//!
//! Who may name such an object: only a live VDI of the same family (a VDI names objects of
//! itself and of its ancestors, so two VDIs name a common object only when they have an
//! ancestor in common, i.e. they are in the same tree of parent links). A VDI's parent never
//! changes and ids are never reused, so parent links seen at different times agree; when a
//! link is missing from what the caller knows, the family cannot be told and every live VDI
//! counts (reading more tables never removes more).
//!
//! Which objects are the client's to remove: not those of live VDIs (they name their own
//! objects, which is also what makes this safe against a concurrent clone or snapshot, whose
//! table starts as a live snapshot's), nor those of VDIs the namespace made collectable (the
//! storage nodes remove every object of those, also on a node that is down now).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::namespace::VdiEntry;
use crate::object::{ObjectId, VdiId};

/// The live VDIs whose tables decide what a deletion may give back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Remaining<'a> {
    /// The live VDIs in the same tree as one of the deleted ones.
    Family(Vec<&'a VdiEntry>),
    /// Every live VDI: the parent of `unknown` (an ancestor of some VDI) is not known, so the
    /// trees cannot be told apart.
    All { unknown: VdiId, entries: Vec<&'a VdiEntry> },
}

impl<'a> Remaining<'a> {
    pub fn entries(&self) -> &[&'a VdiEntry] {
        match self {
            Remaining::Family(e) | Remaining::All { entries: e, .. } => e,
        }
    }
}

/// The live VDIs (`live`, read after the deletion) that may name an object of `gone` (the
/// deleted entries). `known`: every entry the caller has seen, live or retired, before or
/// after the deletion (for the parent links; `gone` and `live` count as known too).
pub fn remaining<'a, 'k>(
    gone: &[VdiEntry],
    live: &'a [VdiEntry],
    known: impl IntoIterator<Item = &'k VdiEntry>,
) -> Remaining<'a> {
    if gone.is_empty() {
        return Remaining::Family(Vec::new());
    }
    let mut parent: HashMap<VdiId, Option<VdiId>> = HashMap::new();
    for e in known {
        parent.insert(e.vid, e.parent);
    }
    for e in gone.iter().chain(live) {
        parent.insert(e.vid, e.parent);
    }
    let root = |vid: VdiId| -> Result<VdiId, VdiId> {
        let mut at = vid;
        // A chain longer than the known entries has a cycle: a broken state, treated as unknown.
        for _ in 0..=parent.len() {
            match parent.get(&at) {
                None => return Err(at),
                Some(None) => return Ok(at),
                Some(Some(p)) => at = *p,
            }
        }
        Err(at)
    };
    let mut roots = BTreeSet::new();
    for g in gone {
        match root(g.vid) {
            Ok(r) => roots.insert(r),
            Err(unknown) => return Remaining::All { unknown, entries: live.iter().collect() },
        };
    }
    let mut family = Vec::new();
    for e in live {
        match root(e.vid) {
            Ok(r) if roots.contains(&r) => family.push(e),
            Ok(_) => {}
            Err(unknown) => return Remaining::All { unknown, entries: live.iter().collect() },
        }
    }
    Remaining::Family(family)
}

/// The data objects that a table of `gone` names and no table of `remaining` does, in id
/// order, leaving out those of owners `spare` says are not the caller's to remove (live VDIs,
/// collectable ones: see the module documentation). A table is the raw `data_vdi_id` list:
/// entry `i` is the owner of index `i`'s object, 0 when never written.
pub fn unreferenced(gone: &[&[u32]], remaining: &[&[u32]], spare: impl Fn(VdiId) -> bool) -> Vec<ObjectId> {
    // Candidates per index: an object id holds its index, so only entry `i` of a table can
    // name an object of index `i`.
    let mut candidates: BTreeMap<u32, BTreeSet<VdiId>> = BTreeMap::new();
    for table in gone {
        for (idx, &raw) in table.iter().enumerate() {
            // 0 is "never written"; an entry out of range names no object at all.
            let Ok(owner) = VdiId::new(raw) else { continue };
            if !spare(owner) {
                candidates.entry(idx as u32).or_default().insert(owner);
            }
        }
    }
    for table in remaining {
        for (&idx, owners) in candidates.iter_mut() {
            if let Some(owner) = table.get(idx as usize).and_then(|&raw| VdiId::new(raw).ok()) {
                owners.remove(&owner);
            }
        }
    }
    let mut out: Vec<ObjectId> = candidates
        .into_iter()
        .flat_map(|(idx, owners)| owners.into_iter().map(move |o| ObjectId::data(o, idx)))
        .collect();
    out.sort();
    out
}

#[cfg(test)]
#[path = "reclaim_tests.rs"]
mod tests;
