//! The Raft log and vote, on disk in the data directory.
//!
//! Files:
//! - `raft-log`: append-only records `[len u32 LE][crc32 u32 LE][JSON of one entry]`. An append
//!   is fsynced before it is acknowledged, by the writer's thread (`log_writer`: off the event
//!   loop); the entries are in memory, readable, at once. A torn record at the end (crash
//!   during a write) is cut off when the log is opened. Truncation cuts the file; a purge
//!   rewrites it without the purged prefix (tmp file + rename).
//! - `raft-meta.json`: the vote and the last purged log id; replaced atomically (tmp file,
//!   fsync, rename, fsync of the directory) before a vote is acknowledged, once every append
//!   before it is durable (so are truncations and purges: openraft's writes stay in order).
//! - `raft-committed.json`: the last committed log id, a hint only (not fsynced): losing it
//!   just means fewer entries are re-applied at start, until the leader says more.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{RaftLogReader, StorageIOError};
use serde::{Deserialize, Serialize};

use crate::log_writer::{LogWriter, Records};
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

const LOG_FILE: &str = "raft-log";
const META_FILE: &str = "raft-meta.json";
const COMMITTED_FILE: &str = "raft-committed.json";
const HEADER: usize = 8;
/// A record larger than this is taken for garbage (a torn length field).
const MAX_RECORD: usize = 256 << 20;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    vote: Option<Vote>,
    last_purged: Option<LogId>,
}

/// The on-disk log, with every live entry also kept in memory (the log is bounded by
/// snapshots, so this stays small).
pub struct LogFiles {
    dir: PathBuf,
    /// Shared with the writer's thread, which writes the records staged in it.
    file: Arc<File>,
    /// Length of the valid part of `raft-log` (once the staged records are written).
    end: u64,
    /// index → (offset of its record in `raft-log`, entry).
    entries: BTreeMap<u64, (u64, Entry)>,
    meta: Meta,
    committed: Option<LogId>,
}

/// Writes `name` in `dir` atomically and durably: tmp file, fsync, rename, fsync the directory.
pub fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

fn encode_record(e: &Entry) -> io::Result<Vec<u8>> {
    let payload = serde_json::to_vec(e).map_err(io::Error::other)?;
    let mut rec = Vec::with_capacity(HEADER + payload.len());
    rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    rec.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    rec.extend_from_slice(&payload);
    Ok(rec)
}

/// Parses the record at `off`: `Some((entry, next offset))`, or `None` if it is torn or bad.
fn decode_record(buf: &[u8], off: usize) -> Option<(Entry, usize)> {
    let header = buf.get(off..off + HEADER)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    if len > MAX_RECORD {
        return None;
    }
    let payload = buf.get(off + HEADER..off + HEADER + len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let entry: Entry = serde_json::from_slice(payload).ok()?;
    Some((entry, off + HEADER + len))
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl LogFiles {
    /// Opens (or creates) the log in `dir`, cutting off a torn tail.
    pub fn open(dir: &Path) -> io::Result<LogFiles> {
        fs::create_dir_all(dir)?;
        let meta: Meta = match fs::read(dir.join(META_FILE)) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| invalid(format!("{} is corrupt: {e}", dir.join(META_FILE).display())))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Meta::default(),
            Err(e) => return Err(e),
        };
        let committed: Option<LogId> =
            fs::read(dir.join(COMMITTED_FILE)).ok().and_then(|b| serde_json::from_slice(&b).ok()).flatten();
        let path = dir.join(LOG_FILE);
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        let purged = meta.last_purged.map_or(0, |l| l.index);
        let mut entries = BTreeMap::new();
        let mut off = 0usize;
        let mut prev: Option<u64> = None;
        while off < buf.len() {
            let Some((entry, next)) = decode_record(&buf, off) else {
                tracing::warn!(offset = off, "raft log: cutting off a torn or corrupt tail");
                break;
            };
            let index = entry.log_id.index;
            if meta.last_purged.is_none() || index > purged {
                if let Some(p) = prev {
                    if index != p + 1 {
                        return Err(invalid(format!(
                            "{}: entry {index} follows entry {p}: the log has a hole",
                            path.display()
                        )));
                    }
                }
                prev = Some(index);
                entries.insert(index, (off as u64, entry));
            }
            off = next;
        }
        if off < buf.len() {
            file.set_len(off as u64)?;
            file.sync_all()?;
        }
        Ok(LogFiles { dir: dir.to_path_buf(), file: Arc::new(file), end: off as u64, entries, meta, committed })
    }

    pub fn vote(&self) -> Option<Vote> {
        self.meta.vote
    }

    pub fn save_vote(&mut self, vote: Vote) -> io::Result<()> {
        let mut meta = self.meta.clone();
        meta.vote = Some(vote);
        self.write_meta(&meta)?;
        self.meta = meta;
        Ok(())
    }

    pub fn committed(&self) -> Option<LogId> {
        self.committed
    }

    pub fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        self.committed = committed;
        let tmp = self.dir.join(format!("{COMMITTED_FILE}.tmp"));
        fs::write(&tmp, serde_json::to_vec(&committed).map_err(io::Error::other)?)?;
        fs::rename(&tmp, self.dir.join(COMMITTED_FILE))
    }

    pub fn last_purged(&self) -> Option<LogId> {
        self.meta.last_purged
    }

    /// The id of the last entry, or the last purged one if there is no entry.
    pub fn last_log_id(&self) -> Option<LogId> {
        self.entries.values().next_back().map(|(_, e)| e.log_id).or(self.meta.last_purged)
    }

    /// True if nothing was ever stored: no vote, no entry, nothing purged.
    pub fn is_empty(&self) -> bool {
        self.meta == Meta::default() && self.entries.is_empty()
    }

    pub fn range<R: RangeBounds<u64>>(&self, range: R) -> Vec<Entry> {
        self.entries.range(range).map(|(_, (_, e))| e.clone()).collect()
    }

    /// Takes entries into the log: in memory at once, and the records that put them on disk,
    /// for the writer (`None`: nothing to write).
    pub fn stage(&mut self, entries: impl IntoIterator<Item = Entry>) -> io::Result<Option<Records>> {
        let mut buf = Vec::new();
        let mut added = Vec::new();
        let mut expect = self.entries.keys().next_back().map(|i| i + 1);
        for e in entries {
            let index = e.log_id.index;
            if let Some(x) = expect {
                if index != x {
                    return Err(invalid(format!("append of entry {index} where {x} was expected")));
                }
            }
            expect = Some(index + 1);
            let off = self.end + buf.len() as u64;
            buf.extend_from_slice(&encode_record(&e)?);
            added.push((index, off, e));
        }
        if buf.is_empty() {
            return Ok(None);
        }
        let at = self.end;
        self.end += buf.len() as u64;
        for (index, off, e) in added {
            self.entries.insert(index, (off, e));
        }
        Ok(Some(Records { file: self.file.clone(), at, buf }))
    }

    /// Stages entries and writes them at once (what the writer's thread does otherwise).
    #[cfg(test)]
    pub fn append(&mut self, entries: impl IntoIterator<Item = Entry>) -> io::Result<()> {
        match self.stage(entries)? {
            Some(r) => crate::log_writer::write_batch(&[&r]),
            None => Ok(()),
        }
    }

    /// Removes the entries at `since` and after.
    pub fn truncate(&mut self, since: u64) -> io::Result<()> {
        let Some((&first, &(off, _))) = self.entries.range(since..).next() else { return Ok(()) };
        debug_assert!(first >= since);
        self.file.set_len(off)?;
        self.file.sync_all()?;
        self.end = off;
        self.entries.split_off(&since);
        Ok(())
    }

    /// Removes the entries up to `upto` included, and remembers `upto` as the last purged.
    pub fn purge(&mut self, upto: LogId) -> io::Result<()> {
        if self.meta.last_purged.is_some_and(|p| p.index >= upto.index) {
            return Ok(());
        }
        let mut meta = self.meta.clone();
        meta.last_purged = Some(upto);
        self.write_meta(&meta)?;
        self.meta = meta;
        self.entries = self.entries.split_off(&(upto.index + 1));
        let first_off = match self.entries.values().next() {
            None => {
                self.file.set_len(0)?;
                self.file.sync_all()?;
                self.end = 0;
                return Ok(());
            }
            Some((off, _)) => *off,
        };
        if first_off == 0 {
            return Ok(());
        }
        debug_assert!(first_off <= self.end, "entry at {first_off} past the end of the log file ({})", self.end);
        // Rewrite the file without the purged prefix.
        let mut rest = vec![0u8; (self.end - first_off) as usize];
        self.file.read_exact_at(&mut rest, first_off)?;
        write_durably(&self.dir, LOG_FILE, &rest)?;
        self.file = Arc::new(OpenOptions::new().read(true).write(true).open(self.dir.join(LOG_FILE))?);
        self.end -= first_off;
        for (off, _) in self.entries.values_mut() {
            *off -= first_off;
        }
        Ok(())
    }

    fn write_meta(&self, meta: &Meta) -> io::Result<()> {
        write_durably(&self.dir, META_FILE, &serde_json::to_vec(meta).map_err(io::Error::other)?)
    }
}

/// The openraft log storage: a shared handle on [`LogFiles`] (also its own log reader) and
/// on the thread that writes it.
#[derive(Clone)]
pub struct LogStore {
    files: Rc<RefCell<LogFiles>>,
    writer: Rc<LogWriter>,
}

impl LogStore {
    pub fn new(files: LogFiles) -> io::Result<Self> {
        Ok(LogStore { files: Rc::new(RefCell::new(files)), writer: Rc::new(LogWriter::start()?) })
    }
}

fn write_err(e: io::Error) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(self.files.borrow().range(range))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let f = self.files.borrow();
        Ok(LogState { last_purged_log_id: f.last_purged(), last_log_id: f.last_log_id() })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let saved = match self.writer.barrier().await {
            Ok(()) => self.files.borrow_mut().save_vote(*vote),
            Err(e) => Err(e),
        };
        saved.map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.files.borrow().vote())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if let Err(e) = self.files.borrow_mut().save_committed(committed) {
            // Only a hint: the log stays correct without it.
            tracing::warn!("cannot save the committed log id: {e}");
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.files.borrow().committed())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry>,
    {
        let staged = self.files.borrow_mut().stage(entries);
        match staged {
            Ok(Some(records)) => {
                self.writer.append(records, Box::new(move |r| callback.log_io_completed(r)));
                Ok(())
            }
            Ok(None) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                tracing::error!("cannot write the raft log: {e}");
                callback.log_io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(write_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.writer.barrier().await.map_err(write_err)?;
        self.files.borrow_mut().truncate(log_id.index).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.writer.barrier().await.map_err(write_err)?;
        self.files.borrow_mut().purge(log_id).map_err(write_err)
    }
}

#[cfg(test)]
#[path = "log_store_tests.rs"]
mod tests;
