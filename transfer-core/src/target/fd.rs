//! What the file and block-device targets share: the buffered descriptor, the optional O_DIRECT
//! descriptor (aligned writes use it, unaligned edges go through the page cache), the writeback
//! window for buffered writes, the zero buffer for written zeros, and flushing.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use crate::buffer::{Buffer, ALIGN};
use crate::error::{Error, Result};
use crate::target::cache::{CacheWindow, DEFAULT_WINDOW};
use crate::target::zero::ZeroChain;

/// Size of the zero buffer used when zeros must be written.
const ZERO_BUF: usize = 1 << 20;

fn aligned(offset: u64, len: usize, addr: usize) -> bool {
    offset.is_multiple_of(ALIGN as u64) && len.is_multiple_of(ALIGN) && addr.is_multiple_of(ALIGN)
}

/// An open target descriptor (file or block device) and how it is written.
pub struct DiskFd {
    desc: String,
    file: File,
    direct: Option<File>,
    cache: Option<CacheWindow>,
    /// Whether the file system keeps the file in memory (tmpfs).
    memory: bool,
    zeros: Buffer,
}

impl DiskFd {
    /// Wraps `file` (opened read-write at `path`); with `direct`, also opens an O_DIRECT
    /// descriptor. `desc` names the target in messages.
    pub fn new(desc: String, path: &Path, file: File, direct: bool) -> Result<Self> {
        let direct = if direct {
            // The same open file, not whatever sits at `path` by now: through /proc when it
            // is mounted.
            let own = Path::new("/proc/self/fd").join(file.as_raw_fd().to_string());
            let reopen = if own.exists() { own.as_path() } else { path };
            let d = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(reopen)
                .map_err(|e| Error::io(format!("opening {desc} with O_DIRECT"), e))?;
            Some(d)
        } else {
            None
        };
        // In memory (tmpfs) there is no writeback to start or wait for: the window's calls
        // would be system calls that do nothing.
        let memory = crate::sys::memory_backed(&file).unwrap_or(false);
        let cache = (direct.is_none() && !memory).then(|| CacheWindow::new(DEFAULT_WINDOW));
        Ok(DiskFd {
            desc,
            file,
            direct,
            cache,
            memory,
            zeros: Buffer::new(ZERO_BUF),
        })
    }

    /// Whether the file system keeps the file in memory (tmpfs): writes never wait for a disk.
    pub fn memory_backed(&self) -> bool {
        self.memory && self.direct.is_none()
    }

    /// The buffered descriptor.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The description used in messages.
    pub fn desc(&self) -> &str {
        &self.desc
    }

    /// Reads `buf.len()` bytes at `offset` through the buffered descriptor.
    pub fn read_back(&self, offset: u64, buf: &mut [u8]) -> Result<bool> {
        use std::os::unix::fs::FileExt;
        self.file
            .read_exact_at(buf, offset)
            .map(|()| true)
            .map_err(|e| Error::io(format!("reading {} back at {offset}", self.desc), e))
    }

    fn write_raw(&self, data: &[u8], offset: u64) -> std::io::Result<()> {
        match &self.direct {
            Some(d) if aligned(offset, data.len(), data.as_ptr() as usize) => {
                d.write_all_at(data, offset)
            }
            _ => self.file.write_all_at(data, offset),
        }
    }

    /// Writes `data` at `offset` and tells the writeback window.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.write_raw(data, offset)
            .map_err(|e| self.write_error(offset, data.len() as u64, e))?;
        self.written(offset, data.len() as u64);
        Ok(())
    }

    /// Tells the writeback window about a completed write.
    pub fn written(&self, offset: u64, len: u64) {
        if let Some(c) = &self.cache {
            c.written(&self.file, offset, len);
        }
    }

    /// Writes literal zeros over `[offset, offset+len)`.
    pub fn write_zero_bytes(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let n = ((end - pos) as usize).min(self.zeros.len());
            self.write_raw(&self.zeros[..n], pos)?;
            pos += n as u64;
        }
        Ok(())
    }

    /// Zeroes `[offset, offset+len)` through `chain`, with written zeros as the last resort.
    pub fn zero_with(&self, chain: &ZeroChain, offset: u64, len: u64) -> std::io::Result<()> {
        chain.zero(&self.file, offset, len, |o, l| self.write_zero_bytes(o, l))
    }

    /// Maps a zeroing failure to an error naming the target.
    pub fn zero_error(&self, offset: u64, e: std::io::Error) -> Error {
        self.failed("zeroing", offset, 0, e)
    }

    /// Maps a failed write of `len` bytes at `offset` to an error naming the target; a full
    /// filesystem says how much room there was and how much the write wanted.
    pub fn write_error(&self, offset: u64, len: u64, e: std::io::Error) -> Error {
        self.failed("writing", offset, len, e)
    }

    fn failed(&self, what: &str, offset: u64, len: u64, e: std::io::Error) -> Error {
        let desc = &self.desc;
        if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
            let free = crate::sys::available_bytes(&self.file)
                .map_or_else(|_| "unknown".to_owned(), |b| format!("{b} bytes"));
            let size = self.file.metadata().map(|m| m.len()).unwrap_or(0);
            let more = size.saturating_sub(offset);
            return Error::io(
                format!(
                    "{what} {desc} at offset {offset}: the target is out of space ({free} free, the write wanted {len} bytes, and up to {more} more bytes of the disk may follow)"
                ),
                e,
            );
        }
        Error::io(format!("{what} {desc} at offset {offset}"), e)
    }

    /// fdatasync.
    pub fn flush(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| Error::io(format!("flushing {}", self.desc), e))
    }

    /// The descriptor io_uring may write `len` bytes at `offset` from `addr` through.
    pub fn raw_fd_for(&self, offset: u64, len: usize, addr: usize) -> RawFd {
        match &self.direct {
            Some(d) if aligned(offset, len, addr) => d.as_raw_fd(),
            _ => self.file.as_raw_fd(),
        }
    }
}
