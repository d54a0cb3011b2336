//! How much room the store's file system has.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// (capacity, free) in bytes of the file system holding `path`.
pub fn statvfs(path: &Path) -> io::Result<(u64, u64)> {
    if path.as_os_str().as_bytes().contains(&0) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "data dir path contains NUL"));
    }
    let st = nix::sys::statvfs::statvfs(path)?;
    #[allow(clippy::unnecessary_cast, reason = "the field types differ between platforms")]
    let (frsize, blocks, avail) = (st.fragment_size() as u64, st.blocks() as u64, st.blocks_available() as u64);
    Ok((blocks * frsize, avail * frsize))
}

/// Which file system holds `path`, as `StoreStat::filesystem`: a hash of this host's
/// machine id, the device and the file system's own id (`f_fsid`, e.g. from ext4's UUID,
/// so that hosts cloned with the same machine id still differ). 0 if it cannot be told.
pub fn filesystem_id(path: &Path) -> u64 {
    let host = std::fs::read("/etc/machine-id").unwrap_or_default();
    let (Ok(meta), Ok(st)) = (std::fs::metadata(path), nix::sys::statvfs::statvfs(path)) else {
        return 0;
    };
    let mut key = host;
    key.extend_from_slice(&std::os::unix::fs::MetadataExt::dev(&meta).to_le_bytes());
    #[allow(clippy::unnecessary_cast, reason = "the field type differs between platforms")]
    key.extend_from_slice(&(st.filesystem_id() as u64).to_le_bytes());
    sheep_core::object::fnv1a64(&key).max(1)
}

/// Bytes a write must leave free on the store's file system.
pub const RESERVE: u64 = 8 << 20;
/// How long a reading of the free space stands in for a new one.
pub const RECHECK: Duration = Duration::from_millis(100);
/// Room above [`RESERVE`] under which every write reads the free space anew: a disk that
/// nears full is checked exactly, write by write; one far from it once per [`RECHECK`].
pub const MARGIN: u64 = 64 << 20;

/// Whether a write of some bytes leaves [`RESERVE`] free, without a `statvfs` per write:
/// the last reading, less every byte admitted since (as if each took new space: an
/// overwrite takes none, so this errs towards reading again), stands for [`RECHECK`]
/// while it keeps [`MARGIN`] above the reserve. Others may take space meanwhile: within a
/// reading's life by at most what the margin covers before the reserve is touched.
#[derive(Debug, Default)]
pub struct FreeSpace {
    /// When the last reading was taken, and the bytes free then less those admitted since.
    last: Option<(Instant, u64)>,
}

impl FreeSpace {
    /// `Ok(())` if `len` bytes may be written at `now`, counting them; else the bytes free.
    /// `read_free` is called only when the last reading no longer stands.
    pub fn admit(
        &mut self,
        now: Instant,
        len: u64,
        read_free: impl FnOnce() -> io::Result<u64>,
    ) -> io::Result<Result<(), u64>> {
        let need = len.saturating_add(RESERVE);
        if let Some((at, left)) = self.last {
            if now.saturating_duration_since(at) < RECHECK && left >= need.saturating_add(MARGIN) {
                self.last = Some((at, left - len));
                return Ok(Ok(()));
            }
        }
        let free = read_free()?;
        if free < need {
            self.last = None;
            return Ok(Err(free));
        }
        self.last = Some((now, free - len));
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn never() -> io::Result<u64> {
        panic!("the free space was read again")
    }

    #[test]
    fn two_directories_of_one_file_system_have_one_id_and_another_file_system_another() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir_in(a.path()).unwrap();
        let here = filesystem_id(a.path());
        assert_ne!(here, 0);
        assert_eq!(filesystem_id(b.path()), here);
        // /proc is its own file system on every Linux.
        assert_ne!(filesystem_id(Path::new("/proc")), here);
        assert_eq!(filesystem_id(Path::new("/no/such/dir")), 0);
    }

    #[test]
    fn far_from_full_it_reads_once_per_recheck() {
        let mut s = FreeSpace::default();
        let t0 = Instant::now();
        assert_eq!(s.admit(t0, 4096, || Ok(1 << 30)).unwrap(), Ok(()));
        for i in 0..1000 {
            assert_eq!(s.admit(t0 + Duration::from_micros(i), 4096, never).unwrap(), Ok(()));
        }
        let mut read = false;
        let later = t0 + RECHECK;
        assert_eq!(
            s.admit(later, 4096, || {
                read = true;
                Ok(1 << 30)
            })
            .unwrap(),
            Ok(())
        );
        assert!(read, "a reading older than RECHECK stood");
    }

    #[test]
    fn admitted_bytes_count_until_the_margin_forces_a_reading() {
        let mut s = FreeSpace::default();
        let t0 = Instant::now();
        // 8 MiB reserve + 64 MiB margin + 10 MiB: ten 1 MiB writes stand on the reading.
        assert_eq!(s.admit(t0, MIB, || Ok(RESERVE + MARGIN + 11 * MIB)).unwrap(), Ok(()));
        for _ in 0..10 {
            assert_eq!(s.admit(t0, MIB, never).unwrap(), Ok(()));
        }
        // The next would leave less than the margin: read again, and the disk filled.
        assert_eq!(s.admit(t0, MIB, || Ok(RESERVE + MIB / 2)).unwrap(), Err(RESERVE + MIB / 2));
    }

    #[test]
    fn near_full_every_write_reads_and_none_eats_the_reserve() {
        let mut s = FreeSpace::default();
        let t0 = Instant::now();
        let mut free = RESERVE + 3 * MIB;
        let mut reads = 0;
        let mut admitted = 0;
        for _ in 0..10 {
            let r = s
                .admit(t0, MIB, || {
                    reads += 1;
                    Ok(free)
                })
                .unwrap();
            if r.is_ok() {
                free -= MIB;
                admitted += 1;
            }
        }
        assert_eq!(admitted, 3, "only what leaves the reserve free is written");
        assert_eq!(reads, 10, "near full, every write reads the free space");
        assert_eq!(free, RESERVE);
    }

    #[test]
    fn a_failed_reading_is_an_error_and_the_next_reads_again() {
        let mut s = FreeSpace::default();
        let t0 = Instant::now();
        assert!(s.admit(t0, 1, || Err(io::Error::from_raw_os_error(nix::libc::EIO))).is_err());
        assert_eq!(s.admit(t0, 1, || Ok(1 << 30)).unwrap(), Ok(()));
    }
}
