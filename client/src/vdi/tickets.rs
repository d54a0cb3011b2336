//! The ticket a client other than the admin shows storage nodes (see
//! `sheep_core::auth::ticket`): fetched from groupd when first needed, renewed at half its
//! lifetime, and fetched anew when a call is for a VDI the ticket does not name (a VDI
//! created or snapshotted since: its id is new), at most once a second per VDI. Each new
//! ticket has a new serial; a connection made with an older one is replaced on its next use.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use futures::future::LocalBoxFuture;
use sheep_core::auth::ticket::Ticket;
use sheep_core::auth::ADMIN;
use sheep_rpc::transport::{self, Identity};
use tokio::time::Instant;

use crate::group::GroupClient;

/// Gets a ticket and its lifetime (from groupd).
pub type TicketSource = Rc<dyn Fn() -> LocalBoxFuture<'static, Result<(Vec<u8>, Duration), String>>>;

/// A ticket for a VDI it does not name is fetched anew no more often than this per VDI.
const REFETCH_AFTER: Duration = Duration::from_secs(1);
/// The most VDIs whose last refetch is remembered.
const MISSES_KEPT: usize = 1024;

/// The ticket source of a process: groupd's, when this process is a client other than the
/// admin (daemons and the admin show none: they have every right).
pub fn source_for(group: &Rc<GroupClient>) -> Option<TicketSource> {
    match transport::identity() {
        Identity::Client { keyring } if keyring.entity != ADMIN => {
            let group = group.clone();
            Some(Rc::new(move || {
                let group = group.clone();
                Box::pin(async move { group.ticket().await.map_err(|e| e.to_string()) })
            }))
        }
        _ => None,
    }
}

/// A ticket as a connection shows it.
#[derive(Clone)]
pub struct Shown {
    pub bytes: Rc<Vec<u8>>,
    pub serial: u64,
}

struct Held {
    shown: Shown,
    ticket: Ticket,
    renew_at: Instant,
    expires: Instant,
}

/// The pool's ticket.
#[derive(Default)]
pub struct Tickets {
    source: RefCell<Option<TicketSource>>,
    held: RefCell<Option<Held>>,
    fetching: tokio::sync::Mutex<()>,
    serial: Cell<u64>,
    /// When a ticket was last fetched for a VDI the one held did not name.
    misses: RefCell<HashMap<u32, Instant>>,
}

impl Tickets {
    pub fn set_source(&self, source: Option<TicketSource>) {
        *self.source.borrow_mut() = source;
    }

    /// The ticket to show for a call on VDI `vid`'s objects (any VDI: None); None when this
    /// process shows none. The error says why there is none.
    pub async fn for_call(&self, vid: Option<u32>) -> Result<Option<Shown>, String> {
        if self.source.borrow().is_none() {
            return Ok(None);
        }
        if let Some(s) = self.usable(vid) {
            return Ok(Some(s));
        }
        let _one_at_a_time = self.fetching.lock().await;
        if let Some(s) = self.usable(vid) {
            return Ok(Some(s));
        }
        let source = self.source.borrow().clone().expect("checked above");
        let fetched = source().await;
        if let Some(v) = vid {
            // Recorded once the fetch is done: a call that came meanwhile waited for it.
            let mut misses = self.misses.borrow_mut();
            if misses.len() >= MISSES_KEPT {
                misses.clear();
            }
            misses.insert(v, Instant::now());
        }
        match fetched {
            Ok((bytes, lifetime)) => {
                let ticket = Ticket::peek(&bytes).map_err(|e| format!("groupd's ticket does not read: {e}"))?;
                tracing::debug!(vdis = ticket.grants.len(), ?vid, "a new ticket");
                let now = Instant::now();
                self.serial.set(self.serial.get() + 1);
                let shown = Shown { bytes: Rc::new(bytes), serial: self.serial.get() };
                *self.held.borrow_mut() =
                    Some(Held { shown: shown.clone(), ticket, renew_at: now + lifetime / 2, expires: now + lifetime });
                Ok(Some(shown))
            }
            // groupd out of reach: the ticket held goes on while it is valid.
            Err(e) => match &*self.held.borrow() {
                Some(h) if Instant::now() < h.expires => Ok(Some(h.shown.clone())),
                _ => Err(format!("no ticket for the storage nodes: {e}")),
            },
        }
    }

    fn usable(&self, vid: Option<u32>) -> Option<Shown> {
        let held = self.held.borrow();
        let h = held.as_ref()?;
        let now = Instant::now();
        if now >= h.renew_at {
            return None;
        }
        if let Some(v) = vid.filter(|&v| h.ticket.access(v).is_none()) {
            // A VDI new since the ticket was fetched, or one this client may not touch: ask
            // again, but not more than once a second for the same VDI.
            let recently = self.misses.borrow().get(&v).is_some_and(|&t| now < t + REFETCH_AFTER);
            if !recently {
                return None;
            }
        }
        Some(h.shown.clone())
    }

    /// A node found the ticket of `serial` expired: the next call fetches another.
    pub fn expired(&self, serial: u64) {
        let mut held = self.held.borrow_mut();
        if held.as_ref().is_some_and(|h| h.shown.serial == serial) {
            *held = None;
        }
    }
}
