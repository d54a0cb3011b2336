//! Session leases, as the master keeps them: a session whose keepalives stop for the lease
//! time is expired. Kept in memory only (time is not part of the replicated state); a new
//! master starts every session with a fresh lease, a grace period of one lease, so that a
//! failover never expires anyone by itself. Time the master itself did not run (stopped,
//! or starved of CPU) does not count against anyone: it could not hear their keepalives
//! ([`LeaseTable::held_up`]).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::group::SessionId;

#[derive(Debug)]
pub struct LeaseTable {
    lease_ms: u64,
    /// session → the time (ms, any monotonic clock) of its last keepalive.
    last_seen: BTreeMap<SessionId, u64>,
}

impl LeaseTable {
    pub fn new(lease: Duration) -> Self {
        let lease_ms = lease.as_millis() as u64;
        assert!(lease_ms > 0, "a lease must be longer than zero");
        LeaseTable { lease_ms, last_seen: BTreeMap::new() }
    }

    pub fn lease_ms(&self) -> u64 {
        self.lease_ms
    }

    /// Brings the table in line with the live sessions of the replicated state: sessions it
    /// did not know start a fresh lease at `now` (grace), gone ones are forgotten.
    pub fn sync(&mut self, live: impl IntoIterator<Item = SessionId>, now: u64) {
        let live: std::collections::BTreeSet<SessionId> = live.into_iter().collect();
        self.last_seen.retain(|id, _| live.contains(id));
        for id in live {
            self.last_seen.entry(id).or_insert(now);
        }
    }

    /// Records a keepalive. Returns false for a session the table does not know.
    pub fn touch(&mut self, id: SessionId, now: u64) -> bool {
        match self.last_seen.get_mut(&id) {
            Some(t) => {
                *t = (*t).max(now);
                true
            }
            None => false,
        }
    }

    /// Sessions whose lease ran out at `now`.
    pub fn expired(&self, now: u64) -> Vec<SessionId> {
        self.last_seen.iter().filter(|(_, &t)| now.saturating_sub(t) >= self.lease_ms).map(|(&id, _)| id).collect()
    }

    /// The master did not run for `ms` (its checks came that much later than due): every
    /// lease is extended by it, so that keepalives it could not read meanwhile expire nobody.
    /// A session silent before the stall still expires, only that much later.
    pub fn held_up(&mut self, ms: u64, now: u64) {
        for t in self.last_seen.values_mut() {
            *t = t.saturating_add(ms).min(now);
        }
    }

    /// Forgets everything: called when this groupd stops being master, so that if it
    /// becomes master again it grants every session a full lease anew.
    pub fn clear(&mut self) {
        self.last_seen.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_expires_only_after_a_full_lease_without_keepalive() {
        let mut t = LeaseTable::new(Duration::from_millis(5000));
        t.sync([1, 2], 1000);
        assert!(t.expired(5999).is_empty());
        assert!(t.touch(1, 4000));
        assert_eq!(t.expired(6000), vec![2]);
        assert_eq!(t.expired(8999), vec![2]);
        assert_eq!(t.expired(9000), vec![1, 2]);
    }

    #[test]
    fn new_master_grants_a_grace_period() {
        // The session's last keepalive went to the old master long ago; the new master
        // knows nothing of it and must not expire it at once.
        let mut t = LeaseTable::new(Duration::from_millis(5000));
        t.sync([7], 100_000);
        assert!(t.expired(104_999).is_empty());
        assert_eq!(t.expired(105_000), vec![7]);
    }

    #[test]
    fn sync_forgets_closed_sessions_and_keeps_known_times() {
        let mut t = LeaseTable::new(Duration::from_millis(100));
        t.sync([1, 2], 0);
        t.touch(1, 50);
        t.sync([1, 3], 60);
        assert!(!t.touch(2, 70), "closed session is forgotten");
        assert_eq!(t.expired(150), vec![1]);
        assert_eq!(t.expired(160), vec![1, 3]);
    }

    #[test]
    fn clocks_going_backwards_do_not_shorten_a_lease() {
        let mut t = LeaseTable::new(Duration::from_millis(100));
        t.sync([1], 500);
        t.touch(1, 400);
        assert!(t.expired(599).is_empty());
    }

    #[test]
    fn time_the_master_did_not_run_counts_against_nobody() {
        let mut t = LeaseTable::new(Duration::from_millis(5000));
        t.sync([1, 2], 0);
        t.touch(1, 4000);
        // The master stalled from 4500 to 12000: 7500 ms it could not hear anyone.
        t.held_up(7500, 12_000);
        assert!(t.expired(12_000).is_empty(), "nobody expires for the master's own stall");
        // Session 2, silent since 0, had 500 ms of its lease left at the stall: it gets them.
        assert_eq!(t.expired(12_500), vec![2]);
        assert_eq!(t.expired(16_500), vec![1, 2]);
        // Never later than now.
        t.held_up(1_000_000, 13_000);
        assert_eq!(t.expired(18_000), vec![1, 2]);
    }

    #[test]
    fn clear_then_sync_restarts_every_lease() {
        let mut t = LeaseTable::new(Duration::from_millis(100));
        t.sync([1], 0);
        t.clear();
        t.sync([1], 1000);
        assert!(t.expired(1099).is_empty());
    }
}
