//! Targets: where disk bytes go. A regular file (`disk.img`) or a raw block device, both behind
//! [`BlockTarget`]; plus a recording target that tests use to pin the engine's I/O pattern.

use std::os::fd::RawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};

pub mod block;
pub mod cache;
pub mod fd;
pub mod file;
pub mod record;
pub mod zero;

pub use block::BlockDeviceTarget;
pub use file::FileTarget;
pub use record::{IoRecord, RecordingTarget};

/// A writable virtual disk. Methods are synchronous: the I/O engines call them from their own
/// threads.
pub trait BlockTarget: Send + Sync {
    /// Description for messages.
    fn describe(&self) -> String;

    /// Size in bytes.
    fn size(&self) -> u64;

    /// Writes all of `data` at `offset`.
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()>;

    /// Told after a write that bypassed `write_at` (io_uring) completed, so the target can manage
    /// its page cache. `write_at` calls it itself.
    fn written(&self, _offset: u64, _len: u64) {}

    /// Makes `[offset, offset+len)` read as zeros, by the best method that works (the chain
    /// remembers methods that failed as unsupported).
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()>;

    /// Flushes written data to stable storage (fdatasync).
    fn flush(&self) -> Result<()>;

    /// Sets the final size once a stream of unknown size has ended (files are sized to it; a
    /// device must be at least that large).
    fn set_final_size(&self, size: u64) -> Result<()> {
        if size > self.size() {
            return Err(Error::new(
                ErrorKind::TargetTooSmall,
                format!(
                    "{} is {} bytes, smaller than the source ({size} bytes)",
                    self.describe(),
                    self.size()
                ),
            ));
        }
        Ok(())
    }

    /// True when every byte already reads as zero (a new or truncated file, or the user said
    /// `--target-is-zero`): zero ranges can then be skipped.
    fn reads_as_zero(&self) -> bool;

    /// Whether a write is a copy into memory that never waits for a disk (a file on tmpfs): the
    /// `auto` I/O engine then writes in the copying task instead of handing the buffer to a
    /// writer thread and back.
    fn memory_backed(&self) -> bool {
        false
    }

    /// Reads `buf.len()` bytes at `offset` back from the target (a resumed copy checks a few
    /// ranges its journal has as copied). `Ok(false)` when this target cannot be read back.
    fn read_back(&self, _offset: u64, _buf: &mut [u8]) -> Result<bool> {
        Ok(false)
    }

    /// The descriptor an io_uring engine may write `len` bytes at `offset` from `addr` through,
    /// when the target is backed by one.
    fn raw_fd_for(&self, _offset: u64, _len: usize, _addr: usize) -> Option<RawFd> {
        None
    }
}

/// How to open a target.
#[derive(Debug, Clone, Default)]
pub struct TargetOptions {
    /// Allocate the whole file up front.
    pub preallocate: bool,
    /// Write with O_DIRECT (aligned buffers; unaligned edges go through the page cache).
    pub direct: bool,
    /// The target is known to read as zeros: never write zeros.
    pub target_is_zero: bool,
    /// Write a delta in place: the target must exist and is never truncated or recreated (a
    /// file grows when the source did).
    pub in_place: bool,
}

/// Opens `path` as the target for a source of `source_size` bytes: a block device (which must
/// be at least that large) or a regular file (created if missing, sized to the source). Nothing
/// is written to a block device that is too small.
pub fn open_target(
    path: &Path,
    source_size: u64,
    opts: &TargetOptions,
) -> Result<Arc<dyn BlockTarget>> {
    refuse_link_to_file(path)?;
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_block_device() => {
            Ok(Arc::new(BlockDeviceTarget::open(path, source_size, opts)?))
        }
        Ok(m) if m.is_file() => Ok(Arc::new(FileTarget::open(path, source_size, opts)?)),
        Ok(_) => Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "target {} is neither a regular file nor a block device",
                path.display()
            ),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(Arc::new(FileTarget::open(path, source_size, opts)?))
        }
        Err(e) => Err(Error::io(
            format!("inspecting target {}", path.display()),
            e,
        )),
    }
}

/// A symbolic link is a target only when it names a block device (`/dev/mapper/NAME`,
/// `/dev/disk/by-id/...`): a link where a disk file is written would redirect the writes to
/// whatever it points at. (File targets are then opened with `O_NOFOLLOW`, so a link planted
/// after this check fails the open instead.)
fn refuse_link_to_file(path: &Path) -> Result<()> {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    let to_device = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device());
    if is_link && !to_device {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "target {} is a symbolic link: name the disk file itself (links are followed only to block devices)",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// A target URI or path: `file:///path` or a plain path.
pub fn target_path(s: &str) -> Result<std::path::PathBuf> {
    if let Some(rest) = s.strip_prefix("file://") {
        let u = url::Url::parse(&format!("file://{rest}")).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("invalid target URI '{s}': {e}"),
            )
        })?;
        return u
            .to_file_path()
            .map_err(|_| Error::new(ErrorKind::InvalidInput, format!("invalid target URI '{s}'")));
    }
    if s.contains("://") {
        let scheme = s.split("://").next().unwrap_or("");
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!("unknown target scheme '{scheme}' (targets are files or block devices)"),
        ));
    }
    Ok(s.into())
}
