//! Epochs: every change of the storage node list makes a new epoch. The log of them
//! (epoch → full ordered node list) is kept forever and is identical on every member.

use serde::{Deserialize, Serialize};

pub type Epoch = u32;

/// A storage node as it appears in an epoch's node list.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Stable identity: the node's listen address "ip:port".
    pub id: String,
    /// Where its storaged API listens.
    pub addr: String,
    /// Failure domain: the replicas of one object go to distinct zones.
    pub zone: u32,
    /// Relative capacity; scales the node's share of the placement ring.
    pub weight: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: Epoch,
    pub time_ms: u64,
    pub nodes: Vec<NodeInfo>,
}

/// The epoch history, oldest first; epochs are numbered 1, 2, 3, … with no gap.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochLog {
    records: Vec<EpochRecord>,
}

impl EpochLog {
    pub fn latest(&self) -> Option<&EpochRecord> {
        self.records.last()
    }

    pub fn current(&self) -> Epoch {
        self.latest().map_or(0, |r| r.epoch)
    }

    pub fn get(&self, epoch: Epoch) -> Option<&EpochRecord> {
        let first = self.records.first()?.epoch;
        self.records.get(epoch.checked_sub(first)? as usize)
    }

    pub fn records(&self) -> &[EpochRecord] {
        &self.records
    }

    /// Appends the next epoch with `nodes` and returns its record.
    pub fn push(&mut self, time_ms: u64, nodes: Vec<NodeInfo>) -> EpochRecord {
        let rec = EpochRecord { epoch: self.current() + 1, time_ms, nodes };
        self.records.push(rec.clone());
        rec
    }

    /// Adds a record learnt from the group (a node's local copy of the history). Records
    /// must arrive in order; one already known is ignored, a gap or a conflict is refused.
    pub fn record(&mut self, rec: EpochRecord) -> Result<(), EpochGap> {
        match self.get(rec.epoch) {
            Some(known) if *known == rec => return Ok(()),
            Some(_) => return Err(EpochGap { have: self.current(), got: rec.epoch }),
            None => {}
        }
        // A forced re-format starts a new history: its holder resets the log on `Formatted`.
        if rec.epoch != self.current() + 1 {
            return Err(EpochGap { have: self.current(), got: rec.epoch });
        }
        self.records.push(rec);
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("epoch {got} does not follow the known history (newest known epoch {have})")]
pub struct EpochGap {
    pub have: Epoch,
    pub got: Epoch,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> NodeInfo {
        NodeInfo { id: id.into(), addr: id.into(), zone: 0, weight: 1 }
    }

    #[test]
    fn push_numbers_epochs_from_one_without_gaps() {
        let mut log = EpochLog::default();
        assert_eq!(log.current(), 0);
        assert_eq!(log.push(10, vec![node("a")]).epoch, 1);
        assert_eq!(log.push(20, vec![node("a"), node("b")]).epoch, 2);
        assert_eq!(log.get(2).unwrap().nodes.len(), 2);
        assert_eq!(log.get(0), None);
        assert_eq!(log.get(3), None);
    }

    #[test]
    fn record_accepts_in_order_and_ignores_repeats() {
        let mut src = EpochLog::default();
        let r1 = src.push(1, vec![node("a")]);
        let r2 = src.push(2, vec![node("b")]);
        let mut copy = EpochLog::default();
        copy.record(r1.clone()).unwrap();
        copy.record(r1.clone()).unwrap();
        copy.record(r2.clone()).unwrap();
        assert_eq!(copy, src);
    }

    #[test]
    fn record_refuses_gaps_and_conflicts() {
        let mut copy = EpochLog::default();
        copy.record(EpochRecord { epoch: 1, time_ms: 1, nodes: vec![node("a")] }).unwrap();
        let gap = copy.record(EpochRecord { epoch: 3, time_ms: 3, nodes: vec![] });
        assert_eq!(gap, Err(EpochGap { have: 1, got: 3 }));
        let conflict = copy.record(EpochRecord { epoch: 1, time_ms: 9, nodes: vec![] });
        assert!(conflict.is_err());
        assert_eq!(copy.current(), 1);
    }

    #[test]
    fn a_new_history_starts_at_one() {
        let mut copy = EpochLog::default();
        copy.record(EpochRecord { epoch: 1, time_ms: 1, nodes: vec![node("a")] }).unwrap();
        copy.record(EpochRecord { epoch: 2, time_ms: 2, nodes: vec![] }).unwrap();
        // After a forced re-format epoch 1 comes again, with other contents.
        let fresh = EpochRecord { epoch: 1, time_ms: 5, nodes: vec![node("z")] };
        assert!(copy.record(fresh.clone()).is_err(), "a conflicting epoch 1 is refused");
    }
}
