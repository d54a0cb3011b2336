//! Per-object locks for the blocking disk threads: requests on one object run one at a
//! time, requests on different objects in parallel.

use std::collections::HashSet;
use std::sync::{Condvar, Mutex, MutexGuard};

use sheep_core::object::ObjectId;

#[derive(Default)]
pub struct LockTable {
    held: Mutex<Held>,
    released: Condvar,
}

#[derive(Default)]
struct Held {
    objects: HashSet<ObjectId>,
    /// Threads waiting in `lock`: a release wakes them only if there are any (a wake-up is
    /// a system call).
    waiters: usize,
}

/// Holds one object's lock until dropped.
pub struct ObjectGuard<'a> {
    table: &'a LockTable,
    oid: ObjectId,
}

impl LockTable {
    fn held(&self) -> MutexGuard<'_, Held> {
        // A panic while holding this short lock leaves the set consistent: take it anyway.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `oid` is free and takes it.
    pub fn lock(&self, oid: ObjectId) -> ObjectGuard<'_> {
        let mut held = self.held();
        while held.objects.contains(&oid) {
            held.waiters += 1;
            held = self.released.wait(held).unwrap_or_else(|p| p.into_inner());
            held.waiters -= 1;
        }
        held.objects.insert(oid);
        ObjectGuard { table: self, oid }
    }

    /// Takes `oid` if it is free, without waiting.
    pub fn try_lock(&self, oid: ObjectId) -> Option<ObjectGuard<'_>> {
        let taken = self.held().objects.insert(oid);
        taken.then(|| ObjectGuard { table: self, oid })
    }
}

impl Drop for ObjectGuard<'_> {
    fn drop(&mut self) {
        let mut held = self.table.held();
        let removed = held.objects.remove(&self.oid);
        debug_assert!(removed, "an object lock is released once");
        if held.waiters > 0 {
            drop(held);
            self.table.released.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn one_object_is_serialised() {
        let table = Arc::new(LockTable::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let oid = ObjectId::from_raw(1 << 32).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (table, inside) = (table.clone(), inside.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let _g = table.lock(oid);
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let other = ObjectId::from_raw(2 << 32).unwrap();
        let _a = table.lock(oid);
        assert!(table.try_lock(oid).is_none());
        let _b = table.try_lock(other).expect("a free object");
    }
}
