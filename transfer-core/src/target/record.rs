//! A target that records every write and zero operation (and keeps the bytes), so tests can pin
//! the exact I/O pattern the engine issues, as nbdcopy's tests do.

use std::sync::Mutex;

use crate::error::{Error, ErrorKind, Result};
use crate::target::BlockTarget;

/// One operation issued against the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum IoRecord {
    /// A data write.
    Write {
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// A zeroing operation.
    Zero {
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// A flush.
    Flush,
}

/// An in-memory target that records its operations.
pub struct RecordingTarget {
    size: u64,
    reads_as_zero: bool,
    ops: Mutex<Vec<IoRecord>>,
    data: Mutex<Vec<u8>>,
}

impl RecordingTarget {
    /// A zero-filled target of `size` bytes; `reads_as_zero` says whether the engine may skip
    /// zero ranges.
    pub fn new(size: u64, reads_as_zero: bool) -> Self {
        RecordingTarget {
            size,
            reads_as_zero,
            ops: Mutex::new(Vec::new()),
            data: Mutex::new(vec![0u8; size as usize]),
        }
    }

    /// The operations issued so far, sorted by kind and offset (the engine runs in parallel, so
    /// the order of issue is not deterministic; the set is).
    pub fn sorted_ops(&self) -> Vec<IoRecord> {
        let mut v = self.ops.lock().unwrap().clone();
        v.sort();
        v
    }

    /// The bytes written.
    pub fn contents(&self) -> Vec<u8> {
        self.data.lock().unwrap().clone()
    }

    fn check(&self, offset: u64, len: u64) -> Result<()> {
        if offset + len > self.size {
            return Err(Error::new(
                ErrorKind::Io,
                format!("recording target: {offset}+{len} out of range"),
            ));
        }
        Ok(())
    }
}

impl BlockTarget for RecordingTarget {
    fn describe(&self) -> String {
        "recording target".into()
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check(offset, data.len() as u64)?;
        self.ops.lock().unwrap().push(IoRecord::Write {
            offset,
            len: data.len() as u64,
        });
        self.data.lock().unwrap()[offset as usize..offset as usize + data.len()]
            .copy_from_slice(data);
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.check(offset, len)?;
        self.ops
            .lock()
            .unwrap()
            .push(IoRecord::Zero { offset, len });
        self.data.lock().unwrap()[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.ops.lock().unwrap().push(IoRecord::Flush);
        Ok(())
    }

    fn reads_as_zero(&self) -> bool {
        self.reads_as_zero
    }
}
