//! The VDI namespace, part of the replicated group state: names → VDI ids, and every id ever
//! handed out. Ids are never reused, so a storage node that removes the objects of a deleted
//! VDI (now, or when it comes back later) can never remove a newer VDI's data.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::inode::{max_vdi_size, MAX_COPIES};
use crate::object::{probe, validate_vdi_name, vdi_id_for_name, VdiId};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VdiEntry {
    pub name: String,
    pub vid: VdiId,
    pub size: u64,
    pub copies: u8,
    pub object_size_shift: u8,
    pub created_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum NamespaceError {
    #[error("vdiExists: a VDI named {0:?} exists already")]
    Exists(String),
    #[error("noVdi: there is no VDI named {0:?}")]
    NoVdi(String),
    #[error("badRequest: {0}")]
    Invalid(String),
    #[error("badRequest: no VDI id is left")]
    Full,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    vdis: BTreeMap<String, VdiEntry>,
    /// Every id ever allocated, live or deleted.
    taken: BTreeSet<VdiId>,
    deleted: BTreeSet<VdiId>,
}

impl Namespace {
    pub fn get(&self, name: &str) -> Option<&VdiEntry> {
        self.vdis.get(name)
    }

    pub fn list(&self) -> impl Iterator<Item = &VdiEntry> {
        self.vdis.values()
    }

    pub fn deleted(&self) -> impl Iterator<Item = VdiId> + '_ {
        self.deleted.iter().copied()
    }

    pub fn is_deleted(&self, vid: VdiId) -> bool {
        self.deleted.contains(&vid)
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
        let max = max_vdi_size(object_size_shift);
        if size == 0 || size > max {
            return Err(NamespaceError::Invalid(format!("size must be from 1 byte to {max} bytes, not {size}")));
        }
        if size % 512 != 0 {
            return Err(NamespaceError::Invalid(format!("size must be a multiple of 512 bytes, not {size}")));
        }
        if copies == 0 || copies > MAX_COPIES {
            return Err(NamespaceError::Invalid(format!("copies must be 1..={MAX_COPIES}, not {copies}")));
        }
        let vid = probe(vdi_id_for_name(name), |v| self.taken.contains(&v)).ok_or(NamespaceError::Full)?;
        let entry = VdiEntry { name: name.into(), vid, size, copies, object_size_shift, created_ms };
        self.taken.insert(vid);
        self.vdis.insert(name.into(), entry.clone());
        Ok(entry)
    }

    pub fn delete(&mut self, name: &str) -> Result<VdiEntry, NamespaceError> {
        let entry = self.vdis.remove(name).ok_or_else(|| NamespaceError::NoVdi(name.into()))?;
        self.deleted.insert(entry.vid);
        Ok(entry)
    }
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
        ns.delete("x").unwrap();
        assert!(ns.is_deleted(first.vid));
        let again = ns.create("x", 4096, 1, 22, 0).unwrap();
        assert_ne!(again.vid, first.vid, "a new VDI of the same name gets a new id");
        assert!(!ns.is_deleted(again.vid));
        assert_eq!(ns.delete("nope"), Err(NamespaceError::NoVdi("nope".into())));
    }
}
