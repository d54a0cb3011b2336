use super::*;

const TIB: u64 = 1 << 40;
const MIB: u64 = 1 << 20;

fn vid(raw: u32) -> VdiId {
    VdiId::new(raw).unwrap()
}

fn inode(size: u64) -> Inode {
    Inode::new(InodeSpec {
        name: "disk",
        vid: vid(0x00abcd),
        size,
        copies: 3,
        object_size_shift: DEFAULT_OBJECT_SIZE_SHIFT,
        ctime_ms: 1_700_000_000_000,
    })
    .unwrap()
}

/// splitmix64: a tiny deterministic generator, enough to vary test data.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Appends a correct checksum, so a test can reach the checks behind it.
fn seal(mut body: Vec<u8>) -> Vec<u8> {
    let checksum = fnv1a64(&body);
    body.extend_from_slice(&checksum.to_le_bytes());
    body
}

fn body_of(encoded: &[u8]) -> Vec<u8> {
    encoded[..encoded.len() - CHECKSUM_LEN].to_vec()
}

#[test]
fn geometry() {
    let i = inode(10 * MIB + 1);
    assert_eq!(i.object_size(), 4 * MIB);
    assert_eq!(i.max_objects(), 3, "ceil(10 MiB + 1 / 4 MiB)");
    assert_eq!(i.size(), 10 * MIB + 1);
    assert_eq!(inode(4 * TIB).max_objects(), MAX_OBJECTS);
    assert_eq!(max_vdi_size(22), 4 * TIB);
    assert_eq!((0..3).map(|idx| i.owner(idx)).collect::<Vec<_>>(), [None, None, None]);
    assert_eq!(i.owner(3), None, "past the end reads as unwritten, never panics");
}

#[test]
fn new_refuses_bad_specs() {
    let spec = InodeSpec { name: "disk", vid: vid(1), size: MIB, copies: 3, object_size_shift: 22, ctime_ms: 0 };
    assert!(Inode::new(spec.clone()).is_ok());
    let too_large = InodeSpec { size: 4 * TIB + 1, ..spec.clone() };
    assert_eq!(Inode::new(too_large), Err(InodeError::TooLarge { size: 4 * TIB + 1, max: 4 * TIB }));
    assert_eq!(Inode::new(InodeSpec { size: 0, ..spec.clone() }), Err(InodeError::ZeroSize));
    assert_eq!(Inode::new(InodeSpec { copies: 0, ..spec.clone() }), Err(InodeError::BadCopies(0)));
    assert_eq!(Inode::new(InodeSpec { copies: 32, ..spec.clone() }), Err(InodeError::BadCopies(32)));
    let tiny = InodeSpec { object_size_shift: 11, ..spec.clone() };
    assert_eq!(Inode::new(tiny), Err(InodeError::BadObjectSizeShift(11)));
    let bad_name = InodeSpec { name: "a/b", ..spec.clone() };
    assert_eq!(Inode::new(bad_name), Err(InodeError::BadName(NameError::Slash { what: "a VDI name" })));
}

#[test]
fn owners_and_resize() {
    let mut i = inode(8 * MIB);
    i.set_owner(1, Some(vid(7))).unwrap();
    assert_eq!(i.owner(1), Some(vid(7)));
    assert_eq!(i.data_vdi_id(), [0, 7]);
    i.set_owner(1, None).unwrap();
    assert_eq!(i.owner(1), None);
    assert_eq!(i.set_owner(2, Some(vid(7))), Err(InodeError::IndexOutOfRange { idx: 2, max_objects: 2 }));

    i.set_owner(0, Some(vid(9))).unwrap();
    i.resize(8 * MIB).unwrap();
    i.resize(13 * MIB).unwrap();
    assert_eq!((i.size(), i.max_objects()), (13 * MIB, 4));
    assert_eq!(i.data_vdi_id(), [9, 0, 0, 0], "grown objects are unwritten");
    assert_eq!(i.resize(MIB), Err(InodeError::Shrink { from: 13 * MIB, to: MIB }));
    assert!(matches!(i.resize(4 * TIB + 1), Err(InodeError::TooLarge { .. })));
    assert_eq!(i.size(), 13 * MIB, "a refused resize changes nothing");
}

#[test]
fn snapshots_are_read_only_and_children_share_their_objects() {
    let mut base = inode(12 * MIB);
    base.set_owner(0, Some(base.vid)).unwrap();
    base.read_only = true;
    base.tag = "before upgrade".into();
    assert_eq!(base.set_owner(1, Some(base.vid)), Err(InodeError::ReadOnly));
    assert_eq!(base.resize(16 * MIB), Err(InodeError::ReadOnly));

    let working = base.new_child("disk", vid(0x00abce), 42).unwrap();
    assert_eq!(working.parent, Some(base.vid));
    assert_eq!(working.snapshot_id, 2);
    assert!(!working.read_only && working.tag.is_empty());
    assert_eq!(working.data_vdi_id(), base.data_vdi_id());
    assert_eq!((working.size(), working.copies, working.ctime_ms), (12 * MIB, 3, 42));

    let clone = base.new_child("other", vid(5), 43).unwrap();
    assert_eq!((clone.snapshot_id, clone.owner(0)), (1, Some(base.vid)));
    assert!(base.new_child("..", vid(6), 0).is_err());
}

#[test]
fn codec_round_trips_an_empty_4_tib_vdi_in_a_few_bytes() {
    let i = inode(4 * TIB);
    let bytes = i.encode();
    assert!(bytes.len() < 100, "a sparse 4 TiB inode took {} bytes", bytes.len());
    assert_eq!(Inode::decode(&bytes), Ok(i));
}

#[test]
fn codec_round_trips_a_fully_written_4_tib_vdi_in_a_few_bytes() {
    let mut i = inode(4 * TIB);
    for idx in 0..i.max_objects() {
        i.set_owner(idx, Some(i.vid)).unwrap();
    }
    let bytes = i.encode();
    assert!(bytes.len() < 100, "a dense 4 TiB inode took {} bytes", bytes.len());
    assert_eq!(Inode::decode(&bytes), Ok(i));
}

#[test]
fn codec_round_trips_a_scattered_table_raw() {
    // Every other object rewritten after a snapshot: runs would be larger than the raw table.
    let mut i = inode(4 * TIB);
    i.parent = Some(vid(0x00abcc));
    i.snapshot_id = 2;
    for idx in 0..i.max_objects() {
        let owner = if idx % 2 == 0 { vid(0x00abcc) } else { i.vid };
        i.set_owner(idx, Some(owner)).unwrap();
    }
    let bytes = i.encode();
    let raw_table = 4 * MAX_OBJECTS as usize;
    assert!(bytes.len() > raw_table && bytes.len() < raw_table + 100, "{} bytes", bytes.len());
    assert_eq!(Inode::decode(&bytes), Ok(i));
}

#[test]
fn codec_round_trips_random_tables() {
    let mut rng = 7;
    for round in 0..50 {
        let objects = 1 + splitmix64(&mut rng) % 300;
        let mut i = inode(objects * 4 * MIB - splitmix64(&mut rng) % MIB);
        i.tag = format!("tag {round}");
        i.read_only = round % 3 == 0;
        i.parent = (round % 2 == 0).then(|| vid(round + 1));
        let mut table = Vec::new();
        for _ in 0..i.max_objects() {
            // Few distinct owners, so both encodings occur.
            let pick = splitmix64(&mut rng) % (2 + u64::from(round % 4));
            table.push(pick as u32 * 0x10_0001 % 0x100_0000);
        }
        i.data_vdi_id = table;
        let bytes = i.encode();
        assert_eq!(Inode::decode(&bytes), Ok(i), "round {round}");
    }
}

#[test]
fn every_truncation_is_refused() {
    let mut i = inode(40 * MIB);
    i.tag = "t".into();
    i.set_owner(3, Some(vid(3))).unwrap();
    let bytes = i.encode();
    for len in 0..bytes.len() {
        assert!(Inode::decode(&bytes[..len]).is_err(), "a prefix of {len} bytes was accepted");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(Inode::decode(&longer).is_err());
}

#[test]
fn every_flipped_bit_is_refused() {
    let mut i = inode(40 * MIB);
    i.set_owner(3, Some(vid(3))).unwrap();
    let bytes = i.encode();
    for pos in 0..bytes.len() {
        for bit in 0..8 {
            let mut garbled = bytes.clone();
            garbled[pos] ^= 1 << bit;
            assert!(Inode::decode(&garbled).is_err(), "flipping bit {bit} of byte {pos} was accepted");
        }
    }
}

#[test]
fn random_garbage_never_panics() {
    let mut rng = 99;
    let good = inode(40 * MIB).encode();
    for _ in 0..2000 {
        let len = (splitmix64(&mut rng) % 200) as usize;
        let mut junk: Vec<u8> = (0..len).map(|_| splitmix64(&mut rng) as u8).collect();
        if splitmix64(&mut rng).is_multiple_of(2) && junk.len() >= 6 {
            junk[..6].copy_from_slice(&good[..6]); // get past the magic and version
        }
        assert!(Inode::decode(&junk).is_err());
        // The same junk with a valid checksum reaches the field checks.
        let _ = Inode::decode(&seal(junk));
    }
}

#[test]
fn header_errors_are_specific() {
    let bytes = inode(MIB).encode();
    assert_eq!(Inode::decode(b"SD"), Err(InodeError::Truncated));
    assert_eq!(Inode::decode(b"NOPE\x01\x00rest-of-it"), Err(InodeError::BadMagic));
    let mut newer = bytes.clone();
    newer[4] = 2;
    assert_eq!(Inode::decode(&newer), Err(InodeError::UnsupportedVersion(2)));
    let mut garbled = bytes.clone();
    garbled[20] ^= 1;
    assert_eq!(Inode::decode(&garbled), Err(InodeError::ChecksumMismatch));
}

#[test]
fn inconsistent_content_with_a_valid_checksum_is_refused() {
    // 10 objects in 2 runs: the runs format (20 bytes) beats the raw one (40).
    let mut i = inode(40 * MIB);
    i.set_owner(0, Some(vid(1))).unwrap();
    let body = body_of(&i.encode());
    assert_eq!(body[22], TABLE_RUNS);
    // Offsets from the layout in `encode`.
    let (flags, vid_at, copies, table_format, size) = (6, 8, 20, 22, 24);
    let cases: [(usize, &[u8], InodeError); 6] = [
        (flags, &[4, 0], InodeError::Malformed("unknown flags")),
        (vid_at, &[0, 0, 0, 0], InodeError::Malformed("vid out of range")),
        (copies, &[0], InodeError::BadCopies(0)),
        (table_format, &[9], InodeError::Malformed("unknown table format")),
        (size, &[0; 8], InodeError::ZeroSize),
        // 48 MiB needs 12 objects, but the runs cover 10.
        (size, &(48 * MIB).to_le_bytes(), InodeError::Malformed("runs do not cover the table exactly")),
    ];
    for (at, patch, expected) in cases {
        let mut bad = body.clone();
        bad[at..at + patch.len()].copy_from_slice(patch);
        assert_eq!(Inode::decode(&seal(bad)), Err(expected));
    }
    // A run count that would make decode allocate far more than the input holds.
    let mut huge = body.clone();
    let runs_at = huge.len() - 4 - 2 * 8;
    huge[runs_at..runs_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(Inode::decode(&seal(huge)), Err(InodeError::Malformed(_))));
    // An invalid name.
    let name_at = 40 + 4;
    let mut bad_name = body.clone();
    bad_name[name_at] = b'/';
    assert_eq!(Inode::decode(&seal(bad_name)), Err(InodeError::BadName(NameError::Slash { what: "a VDI name" })));
}
