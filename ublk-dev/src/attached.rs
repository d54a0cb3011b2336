//! A VDI attached by one of our daemons (the ublk target, the NBD export): found in the
//! namespace, locked by a groupd session of the daemon's own, opened with the lock's fencing
//! token behind a [`VdiBackend`], and the point in the group's events from which the daemon
//! follows what is asked of the holder ([`crate::follow`]).

use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sheep_client::group::{GroupClient, Options};
use sheep_client::vdi::{CallLimits, Cluster, Vdi, VdiOptions};

use crate::attach_lock::{AttachError, AttachLock};
use crate::backend::VdiBackend;
use crate::metrics::FrontendMetrics;

pub struct Attached {
    pub group: Rc<GroupClient>,
    pub lock: AttachLock,
    pub backend: Rc<VdiBackend>,
    /// The first event the daemon must follow (snapshot requests, resizes).
    pub follow_from: u64,
}

/// Groupd limits of a daemon: it waits a little for a groupd that is restarting.
fn group_options() -> Options {
    Options {
        connect_timeout: Duration::from_secs(1),
        call_timeout: Duration::from_secs(3),
        retry_for: Duration::from_secs(8),
        wait_for_groupd: false,
    }
}

/// Attaches the working VDI `vdi` for `holder` (the name others see when refused). While
/// another session holds the lock, retries until `wait_for_lock` ends (a recovering daemon
/// waits for its dead predecessor's session to expire).
pub async fn attach(
    groupd: &[String],
    vdi: &str,
    holder: &str,
    wait_for_lock: Duration,
    metrics: FrontendMetrics,
) -> Result<Attached> {
    let group = Rc::new(GroupClient::new(groupd.to_vec(), group_options())?);
    let (vdis, _) = group.vdi_list().await.context("cannot list the VDIs")?;
    let Some(entry) = vdis.into_iter().find(|v| v.name == vdi && !v.is_snapshot()) else {
        bail!("there is no VDI named {vdi:?} (see `sheepctl vdi list`)");
    };
    let lock = acquire(&group, vdi, holder, wait_for_lock).await?;
    let opened = async {
        let follow_from = group.info().await.map(|i| i.applied_seq + 1).context("cannot read the cluster's state")?;
        let cluster = Cluster::connect(group.clone(), CallLimits::default()).await?;
        // Every write carries the lock's token: once the lock is taken from this daemon (a
        // forced unlock), storage refuses its writes (EPERM) instead of mixing them with the
        // new holder's.
        let opts = VdiOptions { fence: lock.token(), ..VdiOptions::default() };
        let opened = Vdi::open_entry(cluster, entry, opts).await.with_context(|| format!("cannot open VDI {vdi:?}"))?;
        Ok::<_, anyhow::Error>((follow_from, Rc::new(VdiBackend::new(Rc::new(opened), metrics))))
    }
    .await;
    match opened {
        Ok((follow_from, backend)) => Ok(Attached { group, lock, backend, follow_from }),
        Err(e) => {
            lock.release().await;
            Err(e)
        }
    }
}

async fn acquire(group: &Rc<GroupClient>, vdi: &str, holder: &str, wait: Duration) -> Result<AttachLock> {
    let deadline = Instant::now() + wait;
    let mut said = false;
    loop {
        match AttachLock::acquire(group.clone(), vdi, holder).await {
            Err(AttachError::Held(msg)) if Instant::now() < deadline => {
                if !said {
                    tracing::info!("{msg}; waiting up to {wait:?} for its session to end");
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            r => return r.map_err(anyhow::Error::from),
        }
    }
}

impl Attached {
    /// The holder's duties for as long as the caller polls it (see [`crate::follow`]);
    /// `resized` is told the new size after the VDI grew.
    pub fn follow(&self, resized: impl Fn(u64)) -> impl std::future::Future<Output = ()> {
        crate::follow::follow(self.group.clone(), self.backend.clone(), self.lock.session(), self.follow_from, resized)
    }
}
