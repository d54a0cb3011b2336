//! The device's parameters as the kernel sees them (pure).

use libublk::sys;

/// Each request carries at most this much data (the kernel's max_sectors).
pub const MAX_IO_BYTES: u32 = 512 << 10;

/// Discards and write-zeroes are cut by the kernel into pieces of at most this much: the
/// engine clears whole objects cheaply, so the bigger the fewer round trips.
pub const MAX_DISCARD_BYTES: u32 = 1 << 30;

/// Logical blocks of 512 bytes (what every tool accepts), physical 4 KiB (the storaged
/// checksum block, so aligned writes avoid a read-modify-write there), a volatile write
/// cache with FLUSH and FUA (writes are acknowledged by storaged before they are fsynced),
/// discard and write-zeroes.
pub fn device_params(dev_size: u64) -> sys::ublk_params {
    assert!(dev_size.is_multiple_of(512), "a VDI's size is a multiple of 512");
    sys::ublk_params {
        types: sys::UBLK_PARAM_TYPE_BASIC | sys::UBLK_PARAM_TYPE_DISCARD,
        basic: sys::ublk_param_basic {
            attrs: sys::UBLK_ATTR_VOLATILE_CACHE | sys::UBLK_ATTR_FUA,
            logical_bs_shift: 9,
            physical_bs_shift: 12,
            io_opt_shift: 12,
            io_min_shift: 12,
            max_sectors: MAX_IO_BYTES >> 9,
            dev_sectors: dev_size >> 9,
            ..Default::default()
        },
        discard: sys::ublk_param_discard {
            discard_alignment: 0,
            discard_granularity: 4096,
            max_discard_sectors: MAX_DISCARD_BYTES >> 9,
            max_write_zeroes_sectors: MAX_DISCARD_BYTES >> 9,
            max_discard_segments: 1,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_of_a_10g_disk() {
        let p = device_params(10 << 30);
        assert_eq!(p.basic.dev_sectors, 10 << 21);
        assert_eq!(p.basic.max_sectors, 1024);
        assert_ne!(p.basic.attrs & sys::UBLK_ATTR_VOLATILE_CACHE, 0);
        assert_ne!(p.basic.attrs & sys::UBLK_ATTR_FUA, 0);
        assert_ne!(p.types & sys::UBLK_PARAM_TYPE_DISCARD, 0);
        assert_eq!(p.discard.max_discard_segments, 1);
    }
}
