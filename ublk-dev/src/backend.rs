//! What both front-ends serve (the NBD export, the ublk target): a [`Backend`], the VDI
//! engine's [`Vdi`] in the daemon, a memory disk in the unit tests.

use std::future::Future;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};

use sheep_client::vdi::{NodeError, Vdi, VdiError};
use sheep_client::ErrorCode;

use crate::errno::{self, EINVAL, EIO, ENOSPC, EPERM};
use crate::metrics::FrontendMetrics;
use sheep_metrics::OpMetrics;

/// A failed operation: the NBD error value, and the message for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoFailure {
    pub errno: u32,
    pub message: String,
}

impl IoFailure {
    pub fn new(errno: u32, message: impl Into<String>) -> IoFailure {
        IoFailure { errno, message: message.into() }
    }
}

impl From<VdiError> for IoFailure {
    fn from(e: VdiError) -> Self {
        let errno = match &e {
            VdiError::OutOfRange { .. } => EINVAL,
            VdiError::Node(n @ NodeError::Refused { .. }) if n.is_code(ErrorCode::NoSpace) => ENOSPC,
            // The VDI's lock moved to another writer: storage refuses this one for good.
            VdiError::Fenced(_) => EPERM,
            _ => EIO,
        };
        IoFailure { errno, message: e.to_string() }
    }
}

/// A disk of `size()` bytes. Any number of operations may be in flight at once.
pub trait Backend {
    fn size(&self) -> u64;
    fn read(&self, offset: u64, buf: &mut [u8]) -> impl Future<Output = Result<(), IoFailure>>;
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> impl Future<Output = Result<(), IoFailure>>;
    /// Every write acknowledged before it was called is durable when it returns.
    fn flush(&self) -> impl Future<Output = Result<(), IoFailure>>;
    /// `len` bytes at `offset` read as zeros afterwards. `may_unmap`: parts never written may
    /// stay unallocated (they read as zeros already); otherwise they are allocated.
    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_unmap: bool,
        fua: bool,
    ) -> impl Future<Output = Result<(), IoFailure>>;
    /// `len` bytes at `offset` are no longer needed: they read as zeros afterwards and need
    /// not stay allocated (NBD's trim, ublk's discard).
    fn discard(&self, offset: u64, len: u64, fua: bool) -> impl Future<Output = Result<(), IoFailure>> {
        self.write_zeroes(offset, len, true, fua)
    }
}

/// NO_HOLE on never-written objects: zeros are written in pieces of at most this much, to
/// this many objects at once.
const ZERO_CHUNK: u64 = 1 << 20;
const ZERO_OBJECTS_IN_FLIGHT: usize = 4;

/// The VDI engine as a backend.
///
/// Write-zeroes and trim go to [`Vdi::write_zeroes`]: objects already written get a `zero`
/// request on their replicas (no data sent; the nodes free the space), objects never written
/// are left alone (they read as zeros). With NO_HOLE (`may_unmap == false`), never-written
/// objects in the range are then allocated by writing zeros into them, so that the range is
/// backed by objects afterwards. (Within an object, storage stays sparse either way: objects
/// are sparse files on the nodes, so "allocated" means "the object exists".)
pub struct VdiBackend {
    vdi: std::cell::RefCell<std::rc::Rc<Vdi>>,
    /// Requests hold it shared; [`VdiBackend::switch`] holds it alone, so that the VDI is
    /// swapped (after a snapshot, a resize) between requests, never under one. Fair: a
    /// waiting switch holds back new requests.
    gate: tokio::sync::RwLock<()>,
    metrics: FrontendMetrics,
}

/// Counts the outcome of one request of `bytes` payload, begun at `started`.
fn count<T>(op: &OpMetrics, started: Instant, bytes: u64, r: Result<T, IoFailure>) -> Result<T, IoFailure> {
    match &r {
        Ok(_) => op.succeeded(started, bytes),
        Err(f) => op.failed(started, errno::name(f.errno)),
    }
    r
}

impl VdiBackend {
    pub fn new(vdi: std::rc::Rc<Vdi>, metrics: FrontendMetrics) -> VdiBackend {
        VdiBackend { vdi: std::cell::RefCell::new(vdi), gate: tokio::sync::RwLock::new(()), metrics }
    }

    /// The VDI requests go to now.
    pub fn current(&self) -> std::rc::Rc<Vdi> {
        self.vdi.borrow().clone()
    }

    /// Runs `f` on the current VDI with no request in flight and none starting, and goes
    /// on with the VDI it returns (on error, with the same one).
    pub async fn switch<T, E, F, Fut>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(std::rc::Rc<Vdi>) -> Fut,
        Fut: Future<Output = Result<(T, std::rc::Rc<Vdi>), E>>,
    {
        let _alone = self.gate.write().await;
        let (out, next) = f(self.current()).await?;
        *self.vdi.borrow_mut() = next;
        Ok(out)
    }
}

impl Backend for VdiBackend {
    fn size(&self) -> u64 {
        self.current().size()
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoFailure> {
        let started = Instant::now();
        let _in = self.gate.read().await;
        let r = self.current().read(offset, buf).await.map_err(IoFailure::from);
        count(&self.metrics.read, started, buf.len() as u64, r)
    }

    async fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), IoFailure> {
        let started = Instant::now();
        let _in = self.gate.read().await;
        let r = self.current().write(offset, data, fua).await.map_err(IoFailure::from);
        count(&self.metrics.write, started, data.len() as u64, r)
    }

    async fn flush(&self) -> Result<(), IoFailure> {
        let started = Instant::now();
        let _in = self.gate.read().await;
        let r = self.current().flush().await.map_err(IoFailure::from);
        count(&self.metrics.flush, started, 0, r)
    }

    async fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool, fua: bool) -> Result<(), IoFailure> {
        let started = Instant::now();
        let _in = self.gate.read().await;
        let r = self.zero(offset, len, may_unmap, fua).await;
        count(&self.metrics.write_zeroes, started, len, r)
    }

    async fn discard(&self, offset: u64, len: u64, fua: bool) -> Result<(), IoFailure> {
        let started = Instant::now();
        let _in = self.gate.read().await;
        let r = self.zero(offset, len, true, fua).await;
        count(&self.metrics.discard, started, len, r)
    }
}

impl VdiBackend {
    /// Write-zeroes and discard, with the gate held by the caller.
    async fn zero(&self, offset: u64, len: u64, may_unmap: bool, fua: bool) -> Result<(), IoFailure> {
        let vdi = self.current();
        vdi.write_zeroes(offset, len, fua).await?;
        if may_unmap {
            return Ok(());
        }
        // NO_HOLE: the parts of objects still never written, allocated with zeros.
        let object_size = vdi.object_size();
        let end = offset.checked_add(len).ok_or_else(|| IoFailure::new(EINVAL, "range overflows"))?;
        let mut parts = Vec::new();
        let mut at = offset;
        while at < end {
            let idx = at / object_size;
            let object_end = ((idx + 1) * object_size).min(end);
            let idx = u32::try_from(idx).map_err(|_| IoFailure::new(EINVAL, "offset past the last object"))?;
            if !vdi.is_written(idx) {
                parts.push((at, object_end));
            }
            at = object_end;
        }
        if parts.is_empty() {
            return Ok(());
        }
        let zeros = vec![0u8; ZERO_CHUNK.min(len) as usize];
        let (zeros, vdi) = (&zeros, &vdi);
        futures::stream::iter(parts)
            .map(|(start, stop)| async move {
                let mut at = start;
                while at < stop {
                    let n = (stop - at).min(ZERO_CHUNK) as usize;
                    vdi.write(at, &zeros[..n], fua).await?;
                    at += n as u64;
                }
                Ok::<(), IoFailure>(())
            })
            .buffer_unordered(ZERO_OBJECTS_IN_FLIGHT)
            .try_collect::<()>()
            .await
    }
}

#[cfg(test)]
pub mod memory {
    //! A disk in memory for the unit tests, with failures on demand.

    use std::cell::{Cell, RefCell};

    use super::*;

    pub struct MemDisk {
        pub data: RefCell<Vec<u8>>,
        /// Operations touching this offset fail with EIO.
        pub bad_offset: Cell<Option<u64>>,
        pub flushes: Cell<u32>,
        in_flight: Cell<usize>,
        /// The most operations seen in flight at once.
        pub max_in_flight: Cell<usize>,
        /// Each operation yields this many times first, so that several are in flight.
        pub yields: usize,
    }

    impl MemDisk {
        pub fn new(size: usize) -> MemDisk {
            MemDisk {
                data: RefCell::new(vec![0; size]),
                bad_offset: Cell::new(None),
                flushes: Cell::new(0),
                in_flight: Cell::new(0),
                max_in_flight: Cell::new(0),
                yields: 3,
            }
        }

        async fn pause(&self, offset: u64) -> Result<(), IoFailure> {
            self.in_flight.set(self.in_flight.get() + 1);
            self.max_in_flight.set(self.max_in_flight.get().max(self.in_flight.get()));
            for _ in 0..self.yields {
                tokio::task::yield_now().await;
            }
            self.in_flight.set(self.in_flight.get() - 1);
            if self.bad_offset.get() == Some(offset) {
                return Err(IoFailure::new(EIO, "injected failure"));
            }
            Ok(())
        }
    }

    impl Backend for MemDisk {
        fn size(&self) -> u64 {
            self.data.borrow().len() as u64
        }

        async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoFailure> {
            self.pause(offset).await?;
            let o = offset as usize;
            buf.copy_from_slice(&self.data.borrow()[o..o + buf.len()]);
            Ok(())
        }

        async fn write(&self, offset: u64, data: &[u8], _fua: bool) -> Result<(), IoFailure> {
            self.pause(offset).await?;
            let o = offset as usize;
            self.data.borrow_mut()[o..o + data.len()].copy_from_slice(data);
            Ok(())
        }

        async fn flush(&self) -> Result<(), IoFailure> {
            self.pause(u64::MAX).await?;
            self.flushes.set(self.flushes.get() + 1);
            Ok(())
        }

        async fn write_zeroes(&self, offset: u64, len: u64, _may_unmap: bool, _fua: bool) -> Result<(), IoFailure> {
            self.pause(offset).await?;
            let o = offset as usize;
            self.data.borrow_mut()[o..o + len as usize].fill(0);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_become_errno_values() {
        let refused = |code| NodeError::Refused { addr: "a:1".into(), code, message: "m".into() };
        // A writer fenced off (its lock moved) gets EPERM: not retried, not an I/O error.
        assert_eq!(IoFailure::from(VdiError::Fenced(refused(ErrorCode::Fenced))).errno, EPERM);
        assert_eq!(IoFailure::from(VdiError::Node(refused(ErrorCode::NoSpace))).errno, ENOSPC);
        assert_eq!(IoFailure::from(VdiError::OutOfRange { offset: 1, len: 1, size: 1 }).errno, EINVAL);
        assert_eq!(IoFailure::from(VdiError::NoNodes(1)).errno, EIO);
    }
}
