//! Disk image formats read as raw disks on top of any source, with no scratch space: qcow2,
//! VMDK (sparse, stream-optimized, flat and split descriptors) and OVA archives. Detected by
//! their magic or forced (`--format`). Positional sources are read with random access (and in
//! parallel); a source that can only be read front to back (a stream) is decoded in order where
//! the format allows it (a stream-optimized VMDK, an OVA of them, gzip members).

pub mod batch;
pub mod compose;
pub mod mapped;
pub mod ova;
pub mod ovf;
pub mod qcow2;
pub mod seq;
pub mod vmdk;

use std::sync::Arc;

use async_trait::async_trait;

use crate::buffer::Buffer;
use crate::error::{Error, ErrorKind, Result};
use crate::extent::Extent;
use crate::source::{BlockSource, SourceCaps};
pub use ova::DiskChoice;

/// How a source's bytes are to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// By the magic at its start.
    #[default]
    Auto,
    /// As they are.
    Raw,
    /// As a qcow2 image.
    Qcow2,
    /// As a VMDK (a sparse extent or a descriptor).
    Vmdk,
    /// As an OVA archive, one of whose disks is read.
    Ova,
}

impl std::str::FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Format::Auto),
            "raw" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            "vmdk" => Ok(Format::Vmdk),
            "ova" => Ok(Format::Ova),
            _ => Err(Error::new(
                ErrorKind::InvalidInput,
                format!("unknown format '{s}' (auto, raw, qcow2, vmdk, ova)"),
            )),
        }
    }
}

/// The format whose magic starts `head`, if one this module reads.
pub fn detect(head: &[u8]) -> Option<Format> {
    if head.starts_with(&qcow2::MAGIC) {
        Some(Format::Qcow2)
    } else if vmdk::detect(head) {
        Some(Format::Vmdk)
    } else if head.len() >= 263 && &head[257..262] == b"ustar" {
        Some(Format::Ova)
    } else {
        None
    }
}

/// Opens the files a VMDK descriptor names, next to it.
#[async_trait]
pub trait Siblings: Send + Sync {
    /// The file `name` (relative to the descriptor).
    async fn open(&self, name: &str) -> Result<Arc<dyn BlockSource>>;
}

/// Checks a name a descriptor gives for a file next to it: relative, within its directory.
pub fn sibling_name(name: &str) -> Result<&str> {
    let ok = !name.is_empty()
        && !name.starts_with('/')
        && !name.contains('\\')
        && !name.contains("://")
        && !name.contains(['?', '#', '\0'])
        && name.split('/').all(|p| p != "..");
    if ok {
        Ok(name)
    } else {
        Err(Error::new(
            ErrorKind::InvalidInput,
            format!("vmdk: the extent file '{name}' is not a name next to the descriptor"),
        ))
    }
}

/// What opening a format may need besides the source.
#[derive(Default, Clone)]
pub struct FormatContext {
    /// Opens a VMDK descriptor's extent files.
    pub siblings: Option<Arc<dyn Siblings>>,
    /// Which disk of an OVA.
    pub disk: Option<DiskChoice>,
}

/// The compression whose magic starts `head`: gzip or xz.
fn compression(head: &[u8]) -> Option<&'static str> {
    sniff(head).filter(|f| matches!(*f, "gzip" | "xz"))
}

/// `src` (a positional source holding a gzip or xz file) decompressed front to back, as a
/// stream whose size shows at its end.
async fn decompressed(
    src: Arc<dyn BlockSource>,
    codec: &'static str,
) -> Result<Arc<dyn BlockSource>> {
    let rt = tokio::runtime::Handle::current();
    let desc = format!("{} ({codec})", src.describe());
    let s = seq::ReadSource::start(desc, move |serve| {
        let input = seq::SourceReader::new(src, rt, 1 << 20);
        let mut r: Box<dyn std::io::Read> = if codec == "gzip" {
            Box::new(flate2::read::MultiGzDecoder::new(input))
        } else {
            Box::new(liblzma::read::XzDecoder::new_multi_decoder(input))
        };
        serve.serve(&mut r, None, None);
        Ok(())
    })
    .await?;
    Ok(Arc::new(s))
}

/// `src` decompressed on the fly when it is a positional source holding a gzip or xz file;
/// otherwise `src` as it is.
pub async fn decompress(src: Arc<dyn BlockSource>) -> Result<Arc<dyn BlockSource>> {
    if src.caps().sequential || src.size() < 6 {
        return Ok(src);
    }
    let head = src.read_at(0, Buffer::new(6)).await?;
    match compression(head.as_slice()) {
        Some(codec) => decompressed(src, codec).await,
        None => Ok(src),
    }
}

/// `src` read as `format` (detected from its first bytes for [`Format::Auto`]). A gzip or xz
/// file is decompressed on the fly and what it holds is detected in turn.
pub async fn open_format(
    src: Arc<dyn BlockSource>,
    format: Format,
    ctx: &FormatContext,
) -> Result<Arc<dyn BlockSource>> {
    let mut src = src;
    let mut format = format;
    if format == Format::Auto && !src.caps().sequential {
        // One look at the first bytes: a compressed file is decompressed and its contents
        // detected as a stream below; anything else is detected here.
        let n = src.size().min(512) as usize;
        let head = src.read_at(0, Buffer::new(n)).await?;
        match compression(head.as_slice()) {
            Some(codec) => src = decompressed(src, codec).await?,
            None => format = detect(head.as_slice()).unwrap_or(Format::Raw),
        }
    }
    let format = match format {
        Format::Auto if src.caps().size_known && src.size() < 4 => Format::Raw,
        Format::Raw => Format::Raw,
        // A stream's first bytes are kept, to be read again by the format's reader.
        f if src.caps().sequential => {
            let peeked = Arc::new(PeekedSource::new(src).await?);
            let f = match f {
                Format::Auto => detect(peeked.head()).unwrap_or(Format::Raw),
                f => f,
            };
            src = peeked;
            f
        }
        f => f,
    };
    if ctx.disk.is_some() && format != Format::Ova {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "a disk choice picks a disk of an OVA, and {} is not one",
                src.describe()
            ),
        ));
    }
    match format {
        Format::Qcow2 => Ok(Arc::new(qcow2::Qcow2Source::open(src).await?)),
        Format::Vmdk => vmdk::open(src, ctx.siblings.as_deref()).await,
        Format::Ova => ova::open(src, ctx.disk.as_ref()).await,
        Format::Raw | Format::Auto => Ok(src),
    }
}

/// Reads `len` bytes at `offset` of `src`, which must hold them: a table or grain past the end
/// of an image file means a truncated image.
pub(crate) async fn read_exact(src: &dyn BlockSource, offset: u64, len: usize) -> Result<Buffer> {
    if offset
        .checked_add(len as u64)
        .is_none_or(|end| end > src.size())
    {
        return Err(Error::new(
            ErrorKind::Damaged,
            format!(
                "{len} bytes at {offset} lie past the end of {} ({} bytes): truncated?",
                src.describe(),
                src.size()
            ),
        ));
    }
    src.read_at(offset, Buffer::new(len)).await
}

/// The extents of `[offset, offset+len)` of an image of `size` bytes whose allocation is kept
/// per `unit` bytes (a cluster, a grain): `kind_of(u)` says what unit `u` is; like units merge.
pub(crate) async fn unit_extents<F, Fut>(
    offset: u64,
    len: u64,
    size: u64,
    unit: u64,
    mut kind_of: F,
) -> Result<Vec<Extent>>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = Result<crate::extent::ExtentKind>>,
{
    let end = offset.saturating_add(len).min(size);
    let mut out: Vec<Extent> = Vec::new();
    let mut pos = offset;
    while pos < end {
        let n = (unit - pos % unit).min(end - pos);
        Extent::push_merged(&mut out, pos, n, kind_of(pos / unit).await?);
        pos += n;
    }
    Ok(out)
}

/// Runs `job` (decompression) on the blocking pool, at most four jobs per core at a time: the
/// reads of every handle in flight would otherwise start a thread each. (One per core leaves
/// the cores idle while a job's thread waits to be scheduled behind file reads: a 4 GiB
/// compressed qcow2 took 3.2 s that way, 1.8 s with four.)
pub(crate) async fn on_blocking_pool<T, F>(job: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    let slots = SLOTS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new(cores * 4)
    });
    let _slot = slots.acquire().await.expect("never closed");
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|e| Error::new(ErrorKind::Io, format!("decompressing: {e}")))?
}

/// A member of an archive, read as the image its magic says (files next to it cannot be named).
pub(crate) async fn open_member(src: Arc<dyn BlockSource>) -> Result<Arc<dyn BlockSource>> {
    let n = src.size().min(512) as usize;
    let head = src.read_at(0, Buffer::new(n)).await?;
    match detect(head.as_slice()) {
        Some(Format::Qcow2) => Ok(Arc::new(qcow2::Qcow2Source::open(src).await?)),
        Some(Format::Vmdk) => vmdk::open(src, None).await,
        Some(Format::Ova) => Err(Error::new(
            ErrorKind::Unsupported,
            format!("{}: an archive inside an archive", src.describe()),
        )),
        _ => Ok(src),
    }
}

/// A stream whose first bytes were read to detect its format, and are given again.
struct PeekedSource {
    inner: Arc<dyn BlockSource>,
    head: Vec<u8>,
    /// Whether the stream ended within the head.
    short: bool,
}

impl PeekedSource {
    const LEN: usize = 64 << 10;

    async fn new(inner: Arc<dyn BlockSource>) -> Result<Self> {
        let n = if inner.caps().size_known {
            inner.size().min(Self::LEN as u64) as usize
        } else {
            Self::LEN
        };
        let head = inner.read_at(0, Buffer::new(n)).await?;
        Ok(PeekedSource {
            short: head.len() < n,
            head: head.as_slice().to_vec(),
            inner,
        })
    }

    fn head(&self) -> &[u8] {
        &self.head
    }
}

#[async_trait]
impl BlockSource for PeekedSource {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn fingerprint(&self) -> Option<String> {
        self.inner.fingerprint()
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn caps(&self) -> SourceCaps {
        self.inner.caps()
    }

    async fn read_at(&self, offset: u64, mut buf: Buffer) -> Result<Buffer> {
        let h = self.head.len() as u64;
        if offset >= h {
            return self.inner.read_at(offset, buf).await;
        }
        // A read that runs past the head continues the stream at `h`; the stream itself
        // refuses a second one.
        let want = buf.len();
        let from = offset as usize;
        let n = (self.head.len() - from).min(want);
        buf.as_mut_slice()[..n].copy_from_slice(&self.head[from..from + n]);
        if n == want || self.short {
            buf.set_len(n);
            return Ok(buf);
        }
        let rest = self.inner.read_at(h, Buffer::new(want - n)).await?;
        let m = rest.len();
        buf.as_mut_slice()[n..n + m].copy_from_slice(rest.as_slice());
        buf.set_len(n + m);
        Ok(buf)
    }

    async fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.inner.extents(offset, len).await
    }

    async fn open_another(&self) -> Result<Arc<dyn BlockSource>> {
        self.inner.open_another().await
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

/// What the first bytes of a file or body say it is: `gzip`, `xz`, `qcow2`, `vmdk`.
pub fn sniff(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(&[0x1f, 0x8b]) {
        Some("gzip")
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Some("xz")
    } else if head.starts_with(b"QFI\xfb") {
        Some("qcow2")
    } else if head.starts_with(b"KDMV") || head.starts_with(b"# Disk DescriptorFile") {
        Some("vmdk")
    } else {
        None
    }
}
