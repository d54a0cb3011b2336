//! Finding the data in a buffer: what a sparse-aware import skips.

/// True when every byte is zero. (Chunks of 64 bytes OR-ed together: the compiler turns
/// that into vector instructions, and a non-zero chunk stops the scan.)
pub fn is_zero(buf: &[u8]) -> bool {
    let chunks = buf.chunks_exact(64);
    let tail = chunks.remainder();
    chunks.into_iter().all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0) && tail.iter().all(|&b| b == 0)
}

/// The ranges `(start, len)` of `buf` holding non-zero data, at the granularity of `block`
/// bytes: a block with any non-zero byte is data; adjacent data blocks are merged.
pub fn data_extents(buf: &[u8], block: usize) -> Vec<(usize, usize)> {
    let block = block.max(1);
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (i, chunk) in buf.chunks(block).enumerate() {
        if is_zero(chunk) {
            continue;
        }
        let start = i * block;
        match out.last_mut() {
            Some((s, l)) if *s + *l == start => *l += chunk.len(),
            _ => out.push((start, chunk.len())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 4099]));
        let mut b = vec![0u8; 4099];
        b[4098] = 1;
        assert!(!is_zero(&b));
        b[4098] = 0;
        b[3] = 9;
        assert!(!is_zero(&b));
    }

    #[test]
    fn extents_merge_adjacent_blocks() {
        let mut b = vec![0u8; 10 * 4096 + 100];
        b[5] = 1; // block 0
        b[4096 + 7] = 1; // block 1
        b[5 * 4096] = 1; // block 5
        b[10 * 4096 + 50] = 1; // the short last block
        assert_eq!(data_extents(&b, 4096), vec![(0, 8192), (5 * 4096, 4096), (10 * 4096, 100)]);
        assert!(data_extents(&[0; 8192], 4096).is_empty());
    }
}
