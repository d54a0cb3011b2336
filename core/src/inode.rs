//! The inode object of a VDI: its header and the `data_vdi_id` table that says, for every
//! object index, which VDI owns the data (itself, an ancestor it shares the object with until
//! the first write, or nobody yet).
//!
//! The binary form is compact for sparse and for fully written VDIs: a 4 TiB VDI has 2^20
//! table entries (4 MiB raw), but runs of one owner are stored as one (count, owner) pair, and
//! the raw table is used only when it is the smaller of the two.

use crate::object::{fnv1a64, validate_snapshot_tag, validate_vdi_name, NameError, VdiId};

/// 4 MiB objects, as in Sheepdog.
pub const DEFAULT_OBJECT_SIZE_SHIFT: u8 = 22;
/// 4 KiB: small objects are useful to tests; a cluster's format sets its own floor.
pub const MIN_OBJECT_SIZE_SHIFT: u8 = 12;
/// 4 GiB.
pub const MAX_OBJECT_SIZE_SHIFT: u8 = 32;
/// A VDI has at most 2^20 objects: 4 TiB at 4 MiB per object.
pub const MAX_OBJECTS: u32 = 1 << 20;
pub const MAX_COPIES: u8 = 31;

/// The largest VDI size for objects of `1 << object_size_shift` bytes.
pub fn max_vdi_size(object_size_shift: u8) -> u64 {
    u64::from(MAX_OBJECTS) << object_size_shift
}

const MAGIC: [u8; 4] = *b"SDIN";
const VERSION: u16 = 1;
const FLAG_READ_ONLY: u16 = 1;
const TABLE_RAW: u8 = 0;
const TABLE_RUNS: u8 = 1;
const CHECKSUM_LEN: usize = 8;

/// What a new VDI is made of; named fields because several have the same type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InodeSpec<'a> {
    pub name: &'a str,
    pub vid: VdiId,
    /// Bytes; need not be a multiple of the object size (the last object is then partly used).
    pub size: u64,
    pub copies: u8,
    pub object_size_shift: u8,
    /// Creation time, milliseconds since the Unix epoch.
    pub ctime_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    pub name: String,
    /// The snapshot tag; empty when there is none.
    pub tag: String,
    pub ctime_ms: u64,
    /// Position in the VDI's snapshot chain: a fresh VDI is 1, its working inode after the
    /// first snapshot is 2, and so on.
    pub snapshot_id: u32,
    /// The VDI this one was snapshotted or cloned from.
    pub parent: Option<VdiId>,
    pub copies: u8,
    pub vid: VdiId,
    /// A snapshot: its table and size never change again.
    pub read_only: bool,
    size: u64,
    object_size_shift: u8,
    /// Owner vid per object index, 0 = never written. Its length is always `max_objects()`.
    data_vdi_id: Vec<u32>,
}

impl Inode {
    /// A fresh, writable, empty VDI.
    pub fn new(spec: InodeSpec<'_>) -> Result<Inode, InodeError> {
        validate_vdi_name(spec.name)?;
        check_copies(spec.copies)?;
        check_geometry(spec.size, spec.object_size_shift)?;
        let max_objects = objects_for(spec.size, spec.object_size_shift);
        Ok(Inode {
            name: spec.name.into(),
            tag: String::new(),
            ctime_ms: spec.ctime_ms,
            snapshot_id: 1,
            parent: None,
            copies: spec.copies,
            vid: spec.vid,
            read_only: false,
            size: spec.size,
            object_size_shift: spec.object_size_shift,
            data_vdi_id: vec![0; max_objects as usize],
        })
    }

    /// A writable VDI `vid` that shares every object of `self` until it writes its own: the
    /// new working inode of a snapshot (same name) or a clone (another name).
    pub fn new_child(&self, name: &str, vid: VdiId, ctime_ms: u64) -> Result<Inode, InodeError> {
        validate_vdi_name(name)?;
        let snapshot_id = if name == self.name { self.snapshot_id.saturating_add(1) } else { 1 };
        Ok(Inode {
            name: name.into(),
            tag: String::new(),
            ctime_ms,
            snapshot_id,
            parent: Some(self.vid),
            copies: self.copies,
            vid,
            read_only: false,
            size: self.size,
            object_size_shift: self.object_size_shift,
            data_vdi_id: self.data_vdi_id.clone(),
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn object_size_shift(&self) -> u8 {
        self.object_size_shift
    }

    pub fn object_size(&self) -> u64 {
        1 << self.object_size_shift
    }

    /// ceil(size / object size), at most `MAX_OBJECTS`.
    pub fn max_objects(&self) -> u32 {
        self.data_vdi_id.len() as u32
    }

    /// The whole table: the owner vid of every index, 0 = never written.
    pub fn data_vdi_id(&self) -> &[u32] {
        &self.data_vdi_id
    }

    /// The VDI owning object `idx`, or `None` if it was never written (it reads as zeros) or
    /// `idx` is past the end.
    pub fn owner(&self, idx: u32) -> Option<VdiId> {
        let raw = *self.data_vdi_id.get(idx as usize)?;
        // Every entry was checked on the way in (set_owner, decode), so only 0 is refused.
        VdiId::new(raw).ok()
    }

    pub fn set_owner(&mut self, idx: u32, owner: Option<VdiId>) -> Result<(), InodeError> {
        if self.read_only {
            return Err(InodeError::ReadOnly);
        }
        let max_objects = self.max_objects();
        let entry = self.data_vdi_id.get_mut(idx as usize).ok_or(InodeError::IndexOutOfRange { idx, max_objects })?;
        *entry = owner.map_or(0, VdiId::get);
        Ok(())
    }

    /// Grows the VDI; the new objects are unwritten. Shrinking is refused: data past the new
    /// end would be lost and other snapshots may share it.
    pub fn resize(&mut self, new_size: u64) -> Result<(), InodeError> {
        if self.read_only {
            return Err(InodeError::ReadOnly);
        }
        if new_size < self.size {
            return Err(InodeError::Shrink { from: self.size, to: new_size });
        }
        check_geometry(new_size, self.object_size_shift)?;
        self.size = new_size;
        self.data_vdi_id.resize(objects_for(new_size, self.object_size_shift) as usize, 0);
        Ok(())
    }

    /// The binary form: little endian, versioned, with an FNV-1a checksum at the end.
    ///
    /// ```text
    /// magic "SDIN" | version u16 | flags u16 | vid u32 | parent u32 (0 = none)
    /// | snapshot_id u32 | copies u8 | object_size_shift u8 | table format u8 | 0u8
    /// | size u64 | ctime_ms u64 | name: len u32, bytes | tag: len u32, bytes
    /// | table: raw  = max_objects × owner u32
    /// |        runs = count u32, count × (length u32, owner u32)
    /// | checksum u64 = fnv1a64(everything before it)
    /// ```
    pub fn encode(&self) -> Vec<u8> {
        debug_assert_eq!(self.check_header(), Ok(()), "encoding an invalid inode");
        debug_assert_eq!(self.data_vdi_id.len() as u64, objects_for(self.size, self.object_size_shift));
        let runs = owner_runs(&self.data_vdi_id);
        let runs_len = 4 + 8 * runs.len();
        let raw_len = 4 * self.data_vdi_id.len();
        let table_format = if runs_len < raw_len { TABLE_RUNS } else { TABLE_RAW };

        let mut out = Vec::with_capacity(64 + self.name.len() + self.tag.len() + runs_len.min(raw_len));
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        let flags = if self.read_only { FLAG_READ_ONLY } else { 0 };
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&self.vid.get().to_le_bytes());
        out.extend_from_slice(&self.parent.map_or(0, VdiId::get).to_le_bytes());
        out.extend_from_slice(&self.snapshot_id.to_le_bytes());
        out.extend_from_slice(&[self.copies, self.object_size_shift, table_format, 0]);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.ctime_ms.to_le_bytes());
        for text in [&self.name, &self.tag] {
            out.extend_from_slice(&(text.len() as u32).to_le_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        if table_format == TABLE_RUNS {
            out.extend_from_slice(&(runs.len() as u32).to_le_bytes());
            for (length, owner) in runs {
                out.extend_from_slice(&length.to_le_bytes());
                out.extend_from_slice(&owner.to_le_bytes());
            }
        } else {
            out.extend(self.data_vdi_id.iter().flat_map(|owner| owner.to_le_bytes()));
        }
        let checksum = fnv1a64(&out);
        out.extend_from_slice(&checksum.to_le_bytes());
        out
    }

    /// Reads the binary form back. Any truncated, garbled or inconsistent input is an error.
    pub fn decode(bytes: &[u8]) -> Result<Inode, InodeError> {
        if bytes.len() < MAGIC.len() + 2 {
            return Err(InodeError::Truncated);
        }
        if bytes[..MAGIC.len()] != MAGIC {
            return Err(InodeError::BadMagic);
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != VERSION {
            return Err(InodeError::UnsupportedVersion(version));
        }
        let Some(body_len) = bytes.len().checked_sub(CHECKSUM_LEN) else {
            return Err(InodeError::Truncated);
        };
        let (body, checksum) = bytes.split_at(body_len);
        if body_len < MAGIC.len() + 2 || fnv1a64(body).to_le_bytes() != checksum {
            return Err(InodeError::ChecksumMismatch);
        }

        let mut r = Reader { bytes: body, pos: MAGIC.len() + 2 };
        let flags = r.u16()?;
        if flags & !FLAG_READ_ONLY != 0 {
            return Err(InodeError::Malformed("unknown flags"));
        }
        let vid = VdiId::new(r.u32()?).map_err(|_| InodeError::Malformed("vid out of range"))?;
        let parent = match r.u32()? {
            0 => None,
            raw => Some(VdiId::new(raw).map_err(|_| InodeError::Malformed("parent out of range"))?),
        };
        let snapshot_id = r.u32()?;
        let [copies, object_size_shift, table_format, reserved] = r.array::<4>()?;
        if reserved != 0 {
            return Err(InodeError::Malformed("reserved byte set"));
        }
        let size = r.u64()?;
        let ctime_ms = r.u64()?;
        let name = r.text()?;
        let tag = r.text()?;
        check_copies(copies)?;
        check_geometry(size, object_size_shift)?;
        let max_objects = objects_for(size, object_size_shift) as usize;

        let data_vdi_id = match table_format {
            TABLE_RAW => {
                let raw = r.take(max_objects.checked_mul(4).ok_or(InodeError::Truncated)?)?;
                let table: Vec<u32> =
                    raw.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                if table.iter().any(|&owner| owner > VdiId::MAX) {
                    return Err(InodeError::Malformed("owner vid out of range"));
                }
                table
            }
            TABLE_RUNS => decode_runs(&mut r, max_objects)?,
            _ => return Err(InodeError::Malformed("unknown table format")),
        };
        if r.pos != body.len() {
            return Err(InodeError::Malformed("trailing bytes"));
        }
        let inode = Inode {
            name,
            tag,
            ctime_ms,
            snapshot_id,
            parent,
            copies,
            vid,
            read_only: flags & FLAG_READ_ONLY != 0,
            size,
            object_size_shift,
            data_vdi_id,
        };
        inode.check_header()?;
        Ok(inode)
    }

    fn check_header(&self) -> Result<(), InodeError> {
        validate_vdi_name(&self.name)?;
        validate_snapshot_tag(&self.tag)?;
        check_copies(self.copies)?;
        check_geometry(self.size, self.object_size_shift)
    }
}

fn objects_for(size: u64, object_size_shift: u8) -> u64 {
    size.div_ceil(1 << object_size_shift)
}

fn check_copies(copies: u8) -> Result<(), InodeError> {
    if copies == 0 || copies > MAX_COPIES {
        return Err(InodeError::BadCopies(copies));
    }
    Ok(())
}

fn check_geometry(size: u64, object_size_shift: u8) -> Result<(), InodeError> {
    if !(MIN_OBJECT_SIZE_SHIFT..=MAX_OBJECT_SIZE_SHIFT).contains(&object_size_shift) {
        return Err(InodeError::BadObjectSizeShift(object_size_shift));
    }
    if size == 0 {
        return Err(InodeError::ZeroSize);
    }
    let max = max_vdi_size(object_size_shift);
    if size > max {
        return Err(InodeError::TooLarge { size, max });
    }
    Ok(())
}

/// Consecutive equal owners as (length, owner) pairs.
fn owner_runs(table: &[u32]) -> Vec<(u32, u32)> {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for &owner in table {
        match runs.last_mut() {
            Some((length, last)) if *last == owner => *length += 1,
            _ => runs.push((1, owner)),
        }
    }
    runs
}

fn decode_runs(r: &mut Reader<'_>, max_objects: usize) -> Result<Vec<u32>, InodeError> {
    let count = r.u32()? as usize;
    // Refuse before allocating: each run takes 8 bytes and covers at least one object.
    if count > max_objects || count.saturating_mul(8) > r.remaining() {
        return Err(InodeError::Malformed("run count does not match the table"));
    }
    let mut table = Vec::with_capacity(max_objects);
    for _ in 0..count {
        let length = r.u32()? as usize;
        let owner = r.u32()?;
        if length == 0 || length > max_objects - table.len() {
            return Err(InodeError::Malformed("runs do not cover the table exactly"));
        }
        if owner > VdiId::MAX {
            return Err(InodeError::Malformed("owner vid out of range"));
        }
        table.resize(table.len() + length, owner);
    }
    if table.len() != max_objects {
        return Err(InodeError::Malformed("runs do not cover the table exactly"));
    }
    Ok(table)
}

/// Reads little-endian fields, failing with `Truncated` instead of running off the end.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], InodeError> {
        if n > self.remaining() {
            return Err(InodeError::Truncated);
        }
        let slice = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], InodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, InodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, InodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, InodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn text(&mut self) -> Result<String, InodeError> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| InodeError::Malformed("text is not UTF-8"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InodeError {
    #[error(transparent)]
    BadName(#[from] NameError),
    #[error("a VDI must not be empty")]
    ZeroSize,
    #[error(
        "size {} is larger than the maximum {} for this object size (2^20 objects)",
        crate::size::format_limit(*.size),
        crate::size::format_limit(*.max)
    )]
    TooLarge { size: u64, max: u64 },
    #[error("object size 2^{0} is out of range (2^{MIN_OBJECT_SIZE_SHIFT}..=2^{MAX_OBJECT_SIZE_SHIFT})")]
    BadObjectSizeShift(u8),
    #[error("copies must be 1..={MAX_COPIES}, not {0}")]
    BadCopies(u8),
    #[error(
        "a VDI cannot shrink (from {} to {})",
        crate::size::format_limit(*.from),
        crate::size::format_limit(*.to)
    )]
    Shrink { from: u64, to: u64 },
    #[error("the VDI is a read-only snapshot")]
    ReadOnly,
    #[error("object index {idx} is past the end of the VDI ({max_objects} objects)")]
    IndexOutOfRange { idx: u32, max_objects: u32 },
    #[error("inode data is truncated")]
    Truncated,
    #[error("not an inode (bad magic)")]
    BadMagic,
    #[error("inode format version {0} is not supported (this build reads version {VERSION})")]
    UnsupportedVersion(u16),
    #[error("inode data is corrupt (checksum mismatch)")]
    ChecksumMismatch,
    #[error("inode data is malformed: {0}")]
    Malformed(&'static str),
}

#[cfg(test)]
#[path = "inode_tests.rs"]
mod tests;
