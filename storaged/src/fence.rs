//! Fencing of VDI writers (pure): per VDI name, the newest lock this node has seen, so that a
//! writer whose lock was taken from it (a forced unlock, an expired session) can never write
//! again once another writer holds the lock.
//!
//! Tokens are the groupd log indexes that granted the locks: strictly increasing across
//! grants of the whole cluster, so "older token" means "an older grant". The table follows
//! the group's events (`Locked`, `Unlocked`, `Shutdown`) and, after a (re)start, the `locks`
//! of `info`; the event stream may lag, so a token newer than any seen is accepted and
//! remembered (only groupd hands out tokens: a writer showing one proves that grant exists).

use std::collections::HashMap;

/// Why a write was refused (the wire code is `fenced`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fenced {
    #[error("the lock token {fence} of VDI {vdi:?} is stale: the VDI was locked again (token {current})")]
    Stale { vdi: String, fence: u64, current: u64 },
    #[error("VDI {vdi:?} is locked (token {current}) and the writer holds no lock")]
    Unlocked { vdi: String, current: u64 },
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct LockState {
    /// The token of the newest `Locked` event (or `info` lock) seen.
    token: u64,
    /// Whether that lock is still held, as far as the events tell.
    held: bool,
    /// The newest token shown by a writer; above `token` while the events lag behind the
    /// grant: the VDI then counts as locked.
    shown: u64,
}

impl LockState {
    fn newest(&self) -> u64 {
        self.token.max(self.shown)
    }

    fn locked(&self) -> bool {
        self.held || self.shown > self.token
    }
}

/// The newest lock of every VDI name seen, held or not.
#[derive(Debug, Default)]
pub struct Fences {
    locks: HashMap<String, LockState>,
}

impl Fences {
    /// A `Locked` event.
    pub fn locked(&mut self, vdi: &str, token: u64) {
        let s = self.locks.entry(vdi.to_string()).or_default();
        if token >= s.token {
            s.token = token;
            s.held = true;
        }
    }

    /// An `Unlocked` event (forced or not): the last token stays, so its holder stays
    /// fenced off.
    pub fn unlocked(&mut self, vdi: &str) {
        if let Some(s) = self.locks.get_mut(vdi) {
            s.held = false;
        }
    }

    /// A cluster shutdown ends every session, and so every lock (without `Unlocked` events).
    pub fn all_unlocked(&mut self) {
        for s in self.locks.values_mut() {
            s.held = false;
        }
    }

    /// A new format: nothing of the old cluster applies.
    pub fn clear(&mut self) {
        self.locks.clear();
    }

    /// Takes the locks currently held as `info` lists them (after a start or a
    /// resynchronisation, when the events in between were not seen): every other VDI is not
    /// locked any more; tokens already known are kept (they only grow).
    pub fn sync<'a>(&mut self, held: impl IntoIterator<Item = (&'a str, u64)>) {
        self.all_unlocked();
        for (vdi, token) in held {
            self.locked(vdi, token);
        }
    }

    /// The rule for a write to VDI `vdi` carrying lock token `fence` (0: no lock held):
    /// refused if the token is older than the newest lock seen, or if there is none while the
    /// VDI is locked. A newer token is accepted and remembered.
    pub fn check(&mut self, vdi: &str, fence: u64) -> Result<(), Fenced> {
        let Some(s) = self.locks.get_mut(vdi) else {
            if fence != 0 {
                self.locks.insert(vdi.to_string(), LockState { shown: fence, ..LockState::default() });
            }
            return Ok(());
        };
        let current = s.newest();
        if fence == 0 {
            if s.locked() {
                return Err(Fenced::Unlocked { vdi: vdi.to_string(), current });
            }
            return Ok(());
        }
        if fence < current {
            return Err(Fenced::Stale { vdi: vdi.to_string(), fence, current });
        }
        s.shown = s.shown.max(fence);
        Ok(())
    }

    /// The newest token seen for `vdi` and whether it is locked.
    #[cfg(test)]
    pub fn state(&self, vdi: &str) -> Option<(u64, bool)> {
        self.locks.get(vdi).map(|s| (s.newest(), s.locked()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_token_is_refused_once_the_lock_moved() {
        let mut f = Fences::default();
        // Never locked: anyone writes.
        assert_eq!(f.check("v", 0), Ok(()));
        f.locked("v", 10);
        assert_eq!(f.check("v", 10), Ok(()));
        assert_eq!(f.check("v", 0), Err(Fenced::Unlocked { vdi: "v".into(), current: 10 }));
        assert_eq!(f.check("v", 9), Err(Fenced::Stale { vdi: "v".into(), fence: 9, current: 10 }));
        // A forced unlock: the old holder stays fenced, a lockless writer may write again.
        f.unlocked("v");
        assert_eq!(f.check("v", 0), Ok(()));
        assert_eq!(f.check("v", 10), Ok(()));
        assert!(f.check("v", 3).is_err());
        f.locked("v", 20);
        assert_eq!(f.check("v", 10), Err(Fenced::Stale { vdi: "v".into(), fence: 10, current: 20 }));
        assert_eq!(f.check("v", 20), Ok(()));
        // Other VDIs are not concerned.
        assert_eq!(f.check("w", 0), Ok(()));
        assert_eq!(f.check("w", 1), Ok(()));
    }

    #[test]
    fn a_newer_token_than_seen_is_accepted_and_fences_the_older() {
        let mut f = Fences::default();
        f.locked("v", 10);
        // The new holder writes before this node saw its Locked event (the old one's
        // Unlocked not seen either).
        assert_eq!(f.check("v", 15), Ok(()));
        assert_eq!(f.state("v"), Some((15, true)));
        assert!(f.check("v", 10).is_err(), "the old holder is fenced at once");
        f.unlocked("v"); // the old holder's Unlocked, late
        assert!(f.check("v", 0).is_err(), "token 15's lock may still be held");
        f.locked("v", 15);
        f.unlocked("v");
        assert_eq!(f.check("v", 0), Ok(()));
        assert!(f.check("v", 14).is_err());
        // A token shown for a VDI never seen locked.
        assert_eq!(f.check("n", 7), Ok(()));
        assert!(f.check("n", 6).is_err() && f.check("n", 0).is_err());
        // An old Locked event replayed late changes nothing.
        f.locked("v", 12);
        assert_eq!(f.state("v"), Some((15, false)));
    }

    #[test]
    fn sync_shutdown_and_format() {
        let mut f = Fences::default();
        f.locked("a", 5);
        f.locked("b", 6);
        // info lists only b (a's Unlocked was missed) and a new lock on c.
        f.sync([("b", 6), ("c", 9)]);
        assert_eq!(f.state("a"), Some((5, false)));
        assert_eq!(f.state("b"), Some((6, true)));
        assert_eq!(f.state("c"), Some((9, true)));
        assert!(f.check("a", 4).is_err() && f.check("a", 0).is_ok());
        f.all_unlocked();
        assert!(f.check("c", 0).is_ok() && f.check("c", 8).is_err());
        f.clear();
        assert!(f.check("c", 8).is_ok());
    }
}
