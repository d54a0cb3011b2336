//! What one ublk I/O descriptor asks for, decoded and checked (pure; no ring, no engine).

use libublk::sys;
use nix::errno::Errno;

/// One block request, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockOp {
    Read {
        offset: u64,
        len: u32,
    },
    Write {
        offset: u64,
        len: u32,
        fua: bool,
    },
    /// Every write completed before it is durable once it completes.
    Flush,
    /// The range may be deallocated; it reads as zeros afterwards (we guarantee that).
    Discard {
        offset: u64,
        len: u64,
    },
    /// The range reads as zeros afterwards; `may_unmap` is false with REQ_NOUNMAP.
    WriteZeroes {
        offset: u64,
        len: u64,
        may_unmap: bool,
        fua: bool,
    },
}

impl BlockOp {
    /// What the request completes with on success: the bytes transferred for reads and
    /// writes, 0 for the others.
    pub fn success(&self) -> i32 {
        match *self {
            // len ≤ max I/O (512 KiB), checked by decode().
            BlockOp::Read { len, .. } | BlockOp::Write { len, .. } => len as i32,
            _ => 0,
        }
    }
}

/// Decodes `op_flags`/`start_sector`/`nr_sectors` of a descriptor for a device of
/// `dev_size` bytes whose I/O buffers hold `max_io` bytes. A request the device cannot serve
/// gets an errno (positive): the kernel never sends these for our parameters, so they mean
/// a bug or a mismatch, and the request fails instead of touching anything.
pub fn decode(op_flags: u32, start_sector: u64, nr_sectors: u32, dev_size: u64, max_io: u32) -> Result<BlockOp, i32> {
    let op = op_flags & 0xff;
    let flags = op_flags >> 8 << 8;
    // A flush has no range (its sector fields are whatever the kernel left there).
    if op == sys::UBLK_IO_OP_FLUSH {
        return Ok(BlockOp::Flush);
    }
    let offset = start_sector.checked_mul(512).ok_or(Errno::EINVAL as i32)?;
    let len = u64::from(nr_sectors) * 512;
    let in_range = offset.checked_add(len).is_some_and(|end| end <= dev_size);
    if !in_range {
        return Err(Errno::EINVAL as i32);
    }
    match op {
        sys::UBLK_IO_OP_READ | sys::UBLK_IO_OP_WRITE => {
            if len > u64::from(max_io) {
                return Err(Errno::EINVAL as i32);
            }
            let len = len as u32;
            Ok(if op == sys::UBLK_IO_OP_READ {
                BlockOp::Read { offset, len }
            } else {
                BlockOp::Write { offset, len, fua: flags & sys::UBLK_IO_F_FUA != 0 }
            })
        }
        sys::UBLK_IO_OP_DISCARD => Ok(BlockOp::Discard { offset, len }),
        sys::UBLK_IO_OP_WRITE_ZEROES => Ok(BlockOp::WriteZeroes {
            offset,
            len,
            may_unmap: flags & sys::UBLK_IO_F_NOUNMAP == 0,
            fua: flags & sys::UBLK_IO_F_FUA != 0,
        }),
        _ => Err(Errno::EOPNOTSUPP as i32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u64 = 1 << 30;
    const MAX: u32 = 512 << 10;

    #[test]
    fn reads_and_writes() {
        assert_eq!(decode(sys::UBLK_IO_OP_READ, 8, 8, SIZE, MAX), Ok(BlockOp::Read { offset: 4096, len: 4096 }));
        let w = decode(sys::UBLK_IO_OP_WRITE | sys::UBLK_IO_F_FUA, 0, 1024, SIZE, MAX).unwrap();
        assert_eq!(w, BlockOp::Write { offset: 0, len: 512 << 10, fua: true });
        assert_eq!(w.success(), 512 << 10);
        // The last sector is fine, one past it is not.
        assert!(decode(sys::UBLK_IO_OP_READ, SIZE / 512 - 1, 1, SIZE, MAX).is_ok());
        assert_eq!(decode(sys::UBLK_IO_OP_READ, SIZE / 512, 1, SIZE, MAX), Err(Errno::EINVAL as i32));
        assert_eq!(decode(sys::UBLK_IO_OP_WRITE, u64::MAX / 256, 1, SIZE, MAX), Err(Errno::EINVAL as i32));
        // Bigger than the buffer.
        assert_eq!(decode(sys::UBLK_IO_OP_READ, 0, 1025, SIZE, MAX), Err(Errno::EINVAL as i32));
    }

    #[test]
    fn the_others() {
        assert_eq!(decode(sys::UBLK_IO_OP_FLUSH, 0, 0, SIZE, MAX), Ok(BlockOp::Flush));
        // Seen from the 6.12 kernel: a flush's sector field is not zero.
        assert_eq!(decode(sys::UBLK_IO_OP_FLUSH, u64::MAX, 0, SIZE, MAX), Ok(BlockOp::Flush));
        assert_eq!(BlockOp::Flush.success(), 0);
        let big = (64 << 20) / 512;
        assert_eq!(
            decode(sys::UBLK_IO_OP_DISCARD, 0, big, SIZE, MAX),
            Ok(BlockOp::Discard { offset: 0, len: 64 << 20 })
        );
        assert_eq!(
            decode(sys::UBLK_IO_OP_WRITE_ZEROES | sys::UBLK_IO_F_NOUNMAP, 16, 8, SIZE, MAX),
            Ok(BlockOp::WriteZeroes { offset: 8192, len: 4096, may_unmap: false, fua: false })
        );
        assert_eq!(
            decode(sys::UBLK_IO_OP_WRITE_ZEROES, 16, 8, SIZE, MAX),
            Ok(BlockOp::WriteZeroes { offset: 8192, len: 4096, may_unmap: true, fua: false })
        );
        assert_eq!(decode(sys::UBLK_IO_OP_DISCARD, SIZE / 512, 8, SIZE, MAX), Err(Errno::EINVAL as i32));
        assert_eq!(decode(sys::UBLK_IO_OP_WRITE_SAME, 0, 8, SIZE, MAX), Err(Errno::EOPNOTSUPP as i32));
        assert_eq!(decode(sys::UBLK_IO_OP_ZONE_APPEND, 0, 8, SIZE, MAX), Err(Errno::EOPNOTSUPP as i32));
    }
}
