//! The node's object store: one checksummed file per object (see [`file`]) under
//! `DIR/obj/<oid>`, objects the node no longer owns under `DIR/.stale/<oid>`, and
//! `DIR/tmp/` for objects being created (then renamed into place: atomic).
//!
//! Every method here blocks on disk I/O: call them from `spawn_blocking` — except
//! `try_read`/`try_write`/`try_zero`, meant for small I/O that the page cache serves in
//! microseconds, which never wait for a lock (and `try_read` never for the disk: see
//! [`nowait`]). Requests on one object are serialised by a per-object lock;
//! different objects go in parallel.

mod dirs;
mod file;
mod lock;
mod nowait;
mod probe;
mod space;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use sheep_core::epoch::Epoch;
use sheep_core::object::ObjectId;
use sheep_core::store::{is_settled, settled_version, write_done, write_started, written_in, Version};
pub use sheep_core::store::{Listing, StoreStat, WholeObject};
use sheep_rpc::error::ErrorCode;

pub use file::Layout;
use file::{FileError, ObjFile, Source, BLOCK};
use lock::LockTable;
use nowait::InlineReads;

/// Open object files kept at most.
const OPEN_FILES: usize = 256;
use space::{FreeSpace, RESERVE};

/// A failed object operation; `code()` is what the node refuses the call with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object {0} is not on this node")]
    NoObject(ObjectId),
    #[error("object {oid} is corrupt: {why}")]
    Corrupt { oid: ObjectId, why: String },
    #[error("no space left on the node's disk ({0})")]
    NoSpace(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("disk error: {0}")]
    Io(String),
    /// Not a disk error: the object cannot be served yet (recovery must ask a node that did
    /// not answer); the client tries again.
    #[error("{0}")]
    NotYet(String),
}

impl StoreError {
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::NoObject(_) => ErrorCode::NoObject,
            StoreError::Corrupt { .. } => ErrorCode::Corrupt,
            StoreError::NoSpace(_) => ErrorCode::NoSpace,
            StoreError::BadRequest(_) => ErrorCode::BadRequest,
            StoreError::Io(_) | StoreError::NotYet(_) => ErrorCode::IoError,
        }
    }

    fn io(what: &str, e: &io::Error) -> StoreError {
        if is_no_space(e) {
            StoreError::NoSpace(format!("{what}: {e}"))
        } else {
            StoreError::Io(format!("{what}: {e}"))
        }
    }

    fn from_file(oid: ObjectId, what: &str, e: FileError) -> StoreError {
        match e {
            FileError::Io(e) if e.kind() == io::ErrorKind::NotFound => StoreError::NoObject(oid),
            FileError::Io(e) => StoreError::io(&format!("{what} {oid}"), &e),
            FileError::Corrupt(why) => StoreError::Corrupt { oid, why },
            FileError::Range(why) => StoreError::BadRequest(why),
        }
    }
}

fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error().map(Errno::from_raw), Some(Errno::ENOSPC | Errno::EDQUOT))
        || e.kind() == io::ErrorKind::StorageFull
}

pub struct ObjectStore {
    obj: PathBuf,
    stale: PathBuf,
    tmp: PathBuf,
    locks: LockTable,
    /// Objects written without FUA since the last flush.
    dirty: Mutex<HashSet<ObjectId>>,
    /// Objects being repaired from a replica: set to true when a write lands meanwhile, so
    /// that the repair does not put older data over it.
    repairing: Mutex<HashMap<ObjectId, bool>>,
    tmp_seq: AtomicU64,
    /// Open live object files (opened read-write), so that a small I/O costs no open.
    /// Changed only under the object's lock; an entry goes when its file is replaced,
    /// moved or removed.
    open_files: Mutex<HashMap<ObjectId, Arc<ObjFile>>>,
    /// Test hook: every write fails as if the disk were full.
    no_space: AtomicBool,
    /// The free space as last read, less what was written since (see `check_space`).
    free_space: Mutex<FreeSpace>,
    /// How `try_read` may read (an [`InlineReads`]): set from the file system at open,
    /// `Never` once it refused `RWF_NOWAIT`.
    inline_reads: AtomicU8,
    /// (device, inode) of `obj/`, `.stale/` and `tmp/` when opened: the probe notices a
    /// directory removed or replaced under the running node.
    dir_ids: [DirId; 3],
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ObjectStore {
    /// Opens the store under `root` (creating its directories); leftovers of interrupted
    /// creations in `tmp/` are removed.
    pub fn open(root: &Path) -> Result<ObjectStore, StoreError> {
        let mut store = ObjectStore {
            obj: root.join("obj"),
            stale: root.join(".stale"),
            tmp: root.join("tmp"),
            locks: LockTable::default(),
            dirty: Mutex::default(),
            repairing: Mutex::default(),
            tmp_seq: AtomicU64::new(0),
            open_files: Mutex::default(),
            no_space: AtomicBool::new(false),
            free_space: Mutex::default(),
            inline_reads: AtomicU8::new(InlineReads::Never.to_u8()),
            dir_ids: [(0, 0); 3],
        };
        let inline = InlineReads::of(root).map_err(|e| StoreError::io("statfs", &e))?;
        store.inline_reads.store(inline.to_u8(), Ordering::Relaxed);
        for (i, dir) in [store.obj.clone(), store.stale.clone(), store.tmp.clone()].iter().enumerate() {
            fs::create_dir_all(dir).map_err(|e| StoreError::io(&format!("create {}", dir.display()), &e))?;
            store.dir_ids[i] = dir_id(dir)?;
        }
        for entry in read_dir(&store.tmp)? {
            let _ = fs::remove_file(entry);
        }
        Ok(store)
    }

    #[cfg(test)]
    pub fn inject_no_space(&self, on: bool) {
        self.no_space.store(on, Ordering::SeqCst);
    }

    /// Refuses a write of `len` bytes that would leave less than [`RESERVE`] free, before
    /// it changes anything: a full disk fails a write cleanly, never half-way. The free
    /// space is read at most once per `space::RECHECK` while far from the reserve, and for
    /// every write near it ([`FreeSpace`]): a `statvfs` per write walks the store's path.
    fn check_space(&self, len: u64) -> Result<(), StoreError> {
        if self.no_space.load(Ordering::SeqCst) {
            return Err(StoreError::NoSpace("injected".into()));
        }
        fail::fail_point!("object-no-space", |_| Err(StoreError::NoSpace("injected by a failpoint".into())));
        let read_free = || space::statvfs(&self.obj).map(|(_, free)| free);
        let admitted = locked(&self.free_space).admit(std::time::Instant::now(), len, read_free);
        if let Err(free) = admitted.map_err(|e| StoreError::io("statvfs", &e))? {
            return Err(StoreError::NoSpace(format!(
                "{free} bytes free; a write keeps at least {} MiB free",
                RESERVE >> 20
            )));
        }
        Ok(())
    }

    /// The open file of a live object (the caller holds its lock).
    fn live_file(&self, oid: ObjectId) -> Result<Arc<ObjFile>, StoreError> {
        if let Some(f) = locked(&self.open_files).get(&oid) {
            return Ok(f.clone());
        }
        let f = Arc::new(ObjFile::open(&self.obj_path(oid), true).map_err(|e| StoreError::from_file(oid, "open", e))?);
        let mut open = locked(&self.open_files);
        if open.len() >= OPEN_FILES {
            // Crude but bounded: forget every other handle; the hot ones come back.
            let drop: Vec<ObjectId> = open.keys().copied().step_by(2).collect();
            for o in drop {
                open.remove(&o);
            }
        }
        open.insert(oid, f.clone());
        debug_assert!(open.len() <= OPEN_FILES, "{} open files kept", open.len());
        Ok(f)
    }

    /// Forgets the open file of `oid` (its file is being replaced, moved or removed).
    fn forget_file(&self, oid: ObjectId) {
        locked(&self.open_files).remove(&oid);
    }

    #[cfg(test)]
    pub fn forget_open_files(&self) {
        locked(&self.open_files).clear();
    }

    pub fn obj_path(&self, oid: ObjectId) -> PathBuf {
        self.obj.join(oid.to_string())
    }

    pub fn stale_path(&self, oid: ObjectId) -> PathBuf {
        self.stale.join(oid.to_string())
    }

    pub fn contains(&self, oid: ObjectId) -> bool {
        self.obj_path(oid).exists()
    }

    /// `len` bytes at `offset` of a live object, verified.
    pub fn read(&self, oid: ObjectId, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let _g = self.locks.lock(oid);
        let f = self.live_file(oid)?;
        f.read(offset, len, Source::Any).map_err(|e| StoreError::from_file(oid, "read", e))
    }

    /// Like [`Self::read`], but `None` at once where it would wait: the object is locked (a
    /// disk task is on it), or its bytes are not in the page cache, or its file is not open
    /// (an open reads the disk). For small reads on the RPC thread, which must not wait.
    pub fn try_read(&self, oid: ObjectId, offset: u64, len: u64) -> Option<Result<Vec<u8>, StoreError>> {
        let how = InlineReads::from_u8(self.inline_reads.load(Ordering::Relaxed));
        if how == InlineReads::Never {
            return None;
        }
        let _g = self.locks.try_lock(oid)?;
        let (f, from) = match how {
            InlineReads::Memory => match self.live_file(oid) {
                Ok(f) => (f, Source::Any),
                Err(e) => return Some(Err(e)),
            },
            _ => (locked(&self.open_files).get(&oid).cloned()?, Source::Cache),
        };
        match f.read(offset, len, from) {
            Ok(data) => Some(Ok(data)),
            Err(FileError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(FileError::Io(e)) if e.kind() == io::ErrorKind::Unsupported => {
                tracing::warn!("the store's file system refuses RWF_NOWAIT ({e}): every read goes to the disk threads");
                self.inline_reads.store(InlineReads::Never.to_u8(), Ordering::Relaxed);
                None
            }
            Err(e) => Some(Err(StoreError::from_file(oid, "read", e))),
        }
    }

    /// Like [`Self::write`] without FUA, but `None` at once if the object is locked: for
    /// small writes on the RPC thread, which must not wait.
    pub fn try_write(&self, oid: ObjectId, offset: u64, data: &[u8], epoch: Epoch) -> Option<Result<(), StoreError>> {
        let _g = self.locks.try_lock(oid)?;
        Some(self.write_locked(oid, offset, data, false, epoch))
    }

    /// The whole live object, verified.
    pub fn read_all(&self, oid: ObjectId) -> Result<Vec<u8>, StoreError> {
        let _g = self.locks.lock(oid);
        let f = self.live_file(oid)?;
        f.read_all().map_err(|e| StoreError::from_file(oid, "read", e))
    }

    /// Writes into an existing live object, a write of `epoch` (which advances its version).
    pub fn write(&self, oid: ObjectId, offset: u64, data: &[u8], fua: bool, epoch: Epoch) -> Result<(), StoreError> {
        let _g = self.locks.lock(oid);
        self.write_locked(oid, offset, data, fua, epoch)
    }

    fn write_locked(&self, oid: ObjectId, offset: u64, data: &[u8], fua: bool, epoch: Epoch) -> Result<(), StoreError> {
        let f = self.live_file(oid)?;
        self.check_space(data.len() as u64)?;
        self.note_write(oid);
        self.change(oid, &f, epoch, "write", |f, started| f.write(offset, data, started))?;
        self.after_change(oid, &f, fua)
    }

    /// Makes `len` bytes at `offset` of an existing live object read as zeros, freeing the
    /// whole blocks' space where the file system can (see [`ObjFile::zero`]).
    pub fn zero(&self, oid: ObjectId, offset: u64, len: u64, fua: bool, epoch: Epoch) -> Result<(), StoreError> {
        let _g = self.locks.lock(oid);
        self.zero_locked(oid, offset, len, fua, epoch)
    }

    /// Like [`Self::zero`] without FUA, but `None` at once if the object is locked (see
    /// [`Self::try_write`]).
    pub fn try_zero(&self, oid: ObjectId, offset: u64, len: u64, epoch: Epoch) -> Option<Result<(), StoreError>> {
        let _g = self.locks.try_lock(oid)?;
        Some(self.zero_locked(oid, offset, len, false, epoch))
    }

    // Space is checked for the ragged edges only: zeroing whole blocks frees space.
    fn zero_locked(&self, oid: ObjectId, offset: u64, len: u64, fua: bool, epoch: Epoch) -> Result<(), StoreError> {
        let f = self.live_file(oid)?;
        self.check_space(2 * BLOCK as u64)?;
        // A repair under way must not put older data over these zeros.
        self.note_write(oid);
        self.change(oid, &f, epoch, "zero", |f, started| f.zero(offset, len, started))?;
        self.after_change(oid, &f, fua)
    }

    /// One write of `epoch` to `f`: `apply` sets the unsettled version it is given before
    /// it changes anything; the settled one follows once it is done. A copy left unsettled
    /// here before (a write that failed half-way) is settled first. A write that fails once
    /// it began fails the disk (an I/O error, even for a full disk): the copy may be a mix
    /// of old and new, and only recovery (on other nodes, in a new epoch) makes the
    /// replicas one again.
    fn change(
        &self,
        oid: ObjectId,
        f: &ObjFile,
        epoch: Epoch,
        what: &str,
        apply: impl FnOnce(&ObjFile, Version) -> Result<(), FileError>,
    ) -> Result<(), StoreError> {
        fail::fail_point!("object-write", |arg| Err(StoreError::io(what, &file::injected_io(arg))));
        if !is_settled(f.version()) {
            tracing::warn!("object {oid} was left unsettled by a failed write: settling it");
            Self::settle_file(oid, f, epoch)?;
        }
        let before = f.version();
        let started = write_started(before, epoch);
        let done = apply(f, started).and_then(|()| {
            fail::fail_point!("object-write-before-version", |arg| Err(file::injected(arg)));
            f.set_version(write_done(started))
        });
        match done {
            Ok(()) => Ok(()),
            Err(e) if f.version() == before => Err(StoreError::from_file(oid, what, e)),
            Err(e) => Err(StoreError::Io(format!("{what} {oid} failed half-way, leaving the copy unsettled: {e}"))),
        }
    }

    fn after_change(&self, oid: ObjectId, f: &ObjFile, fua: bool) -> Result<(), StoreError> {
        if fua {
            f.sync_data().map_err(|e| StoreError::io(&format!("sync {oid}"), &e))?;
        } else {
            locked(&self.dirty).insert(oid);
        }
        Ok(())
    }

    /// Settles a copy left unsettled by a write cut off here (see `sheep_core::store`): its
    /// blocks, each its old or its new content, become its content at a version of `epoch`
    /// above any the cut-off write could have reached elsewhere. Recovery does this on one
    /// replica and the others take its copy. Returns false if the copy was settled already.
    pub fn settle(&self, oid: ObjectId, epoch: Epoch) -> Result<bool, StoreError> {
        let _g = self.locks.lock(oid);
        let f = self.live_file(oid)?;
        if is_settled(f.version()) {
            return Ok(false);
        }
        self.note_write(oid);
        let settled = Self::settle_file(oid, &f, epoch)?;
        f.sync_data().map_err(|e| StoreError::io(&format!("sync {oid}"), &e))?;
        tracing::info!("settled object {oid} at version {settled:#x}: a write to it had been cut off");
        Ok(true)
    }

    /// Settles `f` (the caller holds `oid`'s lock): every block's entry names its content,
    /// and the version becomes [`settled_version`]'s. Returns that version.
    fn settle_file(oid: ObjectId, f: &ObjFile, epoch: Epoch) -> Result<Version, StoreError> {
        f.settle().map_err(|e| StoreError::from_file(oid, "settle", e))?;
        let settled = settled_version(f.version(), epoch);
        f.set_version(settled).map_err(|e| StoreError::from_file(oid, "version", e))?;
        Ok(settled)
    }

    fn note_write(&self, oid: ObjectId) {
        if let Some(dirtied) = locked(&self.repairing).get_mut(&oid) {
            *dirtied = true;
        }
    }

    /// Creates the object (zeros, or `base`, which must be a whole object of
    /// `object_size`) with `data` written at `offset`; it appears whole or not at all.
    /// An object that exists already is written into. Returns true if it was created.
    #[allow(clippy::too_many_arguments, reason = "one argument per field of the wire request, and its epoch")]
    pub fn create_and_write(
        &self,
        oid: ObjectId,
        object_size: u32,
        base: Option<&[u8]>,
        offset: u64,
        data: &[u8],
        fua: bool,
        epoch: Epoch,
    ) -> Result<bool, StoreError> {
        let layout = Layout::new(object_size).map_err(|e| StoreError::from_file(oid, "create", e))?;
        let _g = self.locks.lock(oid);
        if self.contains(oid) {
            self.write_locked(oid, offset, data, fua, epoch)?;
            return Ok(false);
        }
        if offset.checked_add(data.len() as u64).is_none_or(|end| end > u64::from(object_size)) {
            return Err(StoreError::BadRequest(format!(
                "range {offset}+{} is outside the object of {object_size} bytes",
                data.len()
            )));
        }
        self.create_locked(oid, layout, |f| {
            if let Some(base) = base {
                f.fill(base)?;
            }
            let started = write_started(0, epoch);
            f.write(offset, data, started)?;
            f.set_version(write_done(started))
        })?;
        Ok(true)
    }

    /// Writes a new object file in `tmp/`, syncs it, renames it to `obj/` (over any
    /// previous copy) and syncs the directory.
    fn create_locked(
        &self,
        oid: ObjectId,
        layout: Layout,
        fill: impl FnOnce(&ObjFile) -> Result<(), FileError>,
    ) -> Result<(), StoreError> {
        self.check_space(u64::from(layout.object_size))?;
        self.forget_file(oid);
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp.join(format!("{oid}.{n}"));
        let made = ObjFile::create(&tmp, layout)
            .and_then(|f| {
                fill(&f)?;
                f.sync_all()?;
                Ok(())
            })
            .map_err(|e| StoreError::from_file(oid, "create", e))
            .and_then(|()| {
                fs::rename(&tmp, self.obj_path(oid)).map_err(|e| StoreError::io(&format!("rename {oid}"), &e))
            });
        if let Err(e) = made {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        self.note_write(oid);
        locked(&self.dirty).remove(&oid);
        // A stale copy next to a live one is never used again (fetch prefers the live one).
        match fs::remove_file(self.stale_path(oid)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::debug!("cannot remove the stale copy of {oid}: {e}"),
        }
        sync_dir(&self.obj)
    }

    /// Puts a whole object (pulled from a peer by recovery of `epoch`) at `version` in
    /// place, unless the node holds a live copy of that version or newer already, or one
    /// written in `epoch` (which took the epoch's writes: the pulled copy may lack one that
    /// had not reached its source yet). Returns true if it was installed.
    pub fn install(&self, oid: ObjectId, data: &[u8], version: Version, epoch: Epoch) -> Result<bool, StoreError> {
        let layout = layout_of(oid, data)?;
        // Tests slow installs down (`sleep(MS)`) to have an epoch change while one runs.
        fail::fail_point!("object-install");
        let _g = self.locks.lock(oid);
        if self.live_version(oid).is_some_and(|v| v >= version || written_in(v, epoch)) {
            return Ok(false);
        }
        self.create_locked(oid, layout, |f| {
            f.fill(data)?;
            f.set_version(version)
        })?;
        Ok(true)
    }

    /// The version of the live copy of `oid`, if there is one with a readable header.
    pub fn live_version(&self, oid: ObjectId) -> Option<Version> {
        ObjFile::open(&self.obj_path(oid), false).ok().map(|f| f.version())
    }

    /// Starts a repair of `oid`: writes from now on are noticed, so that
    /// [`Self::finish_repair`] does not overwrite them with older data.
    pub fn begin_repair(&self, oid: ObjectId) -> bool {
        let mut r = locked(&self.repairing);
        if r.contains_key(&oid) {
            return false;
        }
        r.insert(oid, false);
        true
    }

    /// Replaces the local copy of `oid` by `data` at `version` (a good copy from a
    /// replica), unless a write landed since `begin_repair` (`Ok(false)`: fetch again).
    /// `None` ends the repair without installing anything.
    pub fn finish_repair(&self, oid: ObjectId, data: Option<(&[u8], Version)>) -> Result<bool, StoreError> {
        let _g = self.locks.lock(oid);
        let dirtied = locked(&self.repairing).remove(&oid).unwrap_or(true);
        let Some((data, version)) = data else { return Ok(false) };
        if dirtied {
            return Ok(false);
        }
        let layout = layout_of(oid, data)?;
        self.create_locked(oid, layout, |f| {
            f.fill(data)?;
            f.set_version(version)
        })?;
        Ok(true)
    }

    /// The whole object, verified, from `obj/` or else `.stale/`, telling where the copy
    /// came from and its version.
    pub fn fetch_any(&self, oid: ObjectId) -> Result<WholeObject, StoreError> {
        let _g = self.locks.lock(oid);
        let (f, stale) = match ObjFile::open(&self.obj_path(oid), false) {
            Err(FileError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                (ObjFile::open(&self.stale_path(oid), false), true)
            }
            other => (other, false),
        };
        let f = f.map_err(|e| StoreError::from_file(oid, "open", e))?;
        let data = f.read_all().map_err(|e| StoreError::from_file(oid, "read", e))?;
        // A stale copy always names an epoch (at least 1); 0 means live.
        let stale_epoch = if stale { f.stale_epoch.max(1) } else { 0 };
        Ok(WholeObject { data, stale_epoch, version: f.version() })
    }

    /// The version in the header of the copy at `path` (0 if unreadable).
    fn version_at(path: &Path) -> Version {
        ObjFile::open(path, false).map_or(0, |f| f.version())
    }

    /// The stale copy's last live epoch, read from its header (0 if unreadable).
    fn stale_epoch_of(&self, oid: ObjectId) -> u32 {
        ObjFile::open(&self.stale_path(oid), false).map_or(0, |f| f.stale_epoch.max(1))
    }

    /// Removes the object (live and stale copies). Removing an absent object succeeds.
    pub fn remove(&self, oid: ObjectId) -> Result<(), StoreError> {
        let _g = self.locks.lock(oid);
        locked(&self.dirty).remove(&oid);
        self.forget_file(oid);
        for path in [self.obj_path(oid), self.stale_path(oid)] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io(&format!("remove {oid}"), &e)),
            }
        }
        Ok(())
    }

    /// Makes every write acknowledged so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        let dirty: Vec<ObjectId> = locked(&self.dirty).drain().collect();
        for (i, &oid) in dirty.iter().enumerate() {
            // The cached open file if there is one: no open. Syncing it after its object
            // was replaced, moved or removed is harmless (a replacement is synced by then).
            let cached = locked(&self.open_files).get(&oid).cloned();
            let opened = match cached {
                Some(f) => Ok(f),
                None => ObjFile::open(&self.obj_path(oid), false).map(Arc::new),
            };
            let synced = match opened {
                Ok(f) => f.sync_data().map_err(|e| StoreError::io(&format!("sync {oid}"), &e)),
                // Removed or moved meanwhile: nothing left to sync.
                Err(FileError::Io(e)) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(StoreError::from_file(oid, "open", e)),
            };
            if let Err(e) = synced {
                locked(&self.dirty).extend(&dirty[i..]);
                return Err(e);
            }
        }
        Ok(())
    }
}

fn layout_of(oid: ObjectId, data: &[u8]) -> Result<Layout, StoreError> {
    let size = u32::try_from(data.len())
        .map_err(|_| StoreError::BadRequest(format!("object {oid} of {} bytes is too big", data.len())))?;
    Layout::new(size).map_err(|e| StoreError::from_file(oid, "install", e))
}

/// (device, inode) of a directory.
type DirId = (u64, u64);

fn dir_id(dir: &Path) -> Result<DirId, StoreError> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(dir).map_err(|e| StoreError::io(&format!("stat {}", dir.display()), &e))?;
    if !m.is_dir() {
        return Err(StoreError::Io(format!("{} is not a directory", dir.display())));
    }
    Ok((m.dev(), m.ino()))
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let what = || format!("read {}", dir.display());
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| StoreError::io(&what(), &e))? {
        out.push(entry.map_err(|e| StoreError::io(&what(), &e))?.path());
    }
    Ok(out)
}

/// The objects in `dir`, sorted; names that are not object ids are skipped.
fn list_dir(dir: &Path) -> Result<Vec<ObjectId>, StoreError> {
    let mut oids: Vec<ObjectId> = read_dir(dir)?.iter().filter_map(|p| p.file_name()?.to_str()?.parse().ok()).collect();
    oids.sort();
    Ok(oids)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StoreError::io(&format!("sync {}", dir.display()), &e))
}
