//! How much room the store's file system has.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

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
