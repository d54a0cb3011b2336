//! Pure logic of the cluster, without I/O: what every process must agree on is computed here,
//! so it can be tested without sockets.

pub mod epoch;
pub mod group;
pub mod lease;
pub mod size;
