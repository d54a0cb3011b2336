//! The VDI namespace, part of the replicated group state: names → VDI ids, and every id ever
//! handed out. Ids are never reused, so a storage node that removes the objects of a deleted
//! VDI (now, or when it comes back later) can never remove a newer VDI's data.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::inode::{max_vdi_size, MAX_COPIES, MAX_OBJECT_SIZE_SHIFT};
use crate::object::{probe, validate_tag, validate_vdi_name, vdi_id_for_name, VdiId};
use crate::size::format_limit;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VdiEntry {
    pub name: String,
    pub vid: VdiId,
    pub size: u64,
    pub copies: u8,
    pub object_size_shift: u8,
    pub created_ms: u64,
    /// The snapshot this VDI goes on from (after a snapshot or a rollback) or was cloned
    /// from: its inode starts as a copy of that snapshot's table. `None`: created empty.
    #[serde(default)]
    pub parent: Option<VdiId>,
    /// `Some(tag)`: a read-only snapshot of `name`; `None`: the working VDI of `name`.
    #[serde(default)]
    pub snapshot: Option<String>,
}

impl VdiEntry {
    pub fn is_snapshot(&self) -> bool {
        self.snapshot.is_some()
    }

    /// `name`, or `name@tag` for a snapshot.
    pub fn label(&self) -> String {
        match &self.snapshot {
            Some(tag) => format!("{}@{tag}", self.name),
            None => self.name.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum NamespaceError {
    #[error("a VDI named {0:?} exists already")]
    Exists(String),
    #[error("there is no VDI named {0:?}")]
    NoVdi(String),
    #[error("VDI {name:?} has no snapshot {tag:?}")]
    NoSnapshot { name: String, tag: String },
    #[error("VDI {name:?} has a snapshot {tag:?} already")]
    SnapshotExists { name: String, tag: String },
    #[error("VDI {name:?} has an attribute {key:?} already")]
    AttrExists { name: String, key: String },
    #[error("VDI {name:?} has no attribute {key:?}")]
    NoAttr { name: String, key: String },
    #[error("{0}")]
    Invalid(String),
    #[error("no VDI id is left")]
    Full,
    /// The namespace breaks one of its own invariants (see [`crate::group::GroupError::Invariant`]):
    /// the operation is refused before it changes anything.
    #[error("the VDI namespace is inconsistent ({what}); the command was refused and changed nothing")]
    Invariant { what: String },
}

/// Limits of VDI attributes (small metadata such as a VM's configuration).
pub const MAX_ATTR_KEY: usize = 256;
pub const MAX_ATTR_VALUE: usize = 64 << 10;
pub const MAX_ATTRS_PER_VDI: usize = 1024;

/// What a deletion did to the objects of the deleted VDIs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deletion {
    /// Deleted now: the entries that left the namespace.
    pub removed: Vec<VdiEntry>,
    /// VDIs (deleted now or before) whose objects nothing needs any more: the storage nodes
    /// remove them.
    pub collectable: Vec<VdiEntry>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    /// Working VDIs, by name.
    vdis: BTreeMap<String, VdiEntry>,
    /// Live snapshots.
    #[serde(default)]
    snapshots: BTreeMap<VdiId, VdiEntry>,
    /// Deleted snapshots whose objects a live VDI still reads through its table: kept until
    /// no live VDI descends from them.
    #[serde(default)]
    retired: BTreeMap<VdiId, VdiEntry>,
    /// Every id ever allocated, live or deleted.
    taken: BTreeSet<VdiId>,
    /// Deleted ids whose objects may be removed.
    deleted: BTreeSet<VdiId>,
    /// Attributes, by VDI name.
    #[serde(default)]
    attrs: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

impl Namespace {
    /// The working VDI `name`.
    pub fn get(&self, name: &str) -> Option<&VdiEntry> {
        self.vdis.get(name)
    }

    /// Working VDIs and live snapshots, working first.
    pub fn list(&self) -> impl Iterator<Item = &VdiEntry> {
        self.vdis.values().chain(self.snapshots.values())
    }

    pub fn snapshot(&self, name: &str, tag: &str) -> Option<&VdiEntry> {
        self.snapshots.values().find(|e| e.name == name && e.snapshot.as_deref() == Some(tag))
    }

    /// Any entry by id: working, snapshot, or a retired snapshot still read by a descendant.
    pub fn by_vid(&self, vid: VdiId) -> Option<&VdiEntry> {
        self.vdis
            .values()
            .find(|e| e.vid == vid)
            .or_else(|| self.snapshots.get(&vid))
            .or_else(|| self.retired.get(&vid))
    }

    /// Deleted snapshots kept because a live VDI descends from them (a deletion's reclaim
    /// follows parent links through them).
    pub fn retired(&self) -> impl Iterator<Item = &VdiEntry> {
        self.retired.values()
    }

    /// Ids whose objects may be removed.
    pub fn deleted(&self) -> impl Iterator<Item = VdiId> + '_ {
        self.deleted.iter().copied()
    }

    pub fn is_deleted(&self, vid: VdiId) -> bool {
        self.deleted.contains(&vid)
    }

    /// Takes a new VDI id for `name`. Callers check everything else first: this is the last
    /// step that can fail, so a refusal leaves the namespace unchanged.
    fn new_vid(&mut self, name: &str) -> Result<VdiId, NamespaceError> {
        let vid = probe(vdi_id_for_name(name), |v| self.taken.contains(&v)).ok_or(NamespaceError::Full)?;
        // Every id in use is among the taken ones: an id is never handed out twice.
        if let Some(e) = self.by_vid(vid) {
            return Err(NamespaceError::Invariant {
                what: format!("VDI id {vid} of {} is in use but not marked as taken", e.label()),
            });
        }
        self.taken.insert(vid);
        Ok(vid)
    }

    fn working(&self, name: &str) -> Result<&VdiEntry, NamespaceError> {
        self.vdis.get(name).ok_or_else(|| NamespaceError::NoVdi(name.into()))
    }

    fn snapshot_of(&self, name: &str, tag: &str) -> Result<&VdiEntry, NamespaceError> {
        self.snapshot(name, tag).ok_or_else(|| NamespaceError::NoSnapshot { name: name.into(), tag: tag.into() })
    }

    /// Creates a VDI; `copies` and `object_size_shift` are already resolved to the cluster's
    /// defaults by the caller.
    pub fn create(
        &mut self,
        name: &str,
        size: u64,
        copies: u8,
        object_size_shift: u8,
        created_ms: u64,
    ) -> Result<VdiEntry, NamespaceError> {
        validate_vdi_name(name).map_err(|e| NamespaceError::Invalid(e.to_string()))?;
        if self.vdis.contains_key(name) {
            return Err(NamespaceError::Exists(name.into()));
        }
        check_size(size, object_size_shift)?;
        if copies == 0 || copies > MAX_COPIES {
            return Err(NamespaceError::Invalid(format!("copies must be 1..={MAX_COPIES}, not {copies}")));
        }
        let vid = self.new_vid(name)?;
        let entry = VdiEntry {
            name: name.into(),
            vid,
            size,
            copies,
            object_size_shift,
            created_ms,
            parent: None,
            snapshot: None,
        };
        self.vdis.insert(name.into(), entry.clone());
        Ok(entry)
    }

    /// Freezes the working VDI `name` as snapshot `tag` at time `t` (the command's stamp); a
    /// new working VDI goes on from it. Returns (the snapshot, the new working VDI). The
    /// snapshot's `created_ms` is `t`, when it was taken (the new working VDI's too), not when
    /// the id it freezes began; snapshots taken by an older groupd keep that older time.
    pub fn take_snapshot(&mut self, name: &str, tag: &str, t: u64) -> Result<(VdiEntry, VdiEntry), NamespaceError> {
        validate_tag(tag).map_err(|e| NamespaceError::Invalid(e.to_string()))?;
        let old = self.working(name)?.clone();
        if self.snapshot(name, tag).is_some() {
            return Err(NamespaceError::SnapshotExists { name: name.into(), tag: tag.into() });
        }
        let vid = self.new_vid(name)?;
        let snap = VdiEntry { snapshot: Some(tag.into()), created_ms: t, ..old.clone() };
        let working = VdiEntry { vid, parent: Some(old.vid), created_ms: t, ..old };
        self.snapshots.insert(snap.vid, snap.clone());
        self.vdis.insert(name.into(), working.clone());
        Ok((snap, working))
    }

    /// A new VDI `new_name` starting from snapshot `tag` of `name`.
    pub fn clone_snapshot(
        &mut self,
        name: &str,
        tag: &str,
        new_name: &str,
        t: u64,
    ) -> Result<VdiEntry, NamespaceError> {
        validate_vdi_name(new_name).map_err(|e| NamespaceError::Invalid(e.to_string()))?;
        let base = self.snapshot_of(name, tag)?.clone();
        if self.vdis.contains_key(new_name) {
            return Err(NamespaceError::Exists(new_name.into()));
        }
        let vid = self.new_vid(new_name)?;
        let entry =
            VdiEntry { name: new_name.into(), vid, created_ms: t, parent: Some(base.vid), snapshot: None, ..base };
        self.vdis.insert(new_name.into(), entry.clone());
        Ok(entry)
    }

    /// Replaces the working VDI `name` by a new one going on from snapshot `tag` (its size
    /// too). Returns (the new working VDI, the deletion of the old one).
    pub fn rollback(&mut self, name: &str, tag: &str, t: u64) -> Result<(VdiEntry, Deletion), NamespaceError> {
        let base = self.snapshot_of(name, tag)?.clone();
        let old = self.working(name)?.clone();
        let vid = self.new_vid(name)?;
        let working = VdiEntry { vid, created_ms: t, parent: Some(base.vid), snapshot: None, ..base };
        self.vdis.insert(name.into(), working.clone());
        // The old working VDI has no descendants (only snapshots have): collectable now.
        let deletion = self.retire(vec![old]);
        Ok((working, deletion))
    }

    /// Grows the working VDI `name` (its snapshots keep their size). Shrinking is refused:
    /// data beyond the new end would be lost.
    pub fn resize(&mut self, name: &str, size: u64) -> Result<VdiEntry, NamespaceError> {
        let e = self.vdis.get_mut(name).ok_or_else(|| NamespaceError::NoVdi(name.into()))?;
        check_size(size, e.object_size_shift)?;
        if size < e.size {
            return Err(NamespaceError::Invalid(format!(
                "VDI {name:?} is {}: shrinking to {} would lose data, only growing is allowed",
                format_limit(e.size),
                format_limit(size)
            )));
        }
        e.size = size;
        Ok(e.clone())
    }

    /// Deletes VDI `name`: its working VDI and every snapshot of it. Objects a clone still
    /// reads (through a snapshot it was cloned from) are kept until that clone is gone.
    /// Returns (the working VDI deleted, the deletion).
    pub fn delete(&mut self, name: &str) -> Result<(VdiEntry, Deletion), NamespaceError> {
        let working = self.vdis.remove(name).ok_or_else(|| NamespaceError::NoVdi(name.into()))?;
        let snaps: Vec<VdiId> = self.snapshots.iter().filter(|(_, e)| e.name == name).map(|(&v, _)| v).collect();
        let mut gone = vec![working.clone()];
        gone.extend(snaps.iter().filter_map(|v| self.snapshots.remove(v)));
        self.attrs.remove(name);
        Ok((working, self.retire(gone)))
    }

    /// Deletes snapshot `tag` of `name`. Its objects stay while a live VDI still reads them.
    /// Returns (the snapshot deleted, the deletion).
    pub fn delete_snapshot(&mut self, name: &str, tag: &str) -> Result<(VdiEntry, Deletion), NamespaceError> {
        let vid = self.snapshot_of(name, tag)?.vid;
        // Snapshots are keyed by their own id.
        let Some(entry) = self.snapshots.remove(&vid) else {
            return Err(NamespaceError::Invariant {
                what: format!("snapshot {name}@{tag} is not filed under its id {vid}"),
            });
        };
        Ok((entry.clone(), self.retire(vec![entry])))
    }

    /// Takes `gone` out of the namespace; returns which deleted VDIs (these, or older retired
    /// ones no longer needed) have become collectable.
    fn retire(&mut self, gone: Vec<VdiEntry>) -> Deletion {
        for e in &gone {
            self.retired.insert(e.vid, e.clone());
        }
        let collectable: Vec<VdiId> = self.retired.keys().copied().filter(|&v| !self.has_live_descendant(v)).collect();
        let collectable: Vec<VdiEntry> = collectable
            .into_iter()
            .filter_map(|v| self.retired.remove(&v))
            .inspect(|e| {
                self.deleted.insert(e.vid);
            })
            .collect();
        Deletion { removed: gone, collectable }
    }

    /// Whether a live VDI or snapshot has `vid` among its ancestors (and so may read its
    /// objects through its table).
    fn has_live_descendant(&self, vid: VdiId) -> bool {
        self.vdis.values().chain(self.snapshots.values()).any(|e| self.ancestors(e).any(|a| a == vid))
    }

    /// The ancestors of `e`, nearest first (through retired snapshots too).
    pub fn ancestors<'a>(&'a self, e: &VdiEntry) -> impl Iterator<Item = VdiId> + 'a {
        let mut next = e.parent;
        // Bounded by the number of ids ever taken: a parent chain has no cycle (a parent is
        // always older), and this bound keeps a corrupted state from looping.
        let mut left = self.taken.len();
        std::iter::from_fn(move || {
            let v = next?;
            if left == 0 {
                return None;
            }
            left -= 1;
            next = self.by_vid(v).and_then(|p| p.parent);
            Some(v)
        })
    }

    /// Sets (`Some`) or removes (`None`) attribute `key` of VDI `name`. `exclusive`: fail if it
    /// exists already.
    pub fn set_attr(
        &mut self,
        name: &str,
        key: &str,
        value: Option<&[u8]>,
        exclusive: bool,
    ) -> Result<(), NamespaceError> {
        self.working(name)?;
        if key.is_empty() || key.len() > MAX_ATTR_KEY {
            return Err(NamespaceError::Invalid(format!("an attribute key is 1 to {MAX_ATTR_KEY} bytes")));
        }
        let attrs = self.attrs.entry(name.into()).or_default();
        match value {
            None => {
                if attrs.remove(key).is_none() {
                    return Err(NamespaceError::NoAttr { name: name.into(), key: key.into() });
                }
            }
            Some(v) => {
                if v.len() > MAX_ATTR_VALUE {
                    return Err(NamespaceError::Invalid(format!(
                        "an attribute value is at most {}, not {}",
                        format_limit(MAX_ATTR_VALUE as u64),
                        format_limit(v.len() as u64)
                    )));
                }
                if exclusive && attrs.contains_key(key) {
                    return Err(NamespaceError::AttrExists { name: name.into(), key: key.into() });
                }
                if !attrs.contains_key(key) && attrs.len() >= MAX_ATTRS_PER_VDI {
                    return Err(NamespaceError::Invalid(format!("a VDI has at most {MAX_ATTRS_PER_VDI} attributes")));
                }
                attrs.insert(key.into(), v.to_vec());
            }
        }
        if attrs.is_empty() {
            self.attrs.remove(name);
        }
        Ok(())
    }

    pub fn get_attr(&self, name: &str, key: &str) -> Result<&[u8], NamespaceError> {
        self.working(name)?;
        self.attrs
            .get(name)
            .and_then(|a| a.get(key))
            .map(Vec::as_slice)
            .ok_or_else(|| NamespaceError::NoAttr { name: name.into(), key: key.into() })
    }

    pub fn attrs(&self, name: &str) -> impl Iterator<Item = (&String, &Vec<u8>)> {
        self.attrs.get(name).into_iter().flatten()
    }
}

fn check_size(size: u64, object_size_shift: u8) -> Result<(), NamespaceError> {
    // The object size comes from the cluster's format (or an entry made under it), which
    // allows no more than this: a larger shift would overflow the size limit below.
    if object_size_shift > MAX_OBJECT_SIZE_SHIFT {
        return Err(NamespaceError::Invariant {
            what: format!(
                "an object size of 2^{object_size_shift} bytes is beyond the largest, 2^{MAX_OBJECT_SIZE_SHIFT}"
            ),
        });
    }
    let max = max_vdi_size(object_size_shift);
    if size == 0 || size > max {
        return Err(NamespaceError::Invalid(format!(
            "size must be from 1 byte to {} with {} objects, not {}",
            format_limit(max),
            crate::size::format_size(1 << object_size_shift),
            format_limit(size)
        )));
    }
    if !size.is_multiple_of(512) {
        return Err(NamespaceError::Invalid(format!(
            "size must be a multiple of 512 bytes, not {}",
            format_limit(size)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_allocates_the_hashed_id_and_probes_on_collision() {
        let mut ns = Namespace::default();
        let a = ns.create("disk0", 1 << 30, 3, 22, 1).unwrap();
        assert_eq!(a.vid, vdi_id_for_name("disk0"));
        assert_eq!(ns.get("disk0"), Some(&a));
        // Force a collision: take the next name's id by hand through a deleted VDI.
        let b = ns.create("disk1", 4096, 3, 22, 2).unwrap();
        assert_ne!(a.vid, b.vid);
    }

    #[test]
    fn names_sizes_and_copies_are_checked() {
        let mut ns = Namespace::default();
        assert!(matches!(ns.create("", 4096, 3, 22, 0), Err(NamespaceError::Invalid(_))));
        assert!(matches!(ns.create("a/b", 4096, 3, 22, 0), Err(NamespaceError::Invalid(_))));
        assert!(matches!(ns.create("a", 0, 3, 22, 0), Err(NamespaceError::Invalid(_))));
        assert!(matches!(ns.create("a", 1000, 3, 22, 0), Err(NamespaceError::Invalid(_))));
        assert!(matches!(ns.create("a", (4 << 40) + 512, 3, 22, 0), Err(NamespaceError::Invalid(_))));
        assert!(ns.create("a", 4 << 40, 3, 22, 0).is_ok(), "4 TiB at 4 MiB objects is the limit");
        assert!(matches!(ns.create("b", 4096, 0, 22, 0), Err(NamespaceError::Invalid(_))));
        assert_eq!(ns.create("a", 4096, 3, 22, 0), Err(NamespaceError::Exists("a".into())));
    }

    #[test]
    fn deleted_ids_are_never_reused() {
        let mut ns = Namespace::default();
        let first = ns.create("x", 4096, 1, 22, 0).unwrap();
        let (deleted, d) = ns.delete("x").unwrap();
        assert_eq!(deleted, first);
        assert_eq!(d.collectable, vec![first.clone()]);
        assert!(ns.is_deleted(first.vid));
        let again = ns.create("x", 4096, 1, 22, 0).unwrap();
        assert_ne!(again.vid, first.vid, "a new VDI of the same name gets a new id");
        assert!(!ns.is_deleted(again.vid));
        assert_eq!(ns.delete("nope"), Err(NamespaceError::NoVdi("nope".into())));
    }
}

#[cfg(test)]
#[path = "namespace_tests.rs"]
mod family_tests;
