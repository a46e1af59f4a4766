//! Regular-file target (`disk.img`): created if missing and sized to the source; zero ranges of a
//! new file are left as holes; an existing file is zeroed through the fallback chain.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::buffer::{Buffer, ALIGN};
use crate::error::{Error, Result};
use crate::sys;
use crate::target::cache::{CacheWindow, DEFAULT_WINDOW};
use crate::target::zero::{ZeroChain, ZeroMethod};
use crate::target::{BlockTarget, TargetOptions};

/// Size of the zero buffer used when zeros must be written.
pub(crate) const ZERO_BUF: usize = 1 << 20;

/// A regular file opened for writing.
pub struct FileTarget {
    path: PathBuf,
    file: File,
    /// O_DIRECT descriptor for aligned writes, when `--direct`.
    direct: Option<File>,
    size: u64,
    reads_as_zero: bool,
    chain: ZeroChain,
    zeros: Buffer,
    /// Writeback window for buffered writes (None with O_DIRECT).
    cache: Option<CacheWindow>,
}

pub(crate) fn aligned(offset: u64, len: usize, addr: usize) -> bool {
    offset.is_multiple_of(ALIGN as u64) && len.is_multiple_of(ALIGN) && addr.is_multiple_of(ALIGN)
}

pub(crate) fn open_direct(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| {
            Error::io(
                format!("opening target {} with O_DIRECT", path.display()),
                e,
            )
        })
}

/// Writes literal zeros over `[offset, offset+len)` from `zeros`, through `write`.
pub(crate) fn write_zero_bytes(
    zeros: &Buffer,
    offset: u64,
    len: u64,
    write: impl Fn(&[u8], u64) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut pos = offset;
    let end = offset + len;
    while pos < end {
        let n = ((end - pos) as usize).min(zeros.len());
        write(&zeros[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

impl FileTarget {
    /// Opens or creates `path` for a source of `size` bytes.
    pub fn open(path: &Path, size: u64, opts: &TargetOptions) -> Result<Self> {
        let ctx = |what: &str| format!("{what} target {}", path.display());
        let (file, existed) = match OpenOptions::new().write(true).read(true).open(path) {
            Ok(f) => (f, true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let f = OpenOptions::new()
                    .write(true)
                    .read(true)
                    .create_new(true)
                    .open(path)
                    .map_err(|e| Error::io(ctx("creating"), e))?;
                (f, false)
            }
            Err(e) => return Err(Error::io(ctx("opening for writing"), e)),
        };
        let old_len = file
            .metadata()
            .map_err(|e| Error::io(ctx("inspecting"), e))?
            .len();
        if old_len != size {
            file.set_len(size)
                .map_err(|e| Error::io(ctx("sizing"), e))?;
        }
        if opts.preallocate && size > 0 {
            sys::fallocate(&file, 0, 0, size).map_err(|e| Error::io(ctx("preallocating"), e))?;
        }
        let direct = if opts.direct {
            Some(open_direct(path)?)
        } else {
            None
        };
        let reads_as_zero = opts.target_is_zero || !existed || old_len == 0;
        let methods: &[ZeroMethod] = if opts.preallocate {
            &[ZeroMethod::ZeroRange, ZeroMethod::WriteZeros]
        } else {
            &[
                ZeroMethod::PunchHole,
                ZeroMethod::ZeroRange,
                ZeroMethod::WriteZeros,
            ]
        };
        Ok(FileTarget {
            path: path.to_owned(),
            file,
            direct,
            size,
            reads_as_zero,
            chain: ZeroChain::new(methods),
            zeros: Buffer::new(ZERO_BUF),
            cache: (!opts.direct).then(|| CacheWindow::new(DEFAULT_WINDOW)),
        })
    }

    /// Methods of the zeroing chain still enabled (for tests and logs).
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
}

impl BlockTarget for FileTarget {
    fn describe(&self) -> String {
        format!("file {}", self.path.display())
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
        self.chain
            .zero(&self.file, offset, len, |o, l| {
                write_zero_bytes(&self.zeros, o, l, |b, p| self.write_raw(b, p))
            })
            .map_err(|e| Error::io(format!("zeroing {} at offset {offset}", self.describe()), e))
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
