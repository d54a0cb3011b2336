//! Calls applied at most once: the [`RequestTable`] of the group state.
//!
//! A client retries a call whose connection broke or timed out, and the first try may have
//! been committed already (its answer was lost, or it is still on its way through a groupd
//! that forwarded it). Each state-changing call therefore carries a [`RequestId`]: the client's
//! random id and the call's number, the same on every try. The table remembers, per client,
//! the answers of its applied calls; a call applied already is answered from there and applied
//! no second time. It lives in the replicated state (and so in groupd's snapshots): whichever
//! groupd is master when the retry arrives knows the first try.
//!
//! A client may have several calls in flight (one `GroupClient` is shared by the tasks of a
//! process), so answers are kept per call, not only the client's last one. Each request also
//! says the lowest number of the client's calls still waiting for an answer
//! ([`RequestId::first_pending`]): the client never sends the lower ones again, so their
//! answers are forgotten, and a late copy of one of them (a forwarded try arriving after the
//! client moved on) is refused instead of applied — the *floor* below which nothing applies.
//!
//! Bounded: at most [`ANSWERS_KEPT`] answers per client (forgetting one raises the client's
//! floor past it, so what was forgotten is refused, never applied twice) and [`CLIENTS_KEPT`]
//! clients; the client whose last call is the oldest is forgotten first. Every decision
//! depends on the log only (positions, not clocks), so every replica keeps the same table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::types::{GroupError, Reply, RequestId};

/// What applying a command answers.
pub type Answer = Result<Reply, GroupError>;

/// How many clients the table remembers. A client forgotten and seen again is a new one: a
/// retry of a call of it would apply again, so this is far more clients than make calls
/// within one call's retry time (seconds).
pub const CLIENTS_KEPT: usize = 1024;
/// How many answers one client's entry keeps: more than the calls one client has in flight.
pub const ANSWERS_KEPT: usize = 32;

/// One client's applied calls.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ClientCalls {
    /// Log position of the client's newest request: the oldest is forgotten first.
    last_used: u64,
    /// Calls numbered below this are finished for the client (answered, or given up):
    /// never applied from now on.
    floor: u64,
    /// The answers of the client's applied calls numbered `floor` or more, by number.
    answers: BTreeMap<u64, Answer>,
}

/// Per client, the answers of its applied calls (see the module's documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestTable {
    clients: BTreeMap<u64, ClientCalls>,
}

impl RequestTable {
    /// Decides request `r`, arriving at log position `index`, before it is applied:
    /// `Ok(None)`: apply it (then [`Self::record`] its answer); `Ok(Some(answer))`: it was
    /// applied already, answer this; `Err`: refuse it unapplied (a late copy of a finished
    /// call, or a malformed id). A refusal changes nothing here.
    pub fn check(&mut self, index: u64, r: &RequestId) -> Result<Option<Answer>, GroupError> {
        if r.first_pending > r.seq {
            return Err(GroupError::BadRequest(format!(
                "request {} of client {:x} says call {} is still pending: that is a later one",
                r.seq, r.client, r.first_pending
            )));
        }
        let Some(calls) = self.clients.get_mut(&r.client) else { return Ok(None) };
        if r.seq < calls.floor {
            return Err(GroupError::StaleRequest { client: r.client, seq: r.seq });
        }
        calls.last_used = calls.last_used.max(index);
        if r.first_pending > calls.floor {
            calls.floor = r.first_pending;
            calls.answers = calls.answers.split_off(&r.first_pending);
        }
        Ok(calls.answers.get(&r.seq).cloned())
    }

    /// Remembers the answer of request `r`, applied at log position `index` (after
    /// [`Self::check`] said to apply it).
    pub fn record(&mut self, index: u64, r: &RequestId, answer: &Answer) {
        if !self.clients.contains_key(&r.client) && self.clients.len() >= CLIENTS_KEPT {
            // Ties cannot happen in a log (one position per request), but break them by id
            // anyway so the choice never depends on anything but the table.
            let oldest = self.clients.iter().min_by_key(|(id, c)| (c.last_used, **id)).map(|(id, _)| *id);
            if let Some(oldest) = oldest {
                self.clients.remove(&oldest);
            }
        }
        let calls = self.clients.entry(r.client).or_insert_with(|| ClientCalls {
            last_used: index,
            floor: r.first_pending,
            answers: BTreeMap::new(),
        });
        calls.last_used = calls.last_used.max(index);
        calls.answers.insert(r.seq, answer.clone());
        while calls.answers.len() > ANSWERS_KEPT {
            if let Some((forgotten, _)) = calls.answers.pop_first() {
                calls.floor = calls.floor.max(forgotten.saturating_add(1));
            }
        }
    }

    /// True if request `r` was applied already (or is finished): applying it again changes
    /// nothing.
    pub fn seen(&self, r: &RequestId) -> bool {
        self.clients.get(&r.client).is_some_and(|c| r.seq < c.floor || c.answers.contains_key(&r.seq))
    }

    /// How many clients are remembered.
    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    /// How many answers are remembered for `client`.
    pub fn answers_of(&self, client: u64) -> usize {
        self.clients.get(&client).map_or(0, |c| c.answers.len())
    }
}

#[cfg(test)]
#[path = "dedupe_tests.rs"]
mod tests;
