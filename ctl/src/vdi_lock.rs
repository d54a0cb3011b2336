//! `sheepctl vdi lock …`: the VDI locks groupd holds (who holds which, with its fencing
//! token), a forced unlock, and the lock `vdi write` / `vdi import` hold while they write.
//!
//! A forced unlock does not stop the old holder (its session lives on); what stops its
//! writes is fencing: every write carries the holder's token and storage nodes refuse a
//! token older than the VDI's newest lock.

use std::future::Future;
use std::rc::Rc;

use anyhow::{bail, Result};
use clap::Subcommand;
use serde::Serialize;
use sheep_client::vdi::{CallLimits, Cluster, Vdi, VdiError, VdiOptions};
use sheep_client::ErrorCode;
use sheep_core::group::ClusterInfo;
use sheep_core::object::validate_vdi_name;
use ublk_dev::attach_lock::{AttachError, AttachLock};

use crate::output::{print_json, table, time};

#[derive(Subcommand, Debug)]
pub enum VdiLockCmd {
    /// The VDI locks: VDI, holder session and name, fencing token, since when
    List,
    /// Release a VDI's lock whoever holds it (its holder keeps running, but storage nodes
    /// refuse its writes once another holder locks the VDI)
    Unlock {
        /// The VDI's name
        #[arg(value_name = "NAME")]
        name: String,
    },
}

/// A lock as `vdi lock list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockRow {
    pub vdi: String,
    pub session: u64,
    pub holder: String,
    /// The fencing token: the groupd log index that granted the lock.
    pub token: u64,
    /// When the holder's session opened (0 if unknown): groupd records no time per lock,
    /// and holders lock right after opening their session.
    pub since_ms: u64,
}

pub fn rows(info: &ClusterInfo) -> Vec<LockRow> {
    info.locks
        .iter()
        .map(|l| LockRow {
            vdi: l.lock.vdi.clone(),
            session: l.lock.session,
            holder: l.holder.clone(),
            token: l.lock.token,
            since_ms: info.sessions.iter().find(|s| s.id == l.lock.session).map_or(0, |s| s.opened_ms),
        })
        .collect()
}

const HEADERS: &[&str] = &["VDI", "SESSION", "HOLDER", "TOKEN", "SINCE"];

fn cells(rows: &[LockRow]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|r| {
            let since = if r.since_ms == 0 { "-".to_string() } else { time(r.since_ms) };
            vec![r.vdi.clone(), r.session.to_string(), r.holder.clone(), r.token.to_string(), since]
        })
        .collect()
}

pub async fn run(groupd: &str, cmd: &VdiLockCmd, json: bool) -> Result<()> {
    let group = crate::client(groupd)?;
    match cmd {
        VdiLockCmd::List => {
            let rows = rows(&group.info().await?);
            if json {
                return print_json(&rows);
            }
            if rows.is_empty() {
                println!("no locks");
            } else {
                print!("{}", table("", HEADERS, &cells(&rows)));
            }
            Ok(())
        }
        VdiLockCmd::Unlock { name } => {
            validate_vdi_name(name)?;
            // Who holds it, to say so (a forced unlock does not check the session).
            let held = rows(&group.info().await?).into_iter().find(|r| &r.vdi == name);
            let Some(held) = held else { bail!("VDI {name:?} is not locked") };
            match group.unlock(0, name, true).await {
                Ok(()) => {}
                // Released meanwhile by its holder.
                Err(e) if e.is_code(ErrorCode::NotLocked) => bail!("VDI {name:?} is not locked"),
                Err(e) => return Err(e.into()),
            }
            if json {
                return print_json(&held);
            }
            println!(
                "unlocked VDI {name} (was held by session {} ({}), token {}); its writes are refused once the VDI is \
                    locked again",
                held.session, held.holder, held.token
            );
            Ok(())
        }
    }
}

/// Runs `f` on VDI `name` opened for writing under the VDI's lock, taken with a session of
/// its own (named after `what`) and released afterwards, whatever `f` returned: writes carry
/// the lock's fencing token, and nobody else (an attached device, another `vdi write`)
/// writes meanwhile. A lock held by someone else is the "locked by …" error.
pub async fn with_lock<T, F, Fut>(groupd: &str, name: &str, what: &str, f: F) -> Result<T>
where
    F: FnOnce(Rc<Vdi>) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    validate_vdi_name(name)?;
    let group = Rc::new(crate::client(groupd)?);
    // Check the name first: groupd locks any name, and an error about a missing VDI is
    // clearer than one about its lock.
    let (vdis, _) = group.vdi_list().await?;
    let Some(entry) = vdis.into_iter().find(|v| v.name == name && !v.is_snapshot()) else {
        bail!("there is no VDI named {name:?} (see `sheepctl vdi list`)");
    };
    let holder = format!("sheepctl {what} pid {} on {}", std::process::id(), ublk_dev::hostname());
    let lock = match AttachLock::acquire(group.clone(), name, &holder).await {
        Ok(l) => l,
        Err(AttachError::Held(msg)) => bail!("{msg}"),
        Err(e) => return Err(e.into()),
    };
    let result = async {
        let cluster = Cluster::connect(group.clone(), CallLimits::default()).await?;
        let opts = VdiOptions { fence: lock.token(), ..VdiOptions::default() };
        let vdi = match Vdi::open_entry(cluster, entry, opts).await {
            Ok(v) => Rc::new(v),
            Err(VdiError::NoVdi(n)) => bail!("there is no VDI named {n:?} (see `sheepctl vdi list`)"),
            Err(e) => return Err(e.into()),
        };
        f(vdi).await
    }
    .await;
    lock.release().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use sheep_core::group::{ClusterStatus, Lock, LockInfo, Session, SessionKind};

    #[test]
    fn rows_show_the_holder_and_token() {
        let info = ClusterInfo {
            status: ClusterStatus::Running,
            config: None,
            members: Vec::new(),
            epochs: Vec::new(),
            sessions: vec![Session {
                id: 7,
                kind: SessionKind::Client { name: "nbd".into() },
                opened_ms: 1_700_000_000_000,
                failed: None,
            }],
            locks: vec![
                LockInfo { lock: Lock { vdi: "v".into(), session: 7, token: 42 }, holder: "nbd".into() },
                LockInfo { lock: Lock { vdi: "w".into(), session: 9, token: 50 }, holder: String::new() },
            ],
            missing: Vec::new(),
            clean_epoch: 0,
            applied_seq: 1,
            answered_by: String::new(),
        };
        let r = rows(&info);
        assert_eq!(
            r[0],
            LockRow { vdi: "v".into(), session: 7, holder: "nbd".into(), token: 42, since_ms: 1_700_000_000_000 }
        );
        assert_eq!(r[1].since_ms, 0);
        let text = table("", HEADERS, &cells(&r));
        assert!(text.starts_with("VDI  SESSION  HOLDER  TOKEN  SINCE\n"), "{text}");
        assert!(text.contains("v    7        nbd     42     2023-11-14 22:13:20 UTC"), "{text}");
    }
}
