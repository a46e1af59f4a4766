//! One memory budget shared by copies that run side by side (a daemon's transfers): every
//! buffer any of them has in flight, and every buffer kept for reuse, counts against it, so
//! the process holds at most the budget in copy buffers however many copies run.
//!
//! Each copy still keeps its own in-flight budget ([`super::CopyOptions::memory`]); a buffer
//! needs a share of both. A share is taken before a buffer is filled and given back when its
//! write is done, never while waiting for another one, so copies only wait for each other and
//! never deadlock. Buffers of the sizes in use are kept in one pool for every copy; the pool
//! never makes the total (lent out plus kept) exceed the budget: a kept buffer is freed when
//! a new one of another size is needed.

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::buffer::Buffer;

/// Budget accounting unit: buffers are whole 4 KiB blocks.
const UNIT: usize = 4096;

/// A memory budget several copies share. Cloning it shares it.
#[derive(Clone)]
pub struct MemoryBudget {
    inner: Arc<Inner>,
}

struct Inner {
    bytes: usize,
    units: Arc<Semaphore>,
    /// Buffers kept for reuse, with no share of the budget held for them (they are counted
    /// against the free shares instead).
    kept: Mutex<Kept>,
}

/// The buffers kept for reuse and their bytes.
#[derive(Default)]
struct Kept {
    buffers: Vec<Buffer>,
    bytes: usize,
}

impl Kept {
    fn take(&mut self, i: usize) -> Buffer {
        let b = self.buffers.swap_remove(i);
        self.bytes -= b.capacity();
        b
    }
}

impl std::fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBudget")
            .field("bytes", &self.inner.bytes)
            .field("in_use", &self.in_use())
            .finish()
    }
}

/// A share of the budget for one buffer of `len` bytes; given back when dropped.
pub struct Share {
    _permit: OwnedSemaphorePermit,
}

impl MemoryBudget {
    /// A budget of `bytes` (at least 8 MiB: two of the largest requests).
    pub fn new(bytes: usize) -> MemoryBudget {
        let bytes = bytes.max(2 * super::MAX_REQUEST) / UNIT * UNIT;
        MemoryBudget {
            inner: Arc::new(Inner {
                bytes,
                units: Arc::new(Semaphore::new(bytes / UNIT)),
                kept: Mutex::new(Kept::default()),
            }),
        }
    }

    /// The budget in bytes.
    pub fn bytes(&self) -> usize {
        self.inner.bytes
    }

    /// Bytes of buffers lent out now.
    pub fn in_use(&self) -> usize {
        self.inner.bytes - self.inner.units.available_permits() * UNIT
    }

    /// Waits for a share for one buffer of capacity `cap`.
    pub(crate) async fn share(&self, cap: usize) -> Share {
        let units = cap.div_ceil(UNIT).min(self.inner.bytes / UNIT) as u32;
        let permit = self
            .inner
            .units
            .clone()
            .acquire_many_owned(units)
            .await
            .expect("the budget's semaphore is never closed");
        Share { _permit: permit }
    }

    /// A buffer of capacity `cap` and length `len`, for a caller holding a share for it: a
    /// kept one when there is one of that capacity, else a new one, after freeing kept buffers
    /// until the total fits the budget.
    pub(crate) fn buffer(&self, cap: usize, len: usize) -> Buffer {
        let mut kept = self.inner.kept.lock().unwrap_or_else(|e| e.into_inner());
        let mut b = match kept.buffers.iter().position(|b| b.capacity() == cap) {
            Some(i) => kept.take(i),
            None => {
                let free = self.inner.units.available_permits() * UNIT;
                while kept.bytes > free && !kept.buffers.is_empty() {
                    let last = kept.buffers.len() - 1;
                    drop(kept.take(last));
                }
                Buffer::new(cap)
            }
        };
        b.set_len(len);
        b
    }

    /// Takes back a buffer whose share is still held: it is kept for reuse while the kept
    /// buffers fit in the shares free once this one's is given back.
    pub(crate) fn put(&self, b: Buffer) {
        let mut kept = self.inner.kept.lock().unwrap_or_else(|e| e.into_inner());
        let free = self.inner.units.available_permits() * UNIT + b.capacity();
        if kept.bytes + b.capacity() <= free {
            kept.bytes += b.capacity();
            kept.buffers.push(b);
        }
    }

    /// Bytes of buffers kept for reuse.
    pub fn kept(&self) -> usize {
        self.inner
            .kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shares_wait_for_each_other_and_kept_buffers_stay_within_the_budget() {
        let mib = 1 << 20;
        let b = MemoryBudget::new(8 * mib);
        let mut shares = Vec::new();
        let mut bufs = Vec::new();
        for _ in 0..8 {
            shares.push(b.share(mib).await);
            bufs.push(b.buffer(mib, mib));
        }
        assert_eq!(b.in_use(), 8 * mib);
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), b.share(mib));
        assert!(waiting.await.is_err(), "a ninth share waits");
        // As the engine does: the buffer back, then its share.
        for (buf, share) in bufs.drain(..).zip(shares.drain(..)) {
            b.put(buf);
            drop(share);
        }
        assert_eq!(b.kept(), 8 * mib, "every buffer kept: they fit");
        // Buffers of another size: the kept ones make room.
        let s = b.share(4 * mib).await;
        let big = b.buffer(4 * mib, 10);
        assert_eq!(big.len(), 10);
        assert!(b.kept() + b.in_use() <= b.bytes(), "kept {}", b.kept());
        b.put(big);
        drop(s);
        assert!(b.kept() <= b.bytes());
    }
}
