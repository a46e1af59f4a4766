//! The inline engine: the copying task writes its buffer itself. For a target whose writes are
//! copies into memory that never wait for a disk (a file on tmpfs), handing every buffer to a
//! writer thread and waking the task when it comes back costs more than the write; measured in
//! `docs/benchmarks.md` ("What bounds transfer-bench").

use std::sync::Arc;

use async_trait::async_trait;

use crate::buffer::Buffer;
use crate::error::Result;
use crate::io::{IoEngine, WriteJob};
use crate::target::BlockTarget;

/// Writes in the calling task.
pub struct InlineEngine {
    target: Arc<dyn BlockTarget>,
}

impl InlineEngine {
    /// An engine writing to `target` from the caller's task.
    pub fn new(target: Arc<dyn BlockTarget>) -> Self {
        InlineEngine { target }
    }
}

#[async_trait]
impl IoEngine for InlineEngine {
    fn name(&self) -> &'static str {
        "inline"
    }

    async fn write(&self, job: WriteJob) -> Result<Buffer> {
        for &(start, len) in &job.segments {
            self.target
                .write_at(job.offset + start as u64, &job.buf[start..start + len])?;
        }
        Ok(job.buf)
    }

    async fn zero(&self, offset: u64, len: u64) -> Result<()> {
        self.target.write_zeroes(offset, len)
    }

    async fn flush(&self) -> Result<()> {
        self.target.flush()
    }
}
