use std::fs::OpenOptions;
use std::io::Write;

use openraft::testing::log_id;
use openraft::EntryPayload;
use sheep_core::group::{Command, Op, Proposal};

use super::*;

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Normal(Proposal::One(Command::new(
            index,
            Op::Broadcast { session: 1, payload: vec![index as u8; 3] },
        ))),
    }
}

fn entries(term: u64, range: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    range.map(|i| entry(term, i)).collect()
}

fn indexes(f: &LogFiles) -> Vec<u64> {
    f.range(..).iter().map(|e| e.log_id.index).collect()
}

#[test]
fn append_then_reopen_keeps_every_entry() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut f = LogFiles::open(dir.path()).unwrap();
        assert!(f.is_empty());
        assert_eq!(f.last_log_id(), None);
        f.append(entries(1, 1..=5)).unwrap();
        f.append(entries(2, 6..=7)).unwrap();
    }
    let f = LogFiles::open(dir.path()).unwrap();
    assert!(!f.is_empty());
    assert_eq!(indexes(&f), (1..=7).collect::<Vec<_>>());
    assert_eq!(f.last_log_id(), Some(log_id(2, 1, 7)));
    assert_eq!(f.range(3..5), entries(1, 3..=4));
}

#[test]
fn truncate_survives_reopen_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut f = LogFiles::open(dir.path()).unwrap();
        f.append(entries(1, 1..=10)).unwrap();
        f.truncate(6).unwrap();
        assert_eq!(indexes(&f), (1..=5).collect::<Vec<_>>());
        f.append(entries(3, 6..=8)).unwrap();
        f.truncate(20).unwrap(); // nothing there: no-op
    }
    let f = LogFiles::open(dir.path()).unwrap();
    assert_eq!(indexes(&f), (1..=8).collect::<Vec<_>>());
    assert_eq!(f.range(6..=6)[0].log_id, log_id(3, 1, 6));
    assert_eq!(f.range(5..=5)[0].log_id, log_id(1, 1, 5));
}

#[test]
fn purge_drops_the_prefix_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut f = LogFiles::open(dir.path()).unwrap();
        f.append(entries(1, 1..=10)).unwrap();
        f.purge(log_id(1, 1, 4)).unwrap();
        assert_eq!(indexes(&f), (5..=10).collect::<Vec<_>>());
        assert_eq!(f.last_purged(), Some(log_id(1, 1, 4)));
        // Appends and truncation still work on the rewritten file.
        f.append(entries(2, 11..=12)).unwrap();
        f.truncate(12).unwrap();
    }
    let mut f = LogFiles::open(dir.path()).unwrap();
    assert_eq!(indexes(&f), (5..=11).collect::<Vec<_>>());
    assert_eq!(f.last_purged(), Some(log_id(1, 1, 4)));
    // Purging everything, even past the last entry, leaves an empty log whose last id is
    // the purged one.
    f.purge(log_id(2, 1, 20)).unwrap();
    assert_eq!(indexes(&f), Vec::<u64>::new());
    assert_eq!(f.last_log_id(), Some(log_id(2, 1, 20)));
    f.append(entries(2, 21..=22)).unwrap();
    drop(f);
    let f = LogFiles::open(dir.path()).unwrap();
    assert_eq!(indexes(&f), vec![21, 22]);
    assert_eq!(f.last_purged(), Some(log_id(2, 1, 20)));
    assert!(!f.is_empty());
}

#[test]
fn purge_is_idempotent_and_never_goes_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = LogFiles::open(dir.path()).unwrap();
    f.append(entries(1, 1..=10)).unwrap();
    f.purge(log_id(1, 1, 6)).unwrap();
    f.purge(log_id(1, 1, 3)).unwrap();
    assert_eq!(f.last_purged(), Some(log_id(1, 1, 6)));
    assert_eq!(indexes(&f), (7..=10).collect::<Vec<_>>());
}

#[test]
fn vote_and_committed_persist() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut f = LogFiles::open(dir.path()).unwrap();
        assert_eq!(f.vote(), None);
        f.save_vote(Vote::new(3, 7)).unwrap();
        f.save_vote(Vote::new_committed(4, 9)).unwrap();
        f.save_committed(Some(log_id(4, 9, 12))).unwrap();
    }
    let f = LogFiles::open(dir.path()).unwrap();
    assert_eq!(f.vote(), Some(Vote::new_committed(4, 9)));
    assert_eq!(f.committed(), Some(log_id(4, 9, 12)));
    assert!(!f.is_empty(), "a vote alone makes the store non-empty");
}

#[test]
fn a_torn_tail_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut f = LogFiles::open(dir.path()).unwrap();
        f.append(entries(1, 1..=3)).unwrap();
    }
    let path = dir.path().join(LOG_FILE);
    let good_len = std::fs::metadata(&path).unwrap().len();
    // Half a record: a header announcing more bytes than follow.
    let rec = encode_record(&entry(1, 4)).unwrap();
    OpenOptions::new().append(true).open(&path).unwrap().write_all(&rec[..rec.len() - 5]).unwrap();
    {
        let mut f = LogFiles::open(dir.path()).unwrap();
        assert_eq!(indexes(&f), vec![1, 2, 3]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len);
        f.append(entries(1, 4..=4)).unwrap();
    }
    // A flipped bit in the last record is cut off too.
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 2] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let f = LogFiles::open(dir.path()).unwrap();
    assert_eq!(indexes(&f), vec![1, 2, 3]);
}

#[test]
fn a_non_consecutive_append_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = LogFiles::open(dir.path()).unwrap();
    f.append(entries(1, 1..=3)).unwrap();
    assert!(f.append(entries(1, 5..=5)).is_err());
    assert_eq!(indexes(&f), vec![1, 2, 3]);
    f.append(entries(1, 4..=4)).unwrap();
    assert_eq!(indexes(&f), vec![1, 2, 3, 4]);
}

#[test]
fn a_corrupt_meta_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(META_FILE), b"{not json").unwrap();
    let err = LogFiles::open(dir.path()).err().expect("must fail");
    assert!(err.to_string().contains("corrupt"), "{err}");
}
