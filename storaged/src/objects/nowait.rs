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
/// Kept in an `AtomicU8` (the store may turn it to `Never` while serving): hence the
/// explicit discriminants, which `from_u8` reads back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum InlineReads {
    /// Only what the page cache holds (`RWF_NOWAIT`); the rest goes to the blocking pool.
    CachedOnly = 0,
    /// Plain reads: the file system lives in memory (tmpfs) and never waits for a disk —
    /// and does not take `RWF_NOWAIT`.
    Memory = 1,
    /// None: the file system refused `RWF_NOWAIT`, and a plain read could wait.
    Never = 2,
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
            v if v == InlineReads::CachedOnly as u8 => InlineReads::CachedOnly,
            v if v == InlineReads::Memory as u8 => InlineReads::Memory,
            _ => InlineReads::Never,
        }
    }
}

/// Appends `len` bytes of `file` at `at` to `buf`, read straight into its spare capacity:
/// a buffer read into is never zeroed first (for a whole object, that would write every
/// byte twice). `cached_only`: out of the page cache only (`RWF_NOWAIT`) — `WouldBlock` if
/// some of it is not cached, `Unsupported` if the file system does not take it. On an
/// error, `buf` may hold part of the bytes; `UnexpectedEof` past the end of the file.
pub fn read_append(file: &File, buf: &mut Vec<u8>, len: usize, at: u64, cached_only: bool) -> io::Result<()> {
    let flags = if cached_only { libc::RWF_NOWAIT } else { 0 };
    let end = buf.len() + len;
    buf.reserve(len);
    let mut done = 0;
    while done < len {
        let spare = buf.spare_capacity_mut();
        debug_assert!(spare.len() >= len - done, "reserved {len} bytes, {} spare", spare.len());
        let iov = libc::iovec { iov_base: spare.as_mut_ptr().cast(), iov_len: len - done };
        let offset = libc::off_t::try_from(at + done as u64)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "read offset past off_t"))?;
        // SAFETY: `iov` describes the first `len - done` bytes of `buf`'s spare capacity,
        // memory `buf` owns and nothing else refers to while `buf` is borrowed here; the
        // descriptor is `file`'s, open while `file` is borrowed.
        let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, flags) };
        match n {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n if n > 0 => {
                done += n as usize;
                // SAFETY: the kernel wrote the `n` bytes after `buf`'s length, which were
                // spare capacity (see above), so they are initialised now.
                unsafe { buf.set_len(buf.len() + n as usize) };
            }
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    debug_assert_eq!(buf.len(), end);
    Ok(())
}

/// `len` bytes of `file` at `at`, in a new buffer (see [`read_append`]).
pub fn read_new(file: &File, len: usize, at: u64, cached_only: bool) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len);
    read_append(file, &mut buf, len, at, cached_only)?;
    Ok(buf)
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
    /// `DONTNEED` skips pages the kernel still holds in a per-CPU batch, so this asks again
    /// until `mincore` shows none of the file's pages resident (bounded: 2 s).
    pub fn drop_from_cache(path: &Path) {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(path).unwrap();
        file.sync_all().unwrap();
        let len = file.metadata().unwrap().len() as usize;
        for _ in 0..200 {
            nix::fcntl::posix_fadvise(&file, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED).unwrap();
            if resident_pages(file.as_raw_fd(), len) == 0 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{} stays in the page cache", path.display());
    }

    /// Drops `path` from the page cache until `would_wait` (a read that must not wait)
    /// says it would: under load the kernel may bring pages back between the two (its own
    /// readahead, reclaim races), so this tries again, 50 times at most, and fails the
    /// test if the read never had to wait.
    pub fn drop_until_reads_wait(path: &Path, mut would_wait: impl FnMut() -> bool) {
        for _ in 0..50 {
            drop_from_cache(path);
            if would_wait() {
                return;
            }
        }
        panic!("a read of {} never had to wait for the disk after dropping it from the cache", path.display());
    }

    /// How many pages of the first `len` bytes of the file `fd` the page cache holds.
    fn resident_pages(fd: std::os::fd::RawFd, len: usize) -> usize {
        if len == 0 {
            return 0;
        }
        let page = 4096;
        let mut vec = vec![0u8; len.div_ceil(page)];
        // SAFETY: a fresh read-only shared mapping of `len` bytes of an open file, which
        // nothing reads (mincore looks at its pages' residency only) and which is unmapped
        // before returning; `vec` has one byte per page of it, as mincore writes.
        unsafe {
            let at = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, fd, 0);
            assert_ne!(at, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
            let r = libc::mincore(at, len, vec.as_mut_ptr());
            let e = std::io::Error::last_os_error();
            libc::munmap(at, len);
            assert_eq!(r, 0, "mincore: {e}");
        }
        vec.iter().filter(|&&b| b & 1 == 1).count()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::test_dirs::{disk_dir, drop_until_reads_wait, memory_dir};
    use super::*;

    #[test]
    fn a_cached_read_answers_at_once_and_an_uncached_one_would_block() {
        let dir = disk_dir();
        assert_eq!(InlineReads::of(dir.path()).unwrap(), InlineReads::CachedOnly, "the build's disk is no tmpfs");
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        assert_eq!(read_new(&file, 8192, 4096, true).unwrap(), data[4096..12288]);

        drop_until_reads_wait(&path, || match read_new(&file, 8192, 65536, true) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
            Err(e) => panic!("{e}"),
            Ok(_) => false,
        });
        // A read that may wait brings it into the cache; then it is served at once.
        assert_eq!(read_new(&file, 8192, 65536, false).unwrap(), data[65536..65536 + 8192]);
        assert_eq!(read_new(&file, 8192, 65536, true).unwrap(), data[65536..65536 + 8192]);

        let mut past = [0u8; 8];
        file.read_exact_at(&mut past, (1 << 20) - 8).unwrap(); // the last page, cached
        let err = read_new(&file, 16, (1 << 20) - 8, true).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(read_new(&file, 16, (1 << 20) - 8, false).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn an_append_keeps_what_the_buffer_held_and_reads_past_a_short_read() {
        let dir = memory_dir();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3 << 20).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        let mut buf = b"kept".to_vec();
        read_append(&file, &mut buf, 3 << 20, 0, false).unwrap();
        assert_eq!(&buf[..4], b"kept");
        assert!(buf[4..] == data[..], "the whole file follows what was there");
        assert!(read_new(&file, 0, 0, true).unwrap().is_empty());
    }

    #[test]
    fn a_memory_file_system_reads_plainly() {
        let dir = memory_dir();
        assert_eq!(InlineReads::of(dir.path()).unwrap(), InlineReads::Memory);
    }
}
