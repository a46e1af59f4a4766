//! Bounded page cache for buffered writes, as nbdcopy does: writeback of every written range is
//! started at once, and once more than a window of bytes is under writeback the oldest ranges are
//! waited for and dropped from the cache. Dirty pages stay bounded (they count against a pod's
//! memory limit), writeback overlaps the copy instead of piling up for the final fdatasync, and
//! writers stop fighting over a huge dirty set.

use std::collections::VecDeque;
use std::fs::File;
use std::sync::Mutex;

use crate::sys;

/// Bytes allowed under writeback before the oldest range is waited for.
pub const DEFAULT_WINDOW: u64 = 32 << 20;

/// The writeback window of one target.
pub struct CacheWindow {
    window: u64,
    queue: Mutex<(VecDeque<(u64, u64)>, u64)>,
}

impl CacheWindow {
    /// A window of `window` bytes.
    pub fn new(window: u64) -> Self {
        CacheWindow {
            window,
            queue: Mutex::new((VecDeque::new(), 0)),
        }
    }

    /// Records a completed write of `[offset, offset+len)` to `f`; may wait for older writeback.
    /// Failures here are not errors of the copy (the final fdatasync reports real I/O errors), so
    /// they only stop the cache management.
    pub fn written(&self, f: &File, offset: u64, len: u64) {
        if sys::start_writeback(f, offset, len).is_err() {
            return;
        }
        let mut evict = Vec::new();
        {
            let mut q = self.queue.lock().unwrap();
            q.0.push_back((offset, len));
            q.1 += len;
            while q.1 > self.window {
                let Some((o, l)) = q.0.pop_front() else { break };
                q.1 -= l;
                evict.push((o, l));
            }
        }
        for (o, l) in evict {
            if sys::wait_writeback(f, o, l).is_ok() {
                let _ = sys::drop_cache(f, o, l);
            }
        }
    }
}
