//! Per-range CRC32 manifests: `importer checksum DISK` describes a disk by the CRC32 (crc32fast)
//! of each range of a fixed size, so that two sides of a migration can be compared without
//! moving the data twice. Zero-aware: ranges the source reports as zero or holes are not read
//! (their CRC is that of zeros, computed from memory). Ranges are summed by several tasks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::task::JoinSet;

use crate::buffer::Buffer;
use crate::engine::open_handles;
use crate::error::{Error, ErrorKind, Result};
use crate::extent::ExtentKind;
use crate::source::{extents_covering, BlockSource};

/// The CRC32 of one range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeSum {
    /// Where the range starts.
    pub offset: u64,
    /// Its length (the last range may be short).
    pub length: u64,
    /// CRC32 (IEEE) of its bytes.
    pub crc32: u32,
}

/// How to checksum.
#[derive(Debug, Clone)]
pub struct ChecksumOptions {
    /// Bytes per range of the manifest.
    pub range_size: u64,
    /// Handles (connections) to read with.
    pub connections: usize,
    /// Bytes per read.
    pub request_size: usize,
}

impl Default for ChecksumOptions {
    fn default() -> Self {
        ChecksumOptions {
            range_size: 64 << 20,
            connections: 4,
            request_size: 1 << 20,
        }
    }
}

/// Feeds `len` zero bytes to `h`.
fn zeros(h: &mut crc32fast::Hasher, mut len: u64) {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    while len > 0 {
        let n = len.min(ZEROS.len() as u64) as usize;
        h.update(&ZEROS[..n]);
        len -= n as u64;
    }
}

async fn sum_range(src: &dyn BlockSource, offset: u64, length: u64, req: usize) -> Result<u32> {
    let extents = if src.caps().can_extents {
        extents_covering(src, offset, length).await?
    } else {
        vec![crate::extent::Extent::new(offset, length, ExtentKind::Data)]
    };
    let mut h = crc32fast::Hasher::new();
    let mut buf = Some(Buffer::new(req));
    for e in extents {
        if e.kind != ExtentKind::Data {
            zeros(&mut h, e.len);
            continue;
        }
        let mut pos = e.offset;
        while pos < e.offset + e.len {
            let n = (e.offset + e.len - pos).min(req as u64) as usize;
            let mut b = buf.take().unwrap_or_else(|| Buffer::new(req));
            b.set_len(n);
            let b = src.read_at(pos, b).await?;
            h.update(b.as_slice());
            buf = Some(b);
            pos += n as u64;
        }
    }
    Ok(h.finalize())
}

/// The manifest of `src`: one CRC32 per range, in order.
pub async fn manifest(src: Arc<dyn BlockSource>, opts: &ChecksumOptions) -> Result<Vec<RangeSum>> {
    let size = src.size();
    let range = opts.range_size.max(4096);
    let count = size.div_ceil(range) as usize;
    let out: Arc<Mutex<Vec<Option<RangeSum>>>> = Arc::new(Mutex::new(vec![None; count]));
    let next = Arc::new(AtomicUsize::new(0));
    let req = opts
        .request_size
        .clamp(4096, 4 << 20)
        .min(src.caps().max_request.max(4096));
    let mut tasks = JoinSet::new();
    for h in open_handles(&src, opts.connections).await? {
        let (out, next) = (out.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<(), Error>(());
                }
                let offset = i as u64 * range;
                let length = range.min(size - offset);
                let crc32 = sum_range(&*h, offset, length, req).await?;
                out.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(RangeSum {
                    offset,
                    length,
                    crc32,
                });
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| Error::new(ErrorKind::Io, format!("checksum task failed: {e}")))??;
    }
    let sums = out.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(sums.into_iter().flatten().collect())
}

/// The manifest as JSON: `{"size","range_size","ranges":[{"offset","length","crc32"}]}`, the
/// CRC as 8 hex digits.
pub fn to_json(size: u64, range_size: u64, sums: &[RangeSum]) -> serde_json::Value {
    serde_json::json!({
        "size": size,
        "range_size": range_size,
        "ranges": sums.iter().map(|r| serde_json::json!({
            "offset": r.offset,
            "length": r.length,
            "crc32": format!("{:08x}", r.crc32),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_from_memory_sum_like_read_zeros() {
        let mut a = crc32fast::Hasher::new();
        zeros(&mut a, 200_000);
        let mut b = crc32fast::Hasher::new();
        b.update(&vec![0u8; 200_000]);
        assert_eq!(a.finalize(), b.finalize());
    }
}
