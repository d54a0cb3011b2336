//! Connections to storage nodes (one per address, reused, replaced when it breaks) and the
//! typed, time-bounded calls of storaged's API: the one way to call storaged, for the VDI
//! engine, `check`, sheepctl and storaged itself (recovery and repair pull from its peers).

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use sheep_core::epoch::EpochRecord;
use sheep_core::store::{Listing, RecoveryStatus, StoreStat, StoreStatus, WholeObject};
use sheep_rpc::codec;
use sheep_rpc::codec::storaged as wire;
use sheep_rpc::storaged_capnp::storaged;

use super::error::NodeError;
use super::tickets::{TicketSource, Tickets};
use crate::rpc::{self, Connection};
use sheep_rpc::error::ErrorCode;

/// Time limits of storage calls.
#[derive(Clone, Copy, Debug)]
pub struct CallLimits {
    pub connect: Duration,
    pub call: Duration,
}

impl CallLimits {
    /// For calls that list every object of a node or move whole objects one after another
    /// (recovery and repair, node to node): generous, but bounded.
    pub const BULK: CallLimits = CallLimits { connect: Duration::from_secs(1), call: Duration::from_secs(20) };
}

impl Default for CallLimits {
    fn default() -> Self {
        CallLimits { connect: Duration::from_secs(1), call: Duration::from_secs(5) }
    }
}

/// Resolves when a connection ends.
type Closed = std::pin::Pin<Box<dyn Future<Output = ()>>>;

/// How many replaced connections per node are kept for their calls to finish.
const RETIRING_KEPT: usize = 2;

/// How long a node that timed out or could not be reached is tried last by reads.
const SUSPECT_FOR: Duration = Duration::from_secs(10);

struct Slot {
    conn: RefCell<Option<Connection<storaged::Client>>>,
    /// The serial of the ticket `conn` showed (0: none).
    serial: std::cell::Cell<u64>,
    /// Connections replaced because a newer ticket came, kept a little so that the calls
    /// on them finish (at most [`RETIRING_KEPT`]).
    retiring: RefCell<Vec<Connection<storaged::Client>>>,
    /// Until when reads try this node last (it timed out or was unreachable).
    suspect_until: std::cell::Cell<Option<tokio::time::Instant>>,
    /// Held while connecting, so that concurrent calls share one new connection.
    connecting: tokio::sync::Mutex<()>,
}

/// Connections to storage nodes by address. Not `Send`; share it with `Rc`.
pub struct StorePool {
    slots: RefCell<HashMap<String, Rc<Slot>>>,
    limits: CallLimits,
    tickets: Tickets,
}

impl StorePool {
    pub fn new(limits: CallLimits) -> StorePool {
        StorePool { slots: RefCell::new(HashMap::new()), limits, tickets: Tickets::default() }
    }

    /// Where this pool gets the ticket it shows (a client other than the admin; see
    /// [`super::tickets::source_for`]).
    pub fn set_ticket_source(&self, source: Option<TicketSource>) {
        self.tickets.set_source(source);
    }

    pub fn limits(&self) -> CallLimits {
        self.limits
    }

    fn slot(&self, addr: &str) -> Rc<Slot> {
        if let Some(s) = self.slots.borrow().get(addr) {
            return s.clone();
        }
        let slot = Rc::new(Slot {
            conn: RefCell::new(None),
            serial: std::cell::Cell::new(0),
            retiring: RefCell::new(Vec::new()),
            suspect_until: std::cell::Cell::new(None),
            connecting: tokio::sync::Mutex::new(()),
        });
        self.slots.borrow_mut().insert(addr.to_string(), slot.clone());
        slot
    }

    fn live(slot: &Slot, serial: u64) -> Option<(storaged::Client, Closed)> {
        let c = slot.conn.borrow();
        let c = c.as_ref()?;
        (c.is_alive() && slot.serial.get() == serial).then(|| (c.client(), Box::pin(c.closed()) as Closed))
    }

    /// The live connection to `addr` that shows the current ticket, or a new one; and the
    /// ticket's serial. `vid`: the VDI whose objects the call is for.
    async fn get(&self, addr: &str, vid: Option<u32>) -> Result<(storaged::Client, Closed, u64), NodeError> {
        let shown =
            self.tickets.for_call(vid).await.map_err(|reason| NodeError::Unreachable { addr: addr.into(), reason })?;
        let serial = shown.as_ref().map_or(0, |s| s.serial);
        let slot = self.slot(addr);
        if let Some((c, closed)) = Self::live(&slot, serial) {
            return Ok((c, closed, serial));
        }
        let _guard = slot.connecting.lock().await;
        if let Some((c, closed)) = Self::live(&slot, serial) {
            return Ok((c, closed, serial));
        }
        let stale = slot.conn.borrow_mut().take();
        if let Some(stale) = stale.filter(|c| c.is_alive()) {
            // Replaced for a newer ticket: its calls in flight finish on it.
            let mut retiring = slot.retiring.borrow_mut();
            retiring.retain(|c| c.is_alive());
            retiring.push(stale);
            let excess = retiring.len().saturating_sub(RETIRING_KEPT);
            retiring.drain(..excess);
        }
        let ticket = shown.as_ref().map_or(&[][..], |s| s.bytes.as_slice());
        let conn = rpc::connect_presenting::<storaged::Client>(addr, self.limits.connect, ticket)
            .await
            .map_err(|reason| NodeError::Unreachable { addr: addr.into(), reason })?;
        let out = (conn.client(), Box::pin(conn.closed()) as Closed, serial);
        *slot.conn.borrow_mut() = Some(conn);
        slot.serial.set(serial);
        Ok(out)
    }

    /// Forgets the connection to `addr` (after a timeout: the next call reconnects) and
    /// makes it a node reads try last for a while.
    fn failed(&self, addr: &str) {
        let slot = self.slots.borrow().get(addr).cloned();
        if let Some(slot) = slot {
            slot.suspect_until.set(Some(tokio::time::Instant::now() + SUSPECT_FOR));
            let gone = slot.conn.borrow_mut().take();
            drop(gone);
        }
    }

    /// True while `addr` recently timed out or could not be reached.
    pub fn is_suspect(&self, addr: &str) -> bool {
        let slots = self.slots.borrow();
        let until = slots.get(addr).and_then(|s| s.suspect_until.get());
        until.is_some_and(|u| u > tokio::time::Instant::now())
    }

    fn cleared(&self, addr: &str) {
        if let Some(slot) = self.slots.borrow().get(addr) {
            if slot.suspect_until.get().is_some() {
                slot.suspect_until.set(None);
            }
        }
    }

    /// Runs one call on the connection to `addr`, bounded by the call limit.
    pub async fn call<T, F, Fut>(&self, addr: &str, f: F) -> Result<T, NodeError>
    where
        F: FnOnce(storaged::Client) -> Fut,
        Fut: Future<Output = capnp::Result<T>>,
    {
        self.call_for(addr, None, f).await
    }

    /// [`Self::call`] for a call on object `oid`'s VDI (the ticket shown must name it).
    async fn call_on<T, F, Fut>(&self, addr: &str, oid: u64, f: F) -> Result<T, NodeError>
    where
        F: FnOnce(storaged::Client) -> Fut,
        Fut: Future<Output = capnp::Result<T>>,
    {
        let vid = sheep_core::object::ObjectId::from_raw(oid).ok().map(|o| o.vid().get());
        self.call_for(addr, vid, f).await
    }

    async fn call_for<T, F, Fut>(&self, addr: &str, vid: Option<u32>, f: F) -> Result<T, NodeError>
    where
        F: FnOnce(storaged::Client) -> Fut,
        Fut: Future<Output = capnp::Result<T>>,
    {
        let (client, closed, serial) = match self.get(addr, vid).await {
            Ok(c) => c,
            Err(e) => {
                self.failed(addr);
                return Err(e);
            }
        };
        let limit = self.limits.call;
        tokio::select! {
            r = tokio::time::timeout(limit, f(client)) => match r {
                Ok(Ok(v)) => {
                    self.cleared(addr);
                    Ok(v)
                }
                Ok(Err(e)) => {
                    let err = NodeError::from_capnp(addr, &e);
                    if matches!(err, NodeError::Rpc { .. }) {
                        self.failed(addr);
                    }
                    if err.is_code(ErrorCode::TicketExpired) {
                        // The next call fetches a new ticket, and reconnects with it.
                        self.tickets.expired(serial);
                    }
                    Err(err)
                }
                Err(_) => {
                    self.failed(addr);
                    Err(NodeError::Timeout { addr: addr.into(), after: limit })
                }
            },
            () = closed => {
                self.failed(addr);
                Err(NodeError::Rpc { addr: addr.into(), message: "connection lost".into() })
            }
        }
    }

    pub async fn read(&self, addr: &str, epoch: u32, oid: u64, offset: u32, buf: &mut [u8]) -> Result<(), NodeError> {
        let want = buf.len();
        let len = u32::try_from(want).map_err(|_| NodeError::bad_request(addr, "read too large"))?;
        self.call_on(addr, oid, |c| async move {
            let mut req = c.read_request();
            let mut p = req.get();
            p.set_epoch(epoch);
            p.set_oid(oid);
            p.set_offset(offset);
            p.set_length(len);
            let resp = req.send().promise.await?;
            let data = resp.get()?.get_data()?;
            if data.len() != want {
                return Err(capnp::Error::failed(format!("short read: {} of {want} bytes", data.len())));
            }
            buf.copy_from_slice(data);
            Ok(())
        })
        .await
    }

    /// `fence` (here, in `zero` and `create_and_write`): the writer's VDI lock token, 0 when
    /// it holds none; the node refuses with `fenced` once the lock moved on.
    #[allow(clippy::too_many_arguments, reason = "one argument per field of the wire request")]
    pub async fn write(
        &self,
        addr: &str,
        epoch: u32,
        oid: u64,
        offset: u32,
        data: &[u8],
        fua: bool,
        fence: u64,
    ) -> Result<(), NodeError> {
        self.call_on(addr, oid, |c| async move {
            let mut req = c.write_request();
            let mut p = req.get();
            p.set_epoch(epoch);
            p.set_oid(oid);
            p.set_offset(offset);
            p.set_data(data);
            p.set_fua(fua);
            p.set_fence(fence);
            req.send().promise.await?;
            Ok(())
        })
        .await
    }

    /// Makes `len` bytes at `offset` of an existing object read as zeros (no data sent).
    #[allow(clippy::too_many_arguments, reason = "one argument per field of the wire request")]
    pub async fn zero(
        &self,
        addr: &str,
        epoch: u32,
        oid: u64,
        offset: u32,
        len: u32,
        fua: bool,
        fence: u64,
    ) -> Result<(), NodeError> {
        self.call_on(addr, oid, |c| async move {
            let mut req = c.zero_request();
            let mut p = req.get();
            p.set_epoch(epoch);
            p.set_oid(oid);
            p.set_offset(offset);
            p.set_length(len);
            p.set_fua(fua);
            p.set_fence(fence);
            req.send().promise.await?;
            Ok(())
        })
        .await
    }

    #[allow(clippy::too_many_arguments, reason = "one argument per field of the wire request")]
    pub async fn create_and_write(
        &self,
        addr: &str,
        epoch: u32,
        oid: u64,
        object_size: u32,
        base_oid: u64,
        offset: u32,
        data: &[u8],
        fua: bool,
        fence: u64,
    ) -> Result<(), NodeError> {
        self.call_on(addr, oid, |c| async move {
            let mut req = c.create_and_write_request();
            let mut p = req.get();
            p.set_epoch(epoch);
            p.set_oid(oid);
            p.set_object_size(object_size);
            p.set_base_oid(base_oid);
            p.set_offset(offset);
            p.set_data(data);
            p.set_fua(fua);
            p.set_fence(fence);
            req.send().promise.await?;
            Ok(())
        })
        .await
    }

    /// A whole object as `addr` holds it, verified there, from its `obj/` or else its
    /// `.stale/` (then with the last epoch in which that copy was live).
    pub async fn fetch(&self, addr: &str, epoch: u32, oid: u64) -> Result<WholeObject, NodeError> {
        self.fetch_whole(addr, epoch, oid, false).await
    }

    /// The whole object as [`fetch`](Self::fetch) gets it, but only looking: a corrupt copy is
    /// reported and left as it is (what a check, and above all a dry run, needs).
    pub async fn inspect(&self, addr: &str, epoch: u32, oid: u64) -> Result<WholeObject, NodeError> {
        self.fetch_whole(addr, epoch, oid, true).await
    }

    async fn fetch_whole(&self, addr: &str, epoch: u32, oid: u64, inspect: bool) -> Result<WholeObject, NodeError> {
        self.call_on(addr, oid, |c| async move {
            let mut req = c.fetch_request();
            req.get().set_epoch(epoch);
            req.get().set_oid(oid);
            req.get().set_inspect(inspect);
            let resp = req.send().promise.await?;
            wire::read_whole(resp.get()?)
        })
        .await
    }

    /// Every object `addr` holds: live ones, and those only in its `.stale/` with their epochs.
    pub async fn list(&self, addr: &str, epoch: u32) -> Result<Listing, NodeError> {
        self.call(addr, |c| async move {
            let mut req = c.list_request();
            req.get().set_epoch(epoch);
            let resp = req.send().promise.await?;
            wire::read_listing(resp.get()?)
        })
        .await
    }

    /// Removes `oid` from `addr` (its live and stale copies).
    pub async fn remove(&self, addr: &str, epoch: u32, oid: u64) -> Result<(), NodeError> {
        self.call_on(addr, oid, |c| async move {
            let mut req = c.remove_request();
            req.get().set_epoch(epoch);
            req.get().set_oid(oid);
            req.send().promise.await?;
            Ok(())
        })
        .await
    }

    pub async fn flush(&self, addr: &str, epoch: u32) -> Result<(), NodeError> {
        self.call(addr, |c| async move {
            let mut req = c.flush_request();
            req.get().set_epoch(epoch);
            req.send().promise.await?;
            Ok(())
        })
        .await
    }

    pub async fn stat(&self, addr: &str) -> Result<StoreStat, NodeError> {
        self.call(addr, |c| async move {
            let resp = c.stat_request().send().promise.await?;
            Ok(wire::read_stat(resp.get()?.get_stat()?))
        })
        .await
    }

    /// The node's request counters since it started (the admin's).
    pub async fn io_stats(&self, addr: &str) -> Result<sheep_core::iostat::NodeIo, NodeError> {
        self.call(addr, |c| async move {
            let resp = c.io_stats_request().send().promise.await?;
            wire::read_io(resp.get()?.get_stats()?)
        })
        .await
    }

    pub async fn recovery(&self, addr: &str) -> Result<RecoveryStatus, NodeError> {
        self.call(addr, |c| async move {
            let resp = c.recovery_request().send().promise.await?;
            wire::read_recovery(resp.get()?.get_status()?)
        })
        .await
    }

    /// What the node is and what it has seen of the cluster.
    pub async fn status(&self, addr: &str) -> Result<StoreStatus, NodeError> {
        self.call(addr, |c| async move {
            let resp = c.status_request().send().promise.await?;
            wire::read_status(resp.get()?.get_status()?)
        })
        .await
    }

    /// The node's own copy of the epoch history.
    pub async fn epoch_log(&self, addr: &str) -> Result<Vec<EpochRecord>, NodeError> {
        self.call(addr, |c| async move {
            let resp = c.epoch_log_request().send().promise.await?;
            codec::read_epochs(resp.get()?.get_epochs()?)
        })
        .await
    }
}
