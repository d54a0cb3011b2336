//! I/O statistics of a storage node, pure: what `sheepctl node stat` and `vdi stat` show.
//! A node keeps [`IoCounters`] (operations, bytes, errors and a latency histogram) for its
//! reads and writes as a whole and per VDI ([`IoTable`], bounded); the CLI takes two
//! snapshots of every node an interval apart and turns their difference into rates and
//! latency percentiles ([`IoRate`]), as `rbd perf image iostat` does with the OSDs'.

use std::collections::HashMap;

use serde::Serialize;

use crate::object::VdiId;

/// Latency buckets: bucket `i < BUCKETS - 1` holds latencies up to `FIRST_BOUND_US << i`
/// (50 µs to about 13 s, doubling, as the Prometheus histograms), the last one the rest.
pub const BUCKETS: usize = 20;
pub const FIRST_BOUND_US: u64 = 50;

/// The upper bound of bucket `i` in µs; `None` for the last, unbounded one.
pub fn bucket_bound_us(i: usize) -> Option<u64> {
    (i + 1 < BUCKETS).then(|| FIRST_BOUND_US << i)
}

/// The bucket a latency of `us` microseconds falls in.
pub fn bucket_of(us: u64) -> usize {
    (0..BUCKETS - 1).find(|&i| us <= FIRST_BOUND_US << i).unwrap_or(BUCKETS - 1)
}

/// Counts of one kind of request since the node started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IoCounters {
    /// Finished requests, failed ones too.
    pub ops: u64,
    /// Payload bytes of those that succeeded.
    pub bytes: u64,
    pub errors: u64,
    /// How many took how long (see [`bucket_of`]); failed ones too.
    pub buckets: [u64; BUCKETS],
}

impl IoCounters {
    pub fn record(&mut self, latency_us: u64, bytes: u64, ok: bool) {
        self.ops += 1;
        if ok {
            self.bytes += bytes;
        } else {
            self.errors += 1;
        }
        self.buckets[bucket_of(latency_us)] += 1;
    }

    pub fn add(&mut self, other: &IoCounters) {
        self.ops += other.ops;
        self.bytes += other.bytes;
        self.errors += other.errors;
        for (b, o) in self.buckets.iter_mut().zip(&other.buckets) {
            *b += o;
        }
    }

    /// What happened since `earlier` (an older snapshot of the same counters). A counter
    /// that went back (the node restarted in between) counts from zero.
    pub fn since(&self, earlier: &IoCounters) -> IoCounters {
        if self.ops < earlier.ops {
            return *self;
        }
        let mut d = IoCounters {
            ops: self.ops - earlier.ops,
            bytes: self.bytes.saturating_sub(earlier.bytes),
            errors: self.errors.saturating_sub(earlier.errors),
            buckets: [0; BUCKETS],
        };
        for (i, b) in d.buckets.iter_mut().enumerate() {
            *b = self.buckets[i].saturating_sub(earlier.buckets[i]);
        }
        d
    }

    /// The latency under which a fraction `q` (0..=1) of the requests finished, in µs,
    /// interpolated within its bucket as Prometheus' `histogram_quantile` does; `None`
    /// without requests. Past the last bound it says that bound.
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n > 0 && (below + n) as f64 >= rank {
                let Some(upper) = bucket_bound_us(i) else {
                    return bucket_bound_us(i - 1).map(|b| b as f64);
                };
                let lower = if i == 0 { 0 } else { FIRST_BOUND_US << (i - 1) };
                let within = (rank - below as f64) / n as f64;
                return Some(lower as f64 + (upper - lower) as f64 * within);
            }
            below += n;
        }
        bucket_bound_us(BUCKETS - 2).map(|b| b as f64)
    }
}

/// Rates of one kind of request over an interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct IoRate {
    pub ops_per_sec: f64,
    pub bytes_per_sec: f64,
    pub errors_per_sec: f64,
    /// Latency percentiles in µs (`None` without requests).
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
}

impl IoRate {
    /// `delta` happened in `secs` seconds; `share` of its operations and bytes are counted
    /// (1 / copies for writes summed over the replicas, which each see every write).
    pub fn of(delta: &IoCounters, secs: f64, share: f64) -> IoRate {
        assert!(secs > 0.0, "a rate over {secs} s");
        IoRate {
            ops_per_sec: delta.ops as f64 * share / secs,
            bytes_per_sec: delta.bytes as f64 * share / secs,
            errors_per_sec: delta.errors as f64 / secs,
            p50_us: delta.quantile_us(0.5),
            p99_us: delta.quantile_us(0.99),
        }
    }
}

/// Reads and writes of one VDI (or of a node as a whole).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReadWrite {
    pub read: IoCounters,
    /// Writes, creations with a write, and zeroing.
    pub write: IoCounters,
}

impl ReadWrite {
    pub fn record(&mut self, dir: Direction, latency_us: u64, bytes: u64, ok: bool) {
        match dir {
            Direction::Read => self.read.record(latency_us, bytes, ok),
            Direction::Write => self.write.record(latency_us, bytes, ok),
        }
    }

    pub fn add(&mut self, other: &ReadWrite) {
        self.read.add(&other.read);
        self.write.add(&other.write);
    }

    pub fn since(&self, earlier: &ReadWrite) -> ReadWrite {
        ReadWrite { read: self.read.since(&earlier.read), write: self.write.since(&earlier.write) }
    }
}

/// A node's counters: all its reads and writes, and per VDI for at most
/// [`IoTable::MAX_VDIS`] VDIs (the first ones seen; the requests of others are in the
/// totals and in `untracked`), so that its memory is bounded whatever the clients do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IoTable {
    pub total: ReadWrite,
    pub vdis: HashMap<VdiId, ReadWrite>,
    /// Requests of VDIs past the bound.
    pub untracked: u64,
}

/// Which of a VDI's counters a request goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Read,
    Write,
}

impl IoTable {
    /// About 340 bytes each: a little over 1 MiB at most.
    pub const MAX_VDIS: usize = 4096;

    /// One request of VDI `vid` (`None`: a request that failed before it named one is
    /// counted in the totals only).
    pub fn record(&mut self, vid: Option<VdiId>, dir: Direction, latency_us: u64, bytes: u64, ok: bool) {
        self.total.record(dir, latency_us, bytes, ok);
        let Some(vid) = vid else { return };
        let room = self.vdis.len() < Self::MAX_VDIS;
        match self.vdis.get_mut(&vid) {
            Some(rw) => rw.record(dir, latency_us, bytes, ok),
            None if room => self.vdis.entry(vid).or_default().record(dir, latency_us, bytes, ok),
            None => self.untracked += 1,
        }
    }
}

/// What a node answers `ioStats`: its counters since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeIo {
    pub uptime_ms: u64,
    pub total: ReadWrite,
    pub vdis: Vec<(VdiId, ReadWrite)>,
    pub untracked: u64,
}

impl IoTable {
    pub fn snapshot(&self, uptime_ms: u64) -> NodeIo {
        let mut vdis: Vec<_> = self.vdis.iter().map(|(v, rw)| (*v, *rw)).collect();
        vdis.sort_by_key(|(v, _)| *v);
        NodeIo { uptime_ms, total: self.total, vdis, untracked: self.untracked }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_fall_in_doubling_buckets_and_the_rest_in_the_last() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(50), 0);
        assert_eq!(bucket_of(51), 1);
        assert_eq!(bucket_of(100), 1);
        assert_eq!(bucket_of(101), 2);
        assert_eq!(bucket_bound_us(BUCKETS - 2), Some(50 << 18));
        assert_eq!(bucket_of(50 << 18), BUCKETS - 2);
        assert_eq!(bucket_of((50 << 18) + 1), BUCKETS - 1);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_bound_us(BUCKETS - 1), None);
    }

    #[test]
    fn quantiles_interpolate_within_their_bucket() {
        let mut c = IoCounters::default();
        assert_eq!(c.quantile_us(0.5), None);
        // 100 requests between 100 and 200 µs (bucket 2), one slow one of 3 ms (bucket 6).
        for _ in 0..100 {
            c.record(150, 4096, true);
        }
        c.record(3000, 4096, false);
        assert_eq!((c.ops, c.bytes, c.errors), (101, 100 * 4096, 1));
        let p50 = c.quantile_us(0.5).unwrap();
        assert!((100.0..=200.0).contains(&p50), "{p50}");
        assert!((p50 - 150.5).abs() < 1.0, "half of bucket 2's width past its lower bound: {p50}");
        let p99 = c.quantile_us(0.99).unwrap();
        assert!(p99 <= 200.0, "99 of 101 are under 200 µs: {p99}");
        assert_eq!(c.quantile_us(1.0), Some(3200.0), "the slowest is within bucket 6 (1.6 to 3.2 ms)");
        let mut slowest = IoCounters::default();
        slowest.record(u64::MAX, 0, true);
        assert_eq!(slowest.quantile_us(0.5), Some((50u64 << 18) as f64), "past the last bound: that bound");
    }

    #[test]
    fn a_difference_of_snapshots_gives_rates_and_a_restart_counts_from_zero() {
        let mut before = IoCounters::default();
        before.record(80, 4096, true);
        let mut after = before;
        for _ in 0..30 {
            after.record(80, 4096, true);
        }
        let d = after.since(&before);
        assert_eq!((d.ops, d.bytes, d.buckets[1]), (30, 30 * 4096, 30));
        let r = IoRate::of(&d, 2.0, 1.0 / 3.0);
        assert_eq!(r.ops_per_sec, 5.0, "30 replica writes of copies 3 in 2 s");
        assert_eq!(r.bytes_per_sec, 5.0 * 4096.0);
        assert!(r.p50_us.is_some_and(|p| (50.0..=100.0).contains(&p)));
        let mut restarted = IoCounters::default();
        restarted.record(80, 512, true);
        assert_eq!(restarted.since(&after), restarted);
    }

    #[test]
    fn a_table_counts_per_vdi_up_to_its_bound_and_everything_in_its_totals() {
        let mut t = IoTable::default();
        let vid = |n| VdiId::new(n).unwrap();
        t.record(Some(vid(1)), Direction::Write, 10, 4096, true);
        t.record(Some(vid(1)), Direction::Read, 10, 512, true);
        t.record(Some(vid(2)), Direction::Read, 10, 512, false);
        assert_eq!(t.vdis[&vid(1)].write.ops, 1);
        assert_eq!(t.vdis[&vid(1)].read.bytes, 512);
        assert_eq!(t.vdis[&vid(2)].read.errors, 1);
        assert_eq!((t.total.read.ops, t.total.write.ops), (2, 1));
        t.record(None, Direction::Write, 10, 0, false);
        assert_eq!((t.total.write.ops, t.total.write.errors, t.vdis.len()), (2, 1, 2), "in the totals only");
        // 10 more VDIs than room for: the last 10 are untracked.
        let more = IoTable::MAX_VDIS as u32 + 10 - 2;
        for n in 3..3 + more {
            t.record(Some(vid(n)), Direction::Read, 10, 1, true);
        }
        assert_eq!(t.vdis.len(), IoTable::MAX_VDIS);
        assert_eq!(t.untracked, 10);
        assert_eq!(t.total.read.ops, 2 + u64::from(more));
        t.record(Some(vid(1)), Direction::Write, 10, 4096, true);
        assert_eq!(t.vdis[&vid(1)].write.ops, 2, "a VDI tracked already still counts");
        let snap = t.snapshot(5);
        assert_eq!((snap.uptime_ms, snap.vdis.len(), snap.untracked), (5, IoTable::MAX_VDIS, 10));
        assert!(snap.vdis.windows(2).all(|w| w[0].0 < w[1].0), "sorted by VDI id");
    }
}
