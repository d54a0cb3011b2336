//! Calls to other storage nodes (recovery and repair pull objects from them): one cached
//! connection per peer, every call bounded in time.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use sheep_client::rpc::{self, Connection};
use sheep_core::epoch::Epoch;
use sheep_core::object::ObjectId;
use sheep_rpc::codec;
use sheep_rpc::storaged_capnp::storaged;

use crate::objects::Listing;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A list of every object, or a whole object: generous, but bounded.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a call to a peer failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    #[error("{addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    /// The peer answered with an error; `code` is its code word ("noObject", …).
    #[error("{addr}: {message}")]
    Refused { addr: String, code: Option<String>, message: String },
}

impl PeerError {
    pub fn is_code(&self, want: &str) -> bool {
        matches!(self, PeerError::Refused { code: Some(c), .. } if c == want)
    }
}

/// An object as a peer sent it.
pub struct Fetched {
    pub data: Vec<u8>,
    /// It came from the peer's `.stale/`, last live in `stale_epoch`.
    pub stale: bool,
    pub stale_epoch: u32,
}

#[derive(Default)]
pub struct Peers {
    conns: RefCell<HashMap<String, Rc<Connection<storaged::Client>>>>,
}

impl Peers {
    async fn client(&self, addr: &str) -> Result<storaged::Client, PeerError> {
        let cached = self.conns.borrow().get(addr).cloned();
        if let Some(c) = cached {
            if c.is_alive() {
                return Ok(c.client());
            }
        }
        let conn = rpc::connect::<storaged::Client>(addr, CONNECT_TIMEOUT)
            .await
            .map_err(|reason| PeerError::Unreachable { addr: addr.into(), reason })?;
        let client = conn.client();
        self.conns.borrow_mut().insert(addr.to_string(), Rc::new(conn));
        Ok(client)
    }

    fn failed(&self, addr: &str, e: capnp::Error) -> PeerError {
        if e.kind == capnp::ErrorKind::Disconnected {
            self.conns.borrow_mut().remove(addr);
            return PeerError::Unreachable { addr: addr.into(), reason: "connection lost".into() };
        }
        PeerError::Refused {
            addr: addr.into(),
            code: codec::error_code(&e).map(str::to_string),
            message: e.extra.clone(),
        }
    }

    async fn bounded<T>(
        &self,
        addr: &str,
        call: impl std::future::Future<Output = capnp::Result<T>>,
    ) -> Result<T, PeerError> {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.failed(addr, e)),
            Err(_) => {
                self.conns.borrow_mut().remove(addr);
                Err(PeerError::Unreachable { addr: addr.into(), reason: format!("no answer within {CALL_TIMEOUT:?}") })
            }
        }
    }

    /// Every object `addr` holds.
    pub async fn list(&self, addr: &str, epoch: Epoch) -> Result<Listing, PeerError> {
        let client = self.client(addr).await?;
        let call = async move {
            let mut req = client.list_request();
            req.get().set_epoch(epoch);
            let resp = req.send().promise.await?;
            let r = resp.get()?;
            let oids = read_oids(r.get_oids()?)?;
            let stale = read_oids(r.get_stale()?)?;
            let epochs: Vec<u32> = r.get_stale_epochs()?.iter().collect();
            let stale_only: Vec<(ObjectId, u32)> =
                stale.iter().enumerate().map(|(i, &o)| (o, epochs.get(i).copied().unwrap_or(1).max(1))).collect();
            let stale_set: std::collections::HashSet<ObjectId> = stale.into_iter().collect();
            let live = oids.into_iter().filter(|o| !stale_set.contains(o)).collect();
            Ok(Listing { live, stale_only })
        };
        self.bounded(addr, call).await
    }

    /// The whole object `oid` from `addr`, verified there.
    pub async fn fetch(&self, addr: &str, epoch: Epoch, oid: ObjectId) -> Result<Fetched, PeerError> {
        let client = self.client(addr).await?;
        let call = async move {
            let mut req = client.fetch_request();
            req.get().set_epoch(epoch);
            req.get().set_oid(oid.raw());
            let resp = req.send().promise.await?;
            let r = resp.get()?;
            Ok(Fetched { data: r.get_data()?.to_vec(), stale: r.get_stale(), stale_epoch: r.get_stale_epoch() })
        };
        self.bounded(addr, call).await
    }
}

fn read_oids(r: capnp::primitive_list::Reader<'_, u64>) -> capnp::Result<Vec<ObjectId>> {
    r.iter().map(|raw| ObjectId::from_raw(raw).map_err(|e| capnp::Error::failed(format!("badRequest: {e}")))).collect()
}
