//! VMDK, read as a raw disk: monolithicSparse and streamOptimized files (`KDMV`, with random
//! access through the grain directory, or front to back when the source is a stream), and text
//! descriptors whose extents (SPARSE, FLAT/VMFS, ZERO) are files next to the descriptor
//! (monolithicFlat, twoGbMaxExtentSparse, twoGbMaxExtentFlat, vmfs). Disks with a parent, and
//! device-backed or VMFS delta extents, are refused.
//!
//! Written here because no crate reads VMDK from an async positional source with bounded
//! allocation; the layout follows VMware's "Virtual Disk Format 5.0" specification. Parsing
//! (`header`, `descriptor`) is apart from I/O (`sparse`, `stream`).

pub mod descriptor;
pub mod header;
pub mod sparse;
pub mod stream;

use std::sync::Arc;

use descriptor::{Descriptor, ExtentType};
use header::{corrupt, SparseHeader, SECTOR};
use sparse::SparseSource;

use super::compose::{ConcatSource, SliceSource, ZeroSource};
use super::read_exact;
use super::seq::{ReadSource, SourceReader};
use super::Siblings;
use crate::buffer::Buffer;
use crate::error::{Error, ErrorKind, Result};
use crate::source::BlockSource;

/// Whether `head` starts a VMDK: a sparse extent's magic or a text descriptor.
pub fn detect(head: &[u8]) -> bool {
    head.starts_with(&header::MAGIC) || descriptor::looks_like_descriptor(head)
}

fn log_descriptor(d: &Descriptor, on: &str) {
    match d.geometry {
        Some(g) => tracing::debug!(
            create_type = %d.create_type,
            cylinders = g.cylinders,
            heads = g.heads,
            sectors = g.sectors,
            adapter = d.adapter.as_deref().unwrap_or(""),
            "vmdk on {on}"
        ),
        None => tracing::debug!(create_type = %d.create_type, "vmdk on {on}"),
    }
}

/// Opens the VMDK on `src`: a sparse file, or a descriptor whose extents `siblings` opens.
pub async fn open(
    src: Arc<dyn BlockSource>,
    siblings: Option<&dyn Siblings>,
) -> Result<Arc<dyn BlockSource>> {
    if src.caps().sequential {
        // The first bytes of a stream come from the format layer's peek, again.
        let caps = src.caps();
        let cap = |n: usize| {
            if caps.size_known {
                (src.size() as usize).min(n)
            } else {
                n
            }
        };
        let head = src.read_at(0, Buffer::new(cap(1024))).await?;
        if head.as_slice().starts_with(&header::MAGIC)
            || !descriptor::looks_like_descriptor(head.as_slice())
        {
            return open_stream(src).await;
        }
        if caps.size_known && src.size() > descriptor::MAX_LEN as u64 {
            return Err(corrupt(format!(
                "{}: a descriptor larger than 1 MiB",
                src.describe()
            )));
        }
        let text = src
            .read_at(0, Buffer::new(cap(descriptor::MAX_LEN)))
            .await?;
        let d = Descriptor::parse(text.as_slice())?;
        log_descriptor(&d, &src.describe());
        return open_extents(&d, &src.describe(), siblings).await;
    }
    let head = read_exact(&*src, 0, (src.size().min(1024)) as usize).await?;
    if head.as_slice().starts_with(&header::MAGIC) {
        let h = SparseHeader::parse(head.as_slice())?;
        if h.descriptor_sectors > 0 {
            let text = read_exact(
                &*src,
                h.descriptor_offset.saturating_mul(SECTOR),
                (h.descriptor_sectors * SECTOR) as usize,
            )
            .await?;
            log_descriptor(&Descriptor::parse(text.as_slice())?, &src.describe());
        }
        return Ok(Arc::new(SparseSource::open(src).await?));
    }
    if src.size() > descriptor::MAX_LEN as u64 {
        return Err(corrupt(format!(
            "{} is neither a sparse extent nor a descriptor (larger than 1 MiB)",
            src.describe()
        )));
    }
    let text = read_exact(&*src, 0, src.size() as usize).await?;
    let d = Descriptor::parse(text.as_slice())?;
    log_descriptor(&d, &src.describe());
    open_extents(&d, &src.describe(), siblings).await
}

/// The disk a descriptor's extents make.
async fn open_extents(
    d: &Descriptor,
    name: &str,
    siblings: Option<&dyn Siblings>,
) -> Result<Arc<dyn BlockSource>> {
    if d.extents.is_empty() {
        return Err(corrupt(format!("{name}: the descriptor names no extents")));
    }
    let mut parts: Vec<Arc<dyn BlockSource>> = Vec::with_capacity(d.extents.len());
    for e in &d.extents {
        let bytes = e.sectors * SECTOR;
        let file = match (&e.file, e.kind) {
            (_, ExtentType::Zero) => {
                parts.push(Arc::new(ZeroSource::new(
                    bytes,
                    format!("zero extent of {name}"),
                )));
                continue;
            }
            (Some(f), _) => f,
            (None, _) => return Err(corrupt(format!("{name}: an extent without a file"))),
        };
        let siblings = siblings.ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{name} is a VMDK descriptor whose extents are other files ({file}); they are opened next to a file path or an HTTP URL"
                ),
            )
        })?;
        let f = siblings.open(file).await?;
        let part: Arc<dyn BlockSource> = match e.kind {
            ExtentType::Flat => {
                let start = e.offset.checked_mul(SECTOR).ok_or_else(|| {
                    corrupt(format!("{name}: extent offset {} out of range", e.offset))
                })?;
                let desc = format!("flat extent {}", f.describe());
                Arc::new(SliceSource::new(f, start, bytes, desc)?)
            }
            ExtentType::Sparse => {
                let s = SparseSource::open(f).await?;
                if s.size() < bytes {
                    return Err(corrupt(format!(
                        "{}: the extent holds {} bytes, the descriptor says {bytes}",
                        s.describe(),
                        s.size()
                    )));
                }
                let desc = s.describe();
                let s: Arc<dyn BlockSource> = Arc::new(s);
                if s.size() == bytes {
                    s
                } else {
                    Arc::new(SliceSource::new(s, 0, bytes, desc)?)
                }
            }
            ExtentType::Zero => unreachable!("handled above"),
        };
        parts.push(part);
    }
    let desc = format!("vmdk ({}) {name}", d.create_type);
    if parts.len() == 1 && d.extents[0].kind != ExtentType::Zero {
        let only = parts.pop().expect("one part");
        let size = only.size();
        return Ok(Arc::new(SliceSource::new(only, 0, size, desc)?));
    }
    Ok(Arc::new(ConcatSource::new(parts, desc)?))
}

/// A stream-optimized VMDK read front to back from a sequential source.
async fn open_stream(src: Arc<dyn BlockSource>) -> Result<Arc<dyn BlockSource>> {
    let desc = format!("vmdk (streamOptimized, streamed) on {}", src.describe());
    let rt = tokio::runtime::Handle::current();
    let s = ReadSource::start(desc, move |serve| {
        let input = SourceReader::new(src, rt, 1 << 20);
        let rest = input.drain();
        let mut r = stream::StreamReader::new(input)?;
        let size = r.size();
        serve.serve(&mut r, Some(size), Some(rest));
        Ok(())
    })
    .await?;
    Ok(Arc::new(s))
}
