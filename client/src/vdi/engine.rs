//! [`Vdi`]: reads and writes of one VDI's bytes, as objects on the storage nodes.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use futures::future::try_join_all;
use futures::TryStreamExt;
use sheep_core::epoch::NodeInfo;
use sheep_core::namespace::VdiEntry;
use sheep_core::object::{validate_vdi_name, ObjectId, VdiId};
use sheep_rpc::error::ErrorCode;
use tokio::time::Instant;

use super::cluster::Cluster;
use super::error::VdiError;
use super::inode_object::{self as layout, HEADER_LEN};
use super::range::{fits, spans, split, Piece, Span};
use super::replicate::{flush_all, read_one, remove_everywhere, to_all, Op};

/// Zeroing: one `zero` request covers at most this much of an object (a node that cannot
/// punch holes writes real zeros for it, which must fit in one call's time limit).
const ZERO_MAX: u32 = 64 << 20;
/// Objects zeroed at once by one `write_zeroes`.
const ZERO_IN_FLIGHT: usize = 8;
/// How long undoing a failed creation tries (see `undo_failed_create`).
const UNDO_FOR: Duration = Duration::from_secs(5);

/// Time limits of the engine.
#[derive(Clone, Copy, Debug)]
pub struct VdiOptions {
    /// Everything one read, write or flush may spend, retries across epochs included,
    /// before it fails with an I/O error.
    pub retry_for: Duration,
    /// Reads go first to this replica of each object (0 = the primary; failover to the
    /// others still applies); `None`: spread over the replicas, from a random start.
    pub read_replica: Option<usize>,
    /// The fencing token of the VDI lock this writer holds (0: it holds none), sent with
    /// every write: storage nodes refuse it once the lock has moved to a newer holder.
    pub fence: u64,
}

impl Default for VdiOptions {
    fn default() -> Self {
        VdiOptions { retry_for: Duration::from_secs(30), read_replica: None, fence: 0 }
    }
}

/// A start for the read rotation that differs between processes, so that many short-lived
/// clients spread their reads too.
fn random_start() -> usize {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    (nanos ^ std::process::id().wrapping_mul(0x9e37_79b9)) as usize
}

/// An open VDI. Not `Send`; share it with `Rc` between the tasks of one `LocalSet`. Any
/// number of reads and writes may be in flight at once.
pub struct Vdi {
    cluster: Rc<Cluster>,
    entry: VdiEntry,
    opts: VdiOptions,
    header: Vec<u8>,
    /// Owner vid per object index (0 = never written), as the inode on storage says.
    table: RefCell<Vec<u32>>,
    inode_exists: Cell<bool>,
    inode_lock: tokio::sync::Mutex<()>,
    /// First writes in progress, per index: serialised so that one creates the object.
    first_writes: RefCell<HashMap<u32, Rc<tokio::sync::Mutex<()>>>>,
    /// Storage nodes written since the last flush.
    dirty: RefCell<HashSet<String>>,
    /// Flushes run one at a time: a flush takes the dirty set, so a second concurrent flush
    /// must wait for the first to be sure every write acked before it is durable.
    flush_lock: tokio::sync::Mutex<()>,
    next_replica: Cell<usize>,
}

impl Vdi {
    /// Opens the VDI `name`: its entry from groupd's namespace, its inode from storage.
    pub async fn open(cluster: Rc<Cluster>, name: &str, opts: VdiOptions) -> Result<Vdi, VdiError> {
        validate_vdi_name(name).map_err(|e| VdiError::BadName(e.to_string()))?;
        let (vdis, _) = cluster.group().vdi_list().await?;
        let entry = vdis
            .into_iter()
            .find(|v| v.name == name && !v.is_snapshot())
            .ok_or_else(|| VdiError::NoVdi(name.into()))?;
        Vdi::open_entry(cluster, entry, opts).await
    }

    /// Opens a VDI whose namespace entry the caller has already.
    pub async fn open_entry(cluster: Rc<Cluster>, entry: VdiEntry, opts: VdiOptions) -> Result<Vdi, VdiError> {
        if entry.object_size_shift > 31 {
            return Err(VdiError::Unsupported("objects of 4 GiB are not supported by the object API".into()));
        }
        let view = cluster.view();
        if view.ring.is_empty() {
            return Err(VdiError::NoNodes(view.epoch));
        }
        let vdi = Vdi::unloaded(cluster, entry, opts)?;
        let table_len = vdi.table.borrow().len();
        let own = vdi.load_table(vdi.entry.vid, Some(&vdi.entry.name), table_len).await?;
        if let Some(mut table) = own {
            vdi.inode_exists.set(true);
            table.resize(table_len, 0);
            *vdi.table.borrow_mut() = table;
        } else if let Some(parent) = vdi.entry.parent {
            // Never written since its snapshot (or clone, or rollback): the table is the
            // parent snapshot's, whose inode object always exists (see `materialize`).
            let Some(mut table) = vdi.load_table(parent, None, table_len).await? else {
                return Err(VdiError::BadInode {
                    name: vdi.entry.name.clone(),
                    reason: format!("the inode of its parent snapshot {parent} is missing"),
                });
            };
            table.resize(table_len, 0);
            *vdi.table.borrow_mut() = table;
        }
        Ok(vdi)
    }

    /// A VDI with an empty table and no inode yet (the caller fills the table).
    fn unloaded(cluster: Rc<Cluster>, entry: VdiEntry, opts: VdiOptions) -> Result<Vdi, VdiError> {
        let bad = |reason: String| VdiError::BadInode { name: entry.name.clone(), reason };
        let inode = layout::inode_for(&entry).map_err(|e| bad(e.to_string()))?;
        let header = layout::encode_header(&inode).map_err(|e| bad(e.to_string()))?;
        let max = layout::max_objects(entry.size, entry.object_size_shift) as usize;
        Ok(Vdi {
            cluster,
            opts,
            header,
            table: RefCell::new(vec![0; max]),
            inode_exists: Cell::new(false),
            inode_lock: tokio::sync::Mutex::new(()),
            first_writes: RefCell::new(HashMap::new()),
            dirty: RefCell::new(HashSet::new()),
            flush_lock: tokio::sync::Mutex::new(()),
            next_replica: Cell::new(random_start()),
            entry,
        })
    }

    /// The new working VDI `working` that a snapshot of this one made, without I/O: its table
    /// starts as this one's (which the snapshot froze), its own inode does not exist yet. The
    /// writer goes on with it at once, whatever storage does meanwhile.
    pub fn after_snapshot(&self, working: VdiEntry) -> Result<Vdi, VdiError> {
        assert_eq!(working.parent, Some(self.entry.vid), "a working VDI after a snapshot of this one");
        let vdi = Vdi::unloaded(self.cluster.clone(), working, self.opts)?;
        let mut table = self.table.borrow().clone();
        table.resize(vdi.table.borrow().len(), 0);
        *vdi.table.borrow_mut() = table;
        Ok(vdi)
    }

    /// The options it was opened with (to open its successor the same way).
    pub fn options(&self) -> VdiOptions {
        self.opts
    }

    pub fn entry(&self) -> &VdiEntry {
        &self.entry
    }

    pub fn size(&self) -> u64 {
        self.entry.size
    }

    pub fn vid(&self) -> VdiId {
        self.entry.vid
    }

    pub fn object_size(&self) -> u64 {
        1 << self.entry.object_size_shift
    }

    pub fn max_objects(&self) -> u32 {
        self.table.borrow().len() as u32
    }

    pub fn cluster(&self) -> &Rc<Cluster> {
        &self.cluster
    }

    fn copies(&self) -> usize {
        usize::from(self.entry.copies)
    }

    pub fn inode_oid(&self) -> ObjectId {
        ObjectId::inode(self.entry.vid)
    }

    /// The whole table as read at open (or since changed by this writer): entry `i` is the
    /// owner vid of index `i`, 0 while never written.
    pub fn table(&self) -> Vec<u32> {
        self.table.borrow().clone()
    }

    /// The VDI owning object `idx`'s data, `None` while it was never written.
    pub fn owner(&self, idx: u32) -> Option<VdiId> {
        self.table.borrow().get(idx as usize).and_then(|&raw| VdiId::new(raw).ok())
    }

    /// Makes the table say `owner` holds index `idx` (what a clone's table looks like).
    #[cfg(test)]
    pub(crate) fn set_owner_for_test(&self, idx: u32, owner: VdiId) {
        self.table.borrow_mut()[idx as usize] = owner.get();
    }

    pub fn is_written(&self, idx: u32) -> bool {
        self.owner(idx).is_some()
    }

    /// The object holding index `idx`'s data, if written.
    pub fn data_oid(&self, idx: u32) -> Option<ObjectId> {
        self.owner(idx).map(|owner| ObjectId::data(owner, idx))
    }

    /// Where `oid`'s replicas are in the current epoch.
    pub fn replicas(&self, oid: ObjectId) -> Vec<NodeInfo> {
        self.cluster.view().ring.replicas(oid, self.copies()).into_iter().cloned().collect()
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), VdiError> {
        if !fits(offset, len, self.entry.size) {
            return Err(VdiError::OutOfRange { offset, len, size: self.entry.size });
        }
        if self.cluster.is_deleted(self.entry.vid) {
            return Err(VdiError::Deleted(self.entry.name.clone()));
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<(), VdiError> {
        if self.entry.is_snapshot() {
            return Err(VdiError::ReadOnly(self.entry.label()));
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset`; never-written objects read as zeros.
    pub async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), VdiError> {
        self.check(offset, buf.len() as u64)?;
        let pieces = split(offset, buf.len(), self.entry.object_size_shift);
        if let [p] = pieces.as_slice() {
            return self.read_piece(*p, buf).await;
        }
        let mut rest = buf;
        let mut parts = Vec::with_capacity(pieces.len());
        for p in pieces {
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(p.len);
            rest = tail;
            parts.push(self.read_piece(p, head));
        }
        try_join_all(parts).await.map(drop)
    }

    async fn read_piece(&self, p: Piece, buf: &mut [u8]) -> Result<(), VdiError> {
        let Some(oid) = self.data_oid(p.idx) else {
            buf.fill(0);
            return Ok(());
        };
        let first = match self.opts.read_replica {
            Some(k) => k,
            None => {
                let first = self.next_replica.get();
                self.next_replica.set(first.wrapping_add(1));
                first
            }
        };
        read_one(&self.cluster, oid, self.copies(), first, p.offset, buf, self.opts.retry_for).await
    }

    /// Writes `data` at `offset` to every replica; returns once all acknowledged. `fua`:
    /// durable before the acknowledgement.
    pub async fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), VdiError> {
        self.check_writable()?;
        self.check(offset, data.len() as u64)?;
        let pieces = split(offset, data.len(), self.entry.object_size_shift);
        if let [p] = pieces.as_slice() {
            return self.write_piece(*p, data, fua).await;
        }
        let parts = pieces.into_iter().map(|p| self.write_piece(p, &data[p.buf_offset..p.buf_offset + p.len], fua));
        try_join_all(parts).await.map(drop)
    }

    async fn write_piece(&self, p: Piece, data: &[u8], fua: bool) -> Result<(), VdiError> {
        let vid = self.entry.vid;
        if self.owner(p.idx) == Some(vid) {
            let oid = ObjectId::data(vid, p.idx);
            let op = Op::Write { offset: p.offset, data, fua };
            let addrs = to_all(&self.cluster, oid, self.copies(), op, self.opts.retry_for, self.opts.fence).await?;
            self.mark_dirty(addrs);
            return Ok(());
        }
        self.first_write(p, data, fua).await
    }

    /// Makes `len` bytes at `offset` read as zeros without sending any: objects never
    /// written are left alone (they read as zeros already; no object is created); objects
    /// covered whole are unmapped (inode entry back to 0, the VDI's own object removed: a
    /// discard gives the space back); of the others, the VDI's own objects get a `zero`
    /// request on every replica (the nodes punch holes), and objects still shared with a
    /// parent are first copied on the nodes (copy-on-write, as a first write does) and then
    /// zeroed. Objects go in parallel, [`ZERO_IN_FLIGHT`] at once.
    /// `fua`: durable before the acknowledgement.
    ///
    /// Against concurrent writes no lock is needed: an object is zeroed only once the inode
    /// table says this VDI owns it, which is set after its creation succeeded on every
    /// replica, so a `zero` never meets a half-created object. A first write in flight on a
    /// never-written object is not waited for: the zeroed range reads as zeros whether that
    /// write lands before or after, unless the two overlap — and overlapping requests in
    /// flight at once have no defined order, exactly as for two overlapping writes.
    pub async fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), VdiError> {
        self.check_writable()?;
        self.check(offset, len)?;
        futures::stream::iter(spans(offset, len, self.entry.object_size_shift, ZERO_MAX).map(Ok))
            .try_for_each_concurrent(ZERO_IN_FLIGHT, |s| self.zero_span(s, fua))
            .await
    }

    async fn zero_span(&self, s: Span, fua: bool) -> Result<(), VdiError> {
        let vid = self.entry.vid;
        let whole = s.offset == 0 && u64::from(s.len) == self.object_size();
        match self.owner(s.idx) {
            None => return Ok(()),
            Some(_) if whole => return self.unmap(s.idx, fua).await,
            Some(owner) if owner != vid => {
                // Shared with a parent, whose object must not change: make it ours first (a
                // create from the base with no data: the node copies it), then zero ours.
                let p = Piece { idx: s.idx, offset: 0, buf_offset: 0, len: 0 };
                self.first_write(p, &[], fua).await?;
            }
            Some(_) => {}
        }
        // Zero only objects this VDI owns: a parent's object is shared and must not change.
        debug_assert_eq!(self.owner(s.idx), Some(vid), "zeroing object {} of a VDI that does not own it", s.idx);
        let oid = ObjectId::data(vid, s.idx);
        let op = Op::Zero { offset: s.offset, len: s.len, fua };
        let addrs = to_all(&self.cluster, oid, self.copies(), op, self.opts.retry_for, self.opts.fence).await?;
        self.mark_dirty(addrs);
        Ok(())
    }

    /// The first write of this VDI to an index: creates the object (from the owner's object
    /// when it is shared with a parent), then records it in the inode on every replica.
    /// Serialised per index; a write that waited finds the object created and writes into it.
    async fn first_write(&self, p: Piece, data: &[u8], fua: bool) -> Result<(), VdiError> {
        self.serialised(p.idx, async {
            let vid = self.entry.vid;
            let oid = ObjectId::data(vid, p.idx);
            let owner = self.owner(p.idx);
            if owner == Some(vid) {
                let op = Op::Write { offset: p.offset, data, fua };
                let addrs = to_all(&self.cluster, oid, self.copies(), op, self.opts.retry_for, self.opts.fence).await?;
                self.mark_dirty(addrs);
                return Ok(());
            }
            let base = owner.map_or(0, |o| ObjectId::data(o, p.idx).raw());
            let object_size = self.object_size() as u32;
            let op = Op::Create { object_size, base, offset: p.offset, data, fua };
            let created = to_all(&self.cluster, oid, self.copies(), op, self.opts.retry_for, self.opts.fence).await;
            let addrs = self.undo_failed_create(oid, created).await?;
            self.mark_dirty(addrs);
            if let Err(e) = self.set_entry(p.idx, vid.get(), fua).await {
                if !self.inode_exists.get() {
                    // The inode could not be made: no table names the object, which goes
                    // (else `check` would take it for a VDI whose table is lost).
                    return self.undo_failed_create(oid, Err(e)).await.map(|_| ());
                }
                // Else the entry may be on some replicas of the inode: the object stays.
                return Err(e);
            }
            self.table.borrow_mut()[p.idx as usize] = vid.get();
            Ok(())
        })
        .await
    }

    /// Runs `f` alone among the changes of index `idx`'s owner (first writes, unmaps).
    async fn serialised<T>(&self, idx: u32, f: impl std::future::Future<Output = T>) -> T {
        let lock = self.first_writes.borrow_mut().entry(idx).or_default().clone();
        let result = {
            let _guard = lock.lock().await;
            f.await
        };
        drop(lock);
        let mut map = self.first_writes.borrow_mut();
        if map.get(&idx).is_some_and(|l| Rc::strong_count(l) == 1) {
            map.remove(&idx);
        }
        result
    }

    /// A whole object discarded: its inode entry goes back to 0 (it reads as zeros, shares
    /// nothing with a parent any more), then the object, if it is this VDI's own, is removed
    /// from its replicas and its space comes back. Only the working VDI reads objects of its
    /// own id (a snapshot freezes the old id, and the VDI goes on with a new one), so nothing
    /// else loses data. A crash between the two steps leaves an object nothing reads.
    async fn unmap(&self, idx: u32, fua: bool) -> Result<(), VdiError> {
        self.serialised(idx, async {
            let Some(owner) = self.owner(idx) else { return Ok(()) };
            self.set_entry(idx, 0, fua).await?;
            self.table.borrow_mut()[idx as usize] = 0;
            if owner == self.entry.vid {
                remove_everywhere(&self.cluster, ObjectId::data(owner, idx), self.entry.copies, self.opts.retry_for)
                    .await?;
            }
            Ok(())
        })
        .await
    }

    /// Sets inode entry `idx` to `owner` (0: never written) on every replica, creating the
    /// inode object first if it does not exist yet.
    async fn set_entry(&self, idx: u32, owner: u32, fua: bool) -> Result<(), VdiError> {
        self.ensure_inode().await?;
        let offset = layout::entry_offset(idx);
        let offset = u32::try_from(offset).map_err(|_| VdiError::Unsupported("inode table too large".into()))?;
        let bytes = owner.to_le_bytes();
        let op = Op::Write { offset, data: &bytes, fua };
        let addrs =
            to_all(&self.cluster, self.inode_oid(), self.copies(), op, self.opts.retry_for, self.opts.fence).await?;
        self.mark_dirty(addrs);
        Ok(())
    }

    async fn ensure_inode(&self) -> Result<(), VdiError> {
        if self.inode_exists.get() {
            return Ok(());
        }
        let _guard = self.inode_lock.lock().await;
        if self.inode_exists.get() {
            return Ok(());
        }
        // Room for the table of the largest VDI this object size allows, so that a resize
        // never has to move the inode (the object is sparse: unused room costs nothing).
        let most = layout::max_objects(
            sheep_core::inode::max_vdi_size(self.entry.object_size_shift),
            self.entry.object_size_shift,
        );
        let len = layout::object_len(most.max(u64::from(self.max_objects())));
        let object_size = u32::try_from(len).map_err(|_| VdiError::Unsupported("inode too large".into()))?;
        // A VDI going on from a snapshot starts with the snapshot's table: written in the
        // same create, up to its last non-zero entry.
        let mut data = self.header.clone();
        {
            let table = self.table.borrow();
            let used = table.iter().rposition(|&e| e != 0).map_or(0, |i| i + 1);
            data.extend(table[..used].iter().flat_map(|e| e.to_le_bytes()));
        }
        let op = Op::Create { object_size, base: 0, offset: 0, data: &data, fua: false };
        let oid = self.inode_oid();
        let created = to_all(&self.cluster, oid, self.copies(), op, self.opts.retry_for, self.opts.fence).await;
        // No node held the inode when the VDI was opened, and only this writer (the lock
        // holder) creates it: a failed creation is undone whole.
        let addrs = self.undo_failed_create(oid, created).await?;
        self.mark_dirty(addrs);
        self.inode_exists.set(true);
        Ok(())
    }

    /// After the creation of `oid` failed for good on some replica (a full disk, a bad
    /// request) while others may have made it: removes it from every replica (bounded, best
    /// effort), so that a failed write leaves no copy behind that `check` would take for
    /// damage. The object is named by no table yet. Returns `created` as it was.
    async fn undo_failed_create(
        &self,
        oid: ObjectId,
        created: Result<Vec<String>, VdiError>,
    ) -> Result<Vec<String>, VdiError> {
        let final_failure = matches!(&created, Err(VdiError::Node(e)) if e.is_final() && !e.is_fenced());
        if final_failure {
            if let Err(e) = remove_everywhere(&self.cluster, oid, self.entry.copies, UNDO_FOR).await {
                tracing::warn!("cannot undo the failed creation of {oid}: {e}");
            }
        }
        created
    }

    /// Makes sure the inode object exists (with the inherited table): done before the VDI
    /// becomes a snapshot, so that every snapshot's table can be read from its own inode.
    pub async fn materialize(&self) -> Result<(), VdiError> {
        self.ensure_inode().await
    }

    fn mark_dirty(&self, addrs: Vec<String>) {
        let mut dirty = self.dirty.borrow_mut();
        for a in addrs {
            if !dirty.contains(&a) {
                dirty.insert(a);
            }
        }
    }

    /// Makes every write acknowledged before it durable: a flush on every storage node
    /// written since the last flush.
    pub async fn flush(&self) -> Result<(), VdiError> {
        let _one_at_a_time = self.flush_lock.lock().await;
        let addrs: Vec<String> = self.dirty.borrow_mut().drain().collect();
        let result = flush_all(&self.cluster, addrs.clone(), self.opts.retry_for).await;
        if result.is_err() {
            self.mark_dirty(addrs);
        }
        result
    }

    /// The table of `vid`'s inode from storage (`len` entries at most), or `None` if its inode
    /// object exists on no replica (never written). `name`: the name the inode must carry.
    async fn load_table(&self, vid: VdiId, name: Option<&str>, len: usize) -> Result<Option<Vec<u32>>, VdiError> {
        let oid = ObjectId::inode(vid);
        let started = Instant::now();
        let deadline = started + self.opts.retry_for;
        let mut last = None;
        loop {
            let view = self.cluster.view();
            let nodes = view.ring.replicas(oid, self.copies());
            let mut absent = 0;
            for n in &nodes {
                let pool = self.cluster.pool();
                let mut header = vec![0u8; HEADER_LEN as usize];
                let got = match pool.read(&n.addr, view.epoch, oid.raw(), 0, &mut header).await {
                    Ok(()) => {
                        let inode = layout::decode(&header, &[]).map_err(|e| VdiError::BadInode {
                            name: self.entry.name.clone(),
                            reason: format!("inode of {vid}: {e} (copy on {})", n.addr),
                        })?;
                        if inode.vid != vid || name.is_some_and(|want| inode.name != want) {
                            return Err(VdiError::BadInode {
                                name: self.entry.name.clone(),
                                reason: format!("inode {oid} belongs to VDI {:?} ({})", inode.name, inode.vid),
                            });
                        }
                        // A resized VDI's table is longer than its header says; a parent's
                        // may be shorter than ours: read what both have.
                        let own = layout::max_objects(
                            sheep_core::inode::max_vdi_size(inode.object_size_shift()),
                            inode.object_size_shift(),
                        );
                        let len = if name.is_some() { len } else { len.min(own as usize) };
                        let mut table = vec![0u8; 4 * len];
                        pool.read(&n.addr, view.epoch, oid.raw(), HEADER_LEN, &mut table).await.map(|()| table)
                    }
                    Err(e) => Err(e),
                };
                match got {
                    Ok(table) => return Ok(Some(layout::decode_table(&table))),
                    Err(e) if e.is_code(ErrorCode::NoObject) => absent += 1,
                    // Not this client's to read: no other replica says otherwise.
                    Err(e) if e.is_code(ErrorCode::Denied) => return Err(VdiError::Node(e)),
                    Err(e) => {
                        tracing::debug!("inode of {}: {e}", self.entry.name);
                        last = Some(e.to_string());
                    }
                }
            }
            if !nodes.is_empty() && absent == nodes.len() {
                return Ok(None);
            }
            if Instant::now() >= deadline {
                return Err(VdiError::Io {
                    what: format!("reading the inode of {:?} ({vid})", self.entry.name),
                    after: started.elapsed(),
                    last: last.unwrap_or_else(|| format!("no storage nodes in epoch {}", view.epoch)),
                });
            }
            let until = deadline.min(Instant::now() + Duration::from_secs(1));
            self.cluster.wait_newer(view.epoch, until).await;
        }
    }
}
