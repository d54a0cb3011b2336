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
        debug_assert!(idx <= u64::from(u32::MAX) && in_obj <= u64::from(u32::MAX), "range unchecked by the caller");
        pieces.push(Piece {
            idx: idx as u32,
            offset: in_obj as u32,
            buf_offset: (pos - offset) as usize,
            len: n as usize,
        });
        pos += n;
    }
    pieces
}

/// One object's part of a VDI byte range, with no buffer behind it (for zeroing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// The object's index in the VDI.
    pub idx: u32,
    /// Where the span starts inside the object.
    pub offset: u32,
    pub len: u32,
    /// Where the span starts in the VDI.
    pub vdi_offset: u64,
}

/// The parts of `len` bytes at `offset`, each inside one object of `1 << object_size_shift`
/// bytes (at most 2^31) and at most `max` bytes long, in order, lazily: a huge range costs
/// no memory. The caller has checked the range against the VDI's size.
pub fn spans(offset: u64, len: u64, object_size_shift: u8, max: u32) -> impl Iterator<Item = Span> {
    let object_size = 1u64 << object_size_shift.min(31);
    let end = offset.saturating_add(len);
    let max = u64::from(max.max(1));
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let idx = pos / object_size;
        let in_obj = pos % object_size;
        let n = (object_size - in_obj).min(end - pos).min(max);
        let span = Span { idx: u32::try_from(idx).ok()?, offset: in_obj as u32, len: n as u32, vdi_offset: pos };
        pos += n;
        Some(span)
    })
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
    fn spans_follow_objects_and_the_cap() {
        let s: Vec<Span> = spans(4086, 4096 * 2 + 20, 12, 1 << 20).collect();
        assert_eq!(
            s,
            vec![
                Span { idx: 0, offset: 4086, len: 10, vdi_offset: 4086 },
                Span { idx: 1, offset: 0, len: 4096, vdi_offset: 4096 },
                Span { idx: 2, offset: 0, len: 4096, vdi_offset: 8192 },
                Span { idx: 3, offset: 0, len: 10, vdi_offset: 12288 },
            ]
        );
        let s: Vec<Span> = spans(0, 3 << 30, 31, 1 << 30).collect();
        assert_eq!(s.len(), 3);
        assert_eq!(s[1], Span { idx: 0, offset: 1 << 30, len: 1 << 30, vdi_offset: 1 << 30 });
        assert_eq!(s[2], Span { idx: 1, offset: 0, len: 1 << 30, vdi_offset: 2 << 30 });
        assert_eq!(spans(7, 0, 22, 4096).count(), 0);
    }

    #[test]
    fn bounds() {
        assert!(fits(0, 10, 10));
        assert!(!fits(1, 10, 10));
        assert!(!fits(u64::MAX, 2, u64::MAX));
        assert!(fits(10, 0, 10));
    }
}
