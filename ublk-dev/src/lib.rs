//! ublk-dev: the block device front-ends of a VDI, on the `client` crate's engine. Today the
//! NBD export ([`nbd`]); the ublk target comes next, in the same binary. Both attach a VDI
//! exclusively ([`attach_lock`]).
//!
//! Everything here runs on a tokio current-thread runtime inside a `LocalSet` (capnp-rpc is
//! `!Send`).

pub mod attach_lock;
pub mod nbd;

/// This host's name, for session names ("nbd-export … on HOST").
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
