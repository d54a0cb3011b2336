//! Splitting a byte range of a VDI into pieces of objects.

/// The largest piece one storage request carries: big objects are read and written in
/// pieces of at most this many bytes.
pub const MAX_PIECE: u64 = 4 << 20;

/// One piece of a VDI byte range, inside one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// The object's index in the VDI.
    pub idx: u32,
    /// Where the piece starts inside the object.
    pub offset: u32,
    /// Where the piece starts in the caller's buffer.
    pub buf_offset: usize,
    pub len: usize,
}

/// Splits `len` bytes at `offset` into pieces, each inside one object of
/// `1 << object_size_shift` bytes and at most [`MAX_PIECE`] long, in order. The caller has
/// checked the range against the VDI's size (so every index fits in u32 and every in-object
/// offset below 2^32).
pub fn split(offset: u64, len: usize, object_size_shift: u8) -> Vec<Piece> {
    let object_size = 1u64 << object_size_shift;
    let mut pieces = Vec::with_capacity(len.div_ceil(MAX_PIECE.min(object_size) as usize).max(1));
    let mut pos = offset;
    let end = offset + len as u64;
    while pos < end {
        let idx = pos >> object_size_shift;
        let in_obj = pos & (object_size - 1);
        let n = (object_size - in_obj).min(end - pos).min(MAX_PIECE);
        pieces.push(Piece { idx: idx as u32, offset: in_obj as u32, buf_offset: (pos - offset) as usize, len: n as usize });
        pos += n;
    }
    pieces
}

/// Checks `offset + len <= size` without overflow.
pub fn fits(offset: u64, len: u64, size: u64) -> bool {
    offset.checked_add(len).is_some_and(|end| end <= size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_piece_inside_an_object() {
        assert_eq!(split(4096, 4096, 22), vec![Piece { idx: 0, offset: 4096, buf_offset: 0, len: 4096 }]);
        assert!(split(100, 0, 22).is_empty());
    }

    #[test]
    fn crosses_object_boundaries() {
        let os = 1u64 << 12;
        let p = split(os - 10, 4106 + 5, 12);
        assert_eq!(
            p,
            vec![
                Piece { idx: 0, offset: 4086, buf_offset: 0, len: 10 },
                Piece { idx: 1, offset: 0, buf_offset: 10, len: 4096 },
                Piece { idx: 2, offset: 0, buf_offset: 4106, len: 5 },
            ]
        );
        assert_eq!(p.iter().map(|p| p.len).sum::<usize>(), 4111);
    }

    #[test]
    fn big_objects_are_cut_into_max_pieces() {
        let p = split(0, 10 << 20, 30);
        assert_eq!(p.len(), 3);
        assert_eq!(p[1], Piece { idx: 0, offset: 4 << 20, buf_offset: 4 << 20, len: 4 << 20 });
        assert_eq!(p[2].len, 2 << 20);
        // High indexes.
        let p = split((5u64 << 22) + 7, 1, 22);
        assert_eq!(p, vec![Piece { idx: 5, offset: 7, buf_offset: 0, len: 1 }]);
    }

    #[test]
    fn bounds() {
        assert!(fits(0, 10, 10));
        assert!(!fits(1, 10, 10));
        assert!(!fits(u64::MAX, 2, u64::MAX));
        assert!(fits(10, 0, 10));
    }
}
