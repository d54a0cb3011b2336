//! Starting up: the data directory (locked, with this groupd's raft id), and joining or
//! creating the group.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{bail, Context};
use openraft::BasicNode;
use tokio::time::Instant;

use crate::forward;
use crate::log_store::write_durably;
use crate::node::Node;
use crate::types::{random_u64, NodeId};

const NODE_ID_FILE: &str = "raft-id";
const LOCK_FILE: &str = "lock";
/// How long a new groupd tries to join through the `--join` addresses.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The time limit of one addMember call.
const JOIN_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Creates and locks the data directory, and reads (or creates) this groupd's raft id.
/// The returned file holds the lock: keep it open while running.
pub fn prepare_data_dir(dir: &Path) -> anyhow::Result<(File, NodeId)> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))
        .with_context(|| format!("cannot write in the data directory {}", dir.display()))?;
    if lock.try_lock().is_err() {
        bail!("the data directory {} is in use by another groupd", dir.display());
    }
    let path = dir.join(NODE_ID_FILE);
    let id = match fs::read_to_string(&path) {
        Ok(s) => s
            .trim()
            .parse::<NodeId>()
            .with_context(|| format!("{} does not hold a raft id: {:?}", path.display(), s.trim()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = loop {
                let id = random_u64();
                if id != 0 {
                    break id;
                }
            };
            write_durably(dir, NODE_ID_FILE, format!("{id}\n").as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            id
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    Ok((lock, id))
}

/// Brings a groupd without raft state into a group: a new single-voter group without
/// `--join`, else `addMember` through one of the join addresses. With existing state, does
/// nothing (the group is known from disk).
pub async fn join_or_init(node: &Rc<Node>, join: &[String], fresh: bool) -> anyhow::Result<()> {
    if !fresh {
        if !join.is_empty() {
            tracing::info!("raft state found in the data directory: resuming; --join is ignored");
        }
        return Ok(());
    }
    if join.is_empty() {
        let members = BTreeMap::from([(node.id, BasicNode { addr: node.addr.clone() })]);
        node.raft.initialize(members).await.context("cannot initialize a new group")?;
        tracing::info!(raft_id = node.id, "initialized a new group with this groupd as its only voter");
        return Ok(());
    }
    let deadline = Instant::now() + JOIN_TIMEOUT;
    let mut last_error = String::from("no join address to try");
    let mut warned = std::collections::HashSet::new();
    loop {
        for addr in join {
            if *addr == node.addr {
                continue;
            }
            match try_join(node, addr).await {
                Ok(()) => {
                    tracing::info!(via = %addr, raft_id = node.id, "joined the group");
                    return Ok(());
                }
                Err(e) => {
                    if warned.insert(addr.clone()) {
                        tracing::warn!(via = %addr, "cannot join yet (retrying): {e}");
                    } else {
                        tracing::debug!(via = %addr, "cannot join yet: {e}");
                    }
                    last_error = format!("{addr}: {e}");
                }
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "cannot join the group through {} within {} s (last error: {last_error})",
                join.join(","),
                JOIN_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn try_join(node: &Rc<Node>, addr: &str) -> anyhow::Result<()> {
    let client = node.peers.client(addr).await?;
    match tokio::time::timeout(JOIN_CALL_TIMEOUT, forward::add_member(&client, node.id, &node.addr)).await {
        Err(_) => bail!("no answer within {} s", JOIN_CALL_TIMEOUT.as_secs()),
        Ok(Err(e)) => {
            node.peers.note_error(addr, &e);
            bail!("{}", sheep_rpc::error::message_of(&forward::relay(e)))
        }
        Ok(Ok(())) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_id_is_kept_and_the_directory_locked() {
        let dir = tempfile::tempdir().unwrap();
        let (lock, id) = prepare_data_dir(&dir.path().join("d")).unwrap();
        assert_ne!(id, 0);
        let again = prepare_data_dir(&dir.path().join("d"));
        assert!(again.unwrap_err().to_string().contains("in use"));
        drop(lock);
        let (_lock, id2) = prepare_data_dir(&dir.path().join("d")).unwrap();
        assert_eq!(id, id2);
    }
}
