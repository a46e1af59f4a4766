//! Block-device target (a raw PVC, `/dev/cdi-block-volume`): size from BLKGETSIZE64, zeroing by
//! BLKZEROOUT with a written-zeros fallback. A device smaller than the source is refused before
//! anything is written.

use std::fs::OpenOptions;
use std::os::fd::RawFd;
use std::path::Path;

use crate::error::{Error, ErrorKind, Result};
use crate::sys;
use crate::target::fd::DiskFd;
use crate::target::zero::{ZeroChain, ZeroMethod};
use crate::target::{BlockTarget, TargetOptions};

/// Alignment BLKZEROOUT ranges are trimmed to; the unaligned edges are written as zeros.
const ZEROOUT_ALIGN: u64 = 4096;

/// A block device opened for writing.
pub struct BlockDeviceTarget {
    fd: DiskFd,
    size: u64,
    reads_as_zero: bool,
    chain: ZeroChain,
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
        Ok(BlockDeviceTarget {
            fd: DiskFd::new(
                format!("block device {}", path.display()),
                path,
                file,
                opts.direct,
            )?,
            size,
            reads_as_zero: opts.target_is_zero && !opts.in_place,
            chain: ZeroChain::new(&[ZeroMethod::BlkZeroout, ZeroMethod::WriteZeros]),
        })
    }

    /// Methods of the zeroing chain still enabled.
    pub fn zero_methods(&self) -> Vec<ZeroMethod> {
        self.chain.enabled()
    }
}

impl BlockTarget for BlockDeviceTarget {
    fn read_back(&self, offset: u64, buf: &mut [u8]) -> Result<bool> {
        self.fd.read_back(offset, buf)
    }

    fn describe(&self) -> String {
        self.fd.desc().to_owned()
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.fd.write_at(offset, data)
    }

    fn written(&self, offset: u64, len: u64) {
        self.fd.written(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        let end = offset + len;
        let a = offset.div_ceil(ZEROOUT_ALIGN) * ZEROOUT_ALIGN;
        let b = end / ZEROOUT_ALIGN * ZEROOUT_ALIGN;
        let r = if a < b {
            self.fd
                .write_zero_bytes(offset, a - offset)
                .and_then(|()| self.fd.zero_with(&self.chain, a, b - a))
                .and_then(|()| self.fd.write_zero_bytes(b, end - b))
        } else {
            self.fd.write_zero_bytes(offset, len)
        };
        r.map_err(|e| self.fd.zero_error(offset, e))
    }

    fn flush(&self) -> Result<()> {
        self.fd.flush()
    }

    fn reads_as_zero(&self) -> bool {
        self.reads_as_zero
    }

    fn raw_fd_for(&self, offset: u64, len: usize, addr: usize) -> Option<RawFd> {
        Some(self.fd.raw_fd_for(offset, len, addr))
    }
}
