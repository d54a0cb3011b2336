//! The connection to one groupd out of a list, replaced by one to the next address when it
//! fails.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use sheep_rpc::groupd_capnp::groupd;
use tokio::time::Instant;

use super::Error;
use crate::rpc::{self, Connection};

/// The shortest connect attempt: every address of a round gets at least this long, even
/// when the call's deadline is (nearly) spent.
const MIN_ATTEMPT: Duration = Duration::from_millis(200);

/// A live connection as a call uses it.
pub(crate) struct Live {
    pub(crate) addr: String,
    pub(crate) client: groupd::Client,
    /// Resolves when the connection ends or is dropped.
    pub(crate) closed: Pin<Box<dyn Future<Output = ()>>>,
    /// Whether it has ended or been dropped.
    pub(crate) ended: Box<dyn Fn() -> bool>,
}

impl Live {
    fn of(c: &Connection<groupd::Client>) -> Live {
        Live {
            addr: c.addr().to_string(),
            client: c.client(),
            closed: Box::pin(c.closed()),
            ended: Box::new(c.ended()),
        }
    }
}

pub(crate) struct Pool {
    addrs: Vec<String>,
    /// The address to try first on the next connect.
    next: Cell<usize>,
    cur: RefCell<Option<Connection<groupd::Client>>>,
    /// Held while connecting, so that concurrent calls share one new connection.
    connecting: tokio::sync::Mutex<()>,
}

impl Pool {
    pub(crate) fn new(addrs: Vec<String>) -> Pool {
        Pool { addrs, next: Cell::new(0), cur: RefCell::new(None), connecting: tokio::sync::Mutex::new(()) }
    }

    pub(crate) fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// The address of the live connection, if any.
    pub(crate) fn current(&self) -> Option<String> {
        self.cur.borrow().as_ref().filter(|c| c.is_alive()).map(|c| c.addr().to_string())
    }

    fn live(&self) -> Option<Live> {
        let cur = self.cur.borrow();
        let c = cur.as_ref()?;
        c.is_alive().then(|| Live::of(c))
    }

    /// The live connection, or a new one: every address is tried once, starting with the
    /// preferred one, each attempt bounded by `timeout` (and by `deadline`, but never
    /// shorter than [`MIN_ATTEMPT`]). Fails with [`Error::Unreachable`] naming every
    /// address tried and why.
    pub(crate) async fn get(&self, timeout: Duration, deadline: Instant) -> Result<Live, Error> {
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let _guard = self.connecting.lock().await;
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let stale = self.cur.borrow_mut().take();
        drop(stale);
        let n = self.addrs.len();
        let mut reasons = Vec::with_capacity(n);
        for k in 0..n {
            let i = (self.next.get() + k) % n;
            let addr = &self.addrs[i];
            let left = deadline.saturating_duration_since(Instant::now());
            let limit = timeout.min(left).max(MIN_ATTEMPT);
            match rpc::connect::<groupd::Client>(addr, limit).await {
                Ok(conn) => {
                    tracing::debug!("connected to groupd at {addr}");
                    self.next.set(i);
                    let live = Live::of(&conn);
                    *self.cur.borrow_mut() = Some(conn);
                    return Ok(live);
                }
                Err(reason) => {
                    tracing::debug!("groupd at {addr}: {reason}");
                    reasons.push(format!("{addr} ({reason})"));
                }
            }
        }
        Err(Error::Unreachable(reasons.join(", ")))
    }

    /// Forgets the connection to `addr` after it failed; the next connect starts with the
    /// address after it.
    pub(crate) fn failed(&self, addr: &str) {
        let gone = {
            let mut cur = self.cur.borrow_mut();
            if cur.as_ref().is_some_and(|c| c.addr() == addr) {
                cur.take()
            } else {
                None
            }
        };
        // Dropped outside the borrow: dropping fails the calls still waiting on it.
        drop(gone);
        if let Some(i) = self.addrs.iter().position(|a| a == addr) {
            self.next.set((i + 1) % self.addrs.len());
        }
    }
}
