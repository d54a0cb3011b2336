//! The pure part of a check: from what each replica of one object holds, decide whether the
//! object is fine, which copy is the source of a repair and which replicas get it, or why it
//! cannot be repaired. No I/O here, so every rule is unit-tested.

/// A digest of one whole copy: its length and a 64-bit FNV-style hash of its bytes. Copies are
/// compared by digest so that the data of all replicas need not be kept side by side; an
/// accidental collision between two copies of one object is negligible at 64 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Digest {
    pub len: u64,
    pub hash: u64,
}

impl Digest {
    pub fn of(data: &[u8]) -> Digest {
        // FNV-1a's multiply over 8-byte words with a shift to fold high bits back (then the
        // tail byte by byte): several times faster than byte-wise FNV on 4 MiB objects, and
        // only equality matters here.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            h ^= u64::from_le_bytes(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
            h ^= h >> 29;
        }
        for &b in words.remainder() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Digest { len: data.len() as u64, hash: h }
    }

    /// A short form for reports.
    pub fn short(&self) -> String {
        format!("{:08x}", (self.hash >> 32) as u32)
    }
}

/// What one replica (a node the ring says should hold the object) has of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// A live copy that passed its checksums, and its version.
    Data(Digest, sheep_core::store::Version),
    /// No copy at all.
    Missing,
    /// Only an old copy in the node's `.stale/` (never served; not a live replica).
    StaleOnly,
    /// The node's copy fails its checksums.
    Corrupt,
    /// The node could not be asked (unreachable, timed out, another error): the object
    /// cannot be judged.
    Unknown(String),
}

impl Seen {
    pub fn describe(&self) -> String {
        match self {
            Seen::Data(d, _) => format!("ok ({})", d.short()),
            Seen::Missing => "missing".into(),
            Seen::StaleOnly => "missing (stale copy only)".into(),
            Seen::Corrupt => "corrupt".into(),
            Seen::Unknown(why) => format!("unknown: {why}"),
        }
    }
}

/// Why an object cannot be repaired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unrepairable {
    /// No replica has a copy that passes its checksums.
    NoValidCopy,
    /// Some replicas could not be asked (their indexes in placement order).
    Unknown(Vec<usize>),
}

impl std::fmt::Display for Unrepairable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unrepairable::NoValidCopy => write!(f, "no replica has a valid copy"),
            Unrepairable::Unknown(r) => write!(f, "replica(s) {r:?} could not be read"),
        }
    }
}

/// The decision for one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Every replica holds the same valid copy.
    Ok,
    /// Copy replica `source`'s content onto `targets` (indexes in placement order). `tie`:
    /// no content had a strict majority among the valid copies, so the primary's (or the
    /// first valid one in placement order) was chosen.
    Repair {
        source: usize,
        targets: Vec<usize>,
        tie: bool,
    },
    Unrepairable(Unrepairable),
}

/// Decides for one object from its replicas in placement order (index 0 = the primary).
///
/// A copy failing its checksums is never the source, nor is one older (of a lower version)
/// than another valid copy: it misses writes the newer one has. Among the valid copies of
/// the newest version the content held by most replicas wins; on a tie, the primary's
/// content if it is one of the tied ones, else the tied content seen first in placement
/// order. Every replica not holding the
/// winning content is a target. A replica that could not be asked makes the object
/// unrepairable: its copy might be the one that should have won.
pub fn decide(replicas: &[Seen]) -> Plan {
    let unknown: Vec<usize> =
        replicas.iter().enumerate().filter(|(_, s)| matches!(s, Seen::Unknown(_))).map(|(i, _)| i).collect();
    if !unknown.is_empty() {
        return Plan::Unrepairable(Unrepairable::Unknown(unknown));
    }
    let newest = replicas.iter().filter_map(|s| if let Seen::Data(_, v) = s { Some(*v) } else { None }).max();
    // (digest, count, first index), in order of first appearance.
    let mut groups: Vec<(Digest, usize, usize)> = Vec::new();
    for (i, s) in replicas.iter().enumerate() {
        if let Seen::Data(d, v) = s {
            if Some(*v) != newest {
                continue;
            }
            match groups.iter_mut().find(|g| g.0 == *d) {
                Some(g) => g.1 += 1,
                None => groups.push((*d, 1, i)),
            }
        }
    }
    let Some(best) = groups.iter().map(|g| g.1).max() else {
        return Plan::Unrepairable(Unrepairable::NoValidCopy);
    };
    let tied: Vec<&(Digest, usize, usize)> = groups.iter().filter(|g| g.1 == best).collect();
    // Groups are in order of first appearance, so the first tied group holds the primary
    // if the primary is among them, else the earliest replica in placement order.
    let (winner, _, source) = *tied[0];
    let targets: Vec<usize> = replicas
        .iter()
        .enumerate()
        .filter(|(_, s)| !matches!(s, Seen::Data(d, _) if *d == winner))
        .map(|(i, _)| i)
        .collect();
    if targets.is_empty() {
        return Plan::Ok;
    }
    Plan::Repair { source, targets, tie: tied.len() > 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Seen {
        Seen::Data(Digest::of(&[n; 100]), 1)
    }

    #[test]
    fn check_the_newest_version_wins_even_in_the_minority() {
        let v = |n: u8, version: u64| Seen::Data(Digest::of(&[n; 100]), version);
        assert_eq!(decide(&[v(1, 5), v(2, 9), v(1, 5)]), Plan::Repair { source: 1, targets: vec![0, 2], tie: false });
        // The same content at another version needs no repair.
        assert_eq!(decide(&[v(1, 5), v(1, 9)]), Plan::Ok);
    }

    #[test]
    fn check_all_equal_is_ok() {
        assert_eq!(decide(&[d(1), d(1), d(1)]), Plan::Ok);
        assert_eq!(decide(&[d(7)]), Plan::Ok);
    }

    #[test]
    fn check_majority_wins_over_the_primary() {
        assert_eq!(decide(&[d(2), d(1), d(1)]), Plan::Repair { source: 1, targets: vec![0], tie: false });
        assert_eq!(decide(&[d(1), d(2), d(1)]), Plan::Repair { source: 0, targets: vec![1], tie: false });
    }

    #[test]
    fn check_missing_stale_and_corrupt_are_targets_never_sources() {
        let p = decide(&[Seen::Corrupt, d(1), Seen::Missing, Seen::StaleOnly]);
        assert_eq!(p, Plan::Repair { source: 1, targets: vec![0, 2, 3], tie: false });
        // One valid copy against two corrupt ones: the valid one wins.
        let p = decide(&[Seen::Corrupt, Seen::Corrupt, d(3)]);
        assert_eq!(p, Plan::Repair { source: 2, targets: vec![0, 1], tie: false });
    }

    #[test]
    fn check_ties_go_to_the_primary() {
        assert_eq!(decide(&[d(1), d(2)]), Plan::Repair { source: 0, targets: vec![1], tie: true });
        assert_eq!(decide(&[d(1), d(2), d(3)]), Plan::Repair { source: 0, targets: vec![1, 2], tie: true });
        // Primary not valid: the first tied content in placement order.
        let p = decide(&[Seen::Corrupt, d(2), d(3)]);
        assert_eq!(p, Plan::Repair { source: 1, targets: vec![0, 2], tie: true });
        // Primary valid but in the minority, two contents tied above it: the first of those.
        let p = decide(&[d(9), d(2), d(2), d(3), d(3)]);
        assert_eq!(p, Plan::Repair { source: 1, targets: vec![0, 3, 4], tie: true });
    }

    #[test]
    fn check_all_corrupt_or_missing_is_unrepairable() {
        let none = Plan::Unrepairable(Unrepairable::NoValidCopy);
        assert_eq!(decide(&[Seen::Corrupt, Seen::Corrupt, Seen::Corrupt]), none);
        assert_eq!(decide(&[Seen::Missing, Seen::Missing, Seen::Missing]), none);
        assert_eq!(decide(&[Seen::Missing, Seen::StaleOnly, Seen::Corrupt]), none);
        assert_eq!(decide(&[]), none);
    }

    #[test]
    fn check_an_unreadable_replica_blocks_repair() {
        let p = decide(&[d(1), Seen::Unknown("timeout".into()), Seen::Missing]);
        assert_eq!(p, Plan::Unrepairable(Unrepairable::Unknown(vec![1])));
    }

    #[test]
    fn check_digests_see_length_and_content() {
        assert_ne!(Digest::of(&[0; 8]), Digest::of(&[0; 16]));
        assert_ne!(Digest::of(b"abcdefgh1"), Digest::of(b"abcdefgh2"));
        assert_ne!(Digest::of(b"abcdefgi"), Digest::of(b"abcdefgh"));
        assert_eq!(Digest::of(b"same bytes"), Digest::of(b"same bytes"));
    }
}
