//! Built-in synthetic sources, so the tool runs, demos and benchmarks with nothing installed:
//!
//! - `synth://zero?size=N`: all zeros (one hole extent).
//! - `synth://pattern?size=N`: every 8-byte word holds its own offset, big-endian (as nbdkit's
//!   pattern plugin), all data.
//! - `synth://sparse-random?size=N&percent=P&seed=S`: deterministic pseudo-random data in 64 KiB
//!   blocks, about P% of them allocated, the rest holes. The same seed gives the same disk.

use std::sync::Arc;

use async_trait::async_trait;

use crate::buffer::Buffer;
use crate::error::{invalid, Result};
use crate::extent::{Extent, ExtentKind};
use crate::size::parse_size;
use crate::source::{BlockSource, SourceCaps};

/// Allocation granularity of `sparse-random`.
pub const SPARSE_BLOCK: u64 = 64 * 1024;

/// Which synthetic disk.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SynthKind {
    /// All zeros.
    Zero,
    /// Offsets as big-endian words.
    Pattern,
    /// Random data in about `percent`% of blocks.
    SparseRandom {
        /// Share of allocated blocks, 0-100.
        percent: f64,
        /// Seed for the generator.
        seed: u64,
    },
}

/// A synthetic disk.
#[derive(Debug, Clone)]
pub struct SynthSource {
    kind: SynthKind,
    size: u64,
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl SynthSource {
    /// A synthetic source of `kind` and `size` bytes.
    pub fn new(kind: SynthKind, size: u64) -> Self {
        SynthSource { kind, size }
    }

    /// Parses `synth://KIND?size=..&percent=..&seed=..`.
    pub fn from_url(url: &url::Url) -> Result<Self> {
        let mut size = None;
        let mut percent = 50.0;
        let mut seed = 1u64;
        for (k, v) in url.query_pairs() {
            match &*k {
                "size" => size = Some(parse_size(&v)?),
                "percent" => {
                    percent = v
                        .parse::<f64>()
                        .ok()
                        .filter(|p| (0.0..=100.0).contains(p))
                        .ok_or_else(|| {
                            invalid(format!("synth: percent must be 0-100, got '{v}'"))
                        })?
                }
                "seed" => {
                    seed = v
                        .parse()
                        .map_err(|_| invalid(format!("synth: invalid seed '{v}'")))?
                }
                other => return Err(invalid(format!("synth: unknown parameter '{other}'"))),
            }
        }
        let size = size.ok_or_else(|| invalid("synth: the size parameter is required"))?;
        let kind = match url.host_str().unwrap_or("") {
            "zero" => SynthKind::Zero,
            "pattern" => SynthKind::Pattern,
            "sparse-random" => SynthKind::SparseRandom { percent, seed },
            other => {
                return Err(invalid(format!(
                    "synth: unknown kind '{other}' (zero, pattern, sparse-random)"
                )))
            }
        };
        Ok(SynthSource::new(kind, size))
    }

    fn block_allocated(&self, block: u64) -> bool {
        match self.kind {
            SynthKind::Zero => false,
            SynthKind::Pattern => true,
            SynthKind::SparseRandom { percent, seed } => {
                let h = splitmix(seed ^ block.wrapping_mul(0x2545_f491_4f6c_dd1d));
                ((h >> 11) as f64 / (1u64 << 53) as f64) * 100.0 < percent
            }
        }
    }

    /// Fills `out` with the bytes at `offset` (synchronous; used by `read_at` and tests).
    pub fn fill(&self, offset: u64, out: &mut [u8]) {
        match self.kind {
            SynthKind::Zero => out.fill(0),
            SynthKind::Pattern => fill_words(offset, out, |w| w.to_be_bytes()),
            SynthKind::SparseRandom { seed, .. } => {
                let mut pos = 0usize;
                while pos < out.len() {
                    let off = offset + pos as u64;
                    let block = off / SPARSE_BLOCK;
                    let block_end = (block + 1) * SPARSE_BLOCK;
                    let n = ((block_end - off) as usize).min(out.len() - pos);
                    let chunk = &mut out[pos..pos + n];
                    if self.block_allocated(block) {
                        fill_words(off, chunk, |w| splitmix(seed ^ w).to_le_bytes());
                    } else {
                        chunk.fill(0);
                    }
                    pos += n;
                }
            }
        }
    }
}

/// Fills `out` (which starts at disk offset `offset`) with the 8-byte word function `f(word
/// offset)`, handling unaligned starts and ends.
fn fill_words(offset: u64, out: &mut [u8], f: impl Fn(u64) -> [u8; 8]) {
    let mut pos = 0usize;
    let head = (8 - (offset % 8) as usize) % 8;
    if head > 0 {
        let w = f(offset - (8 - head as u64));
        let n = head.min(out.len());
        out[..n].copy_from_slice(&w[8 - head..8 - head + n]);
        pos = n;
    }
    let mut chunks = out[pos..].chunks_exact_mut(8);
    let mut word = offset + pos as u64;
    for c in &mut chunks {
        c.copy_from_slice(&f(word));
        word += 8;
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let w = f(word);
        let n = rest.len();
        rest.copy_from_slice(&w[..n]);
    }
}

#[async_trait]
impl BlockSource for SynthSource {
    fn describe(&self) -> String {
        format!("synth source ({:?}, {} bytes)", self.kind, self.size)
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn caps(&self) -> SourceCaps {
        SourceCaps {
            preferred_request: 1 << 20,
            max_request: 32 << 20,
            can_extents: true,
            max_connections: 64,
            max_requests: 4,
            sequential: false,
            size_known: true,
            costly_requests: false,
        }
    }

    async fn read_at(&self, offset: u64, mut buf: Buffer) -> Result<Buffer> {
        if offset + buf.len() as u64 > self.size {
            return Err(invalid(format!(
                "synth: read beyond the end at offset {offset}"
            )));
        }
        self.fill(offset, &mut buf);
        Ok(buf)
    }

    async fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let end = (offset + len).min(self.size);
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let next = match self.kind {
                SynthKind::Zero | SynthKind::Pattern => end,
                SynthKind::SparseRandom { .. } => {
                    ((pos / SPARSE_BLOCK + 1) * SPARSE_BLOCK).min(end)
                }
            };
            let kind = if self.block_allocated(pos / SPARSE_BLOCK) {
                ExtentKind::Data
            } else {
                ExtentKind::Hole
            };
            match out.last_mut() {
                Some(e) if e.kind == kind => e.len += next - pos,
                _ => out.push(Extent::new(pos, next - pos, kind)),
            }
            pos = next;
        }
        Ok(out)
    }

    async fn open_another(&self) -> Result<Arc<dyn BlockSource>> {
        Ok(Arc::new(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(s: &str) -> SynthSource {
        SynthSource::from_url(&url::Url::parse(s).unwrap()).unwrap()
    }

    #[test]
    fn pattern_words_are_offsets() {
        let s = src("synth://pattern?size=1M");
        let mut b = vec![0u8; 24];
        s.fill(8, &mut b);
        assert_eq!(&b[..8], &8u64.to_be_bytes());
        assert_eq!(&b[16..], &24u64.to_be_bytes());
        let mut u = vec![0u8; 5];
        s.fill(13, &mut u);
        assert_eq!(u, [0, 0, 8, 0, 0]);
    }

    #[test]
    fn sparse_random_is_deterministic_and_near_percent() {
        let a = src("synth://sparse-random?size=256M&percent=30&seed=7");
        let b = src("synth://sparse-random?size=256M&percent=30&seed=7");
        let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
        a.fill(5 << 20, &mut x);
        b.fill(5 << 20, &mut y);
        assert_eq!(x, y);
        let blocks = (256u64 << 20) / SPARSE_BLOCK;
        let data = (0..blocks).filter(|&i| a.block_allocated(i)).count() as f64;
        let share = data / blocks as f64 * 100.0;
        assert!((25.0..35.0).contains(&share), "{share}");
    }

    #[test]
    fn holes_read_as_zero_and_data_does_not() {
        let s = src("synth://sparse-random?size=64M&percent=50&seed=3");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let ex = rt.block_on(s.extents(0, 64 << 20)).unwrap();
        assert_eq!(ex.iter().map(|e| e.len).sum::<u64>(), 64 << 20);
        for e in ex.iter().take(20) {
            let mut b = vec![1u8; e.len as usize];
            s.fill(e.offset, &mut b);
            assert_eq!(b.iter().all(|&x| x == 0), e.kind == ExtentKind::Hole);
        }
    }

    #[test]
    fn bad_parameters_are_rejected() {
        for u in [
            "synth://zero",
            "synth://nope?size=1M",
            "synth://zero?size=1M&x=1",
            "synth://sparse-random?size=1M&percent=101",
        ] {
            assert!(
                SynthSource::from_url(&url::Url::parse(u).unwrap()).is_err(),
                "{u}"
            );
        }
    }
}
