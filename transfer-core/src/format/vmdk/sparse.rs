//! A hosted sparse extent (monolithicSparse, a twoGbMaxExtentSparse part, streamOptimized)
//! read with random access: the grain directory (from the header, or from the footer of a
//! stream-optimized extent), grain tables cached, plain or compressed grains. Runs of grains that
//! lie next to each other in the file are read with one request, and compressed grains are
//! inflated on the blocking pool, so a large read decodes in parallel with the others.

use std::io::Read;
use std::sync::Arc;

use super::header::{corrupt, parse_footer, Marker, SparseHeader, GD_AT_END, SECTOR};
use crate::error::{Error, ErrorKind, Result};
use crate::format::batch::Packed;
use crate::format::mapped::{entries, MappedSource, Mapping, TableCache, Unit};
use crate::format::read_exact;
use crate::source::{BlockSource, SourceCaps};

/// Cached grain tables, in bytes.
const GT_CACHE_BYTES: usize = 8 << 20;

/// Where one grain's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grain {
    /// Not allocated: zeros (a parent is refused when opening).
    Unallocated,
    /// Reads as zeros.
    Zero,
    /// At this sector of the extent file.
    At(u64),
}

impl Grain {
    /// Decodes a grain table entry.
    pub fn decode(gte: u32) -> Grain {
        match gte {
            0 => Grain::Unallocated,
            1 => Grain::Zero,
            s => Grain::At(s as u64),
        }
    }
}

/// Inflates one compressed grain from `data` (which starts at the grain's sector) into `out`;
/// `need` bytes of it must come out (less than a grain only at the end of the disk).
pub fn inflate_grain(data: &[u8], markers: bool, out: &mut [u8], need: usize) -> Result<()> {
    let body = if markers {
        let Marker::Grain { size, .. } = Marker::parse(data)? else {
            return Err(corrupt("a grain table points at a metadata marker"));
        };
        let end = Marker::GRAIN_HEADER + size as usize;
        if end > data.len() {
            return Err(corrupt(format!(
                "a compressed grain of {size} bytes runs past the end of the file or the grain's bound"
            )));
        }
        &data[Marker::GRAIN_HEADER..end]
    } else {
        data
    };
    // zlib (RFC 1950) as VMware and qemu write it; raw deflate is taken too.
    let zlib = body.len() >= 2
        && body[0] & 0x0f == 8
        && (u16::from(body[0]) << 8 | u16::from(body[1])) % 31 == 0;
    let mut dec: Box<dyn Read> = if zlib {
        Box::new(flate2::read::ZlibDecoder::new(body))
    } else {
        Box::new(flate2::read::DeflateDecoder::new(body))
    };
    let mut filled = 0;
    while filled < out.len() {
        match dec.read(&mut out[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) => return Err(corrupt(format!("a compressed grain does not inflate: {e}"))),
        }
    }
    if filled < need {
        return Err(corrupt(format!(
            "a compressed grain inflates to {filled} bytes, not {need}"
        )));
    }
    // Read on to the end of the compressed stream, so that its checksum is checked.
    match dec.read(&mut [0u8; 1]) {
        Ok(0) => Ok(()),
        Ok(_) => Err(corrupt("a compressed grain inflates to more than a grain")),
        Err(e) => Err(corrupt(format!("a compressed grain does not inflate: {e}"))),
    }
}

/// A sparse extent: its header, grain directory and cached grain tables, shared by every
/// handle.
pub struct SparseExtent {
    header: SparseHeader,
    gd: Vec<u32>,
    gts: TableCache<u64, u32>,
    desc: String,
}

/// A sparse extent on a source, read as a raw disk.
pub type SparseSource = MappedSource<SparseExtent>;

impl MappedSource<SparseExtent> {
    /// Opens the sparse extent on `inner` (a positional source).
    pub async fn open(inner: Arc<dyn BlockSource>) -> Result<SparseSource> {
        if inner.caps().sequential {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{} can only be read front to back, and this VMDK needs random access",
                    inner.describe()
                ),
            ));
        }
        let header = read_header(&*inner).await?;
        let n = header.gd_entries() as usize;
        let gd: Vec<u32> = if n == 0 {
            Vec::new()
        } else {
            if header.gd_offset == 0 {
                return Err(corrupt("no grain directory"));
            }
            let at = header
                .gd_offset
                .checked_mul(SECTOR)
                .ok_or_else(|| corrupt("grain directory offset out of range"))?;
            let raw = read_exact(&*inner, at, n * 4).await?;
            entries(raw.as_slice(), u32::from_le_bytes)
        };
        let gt_bytes = header.gtes_per_gt as usize * 4;
        let desc = format!(
            "vmdk sparse extent{} on {}",
            if header.markers() {
                " (stream-optimized)"
            } else {
                ""
            },
            inner.describe()
        );
        let extent = SparseExtent {
            gts: TableCache::new((GT_CACHE_BYTES / gt_bytes).max(2)),
            header,
            gd,
            desc,
        };
        Ok(MappedSource::new(inner, extent))
    }

    /// The header in use (the footer's for a stream-optimized extent).
    pub fn header(&self) -> &SparseHeader {
        &self.mapping().header
    }
}

/// The header in use: the extent's, or the footer's when the grain directory is at the end (a
/// stream-optimized extent), which must agree with the header on the layout.
async fn read_header(inner: &dyn BlockSource) -> Result<SparseHeader> {
    let head = read_exact(inner, 0, SparseHeader::LEN.min(inner.size() as usize)).await?;
    let header = SparseHeader::parse(head.as_slice())?;
    if header.gd_offset != GD_AT_END {
        return Ok(header);
    }
    let size = inner.size();
    if size < 1536 + 512 {
        return Err(corrupt("the extent is too short for a footer: truncated?"));
    }
    let tail = read_exact(inner, size - 1536, 1536).await?;
    let footer = parse_footer(tail.as_slice())?;
    if (footer.capacity, footer.grain_sectors, footer.gtes_per_gt)
        != (header.capacity, header.grain_sectors, header.gtes_per_gt)
    {
        return Err(corrupt("the footer and the header disagree on the layout"));
    }
    Ok(footer)
}

impl SparseExtent {
    /// Where grain `g` is.
    async fn grain(&self, inner: &dyn BlockSource, g: u64) -> Result<Grain> {
        let h = &self.header;
        let per = h.gtes_per_gt as u64;
        let gd_index = g / per;
        let gt_sector = self.gd[gd_index as usize];
        if gt_sector == 0 {
            return Ok(Grain::Unallocated);
        }
        let table = self
            .gts
            .get(gd_index, async {
                let raw = read_exact(inner, gt_sector as u64 * SECTOR, per as usize * 4).await?;
                Ok(entries(raw.as_slice(), u32::from_le_bytes))
            })
            .await?;
        let grain = Grain::decode(table[(g % per) as usize]);
        if let Grain::At(s) = grain {
            if s.checked_mul(SECTOR).is_none_or(|b| b >= inner.size()) {
                return Err(corrupt(format!(
                    "grain {g} at sector {s}, past the end of {}: truncated?",
                    inner.describe()
                )));
            }
        }
        Ok(grain)
    }
}

impl Mapping for SparseExtent {
    fn describe(&self) -> &str {
        &self.desc
    }

    fn size(&self) -> u64 {
        self.header.size()
    }

    fn unit(&self) -> u64 {
        self.header.grain_bytes()
    }

    fn preferred_request(&self, inner: &SourceCaps) -> usize {
        let preferred = if self.header.compressed() {
            4 << 20
        } else {
            1 << 20
        };
        preferred
            .max(inner.preferred_request)
            .min(inner.max_request)
    }

    async fn locate(&self, inner: &dyn BlockSource, g: u64) -> Result<Unit> {
        let gb = self.header.grain_bytes();
        Ok(match self.grain(inner, g).await? {
            Grain::Unallocated => Unit::Hole,
            Grain::Zero => Unit::Zero,
            // A compressed grain takes at most a grain, its marker and deflate's few bytes of
            // overhead, rounded to sectors.
            Grain::At(s) if self.header.compressed() => Unit::Packed {
                host: s * SECTOR,
                max: gb + 4096,
                need: (self.size() - g * gb).min(gb) as usize,
            },
            Grain::At(s) => Unit::Plain(s * SECTOR),
        })
    }

    fn inflate(&self, raw: &[u8], out: &mut [u8], part: &Packed) -> Result<()> {
        inflate_grain(raw, self.header.markers(), out, part.need)
            .map_err(|e| e.context_prefix(format!("{}, sector {}", self.desc, part.host / SECTOR)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn grains_inflate_and_bad_ones_are_refused() {
        let grain: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        let z = zlib(&grain);
        let mut data = vec![0u8; 12];
        data[..8].copy_from_slice(&128u64.to_le_bytes());
        data[8..12].copy_from_slice(&(z.len() as u32).to_le_bytes());
        data.extend_from_slice(&z);
        let mut out = vec![0u8; 65536];
        inflate_grain(&data, true, &mut out, 65536).unwrap();
        assert_eq!(out, grain);
        inflate_grain(&z, false, &mut out, 65536).unwrap();
        assert!(inflate_grain(&data[..data.len() - 10], true, &mut out, 65536).is_err());
        let mut flipped = data.clone();
        flipped[40] ^= 0xff;
        assert!(inflate_grain(&flipped, true, &mut out, 65536).is_err());
        let mut meta = data.clone();
        meta[8..12].copy_from_slice(&0u32.to_le_bytes());
        meta[12..16].copy_from_slice(&1u32.to_le_bytes());
        assert!(inflate_grain(&meta, true, &mut out, 65536).is_err());
        assert_eq!(Grain::decode(0), Grain::Unallocated);
        assert_eq!(Grain::decode(1), Grain::Zero);
        assert_eq!(Grain::decode(300), Grain::At(300));
    }
}
