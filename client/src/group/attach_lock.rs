//! A VDI's lock held by a session of our own: how a VDI is attached exclusively (ublk-dev,
//! the NBD export), and how sheepctl writes, snapshots or repairs one while nobody else
//! does. The holder opens a client session in groupd, takes the VDI's lock with it, and keeps
//! the session alive; anyone else is refused by groupd naming the holder. Closing the session
//! (or its expiry, if the holder dies) releases the lock. The lock's fencing token goes with
//! every write (`VdiOptions::fence`).

use std::rc::Rc;
use std::time::Duration;

use super::{Error as GroupError, GroupClient};
use sheep_core::group::{SessionId, SessionKind};
use sheep_rpc::error::ErrorCode;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// Another session holds the lock; the message names it ("VDI disk0 is locked by
    /// session 7 (nbd-export …)"), and says when a dead holder's lock clears and how to force
    /// it ([`held_message`]).
    #[error("{0}")]
    Held(String),
    #[error("cannot open a session in groupd: {0}")]
    Session(GroupError),
    #[error("cannot lock VDI {vdi:?}: {err}")]
    Lock { vdi: String, err: GroupError },
}

/// The VDI's lock, held by this process's own groupd session.
pub struct AttachLock {
    group: Rc<GroupClient>,
    session: SessionId,
    vdi: String,
    token: u64,
    keepalive: JoinHandle<()>,
    /// Becomes `Some(reason)` when the session is gone (the lock may be someone else's).
    lost: watch::Receiver<Option<String>>,
}

impl AttachLock {
    /// Opens a client session named `holder` and locks `vdi` with it.
    pub async fn acquire(group: Rc<GroupClient>, vdi: &str, holder: &str) -> Result<AttachLock, AttachError> {
        let kind = SessionKind::Client { name: holder.to_string() };
        let (session, lease) = group.open_session(&kind, "").await.map_err(AttachError::Session)?;
        tracing::debug!("session {session} open, lease {lease:?}");
        let (lost_tx, lost) = watch::channel(None);
        let keepalive = tokio::task::spawn_local(keep_alive(group.clone(), session, lease, lost_tx));
        match group.lock(session, vdi).await {
            Ok(info) => {
                tracing::info!("locked VDI {vdi} with session {session} (fencing token {})", info.lock.token);
                Ok(AttachLock { group, session, vdi: vdi.to_string(), token: info.lock.token, keepalive, lost })
            }
            Err(err) => {
                keepalive.abort();
                if let Err(e) = group.close_session(session).await {
                    tracing::warn!("closing session {session}: {e}");
                }
                if err.is_code(ErrorCode::LockHeld) {
                    Err(AttachError::Held(held_message(&err.to_string(), vdi, lease)))
                } else {
                    Err(AttachError::Lock { vdi: vdi.to_string(), err })
                }
            }
        }
    }

    pub fn session(&self) -> SessionId {
        self.session
    }

    /// The lock's fencing token.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Resolves when the session is lost (expired or closed by someone else): the lock may
    /// belong to another client now, so serving must stop. Returns why.
    pub async fn lost(&mut self) -> String {
        match self.lost.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            // The keepalive task ended without a reason: it was aborted; never resolves.
            Err(_) => std::future::pending().await,
        }
    }

    /// Unlocks the VDI and closes the session. Each call is bounded by the client's limits.
    pub async fn release(self) {
        self.keepalive.abort();
        match self.group.unlock(self.session, &self.vdi, false).await {
            Ok(()) => tracing::info!("unlocked VDI {}", self.vdi),
            Err(e) => tracing::warn!("unlocking VDI {}: {e} (closing the session releases it)", self.vdi),
        }
        if let Err(e) = self.group.close_session(self.session).await {
            tracing::warn!("closing session {}: {e} (it expires after its lease)", self.session);
        }
    }
}

impl Drop for AttachLock {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

/// A refusal of VDI `vdi`'s lock (`refused`: groupd's, naming the holder's session) for
/// people: a dead holder's lock goes with its session once the lease runs out — `lease` is
/// the one groupd gave our own session, the same for every session — and it can be forced.
pub fn held_message(refused: &str, vdi: &str, lease: Duration) -> String {
    let ms = lease.as_millis();
    let lease =
        if ms.is_multiple_of(1000) { format!("{} s", ms / 1000) } else { format!("{:.1} s", lease.as_secs_f64()) };
    format!(
        "{refused}; if that holder is dead, the lock clears by itself when its session's lease runs out, about \
         {lease} after its last keepalive; to free it now: `sheepctl vdi lock unlock {vdi}` (storage then refuses \
         the old holder's writes)"
    )
}

/// Renews the session every lease/3. A refusal saying the session does not exist ends it
/// and reports the loss; other failures (groupd unreachable, an election) are retried.
async fn keep_alive(group: Rc<GroupClient>, session: SessionId, lease: Duration, lost: watch::Sender<Option<String>>) {
    let period = (lease / 3).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        match group.keepalive(session, lease).await {
            Ok(()) => last_ok = tokio::time::Instant::now(),
            Err(e) if e.is_code(ErrorCode::NoSession) => {
                lost.send_replace(Some(format!("groupd session {session} ended: {e}")));
                return;
            }
            Err(e) => {
                let since = last_ok.elapsed();
                if since > lease {
                    tracing::warn!("session {session} not renewed for {since:?} (lease {lease:?}): {e}");
                } else {
                    tracing::debug!("keepalive of session {session}: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_says_when_it_clears_and_how_to_force_it() {
        let refused = "VDI disk0 is locked by session 7 (sheepctl vdi write pid 42 on host1)";
        assert_eq!(
            held_message(refused, "disk0", Duration::from_millis(5000)),
            "VDI disk0 is locked by session 7 (sheepctl vdi write pid 42 on host1); if that holder is dead, the lock \
             clears by itself when its session's lease runs out, about 5 s after its last keepalive; to free it now: \
             `sheepctl vdi lock unlock disk0` (storage then refuses the old holder's writes)"
        );
        assert!(held_message(refused, "disk0", Duration::from_millis(1500)).contains("about 1.5 s after"));
    }
}
