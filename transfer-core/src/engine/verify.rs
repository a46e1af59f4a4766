//! Logical comparison of two disks, zero-aware and in parallel: ranges both sides call zero are
//! not read; everything else is read from both and compared. Ranges are taken in order by several
//! tasks; a task skips ranges past the smallest difference found so far, so the reported offset is
//! the first difference on the disk.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::task::JoinSet;

use crate::buffer::Buffer;
use crate::engine::open_handles;
use crate::error::{Error, ErrorKind, Result};
use crate::extent::{Extent, ExtentKind};
use crate::source::{extents_covering, BlockSource};

/// Outcome of a verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyResult {
    /// Same size, same bytes.
    Equal,
    /// Sizes differ.
    SizeDiffers(u64, u64),
    /// The first differing byte.
    DiffersAt(u64),
}

/// Options for verify.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Handles per side.
    pub connections: usize,
    /// Tasks per handle.
    pub requests: usize,
    /// Compare chunk size.
    pub request_size: usize,
    /// Range each task takes at a time.
    pub range_size: u64,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            connections: 4,
            requests: 4,
            request_size: 1 << 20,
            range_size: 16 << 20,
        }
    }
}

async fn zero_map(src: &dyn BlockSource, start: u64, len: u64) -> Result<Vec<Extent>> {
    if src.caps().can_extents {
        extents_covering(src, start, len).await
    } else {
        Ok(vec![Extent::new(start, len, ExtentKind::Data)])
    }
}

fn all_zero(ex: &[Extent], start: u64, end: u64) -> bool {
    ex.iter()
        .filter(|e| e.end() > start && e.offset < end)
        .all(|e| e.kind.is_zero())
}

/// Compares `a` and `b` front to back with one read at a time, for streams (whose size may
/// show only at their end: a short read).
async fn in_order(a: &dyn BlockSource, b: &dyn BlockSource, chunk: usize) -> Result<VerifyResult> {
    let known = |s: &dyn BlockSource| s.caps().size_known.then(|| s.size());
    let (ka, kb) = (known(a), known(b));
    if let (Some(x), Some(y)) = (ka, kb) {
        if x != y {
            return Ok(VerifyResult::SizeDiffers(x, y));
        }
    }
    let limit = ka.or(kb);
    let mut pos = 0u64;
    loop {
        let n = limit.map_or(chunk as u64, |l| (l - pos).min(chunk as u64)) as usize;
        if n == 0 {
            break;
        }
        let x = a.read_at(pos, Buffer::new(n)).await?;
        let y = b.read_at(pos, Buffer::new(n)).await?;
        if let Some(i) = x.iter().zip(y.iter()).position(|(p, q)| p != q) {
            return Ok(VerifyResult::DiffersAt(pos + i as u64));
        }
        if x.len() != y.len() {
            let m = x.len().min(y.len()) as u64;
            return Ok(VerifyResult::SizeDiffers(
                ka.unwrap_or(pos + x.len() as u64).max(pos + m),
                kb.unwrap_or(pos + y.len() as u64).max(pos + m),
            ));
        }
        pos += x.len() as u64;
        if x.len() < n {
            return Ok(VerifyResult::Equal);
        }
    }
    // The known size is reached: a stream of unknown size must end here too.
    for (s, k) in [(a, ka), (b, kb)] {
        if k.is_none() && !s.read_at(pos, Buffer::new(1)).await?.is_empty() {
            let other = ka.or(kb).unwrap_or(pos);
            return Ok(VerifyResult::SizeDiffers(pos + 1, other));
        }
    }
    Ok(VerifyResult::Equal)
}

/// Compares `a` and `b`.
pub async fn verify(
    a: Arc<dyn BlockSource>,
    b: Arc<dyn BlockSource>,
    opts: &VerifyOptions,
) -> Result<VerifyResult> {
    let (ca, cb) = (a.caps(), b.caps());
    if ca.sequential || cb.sequential || !ca.size_known || !cb.size_known {
        return in_order(&*a, &*b, opts.request_size.max(4096)).await;
    }
    if a.size() != b.size() {
        return Ok(VerifyResult::SizeDiffers(a.size(), b.size()));
    }
    let size = a.size();
    let ha = open_handles(&a, opts.connections).await?;
    let hb = open_handles(&b, opts.connections).await?;
    let next = Arc::new(AtomicU64::new(0));
    let first = Arc::new(AtomicU64::new(u64::MAX));
    let err: Arc<Mutex<Option<Error>>> = Arc::new(Mutex::new(None));
    let tasks = ha.len().max(hb.len()) * opts.requests.max(1);
    let mut set = JoinSet::new();
    for i in 0..tasks {
        let (sa, sb) = (ha[i % ha.len()].clone(), hb[i % hb.len()].clone());
        let (next, first, err) = (next.clone(), first.clone(), err.clone());
        let (range, chunk) = (opts.range_size.max(4096), opts.request_size.max(4096));
        set.spawn(async move {
            let r = async {
                loop {
                    let start = next.fetch_add(1, Ordering::Relaxed).saturating_mul(range);
                    if start >= size
                        || start > first.load(Ordering::Relaxed)
                        || err.lock().unwrap().is_some()
                    {
                        return Ok(());
                    }
                    let end = (start + range).min(size);
                    let (ea, eb) = (
                        zero_map(&*sa, start, end - start).await?,
                        zero_map(&*sb, start, end - start).await?,
                    );
                    let mut pos = start;
                    while pos < end {
                        let n = (end - pos).min(chunk as u64);
                        if all_zero(&ea, pos, pos + n) && all_zero(&eb, pos, pos + n) {
                            pos += n;
                            continue;
                        }
                        let x = sa.read_at(pos, Buffer::new(n as usize)).await?;
                        let y = sb.read_at(pos, Buffer::new(n as usize)).await?;
                        if let Some(i) = x.iter().zip(y.iter()).position(|(p, q)| p != q) {
                            first.fetch_min(pos + i as u64, Ordering::Relaxed);
                            return Ok(());
                        }
                        pos += n;
                    }
                }
            }
            .await;
            if let Err(e) = r {
                err.lock().unwrap().get_or_insert(e);
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.map_err(|e| Error::new(ErrorKind::Io, format!("verify task failed: {e}")))?;
    }
    for h in ha.iter().chain(hb.iter()) {
        let _ = h.close().await;
    }
    if let Some(e) = err.lock().unwrap().take() {
        return Err(e);
    }
    Ok(match first.load(Ordering::Relaxed) {
        u64::MAX => VerifyResult::Equal,
        off => VerifyResult::DiffersAt(off),
    })
}
