//! [`GroupClient`]: typed calls to groupd, each bounded in time, moving to the next groupd
//! when a connection fails.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use capnp::ErrorKind;
use sheep_core::epoch::NodeInfo;
use sheep_core::group::{ClusterConfig, ClusterInfo, Event, LockInfo, Policy, RequestId, SessionId, SessionKind};
use sheep_core::namespace::VdiEntry;
use sheep_core::object::VdiId;
use sheep_rpc::codec;
use sheep_rpc::error::ErrorCode;
use sheep_rpc::groupd_capnp::{groupd, SessionKind as WireKind};
use tokio::time::Instant;

use super::conn::{Live, Pool};
use super::Error;
use crate::rpc::secs;

/// Time limits of a [`GroupClient`].
#[derive(Clone, Debug)]
pub struct Options {
    /// One connection attempt to one address.
    pub connect_timeout: Duration,
    /// One call on one connection (a watch gets its wait time on top).
    pub call_timeout: Duration,
    /// Everything one method may spend, retries on other addresses included (a watch gets
    /// its wait time on top).
    pub retry_for: Duration,
    /// When no address at all can be reached: `false` fails the call at once (what a
    /// command line wants), `true` keeps trying until `retry_for` is spent.
    pub wait_for_groupd: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connect_timeout: Duration::from_secs(1),
            call_timeout: Duration::from_secs(5),
            retry_for: Duration::from_secs(15),
            wait_for_groupd: false,
        }
    }
}

/// The VDI namespace as `vdiList` answers it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VdiListing {
    /// Working VDIs and live snapshots.
    pub vdis: Vec<VdiEntry>,
    /// Deleted VDIs whose objects the storage nodes remove.
    pub deleted: Vec<VdiId>,
    /// Deleted snapshots kept while a live VDI descends from them (empty from a groupd that
    /// predates the field).
    pub retired: Vec<VdiEntry>,
}

/// Pause between two tries; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// An attempt with less time than this left is not started; the previous error is returned.
const MIN_CALL: Duration = Duration::from_millis(300);

/// A client of the groupd group. Not `Send`: use it inside a `LocalSet`; share it with
/// `Rc`. Calls that change state are forwarded by any groupd to the master, so any address
/// will do. A call that fails because its connection broke or timed out, or because the
/// group has no master yet (an election), is tried again, on the next address for a broken
/// connection, until [`Options::retry_for`] is spent.
///
/// A call retried after its connection broke may have been applied already. So that it
/// takes effect once all the same, every call that changes state carries a [`RequestId`]:
/// this client's random id and the call's number, the same on every try. The group applies
/// a call at most once and answers a retry of an applied one with the first try's answer
/// (`vdi_create` retried gives the VDI it made, not `vdiExists`; `open_session` the same
/// session). That holds while the group remembers the call: the last calls of the last
/// [`CLIENTS_KEPT`](sheep_core::group::dedupe::CLIENTS_KEPT) clients (see
/// [`sheep_core::group::dedupe`]).
pub struct GroupClient {
    pool: Pool,
    opts: Options,
    requests: Requests,
}

/// Numbers this client's state-changing calls (see [`RequestId`]).
struct Requests {
    client: u64,
    next: Cell<u64>,
    /// The numbers of the calls begun and not finished yet: the lowest goes into every
    /// request, so the group may forget the answers of the ones below it.
    pending: RefCell<BTreeSet<u64>>,
}

/// A call in progress. Dropped when the call returns (with an answer or not) or is itself
/// dropped: the call is never tried again after that.
struct Pending<'a> {
    requests: &'a Requests,
    id: RequestId,
}

impl Requests {
    fn new() -> Requests {
        Requests { client: random_client_id(), next: Cell::new(1), pending: RefCell::new(BTreeSet::new()) }
    }

    fn begin(&self) -> Pending<'_> {
        let seq = self.next.get();
        self.next.set(seq + 1);
        let mut pending = self.pending.borrow_mut();
        pending.insert(seq);
        let first_pending = pending.first().copied().unwrap_or(seq);
        Pending { requests: self, id: RequestId { client: self.client, seq, first_pending } }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.requests.pending.borrow_mut().remove(&self.id.seq);
    }
}

/// A client id: 64 random bits (std's hasher keys come from the OS), never 0 (no id). Two
/// clients with one id would get each other's answers, so it must not repeat across the
/// processes of a cluster; a counter keeps two of one process apart as well.
fn random_client_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static MADE: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(MADE.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    h.write_u128(now.as_nanos());
    h.finish().max(1)
}

enum Attempt {
    /// Try again (after a pause), keeping this as the error to report if time runs out.
    Retry(Error),
    Fail(Error),
}

impl GroupClient {
    /// A client of the groupd at `addrs` (at least one). Connects lazily, on the first call.
    pub fn new(addrs: Vec<String>, opts: Options) -> Result<GroupClient, Error> {
        if addrs.is_empty() {
            return Err(Error::Usage("no groupd address given".into()));
        }
        Ok(GroupClient { pool: Pool::new(addrs), opts, requests: Requests::new() })
    }

    /// The random id this client's calls carry (see [`RequestId`]).
    pub fn client_id(&self) -> u64 {
        self.requests.client
    }

    pub fn addrs(&self) -> &[String] {
        self.pool.addrs()
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// The groupd this client is connected to, if it is.
    pub fn connected_to(&self) -> Option<String> {
        self.pool.current()
    }

    /// Runs `f` on a connection, with the retry rules above. `extra` is added to the time
    /// limits (a watch's long-poll wait).
    pub(super) async fn call<T, F, Fut>(&self, what: &str, extra: Duration, f: F) -> Result<T, Error>
    where
        F: Fn(groupd::Client) -> Fut,
        Fut: Future<Output = capnp::Result<T>>,
    {
        self.call_within(what, self.opts.call_timeout + extra, self.opts.retry_for + extra, f).await
    }

    /// [`Self::call`] with its own limits: `per_try` for each try, `total` for them all.
    async fn call_within<T, F, Fut>(&self, what: &str, per_try: Duration, total: Duration, f: F) -> Result<T, Error>
    where
        F: Fn(groupd::Client) -> Fut,
        Fut: Future<Output = capnp::Result<T>>,
    {
        let deadline = Instant::now() + total;
        let mut backoff = FIRST_BACKOFF;
        let mut last: Option<Error> = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left < MIN_CALL {
                if let Some(e) = last.take() {
                    return Err(e);
                }
            }
            let attempt = match self.pool.get(self.opts.connect_timeout, deadline).await {
                Err(e) if self.opts.wait_for_groupd => Attempt::Retry(e),
                Err(e) => Attempt::Fail(e),
                Ok(Live { addr, client, closed, ended }) => {
                    let limit = per_try.min(left.max(MIN_CALL));
                    let result = tokio::select! {
                        r = tokio::time::timeout(limit, f(client)) => Some(r),
                        () = closed => None,
                    };
                    match result {
                        Some(Ok(Ok(v))) => return Ok(v),
                        Some(Err(_)) => {
                            tracing::debug!("{what}: groupd at {addr} did not answer within {}", secs(limit));
                            self.pool.failed(&addr);
                            Attempt::Retry(Error::Timeout { addr, after: limit })
                        }
                        Some(Ok(Err(e))) => self.classify(what, addr, e, ended()),
                        None => {
                            tracing::debug!("{what}: connection to groupd at {addr} closed under the call");
                            Attempt::Retry(Error::Rpc { addr, message: "connection lost".into() })
                        }
                    }
                }
            };
            match attempt {
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry(e) => {
                    if Instant::now() + backoff >= deadline {
                        return Err(e);
                    }
                    last = Some(e);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// [`Self::call`] for a call that changes state: one request id, given to `f` on every
    /// try, so that the group applies the call once however often it is tried.
    pub(super) async fn change<T, F, Fut>(&self, what: &str, f: F) -> Result<T, Error>
    where
        F: Fn(groupd::Client, RequestId) -> Fut,
        Fut: Future<Output = capnp::Result<T>>,
    {
        let pending = self.requests.begin();
        let id = pending.id;
        let result = self.call(what, Duration::ZERO, |c| f(c, id)).await;
        drop(pending);
        result
    }

    /// `ended`: the call's connection had ended when the call failed.
    fn classify(&self, what: &str, addr: String, e: capnp::Error, ended: bool) -> Attempt {
        match e.kind {
            ErrorKind::Disconnected => {
                tracing::debug!("{what}: connection to groupd at {addr} lost: {}", e.extra);
                self.pool.failed(&addr);
                Attempt::Retry(Error::Rpc { addr, message: "connection lost".into() })
            }
            ErrorKind::Overloaded => Attempt::Retry(Error::from_capnp(&addr, &e)),
            _ => {
                let err = Error::from_capnp(&addr, &e);
                if err.is_code(ErrorCode::NoMaster) {
                    tracing::debug!("{what}: {err}");
                    Attempt::Retry(err)
                } else if err.code().is_none() && ended {
                    // The connection's RPC system went away under the call.
                    self.pool.failed(&addr);
                    Attempt::Retry(err)
                } else {
                    Attempt::Fail(err)
                }
            }
        }
    }

    /// The cluster as the answering groupd has applied it.
    pub async fn info(&self) -> Result<ClusterInfo, Error> {
        self.call("info", Duration::ZERO, |c| async move {
            let resp = c.info_request().send().promise.await?;
            codec::read_cluster_info(resp.get()?.get_info()?)
        })
        .await
    }

    /// Formats the cluster (`force`: even if it is formatted already) with the default
    /// replication policy.
    pub async fn format(
        &self,
        copies: u8,
        object_size_shift: u8,
        voters: u8,
        force: bool,
    ) -> Result<ClusterConfig, Error> {
        self.format_with(copies, object_size_shift, voters, force, Policy::default()).await
    }

    /// [`Self::format`] with a replication policy.
    pub async fn format_with(
        &self,
        copies: u8,
        object_size_shift: u8,
        voters: u8,
        force: bool,
        policy: Policy,
    ) -> Result<ClusterConfig, Error> {
        self.change("format", |c, id| async move {
            let mut req = c.format_request();
            let mut p = req.get();
            p.set_copies(copies);
            p.set_object_size_shift(object_size_shift);
            p.set_voters(voters);
            p.set_force(force);
            p.set_min_copies(policy.min_copies);
            p.set_hold_ms(policy.hold_ms);
            p.set_allow_fewer_zones(policy.allow_fewer_zones);
            p.set_secure(policy.secure);
            codec::write_request(req.get().init_request(), &id);
            let resp = req.send().promise.await?;
            codec::read_config(resp.get()?.get_config()?)
        })
        .await
    }

    pub async fn shutdown(&self) -> Result<(), Error> {
        self.change("shutdown", |c, id| async move {
            let mut req = c.shutdown_request();
            codec::write_request(req.get().init_request(), &id);
            req.send().promise.await?;
            Ok(())
        })
        .await
    }

    pub async fn recover_force(&self) -> Result<(), Error> {
        self.change("recover force", |c, id| async move {
            let mut req = c.recover_force_request();
            codec::write_request(req.get().init_request(), &id);
            req.send().promise.await?;
            Ok(())
        })
        .await
    }

    /// Opens a session; `store_cluster_id` is the cluster a storage node's store belongs to
    /// ("" for a new store, or a client). Returns the session and its lease.
    pub async fn open_session(
        &self,
        kind: &SessionKind,
        store_cluster_id: &str,
    ) -> Result<(SessionId, Duration), Error> {
        self.change("open session", |c, id| async move {
            let mut req = c.open_session_request();
            let mut p = req.get();
            match kind {
                SessionKind::Storage(node) => {
                    p.set_kind(WireKind::Storage);
                    codec::write_node(p.reborrow().init_node(), node);
                }
                SessionKind::Client { name } => {
                    p.set_kind(WireKind::Client);
                    p.set_name(name.as_str());
                }
            }
            p.set_cluster_id(store_cluster_id);
            codec::write_request(req.get().init_request(), &id);
            let resp = req.send().promise.await?;
            let r = resp.get()?;
            Ok((r.get_session(), Duration::from_millis(u64::from(r.get_lease_ms()))))
        })
        .await
    }

    /// Opens a storage session for `node`.
    pub async fn join(&self, node: &NodeInfo, store_cluster_id: &str) -> Result<(SessionId, Duration), Error> {
        self.open_session(&SessionKind::Storage(node.clone()), store_cluster_id).await
    }

    /// Renews `session`, whose lease is `lease`: each try is bounded by a quarter of it (and
    /// the whole call by the lease), so that a groupd that stopped answering (a cut link, a
    /// hung process) is given up for another one while the lease still runs.
    pub async fn keepalive(&self, session: SessionId, lease: Duration) -> Result<(), Error> {
        let per_try = (lease / 4).clamp(MIN_CALL, self.opts.call_timeout);
        self.call_within("keepalive", per_try, lease.max(per_try), |c| async move {
            let mut req = c.keepalive_request();
            req.get().set_session(session);
            req.send().promise.await?;
            Ok(())
        })
        .await
    }

    pub async fn close_session(&self, session: SessionId) -> Result<(), Error> {
        self.change("close session", |c, id| async move {
            let mut req = c.close_session_request();
            req.get().set_session(session);
            codec::write_request(req.get().init_request(), &id);
            req.send().promise.await?;
            Ok(())
        })
        .await
    }

    /// A user broadcast: one entry of the total order. Returns its sequence number.
    pub async fn propose(&self, session: SessionId, payload: &[u8]) -> Result<u64, Error> {
        self.change("propose", |c, id| async move {
            let mut req = c.propose_request();
            req.get().set_session(session);
            req.get().set_payload(payload);
            codec::write_request(req.get().init_request(), &id);
            let resp = req.send().promise.await?;
            Ok(resp.get()?.get_seq())
        })
        .await
    }

    /// Events with `seq >= from`, at most `max`, waiting up to `wait` for the first one.
    /// Returns them and the sequence number to ask for next. Prefer [`super::Watcher`],
    /// which checks the order.
    pub async fn watch(&self, from: u64, max: u32, wait: Duration) -> Result<(Vec<Event>, u64), Error> {
        let wait_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
        self.call("watch", wait, |c| async move {
            let mut req = c.watch_request();
            let mut p = req.get();
            p.set_from_seq(from);
            p.set_max_entries(max);
            p.set_wait_ms(wait_ms);
            let resp = req.send().promise.await?;
            let r = resp.get()?;
            Ok((codec::read_events(r.get_events()?)?, r.get_next_seq()))
        })
        .await
    }

    /// A storage node reports that it holds every object it owns in `epoch`.
    pub async fn recovery_done(&self, session: SessionId, epoch: u32) -> Result<(), Error> {
        self.change("recovery done", |c, id| async move {
            let mut req = c.recovery_done_request();
            req.get().set_session(session);
            req.get().set_epoch(epoch);
            codec::write_request(req.get().init_request(), &id);
            req.send().promise.await?;
            Ok(())
        })
        .await
    }

    /// A storage node reports that its disk failed: it leaves the data membership.
    pub async fn node_failed(&self, session: SessionId, reason: &str) -> Result<(), Error> {
        self.change("node failed", |c, id| async move {
            let mut req = c.node_failed_request();
            req.get().set_session(session);
            req.get().set_reason(reason);
            codec::write_request(req.get().init_request(), &id);
            req.send().promise.await?;
            Ok(())
        })
        .await
    }

    pub async fn lock(&self, session: SessionId, vdi: &str) -> Result<LockInfo, Error> {
        self.change("lock", |c, id| async move {
            let mut req = c.lock_request();
            req.get().set_session(session);
            req.get().set_vdi(vdi);
            codec::write_request(req.get().init_request(), &id);
            let resp = req.send().promise.await?;
            codec::read_lock_info(resp.get()?.get_lock()?)
        })
        .await
    }

    pub async fn unlock(&self, session: SessionId, vdi: &str, force: bool) -> Result<(), Error> {
        self.change("unlock", |c, id| async move {
            let mut req = c.unlock_request();
            let mut p = req.get();
            p.set_session(session);
            p.set_vdi(vdi);
            p.set_force(force);
            codec::write_request(req.get().init_request(), &id);
            req.send().promise.await?;
            Ok(())
        })
        .await
    }
    /// Creates a VDI in the namespace (`copies` 0 = the cluster's default). Refused with
    /// `vdiExists` or `badRequest`. A try retried after a broken connection answers the VDI
    /// the first try made, if it was applied.
    pub async fn vdi_create(&self, name: &str, size: u64, copies: u8) -> Result<VdiEntry, Error> {
        self.vdi_create_with(name, size, copies, false).await
    }

    /// [`Self::vdi_create`]; `allow_fewer_zones`: accept more copies than the storage nodes
    /// span zones.
    pub async fn vdi_create_with(
        &self,
        name: &str,
        size: u64,
        copies: u8,
        allow_fewer_zones: bool,
    ) -> Result<VdiEntry, Error> {
        self.change("vdi create", |c, id| async move {
            let mut req = c.vdi_create_request();
            let mut p = req.get();
            p.set_name(name);
            p.set_size(size);
            p.set_copies(copies);
            p.set_allow_fewer_zones(allow_fewer_zones);
            codec::write_request(req.get().init_request(), &id);
            let resp = req.send().promise.await?;
            codec::read_vdi(resp.get()?.get_vdi()?)
        })
        .await
    }

    /// Deletes a VDI from the namespace; storage nodes remove its objects when they see the
    /// event. Refused with `noVdi`.
    pub async fn vdi_delete(&self, name: &str) -> Result<VdiEntry, Error> {
        self.change("vdi delete", |c, id| async move {
            let mut req = c.vdi_delete_request();
            req.get().set_name(name);
            codec::write_request(req.get().init_request(), &id);
            let resp = req.send().promise.await?;
            codec::read_vdi(resp.get()?.get_vdi()?)
        })
        .await
    }

    /// Deletes snapshot `tag` of VDI `name`. Its objects stay while a live VDI (the working
    /// VDI going on from it, a clone) still reads them. Refused with `noVdi`.
    pub async fn vdi_delete_snapshot(&self, name: &str, tag: &str) -> Result<VdiEntry, Error> {
        self.change("vdi delete snapshot", |c, id| async move {
            let mut req = c.vdi_delete_snapshot_request();
            req.get().set_name(name);
            req.get().set_tag(tag);
            codec::write_request(req.get().init_request(), &id);
            let resp = req.send().promise.await?;
            codec::read_vdi(resp.get()?.get_vdi()?)
        })
        .await
    }

    /// Freezes the working VDI `name` as snapshot `tag`; returns (the snapshot, the new
    /// working VDI). While the VDI is locked only the holder's `session` may.
    pub async fn vdi_snapshot(&self, session: SessionId, name: &str, tag: &str) -> Result<(VdiEntry, VdiEntry), Error> {
        self.change("vdi snapshot", |c, id| async move {
            let mut req = c.vdi_snapshot_request();
            req.get().set_session(session);
            req.get().set_name(name);
            req.get().set_tag(tag);
            codec::write_request(req.get().init_request(), &id);
            let resp = req.send().promise.await?;
            let r = resp.get()?;
            Ok((codec::read_vdi(r.get_snapshot()?)?, codec::read_vdi(r.get_working()?)?))
        })
        .await
    }

    /// A new VDI `new_name` starting from snapshot `tag` of `name`.
    pub async fn vdi_clone(&self, name: &str, tag: &str, new_name: &str) -> Result<VdiEntry, Error> {
        self.change("vdi clone", |c, id| async move {
            let mut req = c.vdi_clone_request();
            req.get().set_name(name);
            req.get().set_tag(tag);
            req.get().set_new_name(new_name);
            codec::write_request(req.get().init_request(), &id);
            let resp = req.send().promise.await?;
            codec::read_vdi(resp.get()?.get_vdi()?)
        })
        .await
    }

    /// Replaces the working VDI `name` by one going on from snapshot `tag`. Refused with
    /// `lockHeld` while it is attached.
    pub async fn vdi_rollback(&self, name: &str, tag: &str) -> Result<VdiEntry, Error> {
        self.change("vdi rollback", |c, id| async move {
            let mut req = c.vdi_rollback_request();
            req.get().set_name(name);
            req.get().set_tag(tag);
            codec::write_request(req.get().init_request(), &id);
            let resp = req.send().promise.await?;
            codec::read_vdi(resp.get()?.get_vdi()?)
        })
        .await
    }

    /// Grows the working VDI `name` to `size` bytes.
    pub async fn vdi_resize(&self, name: &str, size: u64) -> Result<VdiEntry, Error> {
        self.change("vdi resize", |c, id| async move {
            let mut req = c.vdi_resize_request();
            req.get().set_name(name);
            req.get().set_size(size);
            codec::write_request(req.get().init_request(), &id);
            let resp = req.send().promise.await?;
            codec::read_vdi(resp.get()?.get_vdi()?)
        })
        .await
    }

    /// Sets attribute `key` of VDI `name` (`None`: deletes it). `exclusive`: refused with
    /// `attrExists` if it exists.
    pub async fn vdi_set_attr(
        &self,
        name: &str,
        key: &str,
        value: Option<&[u8]>,
        exclusive: bool,
    ) -> Result<(), Error> {
        self.change("vdi setattr", |c, id| async move {
            let mut req = c.vdi_set_attr_request();
            let mut p = req.get();
            p.set_name(name);
            p.set_key(key);
            p.set_value(value.unwrap_or(&[]));
            p.set_delete(value.is_none());
            p.set_exclusive(exclusive);
            codec::write_request(req.get().init_request(), &id);
            req.send().promise.await?;
            Ok(())
        })
        .await
    }

    /// Attribute `key` of VDI `name`; refused with `noAttr`.
    pub async fn vdi_get_attr(&self, name: &str, key: &str) -> Result<Vec<u8>, Error> {
        self.call("vdi getattr", Duration::ZERO, |c| async move {
            let mut req = c.vdi_get_attr_request();
            req.get().set_name(name);
            req.get().set_key(key);
            let resp = req.send().promise.await?;
            Ok(resp.get()?.get_value()?.to_vec())
        })
        .await
    }

    /// Every working VDI and live snapshot, and the ids of deleted VDIs whose objects may be
    /// removed.
    pub async fn vdi_list(&self) -> Result<(Vec<VdiEntry>, Vec<VdiId>), Error> {
        let l = self.vdi_listing().await?;
        Ok((l.vdis, l.deleted))
    }

    /// The whole namespace as `vdi list` answers it, the retired snapshots included.
    pub async fn vdi_listing(&self) -> Result<VdiListing, Error> {
        self.call("vdi list", Duration::ZERO, |c| async move {
            let resp = c.vdi_list_request().send().promise.await?;
            let r = resp.get()?;
            let vdis = r.get_vdis()?.iter().map(codec::read_vdi).collect::<capnp::Result<Vec<_>>>()?;
            let deleted = r.get_deleted_vids()?.iter().map(codec::read_vid).collect::<capnp::Result<Vec<_>>>()?;
            let retired = r.get_retired()?.iter().map(codec::read_vdi).collect::<capnp::Result<Vec<_>>>()?;
            Ok(VdiListing { vdis, deleted, retired })
        })
        .await
    }
}
