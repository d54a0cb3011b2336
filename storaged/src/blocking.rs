//! Disk work off the RPC thread: the object store is synchronous, the daemon's thread runs
//! capnp-rpc.

use crate::objects::StoreError;

/// Runs disk work on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(StoreError::Io(format!("disk task failed: {e}"))),
    }
}
