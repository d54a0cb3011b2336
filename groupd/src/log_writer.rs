//! The raft log's writer: a thread of its own that writes the records appends staged and
//! fsyncs them, so that groupd's event loop (keepalives, elections, clients) never waits for
//! the disk. Appends queued together share one fsync (group commit) — though openraft 0.9
//! awaits each append's flush before it gives the next (`RaftCore::append_to_log`), so today
//! they come one at a time; batching more than one needs several commands in one entry.
//! Appends complete through their callback, in order, once durable. A barrier completes once every append before it is:
//! a vote, a truncation or a purge must not reach the disk before an append openraft gave
//! earlier. After a failed write every later append and barrier fails too: the log on disk
//! never gets a hole.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Appends and barriers queued at most: past it, staging an append waits for the disk.
const QUEUE: usize = 1024;
/// Appends written under one fsync at most.
const BATCH: usize = 256;

/// The records of one append, and where they go in the log file.
pub struct Records {
    pub file: Arc<File>,
    pub at: u64,
    pub buf: Vec<u8>,
}

/// Called once the append is durable, or failed.
pub type Done = Box<dyn FnOnce(io::Result<()>) + Send>;

enum Job {
    Append(Records, Done),
    Barrier(tokio::sync::oneshot::Sender<io::Result<()>>),
}

pub struct LogWriter {
    tx: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl LogWriter {
    pub fn start() -> io::Result<LogWriter> {
        let (tx, rx) = sync_channel(QUEUE);
        let batched = |n: usize| tracing::trace!("raft log: {n} append(s) under one fsync");
        let thread = std::thread::Builder::new().name("raft-log".into()).spawn(move || run(&rx, batched))?;
        Ok(LogWriter { tx: Some(tx), thread: Some(thread) })
    }

    /// Queues `records`; `done` is called once they are durable (from the writer's thread).
    pub fn append(&self, records: Records, done: Done) {
        let job = Job::Append(records, done);
        let job = match self.sender().try_send(job) {
            Ok(()) => return,
            Err(TrySendError::Full(job)) => {
                tracing::warn!("the raft log's writer is {QUEUE} appends behind: waiting for the disk");
                job
            }
            Err(TrySendError::Disconnected(job)) => job,
        };
        if let Err(e) = self.sender().send(job) {
            if let Job::Append(_, done) = e.0 {
                done(Err(gone()));
            }
        }
    }

    /// Waits until every append queued before is durable; an error if one failed.
    pub async fn barrier(&self) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.sender().send(Job::Barrier(tx)).is_err() {
            return Err(gone());
        }
        rx.await.unwrap_or_else(|_| Err(gone()))
    }

    fn sender(&self) -> &SyncSender<Job> {
        self.tx.as_ref().expect("the sender lives until drop")
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        // The thread writes what is queued, then sees the channel closed.
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn gone() -> io::Error {
    io::Error::other("the raft log's writer has stopped")
}

/// The writer's loop; `batched` is told how many appends each fsync made durable.
fn run(rx: &Receiver<Job>, mut batched: impl FnMut(usize)) {
    // The first error, which every later job gets too.
    let mut failed: Option<(io::ErrorKind, String)> = None;
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        // Whatever else is queued, up to a barrier: what came after it waits for its turn.
        while jobs.len() < BATCH && !matches!(jobs.last(), Some(Job::Barrier(_))) {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let records: Vec<&Records> = jobs
            .iter()
            .filter_map(|j| match j {
                Job::Append(r, _) => Some(r),
                Job::Barrier(_) => None,
            })
            .collect();
        if failed.is_none() && !records.is_empty() {
            if let Err(e) = write_batch(&records) {
                tracing::error!("cannot write the raft log: {e}");
                failed = Some((e.kind(), e.to_string()));
            }
            batched(records.len());
        }
        let result = || match &failed {
            Some((kind, text)) => Err(io::Error::new(*kind, text.clone())),
            None => Ok(()),
        };
        for job in jobs {
            match job {
                Job::Append(_, done) => done(result()),
                Job::Barrier(tx) => {
                    let _ = tx.send(result());
                }
            }
        }
    }
}

/// Writes every record at its place, then one fsync. On an error the file is cut back to
/// where the first record starts: no half-written record stays behind for an open to read.
pub fn write_batch(records: &[&Records]) -> io::Result<()> {
    let Some(last) = records.last() else { return Ok(()) };
    debug_assert!(records.iter().all(|r| Arc::ptr_eq(&r.file, &last.file)), "a batch writes one file");
    debug_assert!(records.windows(2).all(|w| w[0].at + w[0].buf.len() as u64 == w[1].at), "records follow each other");
    let written = (|| {
        for r in records {
            fail::fail_point!("raft-log-append", |arg| Err(injected(arg, r)));
            r.file.write_all_at(&r.buf, r.at)?;
        }
        // A slow disk for tests and benchmarks (`sleep(MS)`): appends queue up behind it.
        fail::fail_point!("raft-log-sync");
        last.file.sync_data()
    })();
    if written.is_err() {
        let _ = records[0].file.set_len(records[0].at);
    }
    written
}

/// What the `raft-log-append` failpoint's `return(ARG)` does (test builds with the
/// `failpoints` feature): `torn` writes half of the records and ends the process, as a
/// power loss in the middle of the write would; `crash` ends it before writing; anything
/// else fails the write with an I/O error (EIO).
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
fn injected(arg: Option<String>, r: &Records) -> io::Error {
    match arg.as_deref() {
        Some("torn") => {
            let _ = r.file.write_all_at(&r.buf[..r.buf.len() / 2], r.at);
            let _ = r.file.sync_data();
            eprintln!("failpoint: raft log write torn");
            std::process::abort()
        }
        Some("crash") => {
            eprintln!("failpoint: crash");
            std::process::abort()
        }
        _ => io::Error::from_raw_os_error(5), // EIO
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    fn records(file: &Arc<File>, at: u64, text: &str) -> Records {
        Records { file: file.clone(), at, buf: text.as_bytes().to_vec() }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    #[test]
    fn queued_appends_share_one_fsync_and_complete_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let file = Arc::new(File::options().create(true).read(true).write(true).truncate(false).open(&path).unwrap());
        // Queued before the thread runs: they are one batch.
        let (tx, rx) = sync_channel(QUEUE);
        let (order_tx, order_rx) = mpsc::channel();
        let mut at = 0;
        for i in 0..50u64 {
            let text = format!("record {i};");
            let order = order_tx.clone();
            let done: Done = Box::new(move |r| order.send((i, r.is_ok())).unwrap());
            tx.send(Job::Append(records(&file, at, &text), done)).unwrap();
            at += text.len() as u64;
        }
        let (batch_tx, batch_rx) = mpsc::channel();
        let thread = std::thread::spawn(move || run(&rx, |n| batch_tx.send(n).unwrap()));
        let w = LogWriter { tx: Some(tx), thread: Some(thread) };
        block_on(w.barrier()).unwrap();
        let done: Vec<(u64, bool)> = order_rx.try_iter().collect();
        assert_eq!(done, (0..50).map(|i| (i, true)).collect::<Vec<_>>());
        assert_eq!(batch_rx.try_iter().collect::<Vec<_>>(), [50], "one fsync for the 50 appends");
        let text: String = (0..50).map(|i| format!("record {i};")).collect();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }

    #[test]
    fn after_a_failed_write_every_later_append_and_barrier_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, b"kept").unwrap();
        // Opened read-only: every write fails (EBADF).
        let file = Arc::new(File::open(&path).unwrap());
        let w = LogWriter::start().unwrap();
        let (tx, rx) = mpsc::channel();
        for i in 0..3u64 {
            let tx = tx.clone();
            w.append(records(&file, 4 + 4 * i, "more"), Box::new(move |r| tx.send((i, r.is_err())).unwrap()));
        }
        assert!(block_on(w.barrier()).is_err());
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), [(0, true), (1, true), (2, true)]);
        let good = Arc::new(File::options().write(true).open(&path).unwrap());
        let (tx, rx) = mpsc::channel();
        w.append(records(&good, 4, "more"), Box::new(move |r| tx.send(r.is_err()).unwrap()));
        assert!(block_on(w.barrier()).is_err(), "no write after a failed one: the log would get a hole");
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), [true]);
        assert_eq!(std::fs::read(&path).unwrap(), b"kept");
    }
}
