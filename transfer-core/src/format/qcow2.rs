//! qcow2 (versions 2 and 3), read as a raw disk from any positional source: the header, the L1
//! table and L2 tables, zero clusters and deflate-compressed clusters. Backing files,
//! encryption, external data files, extended L2 entries and zstd compression are refused with a
//! clear error. Extents come from the tables, so unallocated and zero clusters are never read.
//!
//! Written here because no crate reads qcow2 from an async positional source with bounded
//! allocation; the layout follows qemu's docs/interop/qcow2.txt. Parsing ([`Header::parse`],
//! [`L2Entry::decode`]) is apart from I/O ([`Qcow2Source`]). Every table size a header claims
//! is checked before anything is allocated.

use std::io::Read;
use std::sync::Arc;

use crate::error::{ErrorKind, Result};
use crate::format::batch::Packed;
use crate::format::mapped::{entries, MappedSource, Mapping, TableCache, Unit};
use crate::format::read_exact;
use crate::source::{BlockSource, SourceCaps};

/// The magic at offset 0: `QFI\xfb`.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";
/// The largest L1 table read (bytes): 32 MiB of entries maps 2 PiB with 64 KiB clusters.
const MAX_L1_BYTES: u64 = 32 << 20;
/// L2 tables kept in memory at once.
const L2_CACHE: usize = 64;

/// Bits of an L1 or L2 entry holding a host offset (9-55).
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L2: the cluster is compressed.
const L2_COMPRESSED: u64 = 1 << 62;
/// L2 (version 3): the cluster reads as zeros.
const L2_ZERO: u64 = 1;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// What the header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size (9-21).
    pub cluster_bits: u32,
    /// The virtual disk's size.
    pub size: u64,
    /// Entries in the L1 table.
    pub l1_size: u32,
    /// Where the L1 table is.
    pub l1_offset: u64,
}

impl Header {
    /// Bytes of the header a reader needs (version 3 headers are at least 104).
    pub const MIN_LEN: usize = 104;

    /// Parses the first bytes of an image (at least 72; 104 for version 3), refusing what this
    /// reader does not read.
    pub fn parse(b: &[u8]) -> Result<Header> {
        if b.len() < 72 || b[..4] != MAGIC {
            return Err(ErrorKind::Damaged.about("qcow2", "not a qcow2 image (no QFI\\xfb magic)"));
        }
        let version = be32(b, 4);
        if version != 2 && version != 3 {
            return Err(ErrorKind::Unsupported
                .about("qcow2", format!("version {version} (2 and 3 are read)")));
        }
        if be64(b, 8) != 0 || be32(b, 16) != 0 {
            return Err(ErrorKind::Unsupported.about("qcow2", 
                "the image has a backing file: convert it to a standalone image first (qemu-img convert), or copy the whole chain's top with its base",
            ));
        }
        let cluster_bits = be32(b, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(ErrorKind::Damaged
                .about("qcow2", format!("cluster_bits {cluster_bits} out of 9-21")));
        }
        let size = be64(b, 24);
        if be32(b, 32) != 0 {
            return Err(ErrorKind::Unsupported.about("qcow2", "the image is encrypted"));
        }
        let l1_size = be32(b, 36);
        let l1_offset = be64(b, 40);
        if version == 3 {
            if b.len() < Self::MIN_LEN {
                return Err(
                    ErrorKind::Damaged.about("qcow2", "version 3 header shorter than 104 bytes")
                );
            }
            let incompatible = be64(b, 72);
            if incompatible & 2 != 0 {
                return Err(ErrorKind::Damaged.about("qcow2", "the image is marked corrupt"));
            }
            if incompatible & 4 != 0 {
                return Err(ErrorKind::Unsupported
                    .about("qcow2", "the image keeps its data in an external data file"));
            }
            if incompatible & 8 != 0 {
                return Err(ErrorKind::Unsupported
                    .about("qcow2", "the image uses zstd compression (deflate is read)"));
            }
            if incompatible & 16 != 0 {
                return Err(ErrorKind::Unsupported
                    .about("qcow2", "the image uses extended L2 entries (subclusters)"));
            }
            if incompatible & !0x1f != 0 {
                return Err(ErrorKind::Unsupported.about(
                    "qcow2",
                    format!("unknown incompatible features {incompatible:#x}"),
                ));
            }
        }
        let h = Header {
            version,
            cluster_bits,
            size,
            l1_size,
            l1_offset,
        };
        let needed = h.l1_entries_needed();
        if (l1_size as u64) < needed {
            return Err(ErrorKind::Damaged.about(
                "qcow2",
                format!(
                    "an L1 table of {l1_size} entries cannot map {size} bytes (needs {needed})"
                ),
            ));
        }
        if needed * 8 > MAX_L1_BYTES {
            return Err(ErrorKind::Damaged.about(
                "qcow2",
                format!(
                    "a disk of {size} bytes needs an L1 table larger than {MAX_L1_BYTES} bytes"
                ),
            ));
        }
        if needed > 0 && (l1_offset == 0 || !l1_offset.is_multiple_of(h.cluster_size())) {
            return Err(ErrorKind::Damaged
                .about("qcow2", format!("L1 table at unaligned offset {l1_offset}")));
        }
        Ok(h)
    }

    /// Bytes per cluster.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Entries per L2 table.
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / 8
    }

    /// L1 entries the disk's size needs.
    pub fn l1_entries_needed(&self) -> u64 {
        let per_l1 = self.cluster_size() * self.l2_entries();
        self.size.div_ceil(per_l1)
    }
}

/// Where one guest cluster's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L2Entry {
    /// Not allocated: zeros (there is no backing file).
    Unallocated,
    /// Allocated but reads as zeros.
    Zero,
    /// Stored as is at this host offset.
    Data(u64),
    /// Deflate-compressed: `len` bytes at host offset `offset` hold at most that much.
    Compressed {
        /// Host offset of the compressed bytes.
        offset: u64,
        /// Bytes to read there (the compressed data is within them).
        len: u64,
    },
}

impl L2Entry {
    /// Decodes an L2 entry of an image with `cluster_bits`.
    pub fn decode(e: u64, cluster_bits: u32, version: u32) -> Result<L2Entry> {
        if e & L2_COMPRESSED != 0 {
            let x = 62 - (cluster_bits - 8);
            let offset = e & ((1u64 << x) - 1);
            let sectors = ((e & ((1u64 << 62) - 1)) >> x) + 1;
            let len = (sectors * 512).saturating_sub(offset & 511);
            return Ok(L2Entry::Compressed { offset, len });
        }
        let offset = e & OFFSET_MASK;
        if version >= 3 && e & L2_ZERO != 0 {
            return Ok(L2Entry::Zero);
        }
        if offset & ((1 << cluster_bits) - 1) != 0 {
            return Err(ErrorKind::Damaged.about(
                "qcow2",
                format!("data cluster at unaligned offset {offset}"),
            ));
        }
        Ok(if offset == 0 {
            L2Entry::Unallocated
        } else {
            L2Entry::Data(offset)
        })
    }
}

/// A qcow2 image: its header, L1 table and cached L2 tables, shared by every handle.
pub struct Qcow2Image {
    header: Header,
    l1: Vec<u64>,
    l2: TableCache<u64, u64>,
    desc: String,
}

/// A qcow2 image on a source, read as a raw disk.
pub type Qcow2Source = MappedSource<Qcow2Image>;

impl MappedSource<Qcow2Image> {
    /// Opens the image on `inner` (a positional source).
    pub async fn open(inner: Arc<dyn BlockSource>) -> Result<Qcow2Source> {
        if inner.caps().sequential {
            return Err(ErrorKind::Unsupported.about("qcow2", format!(
                "{} can only be read front to back; a qcow2 image needs random access (a server with Range support, or a file)",
                inner.describe()
            )));
        }
        let head_len = (Header::MIN_LEN as u64).min(inner.size()) as usize;
        let head = read_exact(&*inner, 0, head_len).await?;
        let header = Header::parse(head.as_slice())?;
        let n = header.l1_entries_needed() as usize;
        let raw = read_exact(&*inner, header.l1_offset, n * 8).await?;
        let l1 = entries(raw.as_slice(), u64::from_be_bytes);
        let desc = format!("qcow2 v{} image on {}", header.version, inner.describe());
        let image = Qcow2Image {
            header,
            l1,
            l2: TableCache::new(L2_CACHE),
            desc,
        };
        Ok(MappedSource::new(inner, image))
    }
}

impl Qcow2Image {
    /// The L2 entry of guest cluster `c`.
    async fn entry(&self, inner: &dyn BlockSource, c: u64) -> Result<L2Entry> {
        let h = &self.header;
        let (l1i, l2i) = (c / h.l2_entries(), c % h.l2_entries());
        let table_at = self.l1[l1i as usize] & OFFSET_MASK;
        if table_at == 0 {
            return Ok(L2Entry::Unallocated);
        }
        if !table_at.is_multiple_of(h.cluster_size()) {
            return Err(ErrorKind::Damaged
                .about("qcow2", format!("L2 table at unaligned offset {table_at}")));
        }
        let table = self
            .l2
            .get(table_at, async {
                let raw = read_exact(inner, table_at, h.cluster_size() as usize).await?;
                Ok(entries(raw.as_slice(), u64::from_be_bytes))
            })
            .await?;
        L2Entry::decode(table[l2i as usize], h.cluster_bits, h.version)
    }
}

impl Mapping for Qcow2Image {
    fn describe(&self) -> &str {
        &self.desc
    }

    fn size(&self) -> u64 {
        self.header.size
    }

    fn unit(&self) -> u64 {
        self.header.cluster_size()
    }

    fn preferred_request(&self, inner: &SourceCaps) -> usize {
        (self.header.cluster_size() as usize).max(inner.preferred_request)
    }

    async fn locate(&self, inner: &dyn BlockSource, c: u64) -> Result<Unit> {
        let cs = self.header.cluster_size();
        Ok(match self.entry(inner, c).await? {
            L2Entry::Unallocated => Unit::Hole,
            L2Entry::Zero => Unit::Zero,
            L2Entry::Data(host) => Unit::Plain(host),
            L2Entry::Compressed { offset, len } => Unit::Packed {
                host: offset,
                max: len.min(2 * cs),
                need: cs as usize,
            },
        })
    }

    fn inflate(&self, raw: &[u8], out: &mut [u8], part: &Packed) -> Result<()> {
        inflate_cluster(raw, out).map_err(|e| e.context_prefix(format!("cluster at {}", part.host)))
    }
}

/// Inflates one compressed cluster (raw deflate) from `raw` into `out`, which it must fill.
pub fn inflate_cluster(raw: &[u8], out: &mut [u8]) -> Result<()> {
    let mut d = flate2::read::DeflateDecoder::new(raw);
    let mut filled = 0;
    while filled < out.len() {
        match d.read(&mut out[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) => {
                return Err(ErrorKind::Damaged.about(
                    "qcow2",
                    format!("a compressed cluster does not inflate: {e}"),
                ))
            }
        }
    }
    if filled < out.len() {
        return Err(ErrorKind::Damaged.about(
            "qcow2",
            format!(
                "a compressed cluster inflates to {filled} bytes, not {}",
                out.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(version: u32, cluster_bits: u32, size: u64, l1_size: u32) -> Vec<u8> {
        let mut b = vec![0u8; 112];
        b[..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&version.to_be_bytes());
        b[20..24].copy_from_slice(&cluster_bits.to_be_bytes());
        b[24..32].copy_from_slice(&size.to_be_bytes());
        b[36..40].copy_from_slice(&l1_size.to_be_bytes());
        b[40..48].copy_from_slice(&(3u64 << cluster_bits).to_be_bytes());
        b[100..104].copy_from_slice(&112u32.to_be_bytes());
        b
    }

    #[test]
    fn headers_parse_and_refuse_what_is_not_read() {
        let h = Header::parse(&header(3, 16, 1 << 30, 2)).unwrap();
        assert_eq!((h.cluster_size(), h.l1_entries_needed()), (65536, 2));
        assert!(Header::parse(&header(2, 16, 1 << 30, 2)).is_ok());
        let mut backing = header(3, 16, 1 << 30, 2);
        backing[8..16].copy_from_slice(&512u64.to_be_bytes());
        let e = Header::parse(&backing).unwrap_err();
        assert!(e.to_string().contains("backing file"), "{e}");
        let mut enc = header(3, 16, 1 << 30, 2);
        enc[32..36].copy_from_slice(&1u32.to_be_bytes());
        assert!(Header::parse(&enc)
            .unwrap_err()
            .to_string()
            .contains("encrypted"));
        let mut ext = header(3, 16, 1 << 30, 2);
        ext[72..80].copy_from_slice(&4u64.to_be_bytes());
        assert!(Header::parse(&ext)
            .unwrap_err()
            .to_string()
            .contains("external data file"));
        for bad in [
            header(4, 16, 1 << 30, 2),
            header(3, 30, 1 << 30, 2),
            header(3, 16, 1 << 30, 1),
            header(3, 9, u64::MAX, u32::MAX),
            b"QFI".to_vec(),
        ] {
            assert!(Header::parse(&bad).is_err());
        }
    }

    #[test]
    fn l2_entries_decode() {
        assert_eq!(L2Entry::decode(0, 16, 3).unwrap(), L2Entry::Unallocated);
        assert_eq!(L2Entry::decode(1, 16, 3).unwrap(), L2Entry::Zero);
        assert_eq!(
            L2Entry::decode((1 << 63) | 0x50000, 16, 3).unwrap(),
            L2Entry::Data(0x50000)
        );
        assert!(L2Entry::decode(0x50200, 16, 3).is_err(), "unaligned");
        // Compressed, 64 KiB clusters: x = 54; 2 extra sectors, at 0x10100.
        let e = (1u64 << 62) | (2u64 << 54) | 0x10100;
        assert_eq!(
            L2Entry::decode(e, 16, 3).unwrap(),
            L2Entry::Compressed {
                offset: 0x10100,
                len: 3 * 512 - 0x100
            }
        );
    }
}
