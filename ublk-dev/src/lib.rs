//! ublk-dev: the block device front-ends of a VDI, on the `client` crate's engine: the ublk
//! target ([`ublk`], `/dev/ublkbN`) and the NBD export ([`nbd`]). Both attach a VDI
//! exclusively ([`attach_lock`], [`attached`]) and serve it as a [`backend::Backend`]; neither
//! front-end uses the other.
//!
//! The engine runs on a tokio current-thread runtime inside a `LocalSet` (capnp-rpc is
//! `!Send`): the NBD export's only thread, the ublk target's engine thread.

pub use sheep_client::group::attach_lock;
pub mod attached;
pub mod backend;
pub mod errno;
pub mod follow;
pub mod metrics;
pub mod nbd;
pub mod ublk;

/// This host's name, for session names ("nbd-export … on HOST").
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
