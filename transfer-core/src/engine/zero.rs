//! Zero detection in read buffers: data that a source calls "data" is often zeros (a freshly
//! formatted guest, qemu-nbd without allocation info). Buffers are checked in 4 KiB blocks and
//! zero blocks become zero operations (skipped entirely on a target that already reads as zero).

/// Granularity of zero detection.
pub const ZERO_BLOCK: usize = 4096;

/// True when every byte of `b` is zero.
#[inline]
pub fn is_zero(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(64);
    for c in &mut chunks {
        let mut acc = 0u64;
        for w in c.chunks_exact(8) {
            acc |= u64::from_ne_bytes(w.try_into().expect("8 bytes"));
        }
        if acc != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&x| x == 0)
}

/// A segment of a buffer: `(start, len, zero)`.
pub type Segment = (usize, usize, bool);

/// Splits `buf` into alternating data and zero segments at `block` granularity (the last block
/// may be short). Adjacent blocks of the same kind are merged.
pub fn segments(buf: &[u8], block: usize) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let n = block.min(buf.len() - pos);
        let z = is_zero(&buf[pos..pos + n]);
        match out.last_mut() {
            Some((_, l, kind)) if *kind == z => *l += n,
            _ => out.push((pos, n, z)),
        }
        pos += n;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_zero_sees_a_single_set_byte_anywhere() {
        let mut b = vec![0u8; 4096 + 37];
        assert!(is_zero(&b));
        for i in [0, 63, 64, 4095, 4096 + 36] {
            b[i] = 1;
            assert!(!is_zero(&b), "{i}");
            b[i] = 0;
        }
        assert!(is_zero(&[]));
    }

    #[test]
    fn segments_merge_blocks_of_the_same_kind() {
        let mut b = vec![0u8; 5 * 4096 + 100];
        b[4096] = 1;
        b[2 * 4096 + 5] = 1;
        b[5 * 4096 + 99] = 1;
        assert_eq!(
            segments(&b, 4096),
            vec![
                (0, 4096, true),
                (4096, 8192, false),
                (12288, 8192, true),
                (20480, 100, false)
            ]
        );
    }

    #[test]
    fn all_data_buffer_is_one_segment() {
        let b = vec![3u8; 1 << 20];
        assert_eq!(segments(&b, 4096), vec![(0, 1 << 20, false)]);
    }
}
