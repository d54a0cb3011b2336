//! One storaged as tests call it: the client's [`StorePool`] (the one way to call storaged),
//! with the arguments tests vary and defaults for the others (no FUA, no lock token).

use std::rc::Rc;
use std::time::Duration;

use sheep_client::vdi::{CallLimits, NodeError, StorePool};
use sheep_client::ErrorCode;
use sheep_core::epoch::EpochRecord;
use sheep_core::store::{Listing, RecoveryStatus, StoreStat, StoreStatus, WholeObject};

use crate::wait::wait_until_async;

/// A pool for tests: its calls outlast a node's wait for a newer epoch (10 s) before it
/// refuses.
pub fn pool() -> Rc<StorePool> {
    Rc::new(StorePool::new(CallLimits::BULK))
}

#[derive(Clone)]
pub struct StoreNode {
    pub pool: Rc<StorePool>,
    pub addr: String,
}

impl StoreNode {
    pub fn new(pool: &Rc<StorePool>, addr: &str) -> StoreNode {
        StoreNode { pool: pool.clone(), addr: addr.to_string() }
    }

    /// Waits (bounded) until the node answers, e.g. after it was started.
    pub async fn wait_listening(&self) -> StoreStatus {
        let what = format!("storaged at {} to listen", self.addr);
        wait_until_async(Duration::from_secs(10), &what, || async { self.status().await.map_err(|e| e.to_string()) })
            .await
    }

    pub async fn status(&self) -> Result<StoreStatus, NodeError> {
        self.pool.status(&self.addr).await
    }

    pub async fn epoch_log(&self) -> Result<Vec<EpochRecord>, NodeError> {
        self.pool.epoch_log(&self.addr).await
    }

    /// createAndWrite of `data` at `offset` into an object of `size` bytes, copied from
    /// `base` unless 0.
    pub async fn create(
        &self,
        epoch: u32,
        oid: u64,
        size: u32,
        base: u64,
        offset: u32,
        data: &[u8],
    ) -> Result<(), NodeError> {
        self.pool.create_and_write(&self.addr, epoch, oid, size, base, offset, data, false, 0).await
    }

    /// A create carrying a VDI lock token (`fence`; the other calls send 0: no lock held).
    pub async fn create_fenced(
        &self,
        epoch: u32,
        oid: u64,
        size: u32,
        data: &[u8],
        fence: u64,
    ) -> Result<(), NodeError> {
        self.pool.create_and_write(&self.addr, epoch, oid, size, 0, 0, data, false, fence).await
    }

    pub async fn write(&self, epoch: u32, oid: u64, offset: u32, data: &[u8], fua: bool) -> Result<(), NodeError> {
        self.pool.write(&self.addr, epoch, oid, offset, data, fua, 0).await
    }

    pub async fn write_fenced(
        &self,
        epoch: u32,
        oid: u64,
        offset: u32,
        data: &[u8],
        fence: u64,
    ) -> Result<(), NodeError> {
        self.pool.write(&self.addr, epoch, oid, offset, data, false, fence).await
    }

    pub async fn zero(&self, epoch: u32, oid: u64, offset: u32, len: u32, fua: bool) -> Result<(), NodeError> {
        self.pool.zero(&self.addr, epoch, oid, offset, len, fua, 0).await
    }

    pub async fn zero_fenced(&self, epoch: u32, oid: u64, offset: u32, len: u32, fence: u64) -> Result<(), NodeError> {
        self.pool.zero(&self.addr, epoch, oid, offset, len, false, fence).await
    }

    pub async fn read(&self, epoch: u32, oid: u64, offset: u32, len: u32) -> Result<Vec<u8>, NodeError> {
        let mut buf = vec![0; len as usize];
        self.pool.read(&self.addr, epoch, oid, offset, &mut buf).await?;
        Ok(buf)
    }

    pub async fn list(&self, epoch: u32) -> Result<Listing, NodeError> {
        self.pool.list(&self.addr, epoch).await
    }

    pub async fn fetch(&self, epoch: u32, oid: u64) -> Result<WholeObject, NodeError> {
        self.pool.fetch(&self.addr, epoch, oid).await
    }

    pub async fn remove(&self, epoch: u32, oid: u64) -> Result<(), NodeError> {
        self.pool.remove(&self.addr, epoch, oid).await
    }

    pub async fn flush(&self, epoch: u32) -> Result<(), NodeError> {
        self.pool.flush(&self.addr, epoch).await
    }

    pub async fn stat(&self) -> Result<StoreStat, NodeError> {
        self.pool.stat(&self.addr).await
    }

    pub async fn recovery(&self) -> Result<RecoveryStatus, NodeError> {
        self.pool.recovery(&self.addr).await
    }
}

/// The code of a call that must have been refused (its data is never printed).
pub fn code_of<T>(r: Result<T, NodeError>) -> ErrorCode {
    match r {
        Ok(_) => panic!("the call succeeded; a refusal was expected"),
        Err(e) => e.code().unwrap_or_else(|| panic!("not a refusal: {e}")),
    }
}

/// A listing as the node sends it: every object held (live ones first), and the part of
/// them held only in `.stale/`.
pub fn all_and_stale(l: &Listing) -> (Vec<u64>, Vec<u64>) {
    let stale: Vec<u64> = l.stale_only.iter().map(|(o, _)| o.raw()).collect();
    (l.live.iter().map(|o| o.raw()).chain(stale.iter().copied()).collect(), stale)
}

/// A data object id: VDI `vid`, index `idx`.
pub fn oid(vid: u32, idx: u32) -> u64 {
    (u64::from(vid) << 32) | u64::from(idx)
}

/// Test data with no zero byte, different for each seed.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) | 1).collect()
}
