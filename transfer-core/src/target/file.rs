//! Regular-file target (`disk.img`): created if missing and sized to the source; zero ranges of a
//! new file are left as holes; an existing file is zeroed through the fallback chain (punch hole,
//! then zero range, then written zeros; a preallocated file keeps its allocation).

use std::fs::OpenOptions;
use std::os::fd::RawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{Error, ErrorKind, Result};
use crate::sys;
use crate::target::fd::DiskFd;
use crate::target::zero::{ZeroChain, ZeroMethod};
use crate::target::{BlockTarget, TargetOptions};

/// A regular file opened for writing.
pub struct FileTarget {
    fd: DiskFd,
    size: u64,
    reads_as_zero: bool,
    chain: ZeroChain,
}

impl FileTarget {
    /// Opens or creates `path` for a source of `size` bytes.
    pub fn open(path: &Path, size: u64, opts: &TargetOptions) -> Result<Self> {
        let ctx = |what: &str| format!("{what} target {}", path.display());
        let (file, existed) = match OpenOptions::new()
            .write(true)
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
        {
            Ok(f) => (f, true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && opts.in_place => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "target {} does not exist: a delta is applied to the disk of an earlier copy",
                        path.display()
                    ),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let f = OpenOptions::new()
                    .write(true)
                    .read(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
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
        // In place, a file only grows: the bytes past the source's end are not the delta's.
        let size = if opts.in_place {
            size.max(old_len)
        } else {
            size
        };
        if old_len != size {
            file.set_len(size)
                .map_err(|e| Error::io(ctx("sizing"), e))?;
        }
        if opts.preallocate && size > 0 {
            sys::fallocate(&file, 0, 0, size).map_err(|e| Error::io(ctx("preallocating"), e))?;
        }
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
            fd: DiskFd::new(format!("file {}", path.display()), path, file, opts.direct)?,
            size,
            reads_as_zero: !opts.in_place
                && (opts.target_is_zero || !existed || old_len == 0 || size == 0),
            chain: ZeroChain::new(methods),
        })
    }

    /// Methods of the zeroing chain still enabled (for tests and logs).
    pub fn zero_methods(&self) -> Vec<ZeroMethod> {
        self.chain.enabled()
    }
}

impl BlockTarget for FileTarget {
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
        // A range the file already has as a hole reads as zeros: nothing to do. Deltas of
        // sparse disks zero many such ranges, and one lseek costs far less than a punch.
        if !self.reads_as_zero {
            if let Ok(next) = sys::seek_data(self.fd.file(), offset) {
                if next.is_none_or(|d| d >= offset + len) {
                    return Ok(());
                }
            }
        }
        self.fd
            .zero_with(&self.chain, offset, len)
            .map_err(|e| self.fd.zero_error(offset, e))
    }

    fn flush(&self) -> Result<()> {
        self.fd.flush()
    }

    fn set_final_size(&self, size: u64) -> Result<()> {
        self.fd
            .file()
            .set_len(size)
            .map_err(|e| Error::io(format!("sizing {}", self.fd.desc()), e))
    }

    fn reads_as_zero(&self) -> bool {
        self.reads_as_zero
    }

    fn memory_backed(&self) -> bool {
        self.fd.memory_backed()
    }

    fn raw_fd_for(&self, offset: u64, len: usize, addr: usize) -> Option<RawFd> {
        Some(self.fd.raw_fd_for(offset, len, addr))
    }
}
