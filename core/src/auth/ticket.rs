//! Tickets: what groupd gives a client (other than the admin) so that storage nodes know,
//! without a table of their own, which VDIs' objects it may read or write. groupd resolves
//! the client's capabilities to the ids of the VDIs they cover at the time (with read access
//! to the snapshots a covered VDI goes on from: its unwritten blocks are theirs) and seals
//! them, with the client's name, its key's generation and an expiry, under a key derived
//! from the cluster's secret. A storage node opens the ticket (any daemon holds the secret),
//! derives the client's key from it and runs the usual handshake with that key: a ticket
//! alone, copied off the wire, proves nothing.
//!
//! ```text
//! "SHTK" | version u8 (1) | entity length u8 | entity | generation u64 | expires (unix ms) u64
//!        | grants u16 | (vid u32 | access u8) * grants, by vid | MAC (32)
//! ```

use super::caps::Access;
use super::{mac, mac_matches, validate_entity, Key, KEY_LEN};

const MAGIC: &[u8; 4] = b"SHTK";
const VERSION: u8 = 1;
/// The most VDIs one ticket names (its size stays under the handshake's bound).
pub const MAX_GRANTS: usize = 12_000;
/// The largest sealed ticket.
pub const MAX_TICKET: usize = MAGIC.len() + 2 + super::MAX_ENTITY_LEN + 8 + 8 + 2 + MAX_GRANTS * 5 + KEY_LEN;

/// A ticket, opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    pub entity: String,
    /// The generation of the client's key (a client removed and added again gets a new one).
    pub generation: u64,
    /// Until when storage nodes accept it (milliseconds since the Unix epoch).
    pub expires_ms: u64,
    /// (VDI id, access), sorted by id, each id once.
    pub grants: Vec<(u32, Access)>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("the ticket is malformed")]
    Malformed,
    #[error("the ticket was not issued by this cluster (or was changed)")]
    Forged,
    #[error("the ticket expired")]
    Expired,
}

fn ticket_key(secret: &Key) -> Key {
    mac(secret, &[b"sheep ticket key"])
}

impl Ticket {
    /// Makes a ticket of the grants `grants` (any order; of an id named twice the widest
    /// access counts).
    pub fn new(entity: &str, generation: u64, expires_ms: u64, mut grants: Vec<(u32, Access)>) -> Ticket {
        grants.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        grants.dedup_by_key(|g| g.0);
        grants.truncate(MAX_GRANTS);
        Ticket { entity: entity.into(), generation, expires_ms, grants }
    }

    fn body(&self) -> Vec<u8> {
        debug_assert!(self.grants.len() <= MAX_GRANTS && self.entity.len() <= super::MAX_ENTITY_LEN);
        let mut out = Vec::with_capacity(32 + self.entity.len() + self.grants.len() * 5 + KEY_LEN);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(self.entity.len() as u8);
        out.extend_from_slice(self.entity.as_bytes());
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(&self.expires_ms.to_be_bytes());
        out.extend_from_slice(&(self.grants.len() as u16).to_be_bytes());
        for (vid, access) in &self.grants {
            out.extend_from_slice(&vid.to_be_bytes());
            out.push(*access as u8);
        }
        out
    }

    /// The ticket's bytes, sealed under the cluster of `secret`.
    pub fn seal(&self, secret: &Key) -> Vec<u8> {
        let mut out = self.body();
        let tag = mac(&ticket_key(secret), &[&out]);
        out.extend_from_slice(&tag);
        out
    }

    /// Reads a ticket without checking its seal: what a client does with its own, to know
    /// what it may ask for. Never a basis for granting anything.
    pub fn peek(bytes: &[u8]) -> Result<Ticket, TicketError> {
        if bytes.len() < KEY_LEN {
            return Err(TicketError::Malformed);
        }
        Ticket::decode(&bytes[..bytes.len() - KEY_LEN])
    }

    /// Opens a ticket sealed under the cluster of `secret`, valid at `now_ms`.
    pub fn open(bytes: &[u8], secret: &Key, now_ms: u64) -> Result<Ticket, TicketError> {
        if bytes.len() < KEY_LEN || bytes.len() > MAX_TICKET {
            return Err(TicketError::Malformed);
        }
        let (body, tag) = bytes.split_at(bytes.len() - KEY_LEN);
        if !mac_matches(&ticket_key(secret), &[body], tag) {
            return Err(TicketError::Forged);
        }
        let t = Ticket::decode(body)?;
        if t.expires_ms <= now_ms {
            return Err(TicketError::Expired);
        }
        Ok(t)
    }

    fn decode(body: &[u8]) -> Result<Ticket, TicketError> {
        let mut r = Reader(body);
        if r.take(MAGIC.len())? != MAGIC || r.take(1)?[0] != VERSION {
            return Err(TicketError::Malformed);
        }
        let n = usize::from(r.take(1)?[0]);
        let entity = std::str::from_utf8(r.take(n)?).map_err(|_| TicketError::Malformed)?.to_string();
        validate_entity(&entity).map_err(|_| TicketError::Malformed)?;
        let generation = r.u64()?;
        let expires_ms = r.u64()?;
        let count = usize::from(u16::from_be_bytes(r.take(2)?.try_into().expect("2 bytes")));
        if count > MAX_GRANTS {
            return Err(TicketError::Malformed);
        }
        let mut grants = Vec::with_capacity(count);
        for _ in 0..count {
            let vid = u32::from_be_bytes(r.take(4)?.try_into().expect("4 bytes"));
            let access = Access::from_byte(r.take(1)?[0]).ok_or(TicketError::Malformed)?;
            if grants.last().is_some_and(|&(last, _)| last >= vid) {
                return Err(TicketError::Malformed);
            }
            grants.push((vid, access));
        }
        if !r.0.is_empty() {
            return Err(TicketError::Malformed);
        }
        Ok(Ticket { entity, generation, expires_ms, grants })
    }

    /// The access this ticket grants on VDI `vid`'s objects.
    pub fn access(&self, vid: u32) -> Option<Access> {
        self.grants.binary_search_by_key(&vid, |g| g.0).ok().map(|i| self.grants[i].1)
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TicketError> {
        if self.0.len() < n {
            return Err(TicketError::Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, TicketError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: Key = [5u8; KEY_LEN];

    fn ticket() -> Ticket {
        Ticket::new("client.vm", 3, 10_000, vec![(9, Access::Read), (2, Access::ReadWrite), (9, Access::ReadWrite)])
    }

    #[test]
    fn seals_opens_and_grants() {
        let t = ticket();
        assert_eq!(t.grants, vec![(2, Access::ReadWrite), (9, Access::ReadWrite)], "sorted, widest kept");
        let bytes = t.seal(&SECRET);
        assert_eq!(Ticket::open(&bytes, &SECRET, 9_999).unwrap(), t);
        assert_eq!(Ticket::peek(&bytes).unwrap(), t);
        assert_eq!(t.access(2), Some(Access::ReadWrite));
        assert_eq!(t.access(3), None);
        assert!(bytes.len() < MAX_TICKET);
    }

    #[test]
    fn refuses_expired_forged_and_changed_tickets() {
        let bytes = ticket().seal(&SECRET);
        assert_eq!(Ticket::open(&bytes, &SECRET, 10_000), Err(TicketError::Expired));
        assert_eq!(Ticket::open(&bytes, &[6u8; KEY_LEN], 0), Err(TicketError::Forged), "another cluster");
        // Any byte changed (a grant widened, the expiry moved on, the name) breaks the seal.
        for i in 0..bytes.len() - KEY_LEN {
            let mut changed = bytes.clone();
            changed[i] ^= 1;
            assert_eq!(Ticket::open(&changed, &SECRET, 0), Err(TicketError::Forged), "byte {i}");
        }
        assert_eq!(Ticket::open(&bytes[..10], &SECRET, 0), Err(TicketError::Malformed), "shorter than its seal");
        assert_eq!(Ticket::open(&[], &SECRET, 0), Err(TicketError::Malformed));
        let forged_body = Ticket::new("client.vm", 3, 10_000, vec![(7, Access::ReadWrite)]).body();
        assert_eq!(Ticket::decode(&forged_body[..forged_body.len() - 1]), Err(TicketError::Malformed));
    }
}
