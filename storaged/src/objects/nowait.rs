//! Reads the RPC thread may do itself because they never wait for the disk: `preadv2` with
//! `RWF_NOWAIT` copies what the page cache holds and answers `EAGAIN` (`WouldBlock`) for
//! anything it would have to fetch, and the caller sends such a read to the blocking pool.
//! A plain `pread` on the RPC thread would stall every connection of the node behind one
//! slow or failing disk.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// How the store's small reads may run on the RPC thread, decided by the file system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InlineReads {
    /// Only what the page cache holds (`RWF_NOWAIT`); the rest goes to the blocking pool.
    CachedOnly,
    /// Plain reads: the file system lives in memory (tmpfs) and never waits for a disk —
    /// and does not take `RWF_NOWAIT`.
    Memory,
    /// None: the file system refused `RWF_NOWAIT`, and a plain read could wait.
    Never,
}

impl InlineReads {
    /// What the file system holding `dir` allows.
    pub fn of(dir: &Path) -> io::Result<InlineReads> {
        use nix::sys::statfs::{statfs, TMPFS_MAGIC};
        let memory = statfs(dir)?.filesystem_type() == TMPFS_MAGIC;
        Ok(if memory { InlineReads::Memory } else { InlineReads::CachedOnly })
    }

    pub fn to_u8(self) -> u8 {
        self as u8
    }

    pub fn from_u8(v: u8) -> InlineReads {
        match v {
            0 => InlineReads::CachedOnly,
            1 => InlineReads::Memory,
            _ => InlineReads::Never,
        }
    }
}

/// Fills `buf` from `file` at `at` out of the page cache only: `WouldBlock` if some of it is
/// not cached (the part before it may be filled), `Unsupported` if the file system does not
/// take `RWF_NOWAIT`, `UnexpectedEof` past the end of the file.
pub fn read_exact_cached(file: &File, buf: &mut [u8], at: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        let iov = libc::iovec { iov_base: rest.as_mut_ptr().cast(), iov_len: rest.len() };
        let offset = libc::off_t::try_from(at + done as u64)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "read offset past off_t"))?;
        // SAFETY: `iov` describes `rest`, memory this function borrows mutably for the call;
        // the descriptor is `file`'s, open while `file` is borrowed.
        let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
        match n {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n if n > 0 => done += n as usize,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// Directories on a disk and in memory for tests, and a way to empty the page cache.
#[cfg(test)]
pub mod test_dirs {
    use std::path::Path;

    /// A directory on the disk the build runs on (never a tmpfs, which `/tmp` may be).
    pub fn disk_dir() -> tempfile::TempDir {
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
        std::fs::create_dir_all(&target).unwrap();
        tempfile::tempdir_in(target).unwrap()
    }

    /// A directory on a tmpfs: /dev/shm is one wherever there is one.
    pub fn memory_dir() -> tempfile::TempDir {
        tempfile::tempdir_in("/dev/shm").expect("a /dev/shm to make a directory in")
    }

    /// Written back and dropped from the page cache: the next read must go to the disk.
    pub fn drop_from_cache(path: &Path) {
        let file = std::fs::File::open(path).unwrap();
        file.sync_all().unwrap();
        nix::fcntl::posix_fadvise(&file, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::test_dirs::{disk_dir, drop_from_cache, memory_dir};
    use super::*;

    #[test]
    fn a_cached_read_answers_at_once_and_an_uncached_one_would_block() {
        let dir = disk_dir();
        assert_eq!(InlineReads::of(dir.path()).unwrap(), InlineReads::CachedOnly, "the build's disk is no tmpfs");
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        let mut buf = vec![0u8; 8192];
        read_exact_cached(&file, &mut buf, 4096).unwrap();
        assert_eq!(buf, data[4096..12288]);

        drop_from_cache(&path);
        let err = read_exact_cached(&file, &mut buf, 65536).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
        // A read that may wait brings it into the cache; then it is served at once.
        file.read_exact_at(&mut buf, 65536).unwrap();
        read_exact_cached(&file, &mut buf, 65536).unwrap();
        assert_eq!(buf, data[65536..65536 + 8192]);

        let mut past = [0u8; 16];
        file.read_exact_at(&mut past[..8], (1 << 20) - 8).unwrap(); // the last page, cached
        let err = read_exact_cached(&file, &mut past, (1 << 20) - 8).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_memory_file_system_reads_plainly() {
        let dir = memory_dir();
        assert_eq!(InlineReads::of(dir.path()).unwrap(), InlineReads::Memory);
    }
}
