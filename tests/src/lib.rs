//! Harness for the cross-process tests: real `groupd`, `storaged` and `sheepctl` processes on
//! loopback, each test in its own temp dir and its own `127.A.B.0/24` block of addresses, every
//! wait bounded, every process it started killed and reaped when the test ends.

pub mod bins;
pub mod chaos;
pub mod cluster;
pub mod daemon;
pub mod groupd_api;
pub mod http;
pub mod keys;
pub mod nbd;
pub mod nbd_client;
pub mod net;
pub mod netns;
pub mod rand;
pub mod store;
pub mod vm;
pub mod wait;

pub use cluster::Cluster;
pub use daemon::{bin, Daemon};
pub use net::Loopback;
pub use wait::{wait_until, wait_until_async};

/// Runs `f` to completion on a current-thread runtime with a `LocalSet` (capnp-rpc is
/// `!Send`).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    tokio::task::LocalSet::new().block_on(&rt, f)
}
