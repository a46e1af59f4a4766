//! I/O engines: how writes reach the target. A bounded pool of pwrite threads (default), an
//! io_uring engine, and inline writes in the copying task. `auto` picks io_uring only where a
//! probe shows it works and where it was measured faster (O_DIRECT writes); container runtimes
//! often forbid io_uring (EPERM/ENOSYS), which falls back to pwrite with a log line. A target in
//! memory (tmpfs) is written inline: its writes never wait for a disk.

use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;

use crate::buffer::Buffer;
use crate::error::{invalid, Error, Result};
use crate::target::BlockTarget;

pub mod inline;
pub mod pwrite;
#[cfg(feature = "uring")]
pub mod uring;

/// Data to write: the bytes of `buf` named by `segments` (start, len) go to `offset + start`.
#[derive(Debug)]
pub struct WriteJob {
    /// Disk offset of `buf[0]`.
    pub offset: u64,
    /// The buffer (returned when the job completes).
    pub buf: Buffer,
    /// Data segments inside `buf`: (start, len).
    pub segments: Vec<(usize, usize)>,
}

/// Something that performs target writes asynchronously.
#[async_trait]
pub trait IoEngine: Send + Sync {
    /// Engine name for logs and stats.
    fn name(&self) -> &'static str;

    /// Performs the writes of `job` and gives the buffer back.
    async fn write(&self, job: WriteJob) -> Result<Buffer>;

    /// Zeroes `[offset, offset+len)` through the target's fallback chain.
    async fn zero(&self, offset: u64, len: u64) -> Result<()>;

    /// Flushes the target.
    async fn flush(&self) -> Result<()>;
}

/// Which engine the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoEngineKind {
    /// io_uring where it probes available and is measured faster, else pwrite.
    #[default]
    Auto,
    /// The pwrite thread pool.
    Pwrite,
    /// io_uring (an error if unavailable).
    Uring,
    /// Writes in the copying task (for targets in memory).
    Inline,
}

impl FromStr for IoEngineKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(IoEngineKind::Auto),
            "pwrite" => Ok(IoEngineKind::Pwrite),
            "uring" | "io_uring" | "io-uring" => Ok(IoEngineKind::Uring),
            "inline" => Ok(IoEngineKind::Inline),
            _ => Err(invalid(format!(
                "unknown I/O engine '{s}' (auto, pwrite, uring, inline)"
            ))),
        }
    }
}

/// Creates the engine for `target`. `threads` sizes the pwrite pool; `depth` the io_uring queue.
/// `direct` says whether the target was opened with O_DIRECT (where io_uring measured faster).
pub fn create_engine(
    kind: IoEngineKind,
    target: Arc<dyn BlockTarget>,
    threads: usize,
    depth: u32,
    direct: bool,
) -> Result<Arc<dyn IoEngine>> {
    match kind {
        IoEngineKind::Pwrite => Ok(Arc::new(pwrite::PwriteEngine::new(target, threads))),
        IoEngineKind::Uring => uring_engine(target, depth),
        IoEngineKind::Inline => Ok(Arc::new(inline::InlineEngine::new(target))),
        IoEngineKind::Auto => {
            if !direct && target.memory_backed() {
                return Ok(Arc::new(inline::InlineEngine::new(target)));
            }
            if !direct {
                return Ok(Arc::new(pwrite::PwriteEngine::new(target, threads)));
            }
            match uring_engine(target.clone(), depth) {
                Ok(e) => Ok(e),
                Err(e) => {
                    tracing::info!(error = %e, "io_uring unavailable, using the pwrite engine");
                    Ok(Arc::new(pwrite::PwriteEngine::new(target, threads)))
                }
            }
        }
    }
}

#[cfg(feature = "uring")]
fn uring_engine(target: Arc<dyn BlockTarget>, depth: u32) -> Result<Arc<dyn IoEngine>> {
    Ok(Arc::new(uring::UringEngine::new(target, depth)?))
}

#[cfg(not(feature = "uring"))]
fn uring_engine(_target: Arc<dyn BlockTarget>, _depth: u32) -> Result<Arc<dyn IoEngine>> {
    Err(crate::error::Error::new(
        crate::error::ErrorKind::Unsupported,
        "io_uring: this build of transfer-core has no io_uring engine (feature uring)",
    ))
}
