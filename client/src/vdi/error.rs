//! Errors of the VDI engine and of one storage node call.

use std::time::Duration;

use sheep_rpc::error::{self, ErrorCode};

use crate::{group, rpc};

/// What one call to one storage node failed with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The node refused the request with `code` (`StaleEpoch`, `NoObject`, `Corrupt`,
    /// `NoSpace`, `BadRequest`, `IoError`, `Fenced`: see storaged.capnp).
    #[error("storaged at {addr}: {message}")]
    Refused { addr: String, code: ErrorCode, message: String },
    /// No connection could be made.
    #[error("cannot reach storaged at {addr} ({reason})")]
    Unreachable { addr: String, reason: String },
    /// The node did not answer in time.
    #[error("storaged at {addr} did not answer within {}", rpc::secs(*.after))]
    Timeout { addr: String, after: Duration },
    /// The connection broke under the call, or the answer was malformed.
    #[error("storaged at {addr}: {message}")]
    Rpc { addr: String, message: String },
}

impl NodeError {
    pub(crate) fn from_capnp(addr: &str, e: &capnp::Error) -> NodeError {
        let message = error::message_of(e).to_string();
        match error::code_of(e) {
            Some(code) if e.kind != capnp::ErrorKind::Disconnected => {
                NodeError::Refused { addr: addr.into(), code, message }
            }
            _ => NodeError::Rpc { addr: addr.into(), message },
        }
    }

    /// A refusal made on this side, before anything was sent.
    pub(crate) fn bad_request(addr: &str, message: impl Into<String>) -> NodeError {
        NodeError::Refused { addr: addr.into(), code: ErrorCode::BadRequest, message: message.into() }
    }

    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            NodeError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub fn is_code(&self, code: ErrorCode) -> bool {
        self.code() == Some(code)
    }

    pub fn addr(&self) -> &str {
        match self {
            NodeError::Refused { addr, .. }
            | NodeError::Unreachable { addr, .. }
            | NodeError::Timeout { addr, .. }
            | NodeError::Rpc { addr, .. } => addr,
        }
    }

    /// The node is gone or hung, or it is not (yet) where our ring says: a new epoch is
    /// expected to settle it.
    pub fn wants_new_epoch(&self) -> bool {
        match self {
            NodeError::Refused { code, .. } => matches!(code, ErrorCode::StaleEpoch | ErrorCode::DiskFailed),
            _ => true,
        }
    }

    /// Retrying cannot help: the request itself is wrong, the node is out of space, or the
    /// writer's VDI lock moved to another holder (`fenced`: retrying must never succeed).
    pub fn is_final(&self) -> bool {
        self.is_code(ErrorCode::BadRequest)
            || self.is_code(ErrorCode::NoSpace)
            || self.is_code(ErrorCode::Denied)
            || self.is_fenced()
    }

    /// The node refused a write because its lock token is stale (see storaged.capnp).
    pub fn is_fenced(&self) -> bool {
        self.is_code(ErrorCode::Fenced)
    }
}

/// What a VDI operation can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VdiError {
    #[error("there is no VDI named {0:?}")]
    NoVdi(String),
    #[error("the VDI {0:?} was deleted")]
    Deleted(String),
    #[error("{0}")]
    BadName(String),
    /// `offset + len` past the VDI's end.
    #[error("range {offset}+{len} is past the end of the VDI ({size} bytes)")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error(transparent)]
    Group(#[from] group::Error),
    /// The cluster has no storage node to serve the VDI (no epoch yet, or an empty ring).
    #[error("the cluster has no storage nodes (epoch {0})")]
    NoNodes(u32),
    /// A storage node refused for good (out of space, a bad request).
    #[error("{0}")]
    Node(NodeError),
    /// A storage node refused a write: this writer's VDI lock is gone or moved to a newer
    /// holder (its fencing token is stale). Final: the writer must stop writing.
    #[error("write refused, the VDI lock was lost: {0}")]
    Fenced(NodeError),
    /// The operation could not complete within the retry time.
    #[error("I/O error: {what} failed after {}: {last}", rpc::secs(*.after))]
    Io { what: String, after: Duration, last: String },
    /// The VDI's inode object is unreadable or belongs to another VDI.
    #[error("the inode of VDI {name:?} is unusable: {reason}")]
    BadInode { name: String, reason: String },
    #[error("{0}")]
    Unsupported(String),
    /// A write to a snapshot (`name@tag`): snapshots never change.
    #[error("{0} is a snapshot: it is read-only (clone it to write)")]
    ReadOnly(String),
    /// groupd did not answer whether snapshot `tag` was taken within the time its writer
    /// may wait: the writer must not write again under its old id (it may be the snapshot now).
    #[error("whether snapshot {tag:?} of VDI {name:?} was taken is unknown (groupd did not answer for {}: {last}); \
             see `sheepctl vdi list`", rpc::secs(*.after))]
    SnapshotUnknown { name: String, tag: String, after: Duration, last: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_node_errors() {
        let remote =
            |code, message| capnp::Error::failed(format!("remote exception: {}", error::refusal(code, message).extra));
        let e = remote(ErrorCode::StaleEpoch, "node is at epoch 4");
        let n = NodeError::from_capnp("127.0.0.1:7001", &e);
        assert!(n.is_code(ErrorCode::StaleEpoch) && n.wants_new_epoch() && !n.is_final());
        assert_eq!(n.to_string(), "storaged at 127.0.0.1:7001: node is at epoch 4");
        let e = remote(ErrorCode::NoSpace, "disk full");
        assert!(NodeError::from_capnp("a:1", &e).is_final());
        let e = remote(ErrorCode::NoObject, "no such object");
        let n = NodeError::from_capnp("a:1", &e);
        assert!(!n.wants_new_epoch() && !n.is_final());
        let e = remote(ErrorCode::Fenced, "token 5 is older than 9");
        let n = NodeError::from_capnp("a:1", &e);
        assert!(n.is_fenced() && n.is_final() && !n.wants_new_epoch());
        let d = NodeError::from_capnp("a:1", &capnp::Error::disconnected("gone".into()));
        assert!(d.wants_new_epoch() && d.code().is_none());
    }
}
