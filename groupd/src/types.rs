//! The Raft type configuration and small helpers shared by every module.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::Cursor;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use sheep_core::group::Answer;
use sheep_core::group::Proposal;

/// What a committed entry answers to its proposer: one answer per command of its batch (one
/// for an entry without commands).
pub type Answers = Vec<Answer>;

openraft::declare_raft_types!(
    /// The group's Raft: log entries are [`Proposal`]s (a batch of commands), answered with
    /// [`Answers`]; node ids are random u64s and a node's info carries its groupd listen
    /// address.
    pub TypeConfig:
        D = Proposal,
        R = Answers,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Node = openraft::BasicNode;
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<NodeId, E>;
pub type ClientWriteError = openraft::error::ClientWriteError<NodeId, Node>;

/// Heartbeat of the leader; also the time limit of one AppendEntries RPC.
pub const HEARTBEAT_MS: u64 = 250;
/// The Raft configuration. `election_ms` is the lower bound of the election timeout; the
/// upper bound is twice it. A snapshot is taken every `snapshot_every` log entries; the log
/// behind it is purged except the last tenth (at most 1000 entries) for slow followers.
pub fn raft_config(election_ms: u64, snapshot_every: u64) -> anyhow::Result<openraft::Config> {
    let config = openraft::Config {
        cluster_name: "sheep-groupd".into(),
        heartbeat_interval: HEARTBEAT_MS,
        election_timeout_min: election_ms,
        election_timeout_max: election_ms * 2,
        install_snapshot_timeout: 5_000,
        max_payload_entries: 300,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every),
        snapshot_max_chunk_size: 1 << 20,
        max_in_snapshot_log_to_keep: (snapshot_every / 10).min(1_000),
        purge_batch_size: (snapshot_every / 10).clamp(1, 256),
        ..Default::default()
    };
    Ok(config.validate()?)
}

/// Wall-clock time in unix milliseconds (what the master stamps into commands).
pub use sheep_rpc::clock::now_unix_ms;

/// Monotonic milliseconds since the first call (what leases are measured with).
pub fn now_mono_ms() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// 64 random bits, from the OS-seeded keys of std's hasher (no extra dependency).
pub fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_nanos());
    h.write_u32(std::process::id());
    h.finish()
}

/// A new cluster id: 128 random bits written like a UUID (8-4-4-4-12 hex digits).
pub fn new_cluster_id() -> String {
    let hex = format!("{:016x}{:016x}", random_u64(), random_u64());
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_look_like_uuids_and_differ() {
        let a = new_cluster_id();
        let b = new_cluster_id();
        assert_eq!(a.len(), 36);
        assert_eq!(a.matches('-').count(), 4);
        assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn raft_config_is_valid() {
        let c = raft_config(1000, 10_000).unwrap();
        assert_eq!(c.election_timeout_max, 2000);
    }
}
