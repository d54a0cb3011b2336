//! Client side of the cluster.
//!
//! [`cli`]: start-up shared by the binaries (logging, usage errors).
//! [`group`]: the groupd client (sessions, proposals, cluster administration, the event
//! watch), used by storaged, sheepctl and, later, the VDI engine.
//!
//! Everything here is built on capnp-rpc, which is `!Send`: use it from a tokio
//! current-thread runtime inside a [`tokio::task::LocalSet`].

pub mod check;
pub mod cli;
pub mod group;
pub mod rpc;
pub mod vdi;

/// Why groupd or storaged refused a call: what [`group::Error::Refused`] and
/// [`vdi::NodeError::Refused`] carry.
pub use sheep_rpc::error::ErrorCode;
