//! The VDI lock a repair holds: while it is held no writer (an attached device, an NBD
//! export) can change the object under the check, so a copy that differs really differs and
//! the repair cannot put older content over a newer write. Same protocol as ublk-dev's
//! attach lock: a client session of our own, renewed in the background, and the lock taken
//! with it; closing the session releases it even if unlocking fails.

use std::rc::Rc;
use std::time::Duration;

use sheep_core::group::{SessionId, SessionKind};

use crate::group::{self, GroupClient};

/// Why the lock could not be taken.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LockError {
    /// Someone else holds it; the message names the holder.
    #[error("{0}")]
    Held(String),
    #[error("cannot lock VDI {vdi:?}: {err}")]
    Other { vdi: String, err: group::Error },
}

pub struct RepairLock {
    group: Rc<GroupClient>,
    session: SessionId,
    vdi: String,
    token: u64,
    keepalive: tokio::task::JoinHandle<()>,
}

impl RepairLock {
    pub async fn acquire(group: Rc<GroupClient>, vdi: &str) -> Result<RepairLock, LockError> {
        let kind = SessionKind::Client { name: format!("sheepctl check (pid {})", std::process::id()) };
        let (session, lease) =
            group.open_session(&kind, "").await.map_err(|err| LockError::Other { vdi: vdi.into(), err })?;
        let keepalive = tokio::task::spawn_local(keep_alive(group.clone(), session, lease));
        match group.lock(session, vdi).await {
            Ok(info) => Ok(RepairLock { group, session, vdi: vdi.to_string(), token: info.lock.token, keepalive }),
            Err(err) => {
                keepalive.abort();
                if let Err(e) = group.close_session(session).await {
                    tracing::warn!("closing session {session}: {e}");
                }
                if err.is_code("lockHeld") {
                    Err(LockError::Held(err.to_string()))
                } else {
                    Err(LockError::Other { vdi: vdi.into(), err })
                }
            }
        }
    }

    /// The fencing token to send with the repair's writes.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Unlocks and closes the session; each call is bounded by the client's limits.
    pub async fn release(self) {
        self.keepalive.abort();
        if let Err(e) = self.group.unlock(self.session, &self.vdi, false).await {
            tracing::warn!("unlocking VDI {}: {e} (closing the session releases it)", self.vdi);
        }
        if let Err(e) = self.group.close_session(self.session).await {
            tracing::warn!("closing session {}: {e} (it expires after its lease)", self.session);
        }
    }
}

impl Drop for RepairLock {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

/// Renews the session every lease/3 until aborted; failures are only logged (a session that
/// expires loses the lock, and the nodes then refuse our fenced writes: nothing unsafe).
async fn keep_alive(group: Rc<GroupClient>, session: SessionId, lease: Duration) {
    let mut tick = tokio::time::interval((lease / 3).max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = group.keepalive(session).await {
            tracing::debug!("keepalive of session {session}: {e}");
        }
    }
}
