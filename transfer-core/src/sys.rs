//! The ioctl and syscall helpers: the only place outside the io_uring engine where ferry calls
//! into libc directly. Each helper takes a borrowed file, so the descriptor is open for the whole
//! call, and turns the C return convention into `io::Result`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

// _IOR(0x12, 114, size_t) and _IO(0x12, 127)/(0x12, 119) from <linux/fs.h>.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKZEROOUT: libc::c_ulong = 0x127f;
const BLKDISCARD: libc::c_ulong = 0x1277;

/// Size in bytes of the block device behind `f` (ioctl BLKGETSIZE64).
pub fn block_device_size(f: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: `f` is an open descriptor for the duration of the call and BLKGETSIZE64 writes exactly
    // one u64 through the pointer, which points at a live, writable u64 on our stack.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

fn range_ioctl(f: &File, req: libc::c_ulong, offset: u64, len: u64) -> io::Result<()> {
    let range: [u64; 2] = [offset, len];
    // SAFETY: BLKZEROOUT and BLKDISCARD read two u64 (start, length) from the pointer, which points
    // at a live array of two u64 on our stack; `f` stays open for the call.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), req, range.as_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Zeroes `[offset, offset+len)` of a block device (ioctl BLKZEROOUT; offset and length must be
/// multiples of the logical sector size).
pub fn block_zeroout(f: &File, offset: u64, len: u64) -> io::Result<()> {
    range_ioctl(f, BLKZEROOUT, offset, len)
}

/// Discards `[offset, offset+len)` of a block device (ioctl BLKDISCARD). Discarded blocks do not
/// necessarily read back as zeros; callers use it only where that is known.
pub fn block_discard(f: &File, offset: u64, len: u64) -> io::Result<()> {
    range_ioctl(f, BLKDISCARD, offset, len)
}

/// `fallocate(2)` mode bits we use.
pub mod falloc {
    /// Keep the file size unchanged.
    pub const KEEP_SIZE: i32 = libc::FALLOC_FL_KEEP_SIZE;
    /// Deallocate the range (needs KEEP_SIZE).
    pub const PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE;
    /// Zero the range, keeping it allocated.
    pub const ZERO_RANGE: i32 = libc::FALLOC_FL_ZERO_RANGE;
}

/// `fallocate(2)` on `f`.
pub fn fallocate(f: &File, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    let (off, l) = to_off(offset)?.zip(to_off(len)?).ok_or_else(overflow)?;
    loop {
        // SAFETY: plain syscall on a descriptor that `f` keeps open; no memory is passed.
        let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, off, l) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn to_off(v: u64) -> io::Result<Option<libc::off_t>> {
    Ok(libc::off_t::try_from(v).ok())
}

fn overflow() -> io::Error {
    io::Error::from_raw_os_error(libc::EOVERFLOW)
}

/// `lseek(SEEK_DATA)` / `lseek(SEEK_HOLE)`: the next data or hole offset at or after `offset`, or
/// `None` when there is none (ENXIO: at or past the end of the file).
fn seek(f: &File, offset: u64, whence: i32) -> io::Result<Option<u64>> {
    let off = to_off(offset)?.ok_or_else(overflow)?;
    // SAFETY: plain syscall on a descriptor that `f` keeps open; it only moves the file offset,
    // which ferry never relies on (all I/O is positional).
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(r as u64))
}

/// Bytes an unprivileged user may still allocate on the file system holding `f` (fstatvfs:
/// available blocks times the fragment size).
pub fn available_bytes(f: &File) -> io::Result<u64> {
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `f` is an open descriptor for the whole call and `st` is a writable statvfs.
    let r = unsafe { libc::fstatvfs(f.as_raw_fd(), st.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatvfs succeeded, so it filled `st`.
    let st = unsafe { st.assume_init() };
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Whether `f` lives on a file system kept in memory (tmpfs, ramfs): a write there is a copy
/// into memory that never waits for a disk, and there is no writeback to manage.
pub fn memory_backed(f: &File) -> io::Result<bool> {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `f` is an open descriptor for the whole call and `st` is a writable statfs.
    let r = unsafe { libc::fstatfs(f.as_raw_fd(), st.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatfs succeeded, so it filled `st`.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between architectures
    let kind = st.f_type as i64;
    Ok(kind == TMPFS_MAGIC || kind == RAMFS_MAGIC)
}

/// Next offset at or after `offset` that holds data.
pub fn seek_data(f: &File, offset: u64) -> io::Result<Option<u64>> {
    seek(f, offset, libc::SEEK_DATA)
}

/// Next offset at or after `offset` that is a hole (the end of the file counts as a hole).
pub fn seek_hole(f: &File, offset: u64) -> io::Result<Option<u64>> {
    seek(f, offset, libc::SEEK_HOLE)
}

/// Starts writeback of `[offset, offset+len)` without waiting (`sync_file_range(WRITE)`).
pub fn start_writeback(f: &File, offset: u64, len: u64) -> io::Result<()> {
    sync_range(f, offset, len, libc::SYNC_FILE_RANGE_WRITE)
}

/// Writes back `[offset, offset+len)` and waits for it (`sync_file_range(WAIT_BEFORE|WRITE|
/// WAIT_AFTER)`). This is not a durability barrier (no metadata, no device cache flush); the
/// copy still ends with fdatasync.
pub fn wait_writeback(f: &File, offset: u64, len: u64) -> io::Result<()> {
    sync_range(
        f,
        offset,
        len,
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER,
    )
}

fn sync_range(f: &File, offset: u64, len: u64, flags: libc::c_uint) -> io::Result<()> {
    let (off, l) = to_off(offset)?.zip(to_off(len)?).ok_or_else(overflow)?;
    // SAFETY: plain syscall on a descriptor that `f` keeps open; no memory is passed.
    let r = unsafe { libc::sync_file_range(f.as_raw_fd(), off, l, flags) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Drops clean cached pages of `[offset, offset+len)` (`posix_fadvise(DONTNEED)`).
pub fn drop_cache(f: &File, offset: u64, len: u64) -> io::Result<()> {
    let (off, l) = to_off(offset)?.zip(to_off(len)?).ok_or_else(overflow)?;
    // SAFETY: plain syscall on a descriptor that `f` keeps open; no memory is passed.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), off, l, libc::POSIX_FADV_DONTNEED) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// Reads the whole of the small file at `path` (a state file, a journal, a changed-areas
/// list): at most `limit` bytes, and never through a symbolic link at its last component
/// (`O_NOFOLLOW`: a link planted there does not redirect what ferry reads).
pub fn read_small_file(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let mut body = Vec::new();
    f.take(limit + 1).read_to_end(&mut body)?;
    if body.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {} MiB", limit >> 20),
        ));
    }
    Ok(body)
}

/// Creates or truncates `path` for writing, never through a symbolic link at its last
/// component (`O_NOFOLLOW`): the temporary files of state and journal updates.
pub fn create_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn seek_data_and_hole_find_written_block() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(1 << 20).unwrap();
        f.write_all_at(&[1u8; 4096], 512 * 1024).unwrap();
        let d = seek_data(&f, 0).unwrap();
        // Some file systems (tmpfs before 6.x, overlay) report everything as data; both are valid.
        if d == Some(0) {
            return;
        }
        assert_eq!(d, Some(512 * 1024));
        assert_eq!(seek_hole(&f, 512 * 1024).unwrap(), Some(512 * 1024 + 4096));
        assert_eq!(seek_data(&f, 600 * 1024).unwrap(), None);
    }

    #[test]
    fn punch_hole_reads_back_zero() {
        let f = tempfile::tempfile().unwrap();
        f.write_all_at(&[7u8; 8192], 0).unwrap();
        match fallocate(&f, falloc::PUNCH_HOLE | falloc::KEEP_SIZE, 0, 4096) {
            Ok(()) => {
                let mut b = [1u8; 8192];
                f.read_exact_at(&mut b, 0).unwrap();
                assert!(b[..4096].iter().all(|&x| x == 0));
                assert!(b[4096..].iter().all(|&x| x == 7));
            }
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP)),
        }
    }
}
