//! How a VDI's inode is stored as an object (`ObjectId::inode(vid)`, on the replicas of that
//! oid, like any object).
//!
//! ```text
//! offset 0      header block, 4096 bytes: u32 LE length n, then n bytes of
//!               `Inode::encode()` of the VDI's header with an all-zero table, zero padded
//! offset 4096   data_vdi_id table: max_objects × u32 LE, entry i at 4096 + 4·i
//!               (owner vid of object i, 0 = never written)
//! the object's size is rounded up to a multiple of 4096 bytes
//! ```
//!
//! The encoded header in the first block carries the name, vid, size, copies, object size
//! and creation time; its own table (runs form, all zeros) is ignored: the live table is the
//! raw one after it, so the first write to object `i` changes just 4 bytes of the inode
//! (the rest of the object stays sparse on disk).
//!
//! An inode object that exists on no replica means the VDI was never written: every object
//! reads as zeros, and the header is built from the group's `VdiEntry`. That makes
//! `vdi create` a single groupd call; the object is created by the first write.

use sheep_core::inode::{Inode, InodeError, InodeSpec};
use sheep_core::namespace::VdiEntry;

/// The header block's size.
pub const HEADER_LEN: u32 = 4096;

/// The inode header of a VDI as the namespace describes it, with an empty table.
pub fn inode_for(entry: &VdiEntry) -> Result<Inode, InodeError> {
    Inode::new(InodeSpec {
        name: &entry.name,
        vid: entry.vid,
        size: entry.size,
        copies: entry.copies,
        object_size_shift: entry.object_size_shift,
        ctime_ms: entry.created_ms,
    })
}

/// ceil(size / object size).
pub fn max_objects(size: u64, object_size_shift: u8) -> u64 {
    size.div_ceil(1u64 << object_size_shift)
}

/// Where table entry `idx` lives in the object.
pub fn entry_offset(idx: u32) -> u64 {
    u64::from(HEADER_LEN) + 4 * u64::from(idx)
}

/// The whole object's size for `max_objects` entries, rounded up to a multiple of 4096
/// (storaged keeps objects in whole 4 KiB blocks).
pub fn object_len(max_objects: u64) -> u64 {
    (u64::from(HEADER_LEN) + 4 * max_objects).div_ceil(4096) * 4096
}

/// The header block of `inode` (whose table is ignored and written as all zeros).
pub fn encode_header(inode: &Inode) -> Result<Vec<u8>, InodeError> {
    let mut header = inode.clone();
    for idx in 0..header.max_objects() {
        if header.owner(idx).is_some() {
            header.set_owner(idx, None)?;
        }
    }
    let body = header.encode();
    let mut block = Vec::with_capacity(HEADER_LEN as usize);
    block.extend_from_slice(&(body.len() as u32).to_le_bytes());
    block.extend_from_slice(&body);
    if block.len() > HEADER_LEN as usize {
        return Err(InodeError::Malformed("inode header does not fit its block"));
    }
    block.resize(HEADER_LEN as usize, 0);
    Ok(block)
}

/// The inode from a header block and a raw table (`4 × max_objects` bytes, or fewer: missing
/// entries are 0).
pub fn decode(header: &[u8], table: &[u8]) -> Result<Inode, InodeError> {
    let len_bytes: [u8; 4] = header.get(..4).and_then(|b| b.try_into().ok()).ok_or(InodeError::Truncated)?;
    let len = u32::from_le_bytes(len_bytes) as usize;
    let body = header.get(4..4 + len).ok_or(InodeError::Truncated)?;
    let mut inode = Inode::decode(body)?;
    for (idx, raw) in decode_table(table).into_iter().enumerate().take(inode.max_objects() as usize) {
        if raw != 0 {
            let owner =
                sheep_core::object::VdiId::new(raw).map_err(|_| InodeError::Malformed("owner vid out of range"))?;
            inode.set_owner(idx as u32, Some(owner))?;
        }
    }
    Ok(inode)
}

/// The raw table as u32 entries (a trailing partial entry is ignored).
pub fn decode_table(table: &[u8]) -> Vec<u32> {
    table.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sheep_core::object::VdiId;

    fn entry() -> VdiEntry {
        VdiEntry {
            name: "disk0".into(),
            vid: VdiId::new(0x7c2b25).unwrap(),
            size: 10 << 22,
            copies: 3,
            object_size_shift: 22,
            created_ms: 1234,
            parent: None,
            snapshot: None,
        }
    }

    #[test]
    fn offsets() {
        assert_eq!(entry_offset(0), 4096);
        assert_eq!(entry_offset(3), 4108);
        assert_eq!(object_len(10), 8192);
        assert_eq!(object_len(1024), 8192);
        assert_eq!(object_len(1025), 12288);
        assert_eq!(object_len(1 << 20), 4096 + (4 << 20));
        assert_eq!(max_objects(10 << 22, 22), 10);
        assert_eq!(max_objects((10 << 22) + 512, 22), 11);
    }

    #[test]
    fn header_and_table_round_trip() {
        let mut inode = inode_for(&entry()).unwrap();
        let owner = Some(inode.vid);
        inode.set_owner(2, owner).unwrap();
        let header = encode_header(&inode).unwrap();
        assert_eq!(header.len(), 4096);
        let mut table = vec![0u8; 40];
        table[8..12].copy_from_slice(&inode.vid.get().to_le_bytes());
        let back = decode(&header, &table).unwrap();
        assert_eq!(back, inode);
        // The header's own table is empty; a short table leaves the rest unwritten.
        let bare = decode(&header, &[]).unwrap();
        assert_eq!(bare.owner(2), None);
        assert_eq!(bare.name, "disk0");
    }

    #[test]
    fn garbage_is_refused() {
        assert!(decode(&[0; 4096], &[]).is_err());
        assert!(decode(&[1, 0], &[]).is_err());
        let header = encode_header(&inode_for(&entry()).unwrap()).unwrap();
        let mut bad = header.clone();
        bad[10] ^= 1;
        assert!(decode(&bad, &[]).is_err());
        assert!(decode(&header, &0x0100_0000u32.to_le_bytes()).is_err(), "owner past 24 bits");
    }

    #[test]
    fn longest_name_fits() {
        let mut e = entry();
        e.name = "n".repeat(255);
        assert!(encode_header(&inode_for(&e).unwrap()).is_ok());
    }
}
