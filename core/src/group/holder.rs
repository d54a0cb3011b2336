//! Requests addressed to the holder of a VDI's lock (the daemon it is attached to), sent as
//! group broadcasts: another process asks it to take a snapshot between two of its writes.
//! They are in `core` so that groupd can tell who may send them (a client with write access
//! to the VDI named).

use serde::{Deserialize, Serialize};

/// The prefix of a broadcast payload addressed to the holder of a VDI.
pub const REQUEST_PREFIX: &[u8] = b"sheep-holder-request:";

/// What the holder of a VDI is asked to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum HolderRequest {
    /// Take snapshot `tag` of `vdi` between two writes.
    Snapshot { vdi: String, tag: String },
    /// The holder could not (sent back by the holder, so the asker need not time out).
    SnapshotFailed { vdi: String, tag: String, error: String },
}

impl HolderRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = REQUEST_PREFIX.to_vec();
        out.extend(serde_json::to_vec(self).expect("a request always encodes"));
        out
    }

    /// `None` for broadcasts that are not holder requests.
    pub fn decode(payload: &[u8]) -> Option<HolderRequest> {
        serde_json::from_slice(payload.strip_prefix(REQUEST_PREFIX)?).ok()
    }

    /// The VDI the request is about.
    pub fn vdi(&self) -> &str {
        match self {
            HolderRequest::Snapshot { vdi, .. } | HolderRequest::SnapshotFailed { vdi, .. } => vdi,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_other_payloads_are_none() {
        let r = HolderRequest::Snapshot { vdi: "vm-a".into(), tag: "s1".into() };
        assert_eq!(HolderRequest::decode(&r.encode()), Some(r.clone()));
        assert_eq!(r.vdi(), "vm-a");
        assert_eq!(HolderRequest::decode(b"anything else"), None);
    }
}
