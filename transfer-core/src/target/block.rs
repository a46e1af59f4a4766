//! Block-device target (a raw PVC, `/dev/cdi-block-volume`): size from BLKGETSIZE64, zeroing by
//! BLKZEROOUT with a written-zeros fallback. A device smaller than the source is refused before
//! anything is written.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::buffer::Buffer;
use crate::error::{Error, ErrorKind, Result};
use crate::sys;
use crate::target::cache::{CacheWindow, DEFAULT_WINDOW};
use crate::target::file::{aligned, open_direct, write_zero_bytes, ZERO_BUF};
use crate::target::zero::{ZeroChain, ZeroMethod};
use crate::target::{BlockTarget, TargetOptions};

/// Alignment BLKZEROOUT ranges are trimmed to; the unaligned edges are written as zeros.
const ZEROOUT_ALIGN: u64 = 4096;

/// A block device opened for writing.
pub struct BlockDeviceTarget {
    path: PathBuf,
    file: File,
    direct: Option<File>,
    size: u64,
    reads_as_zero: bool,
    chain: ZeroChain,
    zeros: Buffer,
    /// Writeback window for buffered writes (None with O_DIRECT).
    cache: Option<CacheWindow>,
}

impl BlockDeviceTarget {
    /// Opens the device at `path` for a source of `source_size` bytes.
    pub fn open(path: &Path, source_size: u64, opts: &TargetOptions) -> Result<Self> {
        let file = OpenOptions::new()
            .write(true)
            .read(true)
            .open(path)
            .map_err(|e| Error::io(format!("opening target {} for writing", path.display()), e))?;
        let size = sys::block_device_size(&file)
            .map_err(|e| Error::io(format!("reading size of {}", path.display()), e))?;
        if size < source_size {
            return Err(Error::new(
                ErrorKind::TargetTooSmall,
                format!(
                    "target {} is {size} bytes, smaller than the source ({source_size} bytes)",
                    path.display()
                ),
            ));
        }
        let direct = if opts.direct {
            Some(open_direct(path)?)
        } else {
            None
        };
        Ok(BlockDeviceTarget {
            path: path.to_owned(),
            file,
            direct,
            size,
            reads_as_zero: opts.target_is_zero,
            chain: ZeroChain::new(&[ZeroMethod::BlkZeroout, ZeroMethod::WriteZeros]),
            zeros: Buffer::new(ZERO_BUF),
            cache: (!opts.direct).then(|| CacheWindow::new(DEFAULT_WINDOW)),
        })
    }

    /// Methods of the zeroing chain still enabled.
    pub fn zero_methods(&self) -> Vec<ZeroMethod> {
        self.chain.enabled()
    }

    fn write_raw(&self, data: &[u8], offset: u64) -> std::io::Result<()> {
        match &self.direct {
            Some(d) if aligned(offset, data.len(), data.as_ptr() as usize) => {
                d.write_all_at(data, offset)
            }
            _ => self.file.write_all_at(data, offset),
        }
    }

    fn zero_bytes(&self, offset: u64, len: u64) -> std::io::Result<()> {
        write_zero_bytes(&self.zeros, offset, len, |b, p| self.write_raw(b, p))
    }
}

impl BlockTarget for BlockDeviceTarget {
    fn describe(&self) -> String {
        format!("block device {}", self.path.display())
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.write_raw(data, offset)
            .map_err(|e| Error::io(format!("writing {} at offset {offset}", self.describe()), e))?;
        self.written(offset, data.len() as u64);
        Ok(())
    }

    fn written(&self, offset: u64, len: u64) {
        if let Some(c) = &self.cache {
            c.written(&self.file, offset, len);
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        let end = offset + len;
        let a = offset.div_ceil(ZEROOUT_ALIGN) * ZEROOUT_ALIGN;
        let b = end / ZEROOUT_ALIGN * ZEROOUT_ALIGN;
        let r = if a < b {
            self.zero_bytes(offset, a - offset)
                .and_then(|()| {
                    self.chain
                        .zero(&self.file, a, b - a, |o, l| self.zero_bytes(o, l))
                })
                .and_then(|()| self.zero_bytes(b, end - b))
        } else {
            self.zero_bytes(offset, len)
        };
        r.map_err(|e| Error::io(format!("zeroing {} at offset {offset}", self.describe()), e))
    }

    fn flush(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| Error::io(format!("flushing {}", self.describe()), e))
    }

    fn reads_as_zero(&self) -> bool {
        self.reads_as_zero
    }

    fn raw_fd_for(&self, offset: u64, len: usize, addr: usize) -> Option<RawFd> {
        match &self.direct {
            Some(d) if aligned(offset, len, addr) => Some(d.as_raw_fd()),
            _ => Some(self.file.as_raw_fd()),
        }
    }
}
