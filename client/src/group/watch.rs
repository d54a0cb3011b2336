//! [`Watcher`]: follows the total order of events from a sequence number.

use std::rc::Rc;
use std::time::Duration;

use sheep_core::group::Event;

use super::{Error, GroupClient};

/// Follows the events of the group from a sequence number, in order, with no gap and no
/// duplicate, across reconnections to other groupd (it asks the next groupd for the events
/// from the first one it has not seen yet; every groupd's applied log is a prefix of the
/// same total order).
pub struct Watcher {
    client: Rc<GroupClient>,
    next: u64,
    max: u32,
    wait: Duration,
}

impl Watcher {
    /// Starts at `from` (1 = the beginning of the log), with batches of at most `max`
    /// events and long polls of `wait`.
    pub fn new(client: Rc<GroupClient>, from: u64, max: u32, wait: Duration) -> Watcher {
        Watcher { client, next: from.max(1), max: max.max(1), wait }
    }

    /// The sequence number of the next event to be returned.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Moves to `seq` (after a resynchronisation from `info`).
    pub fn seek(&mut self, seq: u64) {
        self.next = seq.max(1);
    }

    /// The next events (possibly none, when the wait ran out). Fails with `compacted` when
    /// the groupd no longer keeps the events asked for: resynchronise from `info`, then
    /// [`seek`](Self::seek) to its `applied_seq + 1`.
    pub async fn next_batch(&mut self) -> Result<Vec<Event>, Error> {
        let (events, _next) = self.client.watch(self.next, self.max, self.wait).await?;
        let (events, next) = in_order(self.next, events).map_err(|message| Error::Rpc {
            addr: self.client.connected_to().unwrap_or_else(|| "?".into()),
            message,
        })?;
        self.next = next;
        Ok(events)
    }
}

/// Keeps the events that follow `from` in order: drops ones already seen (seq < from),
/// refuses a gap. Returns them and the next sequence number.
fn in_order(from: u64, events: Vec<Event>) -> Result<(Vec<Event>, u64), String> {
    let mut next = from;
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        if e.seq < next {
            continue;
        }
        if e.seq > next {
            return Err(format!("watch answered event {} where {} was expected", e.seq, next));
        }
        next += 1;
        out.push(e);
    }
    Ok((out, next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sheep_core::group::EventKind;

    fn ev(seq: u64) -> Event {
        Event { seq, time_ms: 0, kind: EventKind::Resumed }
    }

    #[test]
    fn keeps_events_in_order() {
        let (evs, next) = in_order(3, vec![ev(3), ev(4), ev(5)]).unwrap();
        assert_eq!(evs.len(), 3);
        assert_eq!(next, 6);
        let (evs, next) = in_order(7, vec![]).unwrap();
        assert!(evs.is_empty());
        assert_eq!(next, 7);
    }

    #[test]
    fn drops_duplicates_and_refuses_gaps() {
        let (evs, next) = in_order(4, vec![ev(2), ev(3), ev(4)]).unwrap();
        assert_eq!(evs.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4]);
        assert_eq!(next, 5);
        assert!(in_order(4, vec![ev(5)]).is_err());
        assert!(in_order(4, vec![ev(4), ev(6)]).is_err());
    }
}
