//! What a reader may see, given what was acknowledged: the writes of one sequential writer
//! to its VDI's slots, each with when it started and when (and how) it ended.
//!
//! A read (or a snapshot) taken over `[t0, t1]` of a slot may return the slot's last write
//! acknowledged before `t0` (zeros if there was none) or any later write that had started
//! by `t1` — acknowledged, failed or still in flight, since a failed write may or may not
//! have landed. Anything else is a lost or un-done write.

use std::time::Instant;

/// Bytes per slot: one 4 KiB block.
pub const SLOT: usize = 4096;

/// One write as the writer saw it.
#[derive(Clone, Debug)]
pub struct Write {
    pub seq: u64,
    pub start: Instant,
    /// `Some(true)`: acknowledged at `end`; `Some(false)`: failed; `None`: in flight.
    pub acked: Option<bool>,
    pub end: Option<Instant>,
}

/// Every write of one writer, per slot, in the order it issued them.
pub struct Model {
    /// A tag that makes this writer's blocks unlike any other's.
    pub writer: u8,
    slots: Vec<Vec<Write>>,
    next_seq: u64,
    pub acked: u64,
    pub failed: u64,
}

/// The content of write `seq` of `writer` to `slot`: its identity in the first 24 bytes,
/// then bytes derived from it, so that a block names the write it came from.
pub fn block(writer: u8, slot: usize, seq: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(SLOT);
    b.extend_from_slice(b"chaos");
    b.push(writer);
    b.extend_from_slice(&(slot as u16).to_le_bytes());
    b.extend_from_slice(&seq.to_le_bytes());
    b.extend_from_slice(&(!seq).to_le_bytes());
    let mut x = seq ^ ((slot as u64) << 32) ^ (u64::from(writer) << 56);
    while b.len() < SLOT {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        b.push((x >> 33) as u8);
    }
    b
}

/// What a block read back is: zeros, a write of ours (its seq), or something else.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    Zeros,
    Write(u64),
    Garbage(String),
}

pub fn decode(writer: u8, slot: usize, data: &[u8]) -> Seen {
    assert_eq!(data.len(), SLOT);
    if data.iter().all(|&b| b == 0) {
        return Seen::Zeros;
    }
    let seq = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
    if data == block(writer, slot, seq).as_slice() {
        Seen::Write(seq)
    } else {
        Seen::Garbage(format!("{:02x?}…", &data[..24]))
    }
}

impl Model {
    pub fn new(writer: u8, slots: usize) -> Model {
        Model { writer, slots: vec![Vec::new(); slots], next_seq: 1, acked: 0, failed: 0 }
    }

    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Records the start of a write to `slot`; returns its seq.
    pub fn start(&mut self, slot: usize) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        assert!(self.slots[slot].last().is_none_or(|w| w.acked.is_some()), "one write per slot at a time");
        self.slots[slot].push(Write { seq, start: Instant::now(), acked: None, end: None });
        seq
    }

    pub fn end(&mut self, slot: usize, seq: u64, ok: bool) {
        let w = self.slots[slot].iter_mut().rev().find(|w| w.seq == seq).expect("a started write");
        assert!(w.acked.is_none(), "write {seq} ended twice");
        w.acked = Some(ok);
        w.end = Some(Instant::now());
        if ok {
            self.acked += 1;
        } else {
            self.failed += 1;
        }
    }

    /// Checks what a read over `[t0, t1]` returned for `slot`; `Err` says what was wrong.
    pub fn check(&self, slot: usize, t0: Instant, t1: Instant, data: &[u8]) -> Result<(), String> {
        let writes = &self.slots[slot];
        let base = writes.iter().rposition(|w| w.acked == Some(true) && w.end.is_some_and(|e| e < t0));
        let allowed: Vec<u64> = writes
            .iter()
            .enumerate()
            .filter(|(i, w)| Some(*i) == base || (base < Some(*i) && w.start < t1))
            .map(|(_, w)| w.seq)
            .collect();
        let newest_acked = base.map(|i| writes[i].seq);
        match decode(self.writer, slot, data) {
            Seen::Write(seq) if allowed.contains(&seq) => Ok(()),
            Seen::Zeros if base.is_none() => Ok(()),
            seen => Err(format!(
                "writer {} slot {slot}: read {seen:?}, but write {newest_acked:?} was acknowledged before the read \
                 (allowed: {allowed:?}; zeros only if none was)",
                self.writer
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_acknowledged_data_is_a_violation_newer_or_unsure_is_not() {
        let mut m = Model::new(1, 2);
        let t_start = Instant::now();
        assert!(m.check(0, t_start, t_start, &[0; SLOT]).is_ok());
        let a = m.start(0);
        m.end(0, a, true);
        let b = m.start(0);
        m.end(0, b, false);
        let after = Instant::now();
        assert!(m.check(0, after, after, &block(1, 0, a)).is_ok());
        assert!(m.check(0, after, after, &block(1, 0, b)).is_ok(), "a failed write may have landed");
        assert!(m.check(0, after, after, &[0; SLOT]).is_err(), "zeros after an acknowledged write");
        let c = m.start(0);
        m.end(0, c, true);
        let later = Instant::now();
        assert!(m.check(0, later, later, &block(1, 0, a)).is_err(), "older than the acknowledged one");
        assert!(m.check(0, later, later, &block(1, 0, c)).is_ok());
        assert!(m.check(0, later, later, &block(2, 0, c)).is_err(), "another writer's block");
        assert!(m.check(0, t_start, t_start, &block(1, 0, a)).is_err(), "a write that started after the read");
    }
}
