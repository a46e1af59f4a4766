//! How the cluster/grain-based readers (qcow2, sparse VMDK) fetch a read's units: plain units
//! that are contiguous in the file and in the caller's buffer in one request each run; compressed
//! units whose bytes lie in ascending order in one request per span, inflated on the blocking
//! pool.

use super::{on_blocking_pool, read_exact};
use crate::buffer::Buffer;
use crate::error::Result;
use crate::source::BlockSource;

/// The largest run or span fetched with one read.
pub const MAX_SPAN: u64 = 16 << 20;

/// A run of plain bytes: `len` bytes at file offset `host` go to `at` in the buffer.
pub struct Run {
    at: usize,
    host: u64,
    len: usize,
}

/// Adds `len` bytes at `host` for buffer offset `at`, merging with the last run when it
/// continues it in the file and in the buffer.
pub fn push_run(runs: &mut Vec<Run>, at: usize, host: u64, len: usize) {
    match runs.last_mut() {
        Some(r)
            if r.host + r.len as u64 == host && r.at + r.len == at && (r.len as u64) < MAX_SPAN =>
        {
            r.len += len
        }
        _ => runs.push(Run { at, host, len }),
    }
}

/// Reads `runs` into `buf`.
pub async fn read_runs(inner: &dyn BlockSource, runs: &[Run], buf: &mut Buffer) -> Result<()> {
    for r in runs {
        let got = read_exact(inner, r.host, r.len).await?;
        buf.as_mut_slice()[r.at..r.at + r.len].copy_from_slice(got.as_slice());
    }
    Ok(())
}

/// A compressed unit's part of a read.
pub struct Packed {
    /// Where in the caller's buffer.
    pub at: usize,
    /// Where in the unit.
    pub within: u64,
    /// How many bytes.
    pub len: usize,
    /// Where its compressed bytes start in the file.
    pub host: u64,
    /// At most how many compressed bytes there are.
    pub max: u64,
    /// Bytes of the unit that must inflate (less than a unit only at the end of a disk).
    pub need: usize,
}

/// Fetches the compressed units of a read (units stored in ascending order together, at most
/// [`MAX_SPAN`] a span), then inflates each with `inflate(raw, unit, part)` into a buffer of
/// `unit` bytes on the blocking pool and copies its part into `buf`.
pub async fn read_packed<F>(
    inner: &dyn BlockSource,
    unit: usize,
    parts: Vec<Packed>,
    buf: Buffer,
    inflate: F,
) -> Result<Buffer>
where
    F: Fn(&[u8], &mut [u8], &Packed) -> Result<()> + Send + 'static,
{
    let file_size = inner.size();
    let mut spans: Vec<(u64, Buffer, Vec<Packed>)> = Vec::new();
    let mut run: Vec<Packed> = Vec::new();
    let (mut start, mut end) = (0u64, 0u64);
    for p in parts {
        let p_end = p.host.saturating_add(p.max).min(file_size);
        let joins = !run.is_empty() && p.host >= start && p_end.max(end) - start <= MAX_SPAN;
        if !run.is_empty() && !joins {
            let data = read_exact(inner, start, (end - start) as usize).await?;
            spans.push((start, data, std::mem::take(&mut run)));
        }
        if run.is_empty() {
            (start, end) = (p.host, p_end);
        }
        end = end.max(p_end);
        run.push(p);
    }
    if !run.is_empty() {
        let data = read_exact(inner, start, (end - start) as usize).await?;
        spans.push((start, data, run));
    }
    on_blocking_pool(move || {
        let mut buf = buf;
        let mut out = vec![0u8; unit];
        for (start, data, parts) in spans {
            for p in parts {
                let from = (p.host - start) as usize;
                let to = (from as u64 + p.max).min(data.len() as u64) as usize;
                inflate(&data.as_slice()[from..to], &mut out, &p)?;
                let w = p.within as usize;
                buf.as_mut_slice()[p.at..p.at + p.len].copy_from_slice(&out[w..w + p.len]);
            }
        }
        Ok(buf)
    })
    .await
}
