//! Disk work off the RPC thread: the object store is synchronous, the daemon's thread runs
//! capnp-rpc.

use crate::objects::StoreError;

/// Threads the disk work runs on at most (tokio's blocking pool; more tasks queue). Each
/// request's bytes are bounded apart from this (`--inflight-mib`); this bounds the threads
/// a hung disk can hold.
pub const DISK_THREADS: usize = 64;

/// Runs disk work on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(StoreError::Io(format!("disk task failed: {e}"))),
    }
}
