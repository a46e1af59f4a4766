//! The binary parts of a hosted sparse VMDK extent: the 512-byte header (`KDMV`) and the
//! markers of stream-optimized extents. Pure parsing, bounded: a header whose tables would not
//! fit the limits is refused before anything is allocated.

use crate::error::{Error, ErrorKind, Result};

/// The magic at offset 0 of a sparse extent.
pub const MAGIC: [u8; 4] = *b"KDMV";
/// A sector.
pub const SECTOR: u64 = 512;
/// `gdOffset` of a stream-optimized header whose grain directory is found through the footer.
pub const GD_AT_END: u64 = u64::MAX;
/// The largest grain directory read (bytes).
const MAX_GD_BYTES: u64 = 32 << 20;

/// flags: the grain tables are kept twice.
pub const FLAG_REDUNDANT_GT: u32 = 1 << 1;
/// flags: a grain table entry of 1 means a zeroed grain.
pub const FLAG_ZERO_GRAIN: u32 = 1 << 2;
/// flags: grains are compressed.
pub const FLAG_COMPRESSED: u32 = 1 << 16;
/// flags: grains and metadata carry markers (stream-optimized).
pub const FLAG_MARKERS: u32 = 1 << 17;

pub(crate) fn corrupt(why: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Damaged, format!("vmdk: {why}"))
}

pub(crate) fn unsupported(why: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Unsupported, format!("vmdk: {why}"))
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// What a sparse extent's header says (sizes and offsets in sectors, as stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseHeader {
    /// 1, 2 or 3.
    pub version: u32,
    /// Feature flags (`FLAG_*`).
    pub flags: u32,
    /// The extent's size in sectors.
    pub capacity: u64,
    /// Sectors per grain (a power of two).
    pub grain_sectors: u64,
    /// Where the embedded descriptor is, and how long (0 when there is none).
    pub descriptor_offset: u64,
    /// Sectors of the embedded descriptor.
    pub descriptor_sectors: u64,
    /// Entries per grain table.
    pub gtes_per_gt: u32,
    /// Where the grain directory is ([`GD_AT_END`]: in the footer).
    pub gd_offset: u64,
    /// Sectors of metadata before the first grain.
    pub overhead: u64,
}

impl SparseHeader {
    /// Bytes a header takes.
    pub const LEN: usize = 512;

    /// Parses a header (the first 512 bytes of an extent, or a footer's copy).
    pub fn parse(b: &[u8]) -> Result<SparseHeader> {
        if b.len() < 79 || b[..4] != MAGIC {
            return Err(corrupt("not a sparse extent (no KDMV magic)"));
        }
        let version = le32(b, 4);
        if !(1..=3).contains(&version) {
            return Err(unsupported(format!(
                "sparse extent version {version} (1-3 are read)"
            )));
        }
        let flags = le32(b, 8);
        let capacity = le64(b, 12);
        let grain_sectors = le64(b, 20);
        let descriptor_offset = le64(b, 28);
        let descriptor_sectors = le64(b, 36);
        let gtes_per_gt = le32(b, 44);
        let gd_offset = le64(b, 56);
        let overhead = le64(b, 64);
        let compress = u16::from_le_bytes([b[77], b[78]]);
        if !grain_sectors.is_power_of_two() || grain_sectors > 4096 {
            return Err(corrupt(format!(
                "grain size of {grain_sectors} sectors (a power of two up to 4096)"
            )));
        }
        if gtes_per_gt == 0 || gtes_per_gt > 65536 {
            return Err(corrupt(format!(
                "{gtes_per_gt} entries per grain table (1-65536)"
            )));
        }
        if capacity > u64::MAX / SECTOR {
            return Err(corrupt(format!("capacity of {capacity} sectors")));
        }
        if flags & FLAG_COMPRESSED != 0 && compress != 1 {
            return Err(unsupported(format!(
                "grain compression algorithm {compress} (deflate is read)"
            )));
        }
        if descriptor_sectors > 2048 {
            return Err(corrupt(format!(
                "embedded descriptor of {descriptor_sectors} sectors"
            )));
        }
        let h = SparseHeader {
            version,
            flags,
            capacity,
            grain_sectors,
            descriptor_offset,
            descriptor_sectors,
            gtes_per_gt,
            gd_offset,
            overhead,
        };
        let gd_bytes = h.gd_entries() * 4;
        if gd_bytes > MAX_GD_BYTES {
            return Err(corrupt(format!(
                "a capacity of {capacity} sectors needs a grain directory larger than {MAX_GD_BYTES} bytes"
            )));
        }
        Ok(h)
    }

    /// The extent's size in bytes.
    pub fn size(&self) -> u64 {
        self.capacity * SECTOR
    }

    /// Bytes per grain.
    pub fn grain_bytes(&self) -> u64 {
        self.grain_sectors * SECTOR
    }

    /// Sectors one grain table maps.
    pub fn gt_coverage(&self) -> u64 {
        self.grain_sectors * self.gtes_per_gt as u64
    }

    /// Entries of the grain directory.
    pub fn gd_entries(&self) -> u64 {
        self.capacity.div_ceil(self.gt_coverage())
    }

    /// Whether grains are deflate-compressed.
    pub fn compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }

    /// Whether grains and metadata carry markers.
    pub fn markers(&self) -> bool {
        self.flags & FLAG_MARKERS != 0
    }
}

/// The kinds of metadata marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerKind {
    /// The end of the stream.
    EndOfStream,
    /// A grain table follows.
    GrainTable,
    /// The grain directory follows.
    GrainDirectory,
    /// The footer (a copy of the header with the grain directory's offset) follows.
    Footer,
}

/// A marker of a stream-optimized extent, at the start of a sector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// A compressed grain: its first sector `lba`, `size` compressed bytes right after the
    /// 12-byte marker.
    Grain {
        /// The grain's first sector in the disk.
        lba: u64,
        /// Compressed bytes.
        size: u32,
    },
    /// Metadata: `sectors` sectors of it follow the marker's sector.
    Meta {
        /// What follows.
        kind: MarkerKind,
        /// How many sectors.
        sectors: u64,
    },
}

impl Marker {
    /// Bytes of a grain marker before its compressed data.
    pub const GRAIN_HEADER: usize = 12;

    /// Parses the marker at the start of `b` (at least 16 bytes).
    pub fn parse(b: &[u8]) -> Result<Marker> {
        if b.len() < 16 {
            return Err(corrupt("a marker shorter than 16 bytes"));
        }
        let val = le64(b, 0);
        let size = le32(b, 8);
        if size != 0 {
            return Ok(Marker::Grain { lba: val, size });
        }
        let kind = match le32(b, 12) {
            0 => MarkerKind::EndOfStream,
            1 => MarkerKind::GrainTable,
            2 => MarkerKind::GrainDirectory,
            3 => MarkerKind::Footer,
            t => return Err(corrupt(format!("unknown marker type {t}"))),
        };
        Ok(Marker::Meta { kind, sectors: val })
    }
}

/// The header a stream-optimized extent keeps in its footer: `tail` is the last 1536 bytes of
/// the extent (footer marker, footer, end-of-stream marker).
pub fn parse_footer(tail: &[u8]) -> Result<SparseHeader> {
    if tail.len() != 1536 {
        return Err(corrupt("the extent is too short for a footer"));
    }
    match (Marker::parse(&tail[..512])?, Marker::parse(&tail[1024..])?) {
        (
            Marker::Meta {
                kind: MarkerKind::Footer,
                ..
            },
            Marker::Meta {
                kind: MarkerKind::EndOfStream,
                sectors: 0,
            },
        ) => {}
        _ => {
            return Err(corrupt(
                "the grain directory is in the footer, but the extent does not end with a footer and an end-of-stream marker: truncated?",
            ))
        }
    }
    let h = SparseHeader::parse(&tail[512..1024])?;
    if h.gd_offset == GD_AT_END {
        return Err(corrupt(
            "the footer does not say where the grain directory is",
        ));
    }
    Ok(h)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A header as VMware writes one.
    pub(crate) fn header(capacity: u64, flags: u32, gd_offset: u64) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&3u32.to_le_bytes());
        b[8..12].copy_from_slice(&flags.to_le_bytes());
        b[12..20].copy_from_slice(&capacity.to_le_bytes());
        b[20..28].copy_from_slice(&128u64.to_le_bytes());
        b[28..36].copy_from_slice(&1u64.to_le_bytes());
        b[36..44].copy_from_slice(&1u64.to_le_bytes());
        b[44..48].copy_from_slice(&512u32.to_le_bytes());
        b[56..64].copy_from_slice(&gd_offset.to_le_bytes());
        b[64..72].copy_from_slice(&128u64.to_le_bytes());
        b[73..77].copy_from_slice(b"\n \r\n");
        b[77..79].copy_from_slice(&1u16.to_le_bytes());
        b
    }

    #[test]
    fn headers_parse_and_bad_ones_are_refused() {
        let h = SparseHeader::parse(&header(1 << 21, FLAG_COMPRESSED | FLAG_MARKERS, 42)).unwrap();
        assert_eq!(
            (h.size(), h.grain_bytes(), h.gd_entries()),
            (1 << 30, 65536, 32)
        );
        assert!(h.compressed() && h.markers());
        let mut bad = header(1 << 21, 0, 42);
        bad[20..28].copy_from_slice(&100u64.to_le_bytes());
        assert!(
            SparseHeader::parse(&bad).is_err(),
            "grain not a power of two"
        );
        let mut huge = header(u64::MAX / 512, 0, 42);
        huge[20..28].copy_from_slice(&1u64.to_le_bytes());
        assert!(SparseHeader::parse(&huge).is_err(), "directory too large");
        let mut zstd = header(1 << 21, FLAG_COMPRESSED, 42);
        zstd[77..79].copy_from_slice(&2u16.to_le_bytes());
        assert!(SparseHeader::parse(&zstd)
            .unwrap_err()
            .to_string()
            .contains("compression"));
        assert!(SparseHeader::parse(b"KDMV").is_err());
    }

    #[test]
    fn markers_and_footers_parse() {
        let mut m = [0u8; 512];
        m[..8].copy_from_slice(&2048u64.to_le_bytes());
        m[8..12].copy_from_slice(&100u32.to_le_bytes());
        assert_eq!(
            Marker::parse(&m).unwrap(),
            Marker::Grain {
                lba: 2048,
                size: 100
            }
        );
        let mut tail = vec![0u8; 1536];
        tail[..8].copy_from_slice(&1u64.to_le_bytes());
        tail[12..16].copy_from_slice(&3u32.to_le_bytes());
        tail[512..1024].copy_from_slice(&header(1 << 21, FLAG_MARKERS, 77));
        assert_eq!(parse_footer(&tail).unwrap().gd_offset, 77);
        tail[1024] = 1;
        assert!(parse_footer(&tail).is_err(), "no end-of-stream marker");
        m[8..12].copy_from_slice(&0u32.to_le_bytes());
        m[12..16].copy_from_slice(&9u32.to_le_bytes());
        assert!(Marker::parse(&m).is_err());
    }
}
