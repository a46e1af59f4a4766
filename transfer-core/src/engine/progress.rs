//! Progress shared between the engine (which counts) and whoever displays it.
//!
//! The engine reports to a [`ProgressObserver`]; [`Progress`] is the ready-made one, a pair of
//! counters that a display, a metrics exporter or an API reads whenever it likes.

use std::sync::atomic::{AtomicU64, Ordering};

/// Told by the engine how far a copy has come. Called from the copy's tasks: implementations
/// must be cheap and must not block.
pub trait ProgressObserver: Send + Sync + std::fmt::Debug {
    /// The bytes the copy will cover (the source size, or a delta's changed bytes).
    fn set_total(&self, total: u64);
    /// `n` more bytes are on the target (written, zeroed, or skipped as already there).
    fn add(&self, n: u64);
}

impl ProgressObserver for Progress {
    fn set_total(&self, total: u64) {
        Progress::set_total(self, total);
    }

    fn add(&self, n: u64) {
        Progress::add(self, n);
    }
}

/// Bytes done out of a total; updated by the engine as ranges complete.
#[derive(Debug, Default)]
pub struct Progress {
    total: AtomicU64,
    done: AtomicU64,
}

impl Progress {
    /// A new counter.
    pub fn new() -> Self {
        Progress::default()
    }

    /// Sets the total (the source size).
    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    /// Adds `n` bytes done.
    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// (done, total).
    pub fn get(&self) -> (u64, u64) {
        (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }

    /// Percent done, 0-100, never above 100.
    pub fn percent(&self) -> f64 {
        let (d, t) = self.get();
        if t == 0 {
            return 0.0;
        }
        (d as f64 * 100.0 / t as f64).min(100.0)
    }
}
