//! Owned, 4 KiB-aligned I/O buffers and a pool that reuses them.
//!
//! Buffers are owned (not borrowed) because they travel: the NBD reader task fills them from the
//! socket, the I/O engine writes them from another thread or through io_uring, and they come back
//! to the pool. Alignment (needed for O_DIRECT) is obtained without `unsafe` by over-allocating a
//! `Vec` and starting at the first aligned byte.

use std::sync::Mutex;

/// Alignment of every buffer: enough for O_DIRECT on 4Kn devices.
pub const ALIGN: usize = 4096;

/// An aligned byte buffer with a capacity and a current length.
pub struct Buffer {
    raw: Vec<u8>,
    start: usize,
    cap: usize,
    len: usize,
}

impl Buffer {
    /// A zero-filled buffer of capacity `cap` and length `cap`, aligned to [`ALIGN`].
    pub fn new(cap: usize) -> Self {
        let raw = vec![0u8; cap + ALIGN];
        let misalign = raw.as_ptr() as usize % ALIGN;
        let start = if misalign == 0 { 0 } else { ALIGN - misalign };
        Buffer {
            raw,
            start,
            cap,
            len: cap,
        }
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Current length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the length is 0.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets the length (must not exceed the capacity).
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.cap,
            "buffer length {len} over capacity {}",
            self.cap
        );
        self.len = len;
    }

    /// The first `len` bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    /// The first `len` bytes, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }

    /// The allocation, where the current bytes are in it, and the capacity: for a reader that
    /// must own what it fills (VDDK keeps a read's memory until it completes).
    #[cfg(feature = "vddk")]
    pub(crate) fn into_vec(self) -> (Vec<u8>, std::ops::Range<usize>, usize) {
        (self.raw, self.start..self.start + self.len, self.cap)
    }

    /// The buffer [`Buffer::into_vec`] took apart.
    #[cfg(feature = "vddk")]
    pub(crate) fn from_vec(raw: Vec<u8>, bytes: std::ops::Range<usize>, cap: usize) -> Buffer {
        assert!(
            bytes.start + cap <= raw.len() && bytes.len() <= cap,
            "buffer parts out of bounds"
        );
        Buffer {
            start: bytes.start,
            len: bytes.len(),
            cap,
            raw,
        }
    }
}

impl std::ops::Deref for Buffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::ops::DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buffer(len={}, cap={})", self.len, self.cap)
    }
}

/// A pool of same-capacity buffers. The number of live buffers is bounded by the caller (the
/// engine's in-flight budget); the pool only avoids allocating and faulting in fresh memory.
pub struct BufferPool {
    cap: usize,
    free: Mutex<Vec<Buffer>>,
}

impl BufferPool {
    /// A pool of buffers with capacity `cap`.
    pub fn new(cap: usize) -> Self {
        BufferPool {
            cap,
            free: Mutex::new(Vec::new()),
        }
    }

    /// A buffer of length `len` (at most the pool capacity), reused when one is free.
    pub fn get(&self, len: usize) -> Buffer {
        let mut b = self
            .free
            .lock()
            .unwrap()
            .pop()
            .unwrap_or_else(|| Buffer::new(self.cap));
        b.set_len(len);
        b
    }

    /// Returns a buffer to the pool.
    pub fn put(&self, b: Buffer) {
        if b.capacity() == self.cap {
            self.free.lock().unwrap().push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_sized() {
        for cap in [1, 512, 4096, 1 << 20] {
            let b = Buffer::new(cap);
            assert_eq!(b.as_ptr() as usize % ALIGN, 0);
            assert_eq!(b.len(), cap);
        }
    }

    #[test]
    fn pool_reuses_buffers() {
        let p = BufferPool::new(8192);
        let b = p.get(100);
        let ptr = b.as_ptr();
        p.put(b);
        let b2 = p.get(4096);
        assert_eq!(b2.as_ptr(), ptr);
        assert_eq!(b2.len(), 4096);
    }
}
