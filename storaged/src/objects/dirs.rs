//! Operations on the whole store: listing, moving to and purging `.stale/`, removing the
//! objects of deleted VDIs, and the store's statistics.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io;

use sheep_core::object::{ObjectId, VdiId};
use sheep_core::store::is_settled;

use super::file::{FileError, ObjFile};
use super::space;
use super::{list_dir, locked, sync_dir, Listing, ObjectStore, StoreError, StoreStat};

impl ObjectStore {
    /// Every object held: live ones, and those only in `.stale/`.
    pub fn list(&self) -> Result<Listing, StoreError> {
        let live: BTreeSet<ObjectId> = list_dir(&self.obj)?.into_iter().collect();
        let stale_only: Vec<(ObjectId, u32)> = list_dir(&self.stale)?
            .into_iter()
            .filter(|o| !live.contains(o))
            .map(|o| (o, self.stale_epoch_of(o)))
            .collect();
        let mut versions = std::collections::BTreeMap::new();
        for &oid in &live {
            let mut version = Self::version_at(&self.obj_path(oid));
            if !is_settled(version) {
                // Unsettled while a write is under way, too: such a copy is no cut-off one,
                // and recovery must not take it for one. Its write done, it reads settled.
                let _g = self.locks.lock(oid);
                version = Self::version_at(&self.obj_path(oid));
            }
            versions.insert(oid, version);
        }
        for &(oid, _) in &stale_only {
            versions.insert(oid, Self::version_at(&self.stale_path(oid)));
        }
        Ok(Listing { live: live.into_iter().collect(), stale_only, versions })
    }

    pub fn list_live(&self) -> Result<Vec<ObjectId>, StoreError> {
        list_dir(&self.obj)
    }

    pub fn list_stale(&self) -> Result<Vec<ObjectId>, StoreError> {
        list_dir(&self.stale)
    }

    /// Moves a live object to `.stale/` (over an older stale copy), recording `last_live`,
    /// the last epoch in which it was live, in its header.
    pub fn move_to_stale(&self, oid: ObjectId, last_live: u32) -> Result<(), StoreError> {
        let _g = self.locks.lock(oid);
        locked(&self.dirty).remove(&oid);
        self.forget_file(oid);
        match ObjFile::open(&self.obj_path(oid), true) {
            Ok(mut f) => f.set_stale_epoch(last_live.max(1)).map_err(|e| StoreError::from_file(oid, "mark", e))?,
            Err(FileError::Io(e)) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            // A corrupt header: moved as it is; nobody will fetch it successfully.
            Err(_) => {}
        }
        match fs::rename(self.obj_path(oid), self.stale_path(oid)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(&format!("move {oid} to .stale"), &e)),
        }
    }

    /// Makes this node's own stale copy of `oid` live again, without copying it: recovery
    /// found it the newest (`version`). `Ok(false)`: there is a live copy already, or the
    /// stale one is not at that version (any more).
    pub fn restore_stale(&self, oid: ObjectId, version: u64) -> Result<bool, StoreError> {
        let _g = self.locks.lock(oid);
        if self.contains(oid) {
            return Ok(false);
        }
        let mut f = match ObjFile::open(&self.stale_path(oid), true) {
            Ok(f) if f.version() == version => f,
            Ok(_) => return Ok(false),
            Err(FileError::Io(e)) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(StoreError::from_file(oid, "open", e)),
        };
        f.set_stale_epoch(0).map_err(|e| StoreError::from_file(oid, "mark", e))?;
        f.sync_data().map_err(|e| StoreError::io(&format!("sync {oid}"), &e))?;
        fs::rename(self.stale_path(oid), self.obj_path(oid))
            .map_err(|e| StoreError::io(&format!("restore {oid} from .stale"), &e))?;
        sync_dir(&self.obj)?;
        Ok(true)
    }

    /// Moves every live object to `.stale/`: a node that rejoins never serves old data.
    /// `last_live`: the newest epoch the node knew.
    pub fn quarantine_all(&self, last_live: u32) -> Result<usize, StoreError> {
        let live = self.list_live()?;
        for &oid in &live {
            self.move_to_stale(oid, last_live)?;
        }
        self.sync_dirs()?;
        Ok(live.len())
    }

    pub fn sync_dirs(&self) -> Result<(), StoreError> {
        sync_dir(&self.obj)?;
        sync_dir(&self.stale)
    }

    /// Removes every stale copy.
    pub fn purge_stale(&self) -> Result<usize, StoreError> {
        let stale = self.list_stale()?;
        for &oid in &stale {
            let _g = self.locks.lock(oid);
            match fs::remove_file(self.stale_path(oid)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io(&format!("remove stale {oid}"), &e)),
            }
        }
        Ok(stale.len())
    }

    /// Removes every object (live or stale) of the VDIs in `vids`; returns how many.
    pub fn remove_vdis(&self, vids: &HashSet<VdiId>) -> Result<usize, StoreError> {
        if vids.is_empty() {
            return Ok(0);
        }
        let mut n = 0;
        let mut all = self.list_live()?;
        all.extend(self.list_stale()?);
        for oid in all {
            if vids.contains(&oid.vid()) {
                self.remove(oid)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Capacity and free space of the file system, bytes used by live objects, and how many.
    pub fn stat(&self) -> Result<StoreStat, StoreError> {
        let (capacity, free) = space::statvfs(&self.obj).map_err(|e| StoreError::io("statvfs", &e))?;
        let mut used = 0;
        let live = self.list_live()?;
        for &oid in &live {
            match fs::metadata(self.obj_path(oid)) {
                Ok(m) => used += std::os::unix::fs::MetadataExt::blocks(&m) * 512,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io(&format!("stat {oid}"), &e)),
            }
        }
        Ok(StoreStat { capacity, used, free, objects: live.len() as u64, filesystem: space::filesystem_id(&self.obj) })
    }
}
