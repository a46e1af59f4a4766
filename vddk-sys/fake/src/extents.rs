//! A disk's allocation map and VDDK's `QueryAllocatedBlocks` arithmetic: the allocated byte
//! ranges come from `FAKE_VDDK_ALLOCATED` or from the raw file's own data ranges
//! (`SEEK_DATA`/`SEEK_HOLE`), and the answer is the chunks that meet them, merged.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use vddk_sys::{VixDiskLibBlock, VIXDISKLIB_MAX_CHUNK_NUMBER, VIXDISKLIB_MIN_CHUNK_SIZE};

use crate::ffi::SECTOR;

/// A byte range `[start, end)`.
pub type Range = (u64, u64);

/// `FAKE_VDDK_ALLOCATED`: `OFFSET:LENGTH,...` in bytes, as sorted ranges.
pub fn parse(v: &str) -> Result<Vec<Range>, String> {
    let mut ranges = Vec::new();
    for item in v.split(',').filter(|i| !i.trim().is_empty()) {
        let range = item.split_once(':').and_then(|(o, l)| {
            let (o, l) = (o.trim().parse::<u64>().ok()?, l.trim().parse::<u64>().ok()?);
            Some((o, o.checked_add(l)?))
        });
        ranges.push(range.ok_or_else(|| format!("{item:?} is not OFFSET:LENGTH in bytes"))?);
    }
    ranges.sort_unstable();
    Ok(ranges)
}

/// The data ranges of `file`, sorted; the whole file where the file system cannot tell.
pub fn data_ranges(file: &File) -> io::Result<Vec<Range>> {
    let size = file.metadata()?.len();
    let fd = file.as_raw_fd();
    let seek = |pos: u64, whence| -> io::Result<Option<u64>> {
        let pos = libc::off_t::try_from(pos).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: lseek on a descriptor `file` keeps open; it moves only the file offset,
        // which the fake never uses (every read is a pread).
        let r = unsafe { libc::lseek(fd, pos, whence) };
        match r {
            0.. => Ok(Some(r as u64)),
            _ => match io::Error::last_os_error() {
                e if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
                e => Err(e),
            },
        }
    };
    let mut ranges = Vec::new();
    let mut pos = 0;
    while pos < size {
        let data = match seek(pos, libc::SEEK_DATA) {
            Ok(Some(data)) => data,
            Ok(None) => break,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(vec![(0, size)]),
            Err(e) => return Err(e),
        };
        let hole = seek(data, libc::SEEK_HOLE)?.unwrap_or(size).min(size);
        if hole <= data {
            break;
        }
        ranges.push((data, hole));
        pos = hole;
    }
    Ok(ranges)
}

/// Whether a query follows VDDK's rules: a power-of-two chunk of at least
/// `VIXDISKLIB_MIN_CHUNK_SIZE` sectors, a non-empty range aligned to it, at most
/// `VIXDISKLIB_MAX_CHUNK_NUMBER` chunks, within the disk.
pub fn valid(start: u64, count: u64, chunk: u64, capacity: u64) -> bool {
    count > 0
        && chunk >= u64::from(VIXDISKLIB_MIN_CHUNK_SIZE)
        && chunk.is_power_of_two()
        && start & (chunk - 1) == 0
        && count & (chunk - 1) == 0
        && count / chunk <= u64::from(VIXDISKLIB_MAX_CHUNK_NUMBER)
        && start.checked_add(count).is_some_and(|end| end <= capacity)
}

/// The chunks of `chunk` sectors in the `count` sectors from `start` that meet a range of
/// `allocated` (sorted by start), merged into blocks of sectors. The query must be `valid`.
pub fn blocks(allocated: &[Range], start: u64, count: u64, chunk: u64) -> Vec<VixDiskLibBlock> {
    let bytes = chunk * SECTOR;
    let (first, end) = (start / chunk, (start + count) / chunk);
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &(s, e) in allocated.iter().filter(|(s, e)| e > s) {
        let (a, b) = ((s / bytes).max(first), (e.div_ceil(bytes)).min(end));
        if a >= b {
            continue;
        }
        match runs.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => runs.push((a, b)),
        }
    }
    runs.iter()
        .map(|&(a, b)| VixDiskLibBlock {
            offset: a * chunk,
            length: (b - a) * chunk,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: u64 = 128;
    const KIB64: u64 = 65536;

    fn sectors(blocks: &[VixDiskLibBlock]) -> Vec<(u64, u64)> {
        blocks.iter().map(|b| (b.offset, b.length)).collect()
    }

    #[test]
    fn chunks_meeting_a_range_are_merged_into_blocks() {
        let allocated = parse("0:1,65536:65536,200000:10,10485760:1").expect("valid knob");

        let blocks = blocks(&allocated, 0, 1024, CHUNK);

        // Bytes 0, 64-128 KiB and 200000 touch chunks 0, 1 and 3; 10 MiB is past the query.
        assert_eq!(sectors(&blocks), [(0, 256), (384, 128)]);
    }

    #[test]
    fn the_query_range_clips_the_blocks() {
        let allocated = [(0, 8 * KIB64)];

        let blocks = blocks(&allocated, 2 * CHUNK, 3 * CHUNK, CHUNK);

        assert_eq!(sectors(&blocks), [(256, 384)]);
    }

    #[test]
    fn queries_breaking_vddks_rules_are_invalid() {
        let capacity = 1 << 30;

        assert!(valid(0, 1024, CHUNK, capacity));
        assert!(!valid(0, 0, CHUNK, capacity), "empty range");
        assert!(!valid(0, 1024, 64, capacity), "chunk below the minimum");
        assert!(!valid(0, 1152, 192, capacity), "chunk not a power of two");
        assert!(!valid(64, 1024, CHUNK, capacity), "start not aligned");
        assert!(!valid(0, 1000, CHUNK, capacity), "count not aligned");
        assert!(
            !valid(0, CHUNK * 524_289, CHUNK, capacity),
            "too many chunks"
        );
        assert!(
            !valid(capacity - CHUNK, 2 * CHUNK, CHUNK, capacity),
            "past the end"
        );
    }

    #[test]
    fn a_malformed_allocation_knob_is_refused() {
        assert!(parse("0:1,x").is_err());
        assert!(parse("5").is_err());
        assert_eq!(parse("").expect("empty is no range"), []);
    }
}
