use std::os::unix::fs::FileExt;

use super::nowait::test_dirs::{disk_dir, drop_until_reads_wait, memory_dir};
use super::*;
use sheep_core::object::VdiId;

const MIB4: u32 = 4 << 20;

fn oid(vid: u32, idx: u32) -> ObjectId {
    ObjectId::data(VdiId::new(vid).unwrap(), idx)
}

fn store() -> (tempfile::TempDir, ObjectStore) {
    let tmp = tempfile::tempdir().unwrap();
    let s = ObjectStore::open(tmp.path()).unwrap();
    (tmp, s)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1).collect()
}

#[test]
fn create_is_sparse_and_reads_back() {
    let (_t, s) = store();
    let o = oid(1, 0);
    let data = pattern(4096, 7);
    assert!(s.create_and_write(o, MIB4, None, 8192, &data, false, 1).unwrap());
    let meta = fs::metadata(s.obj_path(o)).unwrap();
    let allocated = std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
    assert!(meta.len() > u64::from(MIB4));
    assert!(allocated < 64 * 1024, "a 4 KiB write into a 4 MiB object allocated {allocated} bytes");
    assert_eq!(s.read(o, 8192, 4096).unwrap(), data);
    assert_eq!(s.read(o, 0, 8192).unwrap(), vec![0; 8192]);
    assert_eq!(s.read(o, u64::from(MIB4) - 10, 10).unwrap(), vec![0; 10]);
    assert!(fs::read_dir(s.tmp.clone()).unwrap().next().is_none(), "tmp/ is left empty");
}

#[test]
fn writes_across_blocks_and_partial_blocks() {
    let (_t, s) = store();
    let o = oid(2, 3);
    let size = 64 * 1024;
    s.create_and_write(o, size, None, 0, &[], false, 1).unwrap();
    let mut model = vec![0u8; size as usize];
    for (i, (off, len)) in
        [(0usize, 4096usize), (100, 10), (4090, 20), (5000, 9000), (8192, 4096), (65535, 1), (1, 65534)]
            .into_iter()
            .enumerate()
    {
        let data = pattern(len, i as u8);
        s.write(o, off as u64, &data, false, 1).unwrap();
        model[off..off + len].copy_from_slice(&data);
        assert_eq!(s.read(o, 0, u64::from(size)).unwrap(), model, "after write {i}");
    }
    assert_eq!(s.read(o, 4095, 3).unwrap(), model[4095..4098]);
    // create_and_write on an existing object writes into it.
    assert!(!s.create_and_write(o, size, None, 10, b"xyz", false, 1).unwrap());
    model[10..13].copy_from_slice(b"xyz");
    assert_eq!(s.fetch_any(o).map(|w| w.data).unwrap(), model);
}

#[test]
fn out_of_range_and_missing_are_errors() {
    let (_t, s) = store();
    let o = oid(3, 0);
    assert!(matches!(s.read(o, 0, 1), Err(StoreError::NoObject(_))));
    assert!(matches!(s.write(o, 0, b"a", false, 1), Err(StoreError::NoObject(_))));
    assert!(matches!(s.fetch_any(o).map(|w| w.data), Err(StoreError::NoObject(_))));
    assert!(matches!(s.create_and_write(o, 1000, None, 0, b"a", false, 1), Err(StoreError::BadRequest(_))));
    assert!(matches!(s.create_and_write(o, 8192, None, 8000, &[1; 200], false, 1), Err(StoreError::BadRequest(_))));
    assert!(!s.contains(o), "a refused create leaves nothing");
    s.create_and_write(o, 8192, None, 0, b"a", false, 1).unwrap();
    assert!(matches!(s.read(o, 8192, 1), Err(StoreError::BadRequest(_))));
    assert!(matches!(s.write(o, 8000, &[1; 200], false, 1), Err(StoreError::BadRequest(_))));
    assert!(matches!(s.read(o, u64::MAX, 2), Err(StoreError::BadRequest(_))));
}

#[test]
fn a_flipped_byte_is_detected_never_returned() {
    let (_t, s) = store();
    let o = oid(4, 1);
    let data = pattern(16384, 3);
    s.create_and_write(o, 16384, None, 0, &data, true, 1).unwrap();
    let layout = Layout::new(16384).unwrap();
    let f = fs::OpenOptions::new().read(true).write(true).open(s.obj_path(o)).unwrap();
    let at = layout.data_off() + 4096 + 17;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], at).unwrap();
    assert!(matches!(s.read(o, 4096, 10), Err(StoreError::Corrupt { .. })));
    assert!(matches!(s.read(o, 0, 16384), Err(StoreError::Corrupt { .. })));
    assert!(matches!(s.fetch_any(o).map(|w| w.data), Err(StoreError::Corrupt { .. })));
    // Other blocks still read; a partial write into the bad block is refused.
    assert_eq!(s.read(o, 0, 4096).unwrap(), data[..4096]);
    assert_eq!(s.read(o, 8192, 8192).unwrap(), data[8192..]);
    assert!(matches!(s.write(o, 4100, b"x", false, 1), Err(StoreError::Corrupt { .. })));
    // A full-block write replaces it.
    s.write(o, 4096, &data[4096..8192], false, 1).unwrap();
    assert_eq!(s.read(o, 0, 16384).unwrap(), data);

    // A damaged header is corrupt too (seen when the file is opened next).
    f.write_all_at(&[0xff], 9).unwrap();
    s.forget_open_files();
    assert!(matches!(s.read(o, 0, 1), Err(StoreError::Corrupt { .. })));
}

#[test]
fn repair_installs_unless_a_write_came_first() {
    let (_t, s) = store();
    let o = oid(5, 0);
    let good = pattern(8192, 9);
    s.create_and_write(o, 8192, None, 0, &good, false, 1).unwrap();
    assert!(s.begin_repair(o));
    assert!(!s.begin_repair(o), "one repair at a time");
    assert!(s.finish_repair(o, Some((&good, 9))).unwrap());
    assert!(s.begin_repair(o));
    s.write(o, 0, b"new", false, 1).unwrap();
    assert!(!s.finish_repair(o, Some((&good, 9))).unwrap(), "a write since begin_repair wins");
    assert_eq!(s.read(o, 0, 3).unwrap(), b"new");
}

#[test]
fn fua_flush_and_dirty_set() {
    let (_t, s) = store();
    let (a, b) = (oid(6, 0), oid(6, 1));
    s.create_and_write(a, 8192, None, 0, b"a", false, 1).unwrap();
    s.create_and_write(b, 8192, None, 0, b"b", false, 1).unwrap();
    assert!(locked(&s.dirty).is_empty(), "a create is durable when acked");
    s.write(a, 0, b"A", false, 1).unwrap();
    s.write(b, 0, b"B", true, 1).unwrap();
    assert_eq!(locked(&s.dirty).iter().copied().collect::<Vec<_>>(), vec![a]);
    s.flush().unwrap();
    assert!(locked(&s.dirty).is_empty());
    s.write(a, 1, b"x", false, 1).unwrap();
    s.remove(a).unwrap();
    s.flush().unwrap();
}

#[test]
fn base_copy_stays_sparse() {
    let (_t, s) = store();
    let (base, child) = (oid(7, 0), oid(8, 0));
    s.create_and_write(base, MIB4, None, 4096, &pattern(4096, 1), false, 1).unwrap();
    let whole = s.fetch_any(base).map(|w| w.data).unwrap();
    assert_eq!(whole.len(), MIB4 as usize);
    s.create_and_write(child, MIB4, Some(&whole), 0, b"child", false, 1).unwrap();
    let mut want = whole.clone();
    want[..5].copy_from_slice(b"child");
    assert_eq!(s.fetch_any(child).map(|w| w.data).unwrap(), want);
    let blocks = std::os::unix::fs::MetadataExt::blocks(&fs::metadata(s.obj_path(child)).unwrap()) * 512;
    assert!(blocks < 64 * 1024, "copy allocated {blocks}");
    assert!(matches!(
        s.create_and_write(oid(9, 0), 8192, Some(&whole), 0, b"", false, 1),
        Err(StoreError::BadRequest(_))
    ));
}

#[test]
fn list_stale_quarantine_purge_remove() {
    let (_t, s) = store();
    let objs: Vec<ObjectId> = (0..4).map(|i| oid(10, i)).collect();
    for &o in &objs {
        s.create_and_write(o, 8192, None, 0, b"x", false, 1).unwrap();
    }
    s.create_and_write(oid(11, 0), 8192, None, 0, b"y", false, 1).unwrap();
    s.move_to_stale(objs[0], 7).unwrap();
    let l = s.list().unwrap();
    assert_eq!(l.stale_only, vec![(objs[0], 7)]);
    let whole = s.fetch_any(objs[0]).unwrap();
    assert_eq!((whole.stale_epoch, &whole.data[..1]), (7, &b"x"[..]));
    assert_eq!(s.fetch_any(objs[1]).unwrap().stale_epoch, 0);
    assert_eq!(l.live.len(), 4);
    assert!(matches!(s.read(objs[0], 0, 1), Err(StoreError::NoObject(_))), "stale is never read");
    assert_eq!(&s.fetch_any(objs[0]).map(|w| w.data).unwrap()[..1], b"x", "but fetched by peers");
    // A live copy next to a stale one counts as live.
    assert!(s.install(objs[0], &s.fetch_any(objs[0]).map(|w| w.data).unwrap(), 1 << 40, 1).unwrap());
    assert!(!s.install(objs[0], &s.fetch_any(objs[0]).map(|w| w.data).unwrap(), 1 << 40, 1).unwrap());
    assert!(s.list().unwrap().stale_only.is_empty());
    assert!(!s.stale_path(objs[0]).exists(), "a live copy replaces the stale one");
    assert_eq!(s.quarantine_all(0).unwrap(), 5);
    let l = s.list().unwrap();
    assert!(l.live.is_empty());
    assert_eq!(l.stale_only.len(), 5);
    assert!(l.stale_only.iter().all(|&(_, e)| e == 1), "a stale copy names an epoch >= 1");
    // A re-installed copy is live again, its header clean.
    s.install(objs[2], &s.fetch_any(objs[2]).map(|w| w.data).unwrap(), 1 << 40, 1).unwrap();
    assert_eq!(s.fetch_any(objs[2]).unwrap().stale_epoch, 0);
    s.move_to_stale(objs[2], 3).unwrap();
    let gone: HashSet<VdiId> = [VdiId::new(11).unwrap()].into();
    assert_eq!(s.remove_vdis(&gone).unwrap(), 1);
    assert_eq!(s.list().unwrap().stale_only.len(), 4);
    s.remove(objs[1]).unwrap();
    s.remove(objs[1]).unwrap();
    assert_eq!(s.purge_stale().unwrap(), 3);
    assert_eq!(s.list().unwrap(), Listing::default());
}

#[test]
fn stat_counts_live_objects() {
    let (_t, s) = store();
    let st = s.stat().unwrap();
    assert_eq!((st.objects, st.used), (0, 0));
    assert!(st.capacity > 0 && st.free <= st.capacity);
    s.create_and_write(oid(12, 0), MIB4, None, 0, &pattern(65536, 2), false, 1).unwrap();
    s.create_and_write(oid(12, 1), MIB4, None, 0, b"", false, 1).unwrap();
    let st = s.stat().unwrap();
    assert_eq!(st.objects, 2);
    assert!(st.used >= 65536 && st.used < 1 << 20, "used {}", st.used);
}

#[test]
fn no_space_is_an_error_and_reads_go_on() {
    let (_t, s) = store();
    let o = oid(13, 0);
    s.create_and_write(o, 8192, None, 0, b"kept", false, 1).unwrap();
    s.inject_no_space(true);
    let e = s.create_and_write(oid(13, 1), 8192, None, 0, b"x", false, 1).unwrap_err();
    assert_eq!(e.code(), ErrorCode::NoSpace);
    assert_eq!(s.write(o, 0, b"lost", false, 1).unwrap_err().code(), ErrorCode::NoSpace);
    assert_eq!(s.read(o, 0, 4).unwrap(), b"kept");
    assert!(!s.contains(oid(13, 1)));
    s.inject_no_space(false);
    s.write(o, 0, b"back", true, 1).unwrap();
    assert_eq!(s.read(o, 0, 4).unwrap(), b"back");
    assert!(is_no_space(&io::Error::from_raw_os_error(Errno::ENOSPC as i32)));
}

#[test]
fn leftovers_in_tmp_are_cleaned_and_junk_is_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let s = ObjectStore::open(tmp.path()).unwrap();
    fs::write(tmp.path().join("tmp/0000000100000000.3"), "half").unwrap();
    fs::write(tmp.path().join("obj/not-an-oid"), "junk").unwrap();
    drop(s);
    let s = ObjectStore::open(tmp.path()).unwrap();
    assert!(fs::read_dir(tmp.path().join("tmp")).unwrap().next().is_none());
    assert!(s.list().unwrap().live.is_empty());
    // A truncated object file is corrupt, not data.
    fs::write(s.obj_path(oid(14, 0)), "SHEEPOB1").unwrap();
    assert_eq!(s.read(oid(14, 0), 0, 1).unwrap_err().code(), ErrorCode::Corrupt);
}

#[test]
fn different_objects_in_parallel_one_object_serialised() {
    let (_t, s) = store();
    let s = std::sync::Arc::new(s);
    let o = oid(15, 0);
    s.create_and_write(o, 65536, None, 0, b"", false, 1).unwrap();
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..20u64 {
                    // Each thread owns 8 bytes of one shared block: read-modify-write races
                    // would lose some of them.
                    s.write(o, u64::from(t) * 8, &[t + 1; 8], false, 1).unwrap();
                    s.create_and_write(oid(16, u32::from(t)), 8192, None, i * 8, &[t; 8], false, 1).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let got = s.read(o, 0, 64).unwrap();
    for t in 0..8u8 {
        assert_eq!(got[t as usize * 8..t as usize * 8 + 8], [t + 1; 8]);
    }
}

#[test]
fn try_read_and_try_write_never_wait() {
    let (_t, s) = store();
    let o = oid(6, 0);
    s.create_and_write(o, MIB4, None, 0, &pattern(4096, 1), false, 1).unwrap();
    let data = pattern(4096, 2);
    s.try_write(o, 4096, &data, 1).unwrap().unwrap();
    assert_eq!(s.try_read(o, 4096, 4096).unwrap().unwrap(), data);
    assert!(locked(&s.dirty).contains(&o), "an inline write is flushed later");
    {
        let _busy = s.locks.lock(o);
        assert!(s.try_read(o, 0, 4096).is_none());
        assert!(s.try_write(o, 0, &data, 1).is_none());
    }
    // The lock came back whole: blocking calls still work.
    assert_eq!(s.read(o, 0, 4096).unwrap(), pattern(4096, 1));
}

#[test]
fn on_a_disk_try_read_answers_only_from_the_page_cache() {
    let tmp = disk_dir();
    let s = ObjectStore::open(tmp.path()).unwrap();
    assert_eq!(InlineReads::from_u8(s.inline_reads.load(Ordering::Relaxed)), InlineReads::CachedOnly);
    let o = oid(7, 0);
    let data = pattern(8192, 3);
    s.create_and_write(o, MIB4, None, 4096, &data, false, 1).unwrap();
    s.try_write(o, 4096, &data[..4096], 1).unwrap().unwrap();
    assert_eq!(s.try_read(o, 4096, 8192).unwrap().unwrap(), data, "cached: served at once");

    // Not cached: for the disk threads.
    drop_until_reads_wait(&s.obj_path(o), || s.try_read(o, 4096, 8192).is_none());
    assert_eq!(s.read(o, 4096, 8192).unwrap(), data);
    assert_eq!(s.try_read(o, 4096, 8192).unwrap().unwrap(), data, "cached again by that read");
    // A file not open yet is opened by the disk threads, which also say it is missing.
    assert!(s.try_read(oid(7, 1), 0, 4096).is_none());
    assert!(matches!(s.read(oid(7, 1), 0, 4096), Err(StoreError::NoObject(_))));
}

#[test]
fn on_a_memory_file_system_try_read_reads_plainly() {
    let tmp = memory_dir();
    let s = ObjectStore::open(tmp.path()).unwrap();
    assert_eq!(InlineReads::from_u8(s.inline_reads.load(Ordering::Relaxed)), InlineReads::Memory);
    let o = oid(8, 0);
    s.create_and_write(o, MIB4, None, 0, &pattern(4096, 4), false, 1).unwrap();
    locked(&s.open_files).clear();
    assert_eq!(s.try_read(o, 0, 4096).unwrap().unwrap(), pattern(4096, 4), "opened and read inline");
    assert!(matches!(s.try_read(oid(8, 1), 0, 4096), Some(Err(StoreError::NoObject(_)))));
}

/// Whether the file system under `dir` frees blocks on a hole punch (tmpfs, ext4, xfs do;
/// some overlay set-ups do not): the sparseness checks are skipped where it does not.
fn punch_frees_blocks(dir: &Path) -> bool {
    use nix::fcntl::{fallocate, FallocateFlags};
    let path = dir.join("punch-probe");
    let f = fs::File::create(&path).unwrap();
    f.write_all_at(&vec![1u8; 1 << 20], 0).unwrap();
    f.sync_all().unwrap();
    let before = std::os::unix::fs::MetadataExt::blocks(&f.metadata().unwrap());
    let punched = fallocate(&f, FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE, 0, 1 << 20);
    let after = std::os::unix::fs::MetadataExt::blocks(&f.metadata().unwrap());
    let _ = fs::remove_file(&path);
    punched.is_ok() && after < before
}

fn allocated(s: &ObjectStore, o: ObjectId) -> u64 {
    std::os::unix::fs::MetadataExt::blocks(&fs::metadata(s.obj_path(o)).unwrap()) * 512
}

#[test]
fn zero_a_range_across_blocks_reads_zeros_and_frees_space() {
    let (t, s) = store();
    let o = oid(17, 0);
    let size = 256 * 1024;
    let data = pattern(size, 5);
    s.create_and_write(o, size as u32, None, 0, &data, true, 1).unwrap();
    let mut model = data.clone();
    let before = allocated(&s, o);
    // Ragged at both ends: 4096 - 100 bytes of block 2, blocks 3..=40 whole, 123 bytes of 41.
    let (off, len) = (2 * 4096 + 100, 39 * 4096 - 100 + 123);
    s.zero(o, off as u64, len as u64, true, 1).unwrap();
    model[off..off + len].fill(0);
    assert_eq!(s.read(o, 0, size as u64).unwrap(), model);
    // Inside one block, and block-aligned at one end only.
    for (off, len) in [(50_000usize, 10usize), (45 * 4096, 4096 + 7), (60 * 4096 - 9, 9), (0, 1)] {
        s.zero(o, off as u64, len as u64, false, 1).unwrap();
        model[off..off + len].fill(0);
        assert_eq!(s.read(o, 0, size as u64).unwrap(), model, "zero {off}+{len}");
    }
    assert!(locked(&s.dirty).contains(&o), "zero without FUA is flushed later");
    s.zero(o, 0, 0, false, 1).unwrap();
    // Every crc still verifies after reopening (the punched blocks carry the zero crc).
    s.forget_open_files();
    assert_eq!(s.fetch_any(o).map(|w| w.data).unwrap(), model);
    let s2 = ObjectStore::open(t.path()).unwrap();
    assert_eq!(s2.read(o, 0, size as u64).unwrap(), model);
    // The crc table (at byte 64 of the file, 8 bytes a block) holds the zero-block crc for
    // punched blocks.
    let mut raw = vec![0u8; 8 * 38];
    fs::File::open(s.obj_path(o)).unwrap().read_exact_at(&mut raw, 64 + 8 * 3).unwrap();
    assert!(raw.chunks_exact(8).all(|c| c[..4] == file::zero_block_crc().to_le_bytes()));
    if punch_frees_blocks(t.path()) {
        let after = allocated(&s, o);
        assert!(after + 38 * 4096 <= before, "punching 38 blocks: {before} -> {after} bytes allocated");
        // The whole object: only the header and crc table stay allocated.
        s.zero(o, 0, size as u64, true, 1).unwrap();
        assert!(allocated(&s, o) <= 2 * 4096, "{} bytes allocated", allocated(&s, o));
        assert_eq!(s.read(o, 0, size as u64).unwrap(), vec![0; size]);
        assert!(s.stat().unwrap().used <= 2 * 4096, "stat's used counts allocated blocks");
    } else {
        eprintln!("this file system does not punch holes: sparseness not checked");
    }
}

#[test]
fn zero_errors_are_those_of_write() {
    let (_t, s) = store();
    let o = oid(18, 0);
    assert!(matches!(s.zero(o, 0, 1, false, 1), Err(StoreError::NoObject(_))));
    assert!(!s.contains(o), "zero never creates");
    s.create_and_write(o, 8192, None, 0, b"abc", false, 1).unwrap();
    assert!(matches!(s.zero(o, 8000, 200, false, 1), Err(StoreError::BadRequest(_))));
    assert!(matches!(s.zero(o, u64::MAX, 2, false, 1), Err(StoreError::BadRequest(_))));
    assert!(matches!(s.zero(o, 8192, 1, false, 1), Err(StoreError::BadRequest(_))));
    assert_eq!(s.read(o, 0, 3).unwrap(), b"abc", "a refused zero changes nothing");
    // A corrupt partial block is refused like a partial write into it; a whole block is
    // replaced.
    let layout = Layout::new(8192).unwrap();
    let f = fs::OpenOptions::new().read(true).write(true).open(s.obj_path(o)).unwrap();
    f.write_all_at(b"X", layout.data_off() + 1).unwrap();
    assert!(matches!(s.zero(o, 10, 10, false, 1), Err(StoreError::Corrupt { .. })));
    s.zero(o, 0, 4096, false, 1).unwrap();
    assert_eq!(s.read(o, 0, 8192).unwrap(), vec![0; 8192]);
    // try_zero: never waits; a zero during a repair makes the repair fetch again.
    {
        let _busy = s.locks.lock(o);
        assert!(s.try_zero(o, 0, 1, 1).is_none());
    }
    s.try_zero(o, 0, 1, 1).unwrap().unwrap();
    assert!(s.begin_repair(o));
    s.zero(o, 0, 1, false, 1).unwrap();
    assert!(!s.finish_repair(o, Some((&[7u8; 8192], 9))).unwrap());
}

#[test]
fn every_write_advances_the_version_which_moves_with_the_copy() {
    let (_d, s) = store();
    let o = oid(3, 0);
    s.create_and_write(o, 8192, None, 0, b"a", false, 4).unwrap();
    // Settled versions count by two (an unsettled one between, while a write is under way).
    assert_eq!(s.fetch_any(o).unwrap().version, (4 << 32) | 2);
    s.write(o, 1, b"b", false, 4).unwrap();
    s.zero(o, 0, 1, false, 4).unwrap();
    assert_eq!(s.live_version(o), Some((4 << 32) | 6));
    s.write(o, 0, b"c", false, 6).unwrap();
    assert_eq!(s.live_version(o), Some((6 << 32) | 2), "a write of a newer epoch");
    assert!(s.try_write(o, 0, b"d", 6).unwrap().is_ok());
    assert_eq!(s.list().unwrap().versions.get(&o), Some(&((6 << 32) | 4)));
    // The version survives reopening, the move to .stale and a fetch.
    s.forget_open_files();
    assert_eq!(s.live_version(o), Some((6 << 32) | 4));
    s.move_to_stale(o, 6).unwrap();
    let w = s.fetch_any(o).unwrap();
    assert_eq!((w.stale_epoch, w.version), (6, (6 << 32) | 4));
    assert_eq!(s.list().unwrap().versions.get(&o), Some(&((6 << 32) | 4)));
    // Installed copies keep the version they came with; an older one never replaces a newer.
    assert!(s.install(o, &w.data, w.version, 7).unwrap());
    assert!(!s.install(o, &vec![9; 8192], (5 << 32) | 8, 7).unwrap());
    assert_eq!(s.read(o, 0, 1).unwrap(), b"d");
    assert!(s.install(o, &vec![9; 8192], (7 << 32) | 2, 7).unwrap());
    assert_eq!(s.read(o, 0, 1).unwrap(), [9]);
    // A copy written in the epoch of the recovery stays, whatever count the pulled one has:
    // counts of one epoch do not compare across nodes.
    assert!(!s.install(o, &vec![5; 8192], (7 << 32) | 10, 7).unwrap());
    assert_eq!(s.read(o, 0, 1).unwrap(), [9]);
}

/// The bytes of a version as the header holds them (at byte 24: the version, then its crc).
fn version_field(v: u64) -> Vec<u8> {
    let mut b = v.to_le_bytes().to_vec();
    b.extend_from_slice(&crc32fast::hash(&v.to_le_bytes()).to_le_bytes());
    b
}

/// The crc table entry of block `k` (at byte 64, 8 bytes a block): its crc and the one before.
fn entry_at(k: u64) -> u64 {
    64 + 8 * k
}

#[test]
fn a_write_cut_off_anywhere_reads_block_by_block_old_or_new_and_settles() {
    let (_d, s) = store();
    let o = oid(5, 0);
    let old = vec![1u8; 3 * 4096];
    s.create_and_write(o, 3 * 4096, None, 0, &old, false, 3).unwrap();
    let before = s.live_version(o).unwrap();
    s.forget_open_files();
    // A write of `new` over the three blocks, cut off as a crash may cut it: the version set
    // unsettled, every entry written, block 0's data only (block 1 and 2 not yet).
    let new = vec![2u8; 4096];
    let started = sheep_core::store::write_started(before, 3);
    let f = fs::OpenOptions::new().write(true).open(s.obj_path(o)).unwrap();
    f.write_all_at(&version_field(started), 24).unwrap();
    for k in 0..3 {
        let mut e = crc32fast::hash(&new).to_le_bytes().to_vec();
        e.extend_from_slice(&crc32fast::hash(&old[..4096]).to_le_bytes());
        f.write_all_at(&e, entry_at(k)).unwrap();
    }
    let data_off = 4096; // 64 + 8 × 3 bytes, rounded up to a block
    f.write_all_at(&new, data_off).unwrap();
    drop(f);
    let mut want = old.clone();
    want[..4096].copy_from_slice(&new);
    assert_eq!(s.read(o, 0, 3 * 4096).unwrap(), want, "each block its old or its new content");
    assert_eq!(s.live_version(o), Some(started), "unsettled: the copies may differ");
    // Settling keeps the content and gives a version above any the write reached elsewhere.
    assert!(s.settle(o, 4).unwrap());
    assert!(!s.settle(o, 4).unwrap(), "settled already");
    let settled = s.live_version(o).unwrap();
    assert!(sheep_core::store::is_settled(settled) && settled > sheep_core::store::write_done(started));
    assert_eq!(s.read(o, 0, 3 * 4096).unwrap(), want);
    // Block 1 now names only its content (the old one): another cut-off write (entries only)
    // still leaves it reading the old content.
    s.forget_open_files();
    let f = fs::OpenOptions::new().write(true).open(s.obj_path(o)).unwrap();
    let mut e = crc32fast::hash(&[3u8; 4096]).to_le_bytes().to_vec();
    e.extend_from_slice(&crc32fast::hash(&old[..4096]).to_le_bytes());
    f.write_all_at(&e, entry_at(1)).unwrap();
    assert_eq!(s.read(o, 4096, 4096).unwrap(), old[..4096]);
    // Data that matches neither of its crcs is damage, not a cut-off write.
    f.write_all_at(&[4u8; 4096], data_off + 2 * 4096).unwrap();
    assert_eq!(s.read(o, 2 * 4096, 1).unwrap_err().code(), ErrorCode::Corrupt);
}

#[test]
fn a_write_to_a_copy_left_unsettled_settles_it_first() {
    let (_d, s) = store();
    let o = oid(6, 0);
    s.create_and_write(o, 8192, None, 0, &[1u8; 8192], false, 2).unwrap();
    let started = sheep_core::store::write_started(s.live_version(o).unwrap(), 2);
    s.forget_open_files();
    let f = fs::OpenOptions::new().write(true).open(s.obj_path(o)).unwrap();
    f.write_all_at(&version_field(started), 24).unwrap();
    drop(f);
    s.write(o, 0, b"x", false, 2).unwrap();
    let v = s.live_version(o).unwrap();
    assert!(sheep_core::store::is_settled(v) && v > sheep_core::store::write_done(started));
    assert_eq!(s.read(o, 0, 2).unwrap(), [b'x', 1]);
}
