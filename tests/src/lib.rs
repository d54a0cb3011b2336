//! Harness for the cross-process tests: real `groupd`, `storaged` and `sheepctl` processes on
//! loopback, each test in its own temp dir and its own `127.A.B.0/24` block of addresses, every
//! wait bounded, every process it started killed and reaped when the test ends.

pub mod cluster;
pub mod daemon;
pub mod nbd;
pub mod rand;
pub mod vm;
pub mod wait;

pub use cluster::Cluster;
pub use daemon::{bin, Daemon};
pub use wait::wait_until;
