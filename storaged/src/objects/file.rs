//! One object on disk: a file with a header, a crc table, and the object's bytes.
//!
//! ```text
//! offset 0    magic "SHEEPOB2" (8 bytes)
//!        8    object size, u32 LE (a multiple of BLOCK)
//!        12   block size, u32 LE (BLOCK)
//!        16   last live epoch, u32 LE: 0 while live; set when the copy moves to .stale/
//!        20   crc32 of bytes 0..20, u32 LE
//!        24   version, u64 LE (sheep_core::store::Version: epoch of the last write << 32 |
//!             writes in that epoch), then at 32 the crc32 of bytes 24..32; all 12 bytes
//!             zero: version 0 (a copy from before versions)
//!        64   crc table: per block of the object, two crc32s (u32 LE): of its content and
//!             of its content before the last write to it
//!   data_off  the object's bytes: data_off = 64 + 8 × blocks rounded up to BLOCK
//! ```
//!
//! The file is as long as `data_off + object size` but sparse: blocks never written are
//! holes, and their crcs in the table are the crc of a zero block.
//!
//! A write is torn-proof. The store first sets the version to an *unsettled* one (odd, see
//! `sheep_core::store`), then the write puts each touched block's new crc in the table with
//! its old one beside it, then the data; last the store sets the settled version. A block
//! reads if its content matches either crc, so a crash anywhere in between (even on every
//! replica at once) leaves each block reading as its old or its new content, never as an
//! error; and the unsettled version tells recovery that the copies may differ, so it makes
//! them one again ([`ObjFile::settle`]). A block that matches neither crc is corrupt.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::OnceLock;

use sheep_core::store::Version;

use super::nowait;

/// Checksum granularity: one crc32 per 4 KiB, the size of a device's I/O.
pub const BLOCK: usize = 4096;
const MAGIC: &[u8; 8] = b"SHEEPOB2";
const HEADER_CRC_AT: usize = 20;
/// The version and its crc: written on their own (12 bytes, inside one sector) after every
/// write's data and crcs.
const VERSION_AT: usize = 24;
const VERSION_LEN: usize = 12;
const CRC_TABLE_AT: u64 = 64;
/// Bytes of a block's entry in the crc table: its crc, and its crc before the last write.
const ENTRY: usize = 8;
/// The largest object this format takes (the wire's object size is a u32).
pub const MAX_OBJECT_SIZE: u32 = 1 << 31;

/// Where a read may take its bytes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The page cache, or else the disk (the caller may wait).
    Any,
    /// The page cache only (see `nowait`).
    Cache,
}

/// Why an object file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The file's contents fail their checks: a bad header, or a block whose crc differs.
    #[error("{0}")]
    Corrupt(String),
    /// The caller asked for something outside the object.
    #[error("{0}")]
    Range(String),
}

/// The crc of a block of zeros: what the table holds for a block never written.
pub fn zero_block_crc() -> u32 {
    static CRC: OnceLock<u32> = OnceLock::new();
    *CRC.get_or_init(|| crc32fast::hash(&[0u8; BLOCK]))
}

/// Where things are in the file of an object of `object_size` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub object_size: u32,
}

impl Layout {
    pub fn new(object_size: u32) -> Result<Layout, FileError> {
        if object_size == 0 || !(object_size as usize).is_multiple_of(BLOCK) || object_size > MAX_OBJECT_SIZE {
            return Err(FileError::Range(format!(
                "object size must be a multiple of {BLOCK} bytes from {BLOCK} to {MAX_OBJECT_SIZE}, not {object_size}"
            )));
        }
        Ok(Layout { object_size })
    }

    pub fn blocks(&self) -> usize {
        self.object_size as usize / BLOCK
    }

    pub fn data_off(&self) -> u64 {
        let end = CRC_TABLE_AT + ENTRY as u64 * self.blocks() as u64;
        end.div_ceil(BLOCK as u64) * BLOCK as u64
    }

    pub fn file_len(&self) -> u64 {
        self.data_off() + u64::from(self.object_size)
    }

    fn header(&self, stale_epoch: u32) -> [u8; CRC_TABLE_AT as usize] {
        let mut h = [0u8; CRC_TABLE_AT as usize];
        h[..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&self.object_size.to_le_bytes());
        h[12..16].copy_from_slice(&(BLOCK as u32).to_le_bytes());
        h[16..20].copy_from_slice(&stale_epoch.to_le_bytes());
        let crc = crc32fast::hash(&h[..HEADER_CRC_AT]);
        h[HEADER_CRC_AT..HEADER_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// The layout and the last live epoch.
    fn parse(h: &[u8]) -> Result<(Layout, u32), FileError> {
        let bad = |why: &str| FileError::Corrupt(format!("bad object header: {why}"));
        if h.len() < CRC_TABLE_AT as usize || &h[..8] != MAGIC {
            return Err(bad("no magic"));
        }
        let word = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
        if crc32fast::hash(&h[..HEADER_CRC_AT]) != word(HEADER_CRC_AT) {
            return Err(bad("checksum mismatch"));
        }
        if word(12) as usize != BLOCK {
            return Err(bad("unknown block size"));
        }
        let layout = Layout::new(word(8)).map_err(|_| bad("bad object size"))?;
        Ok((layout, word(16)))
    }
}

fn version_bytes(v: u64) -> [u8; VERSION_LEN] {
    let mut b = [0u8; VERSION_LEN];
    if v != 0 {
        b[..8].copy_from_slice(&v.to_le_bytes());
        let crc = crc32fast::hash(&b[..8]);
        b[8..].copy_from_slice(&crc.to_le_bytes());
    }
    b
}

fn parse_version(h: &[u8]) -> Result<u64, FileError> {
    let b = &h[VERSION_AT..VERSION_AT + VERSION_LEN];
    if b.iter().all(|&x| x == 0) {
        return Ok(0);
    }
    if crc32fast::hash(&b[..8]).to_le_bytes() != b[8..12] {
        return Err(FileError::Corrupt("bad object header: version checksum mismatch".into()));
    }
    Ok(u64::from_le_bytes(b[..8].try_into().expect("8 bytes")))
}

/// An open object file.
pub struct ObjFile {
    file: File,
    pub layout: Layout,
    /// The last epoch in which a stale copy was live (0 for a live object).
    pub stale_epoch: u32,
    /// The copy's version, as in the header (changed under the object's lock).
    version: std::sync::atomic::AtomicU64,
}

impl ObjFile {
    /// Opens an object file and checks its header (and its length).
    pub fn open(path: &Path, writable: bool) -> Result<ObjFile, FileError> {
        let file = File::options().read(true).write(writable).open(path)?;
        let mut h = [0u8; CRC_TABLE_AT as usize];
        file.read_exact_at(&mut h, 0).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => FileError::Corrupt("object file shorter than its header".into()),
            _ => FileError::Io(e),
        })?;
        let (layout, stale_epoch) = Layout::parse(&h)?;
        let version = parse_version(&h)?;
        if file.metadata()?.len() != layout.file_len() {
            return Err(FileError::Corrupt("object file has the wrong length".into()));
        }
        Ok(ObjFile { file, layout, stale_epoch, version: version.into() })
    }

    /// Creates a new object file of zeros at `path` (which must not exist): header, a crc
    /// table of zero-block crcs, and a hole for the data. Nothing of the data is written.
    pub fn create(path: &Path, layout: Layout) -> Result<ObjFile, FileError> {
        let file = File::options().read(true).write(true).create_new(true).open(path)?;
        let mut head = Vec::with_capacity(layout.data_off() as usize);
        head.extend_from_slice(&layout.header(0));
        let zero = zero_block_crc().to_le_bytes();
        for _ in 0..2 * layout.blocks() {
            head.extend_from_slice(&zero);
        }
        file.write_all_at(&head, 0)?;
        file.set_len(layout.file_len())?;
        Ok(ObjFile { file, layout, stale_epoch: 0, version: 0.into() })
    }

    /// Records in the header the last epoch in which this copy was live (0: live). The
    /// version after it stays as it is.
    pub fn set_stale_epoch(&mut self, epoch: u32) -> Result<(), FileError> {
        self.file.write_all_at(&self.layout.header(epoch)[..VERSION_AT], 0)?;
        self.stale_epoch = epoch;
        Ok(())
    }

    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Records the copy's version (after the data it versions is written).
    pub fn set_version(&self, v: u64) -> Result<(), FileError> {
        self.file.write_all_at(&version_bytes(v), VERSION_AT as u64)?;
        self.version.store(v, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), FileError> {
        let size = u64::from(self.layout.object_size);
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(FileError::Range(format!("range {offset}+{len} is outside the object of {size} bytes")));
        }
        Ok(())
    }

    /// The crc table entries of blocks `first..first + count`: (crc, crc before the last write).
    fn read_entries(&self, first: usize, count: usize, from: Source) -> Result<Vec<[u32; 2]>, FileError> {
        let raw = self.read_new(ENTRY * count, CRC_TABLE_AT + (ENTRY * first) as u64, from)?;
        let word = |c: &[u8]| u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        Ok(raw.chunks_exact(ENTRY).map(|c| [word(&c[..4]), word(&c[4..])]).collect())
    }

    fn write_entries(&self, first: usize, entries: &[[u32; 2]]) -> Result<(), FileError> {
        let raw: Vec<u8> = entries
            .iter()
            .flat_map(|[now, before]| now.to_le_bytes().into_iter().chain(before.to_le_bytes()))
            .collect();
        self.file.write_all_at(&raw, CRC_TABLE_AT + (ENTRY * first) as u64)?;
        Ok(())
    }

    /// New entries for blocks starting at `first` that take the contents with `crcs`: each
    /// keeps the crc the block's content has now (the entry's first crc: a settled copy's
    /// content matches it) as the one before.
    fn entries_for(&self, first: usize, crcs: &[u32]) -> Result<Vec<[u32; 2]>, FileError> {
        let old = self.read_entries(first, crcs.len(), Source::Any)?;
        Ok(crcs.iter().zip(old).map(|(&new, [now, _])| [new, now]).collect())
    }

    /// Reads whole blocks `first..first + count`; each must match one of its two crcs.
    fn read_blocks(&self, first: usize, count: usize, from: Source) -> Result<Vec<u8>, FileError> {
        let buf = self.read_new(count * BLOCK, self.layout.data_off() + (first * BLOCK) as u64, from)?;
        let entries = self.read_entries(first, count, from)?;
        for (i, (block, want)) in buf.chunks_exact(BLOCK).zip(entries).enumerate() {
            if !want.contains(&crc32fast::hash(block)) {
                return Err(FileError::Corrupt(format!("block {} fails its checksum", first + i)));
            }
        }
        Ok(buf)
    }

    fn read_new(&self, len: usize, at: u64, from: Source) -> io::Result<Vec<u8>> {
        nowait::read_new(&self.file, len, at, from == Source::Cache)
    }

    /// `len` bytes at `offset`, every block they touch verified; with [`Source::Cache`] an
    /// `Io` error of kind `WouldBlock` if some are not in the page cache.
    pub fn read(&self, offset: u64, len: u64, from: Source) -> Result<Vec<u8>, FileError> {
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let first = (offset / BLOCK as u64) as usize;
        let end = (offset + len).div_ceil(BLOCK as u64) as usize;
        let mut buf = self.read_blocks(first, end - first, from)?;
        let skip = (offset - (first * BLOCK) as u64) as usize;
        buf.drain(..skip);
        buf.truncate(len as usize);
        Ok(buf)
    }

    /// The whole object, verified.
    pub fn read_all(&self) -> Result<Vec<u8>, FileError> {
        self.read(0, u64::from(self.layout.object_size), Source::Any)
    }

    /// Writes `data` at `offset`, the copy's version set to `started` (unsettled) before
    /// anything else changes. Blocks only partly covered are read (and verified) first.
    pub fn write(&self, offset: u64, data: &[u8], started: Version) -> Result<(), FileError> {
        let (first, buf) = self.merged(offset, data)?;
        self.set_version(started)?;
        self.put_blocks(first, &buf)
    }

    /// The whole blocks `data` at `offset` makes (the first one's index and the bytes): the
    /// blocks it covers only partly are read (verified) and merged.
    fn merged<'a>(&self, offset: u64, data: &'a [u8]) -> Result<(usize, std::borrow::Cow<'a, [u8]>), FileError> {
        self.check_range(offset, data.len() as u64)?;
        let first = (offset / BLOCK as u64) as usize;
        if data.is_empty() {
            return Ok((first, std::borrow::Cow::Borrowed(data)));
        }
        let end = (offset + data.len() as u64).div_ceil(BLOCK as u64) as usize;
        let head = (offset - (first * BLOCK) as u64) as usize;
        if head == 0 && data.len().is_multiple_of(BLOCK) {
            return Ok((first, std::borrow::Cow::Borrowed(data)));
        }
        let mut buf = vec![0u8; (end - first) * BLOCK];
        if head != 0 {
            buf[..BLOCK].copy_from_slice(&self.read_blocks(first, 1, Source::Any)?);
        }
        let tail_block = end - 1;
        if !(head + data.len()).is_multiple_of(BLOCK) && (tail_block != first || head == 0) {
            let at = (tail_block - first) * BLOCK;
            buf[at..at + BLOCK].copy_from_slice(&self.read_blocks(tail_block, 1, Source::Any)?);
        }
        buf[head..head + data.len()].copy_from_slice(data);
        Ok((first, std::borrow::Cow::Owned(buf)))
    }

    /// Puts whole blocks at block `first`: their entries (new crc, crc now) first, then the
    /// data, so a crash in between leaves each block matching one of its crcs.
    fn put_blocks(&self, first: usize, buf: &[u8]) -> Result<(), FileError> {
        debug_assert!(buf.len().is_multiple_of(BLOCK), "{} bytes are not whole blocks", buf.len());
        if buf.is_empty() {
            return Ok(());
        }
        let crcs: Vec<u32> = buf.chunks_exact(BLOCK).map(crc32fast::hash).collect();
        self.write_entries(first, &self.entries_for(first, &crcs)?)?;
        fail::fail_point!("object-write-before-data", |arg| Err(injected(arg)));
        self.file.write_all_at(buf, self.layout.data_off() + (first * BLOCK) as u64)?;
        Ok(())
    }

    /// Makes every block's entry name its content alone (and its content before, too): after
    /// an unsettled write, a block may match the crc it had before the write; the next write
    /// must keep that one. Fails if some block matches neither.
    pub fn settle(&self) -> Result<(), FileError> {
        const CHUNK: usize = 64; // blocks read at a time
        let blocks = self.layout.blocks();
        let mut first = 0;
        while first < blocks {
            let count = CHUNK.min(blocks - first);
            let data = self.read_blocks(first, count, Source::Any)?;
            let entries: Vec<[u32; 2]> = data.chunks_exact(BLOCK).map(crc32fast::hash).map(|c| [c, c]).collect();
            if entries != self.read_entries(first, count, Source::Any)? {
                self.write_entries(first, &entries)?;
            }
            first += count;
        }
        Ok(())
    }

    /// Makes `len` bytes at `offset` read as zeros, the version set to `started` first
    /// (as for [`Self::write`]). Whole blocks become holes (zeros are written where the file
    /// system cannot punch) with the zero-block crc, as if never written; blocks only partly
    /// covered are rewritten like `write` does. Entries first, then data, as for `write`.
    pub fn zero(&self, offset: u64, len: u64, started: Version) -> Result<(), FileError> {
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let block = BLOCK as u64;
        let end = offset + len;
        // Whole blocks [first_whole, end_whole); none when the range sits inside one block.
        let first_whole = offset.div_ceil(block);
        let end_whole = end / block;
        // The ragged edges (each under a block), merged before anything changes.
        let edges: Vec<(u64, u64)> = if first_whole >= end_whole {
            vec![(offset, end)]
        } else {
            vec![(offset, first_whole * block), (end_whole * block, end)]
        };
        let zeros = vec![0u8; 2 * BLOCK];
        let mut merged = Vec::new();
        for (from, to) in edges.into_iter().filter(|(from, to)| from < to) {
            debug_assert!(to - from < 2 * block, "zeroing {from}..{to} is not a ragged edge");
            let (first, buf) = self.merged(from, &zeros[..(to - from) as usize])?;
            merged.push((first, buf.into_owned()));
        }
        self.set_version(started)?;
        for (first, buf) in &merged {
            self.put_blocks(*first, buf)?;
        }
        if first_whole >= end_whole {
            return Ok(());
        }
        let (first, count) = (first_whole as usize, (end_whole - first_whole) as usize);
        self.write_entries(first, &self.entries_for(first, &vec![zero_block_crc(); count])?)?;
        fail::fail_point!("object-write-before-data", |arg| Err(injected(arg)));
        self.punch(self.layout.data_off() + first_whole * block, (end_whole - first_whole) * block)
    }

    /// Deallocates `len` bytes of the file at `at` (which then read as zeros); where the
    /// file system cannot punch holes, writes zeros instead, in bounded chunks.
    fn punch(&self, at: u64, len: u64) -> Result<(), FileError> {
        #[cfg(target_os = "linux")]
        {
            use nix::errno::Errno;
            use nix::fcntl::{fallocate, FallocateFlags};
            let (Ok(off), Ok(n)) = (nix::libc::off_t::try_from(at), nix::libc::off_t::try_from(len)) else {
                return Err(FileError::Range(format!("range {at}+{len} is too large to punch")));
            };
            let punch = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
            match fallocate(&self.file, punch, off, n) {
                Ok(()) => return Ok(()),
                Err(Errno::EOPNOTSUPP | Errno::ENOSYS) => {}
                Err(e) => return Err(FileError::Io(e.into())),
            }
        }
        // No hole punching here: real zeros, at most ZERO_CHUNK bytes of buffer at a time.
        const ZERO_CHUNK: u64 = 1 << 20;
        let zeros = vec![0u8; ZERO_CHUNK.min(len) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(ZERO_CHUNK) as usize;
            self.file.write_all_at(&zeros[..n], at + done)?;
            done += n as u64;
        }
        Ok(())
    }

    /// Fills a freshly created object with `data` (the whole object), leaving blocks of
    /// zeros as holes.
    pub fn fill(&self, data: &[u8]) -> Result<(), FileError> {
        if data.len() != self.layout.object_size as usize {
            return Err(FileError::Range(format!(
                "{} bytes given for an object of {} bytes",
                data.len(),
                self.layout.object_size
            )));
        }
        let mut crcs = Vec::with_capacity(self.layout.blocks());
        let mut run: Option<usize> = None; // first block of the current run of non-zero blocks
        let flush_run = |from: usize, to: usize| -> io::Result<()> {
            self.file.write_all_at(&data[from * BLOCK..to * BLOCK], self.layout.data_off() + (from * BLOCK) as u64)
        };
        for (i, block) in data.chunks_exact(BLOCK).enumerate() {
            let zero = block.iter().all(|&b| b == 0);
            crcs.push(if zero { zero_block_crc() } else { crc32fast::hash(block) });
            match (zero, run) {
                (false, None) => run = Some(i),
                (true, Some(from)) => {
                    flush_run(from, i)?;
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(from) = run {
            flush_run(from, self.layout.blocks())?;
        }
        self.write_entries(0, &crcs.iter().map(|&c| [c, c]).collect::<Vec<_>>())
    }

    pub fn sync_data(&self) -> io::Result<()> {
        fail::fail_point!("object-sync", |arg| Err(injected_io(arg)));
        self.file.sync_data()
    }

    pub fn sync_all(&self) -> io::Result<()> {
        fail::fail_point!("object-sync", |arg| Err(injected_io(arg)));
        self.file.sync_all()
    }
}

/// What a failpoint's `return(ARG)` does (test builds with the `failpoints` feature): `crash`
/// ends the process at once, as a power loss would end the write; `enospc`: a full disk;
/// anything else: an I/O error (EIO).
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
pub fn injected_io(arg: Option<String>) -> io::Error {
    match arg.as_deref() {
        Some("crash") => {
            eprintln!("failpoint: crash");
            std::process::abort()
        }
        Some("enospc") => io::Error::from_raw_os_error(nix::libc::ENOSPC),
        _ => io::Error::from_raw_os_error(nix::libc::EIO),
    }
}

#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
pub fn injected(arg: Option<String>) -> FileError {
    FileError::Io(injected_io(arg))
}
