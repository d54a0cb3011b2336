//! Pure logic of the cluster, without I/O: what every process must agree on is computed here,
//! so it can be tested without sockets.

pub mod auth;
pub mod epoch;
pub mod group;
pub mod inode;
pub mod iostat;
pub mod lease;
pub mod namespace;
pub mod object;
pub mod placement;
pub mod reclaim;
pub mod size;
pub mod store;
