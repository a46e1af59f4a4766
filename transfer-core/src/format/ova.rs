//! OVA archives (a tar of an OVF descriptor and its disks), read in place with the `tar` crate:
//! never unpacked. On a positional source only the member headers are read, and the chosen
//! disk is a window of the archive read with random access like any image (a stream-optimized
//! VMDK through its grain directory, qcow2, raw). A gzip-compressed member, or an archive on a
//! source that can only be read front to back, is decoded front to back on a thread.

use std::io::{BufRead, BufReader, Read, Seek};
use std::sync::Arc;

use super::compose::{ConcatSource, SliceSource};
use super::ovf::{Ovf, OvfDisk, MAX_LEN};
use super::seq::{from_io, Drain, ReadSource, Serve, SourceReader};
use super::vmdk;
use crate::error::{invalid, Error, ErrorKind, Hint, Result};
use crate::source::BlockSource;

/// The most archive members looked at.
const MAX_MEMBERS: usize = 100_000;

/// An error of the tar reader: an early end is a truncated archive.
fn tar_err(e: std::io::Error, what: &str) -> Error {
    // The tar crate reports an early end as an "unexpected EOF" of kind Other.
    if e.kind() == std::io::ErrorKind::UnexpectedEof || e.to_string().contains("unexpected EOF") {
        return ErrorKind::Damaged.about(
            "ova",
            format!("{what}: the archive ends inside a member: truncated?"),
        );
    }
    match e.into_inner().map(|inner| inner.downcast::<Error>()) {
        Some(Ok(ours)) => *ours,
        // The tar crate's words may quote the damaged header's bytes.
        _ => ErrorKind::Damaged.about(
            "ova",
            format!("{what}: not a tar archive, or a damaged one"),
        ),
    }
}

/// Which disk of an OVA to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskChoice {
    /// By position in the OVF's DiskSection, from 0.
    Index(usize),
    /// By `ovf:diskId` or file name (with or without its extension).
    Name(String),
}

impl std::str::FromStr for DiskChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.is_empty() {
            return Err(invalid("a disk choice needs an index or a name"));
        }
        Ok(match s.parse() {
            Ok(i) => DiskChoice::Index(i),
            Err(_) => DiskChoice::Name(s.to_string()),
        })
    }
}

/// A member of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its path in the archive.
    pub name: String,
    /// Where its bytes start.
    pub offset: u64,
    /// How many there are.
    pub size: u64,
}

/// One disk of an OVA, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    /// Its position in the DiskSection.
    pub index: usize,
    /// `ovf:diskId`.
    pub disk_id: String,
    /// Its file in the archive.
    pub file: String,
    /// Capacity in bytes, as the OVF says.
    pub capacity: u64,
    /// Whether its member is gzip-compressed.
    pub compressed: bool,
}

/// An OVA's descriptor with its disks.
#[derive(Debug, Clone)]
pub struct Listing {
    /// The parsed descriptor.
    pub ovf: Ovf,
    /// The disks that have a file (blank disks have none and are skipped).
    pub disks: Vec<DiskInfo>,
}

impl Listing {
    fn new(ovf: Ovf) -> Listing {
        let disks = ovf
            .disks
            .iter()
            .filter_map(|d| {
                let f = ovf.file_of(d)?;
                Some((d, f))
            })
            .enumerate()
            .map(|(index, (d, f)): (usize, (&OvfDisk, _))| DiskInfo {
                index,
                disk_id: d.disk_id.clone(),
                file: f.href.clone(),
                capacity: d.capacity,
                compressed: f.compression.is_some(),
            })
            .collect();
        Listing { ovf, disks }
    }

    /// The disks, one per line, for messages.
    pub fn summary(&self) -> String {
        self.disks
            .iter()
            .map(|d| {
                format!(
                    "{}: {} ({}, {} bytes)",
                    d.index, d.disk_id, d.file, d.capacity
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The disk `choice` names; without one, the only disk.
    pub fn choose(&self, choice: Option<&DiskChoice>) -> Result<&DiskInfo> {
        match choice {
            None if self.disks.len() == 1 => Ok(&self.disks[0]),
            None if self.disks.is_empty() => {
                Err(ErrorKind::Damaged.about("ova", "the OVF lists no disk with a file"))
            }
            None => Err(invalid(format!(
                "the OVA holds {} disks ({}): pick one",
                self.disks.len(),
                self.summary()
            ))
            .with_hint(Hint::ChooseDisk)),
            Some(DiskChoice::Index(i)) => self.disks.get(*i).ok_or_else(|| {
                invalid(format!(
                    "the OVA has no disk {i}: it holds {} disks ({})",
                    self.disks.len(),
                    self.summary()
                ))
                .with_hint(Hint::DiskChoice(i.to_string()))
            }),
            Some(DiskChoice::Name(n)) => self
                .disks
                .iter()
                .find(|d| {
                    d.disk_id == *n || d.file == *n || d.file.split('.').next() == Some(n.as_str())
                })
                .ok_or_else(|| {
                    invalid(format!("no such disk in the OVA: {n} ({})", self.summary()))
                        .with_hint(Hint::DiskChoice(n.clone()))
                }),
        }
    }
}

/// Whether a member's name is the one an OVF `href` means.
fn same_name(member: &str, href: &str) -> bool {
    member.trim_start_matches("./") == href.trim_start_matches("./")
}

fn is_ovf(name: &str) -> bool {
    name.to_ascii_lowercase().ends_with(".ovf")
}

/// The members of the archive `r` reads (headers only: member data is sought past).
pub fn members_of<R: Read + Seek>(r: R, what: &str) -> Result<Vec<Member>> {
    let mut archive = tar::Archive::new(r);
    let mut out = Vec::new();
    let entries = archive
        .entries_with_seek()
        .map_err(|e| from_io(e, &format!("ova: {what}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| tar_err(e, what))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        if out.len() == MAX_MEMBERS {
            return Err(
                ErrorKind::Damaged.about("ova", format!("{what}: more than {MAX_MEMBERS} members"))
            );
        }
        let name = entry
            .path()
            .map_err(|e| ErrorKind::Damaged.about("ova", format!("{what}: a member name: {e}")))?
            .to_string_lossy()
            .into_owned();
        out.push(Member {
            name,
            offset: entry.raw_file_position(),
            size: entry.size(),
        });
    }
    Ok(out)
}

/// The members of an archive on a positional source.
async fn members(src: &Arc<dyn BlockSource>) -> Result<Vec<Member>> {
    let src = src.clone();
    let rt = tokio::runtime::Handle::current();
    let what = src.describe();
    tokio::task::spawn_blocking(move || members_of(SourceReader::new(src, rt, 64 << 10), &what))
        .await
        .map_err(|e| Error::new(ErrorKind::Io, format!("listing the archive: {e}")))?
}

/// The OVF descriptor of the archive `r` reads front to back: its first member.
pub fn ovf_of_stream<R: Read>(r: R, what: &str) -> Result<Ovf> {
    let mut archive = tar::Archive::new(r);
    let mut entries = archive
        .entries()
        .map_err(|e| from_io(e, &format!("ova: {what}")))?;
    first_ovf(&mut entries, what)
}

/// The descriptor and disks of the OVA on `src` (a positional source, or the start of a stream).
pub async fn list(src: &Arc<dyn BlockSource>) -> Result<Listing> {
    if src.caps().sequential {
        let src = src.clone();
        let rt = tokio::runtime::Handle::current();
        return tokio::task::spawn_blocking(move || {
            let what = src.describe();
            let ovf = ovf_of_stream(SourceReader::new(src, rt, 1 << 20), &what)?;
            Ok(Listing::new(ovf))
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Io, format!("reading the archive: {e}")))?;
    }
    let head = super::read_exact(&**src, 0, src.size().min(512) as usize).await?;
    if super::detect(head.as_slice()) != Some(super::Format::Ova) {
        return Err(ErrorKind::Damaged.about(
            "ova",
            format!("{}: not an OVA (no tar header)", src.describe()),
        ));
    }
    let members = members(src).await?;
    let m = members.iter().find(|m| is_ovf(&m.name)).ok_or_else(|| {
        ErrorKind::Damaged
            .about(
                "ova",
                format!(
                    "{}: a tar archive without an .ovf descriptor, so not an OVA",
                    src.describe()
                ),
            )
            .with_hint(Hint::ReadAsRaw)
    })?;
    if m.size > MAX_LEN {
        return Err(ErrorKind::Damaged.about(
            "ova",
            format!("{}: the descriptor is larger than 16 MiB", m.name),
        ));
    }
    let xml = super::read_exact(&**src, m.offset, m.size as usize).await?;
    Ok(Listing::new(Ovf::parse(xml.as_slice())?))
}

/// The OVF of a stream: its first member, as the OVF specification requires of an OVA.
fn first_ovf<R: Read>(entries: &mut tar::Entries<'_, R>, what: &str) -> Result<Ovf> {
    for entry in entries {
        let mut entry = entry.map_err(|e| tar_err(e, what))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !is_ovf(&name) {
            return Err(ErrorKind::Damaged.about("ova", format!(
                "{what}: the first member is {name}, not the .ovf descriptor: read front to back, an OVA must start with its descriptor (serve it with Range support, or from a file)"
            )));
        }
        if entry.size() > MAX_LEN {
            return Err(ErrorKind::Damaged.about(
                "ova",
                format!("{name}: the descriptor is larger than 16 MiB"),
            ));
        }
        let mut xml = Vec::new();
        entry
            .read_to_end(&mut xml)
            .map_err(|e| from_io(e, &format!("ova: {what}: reading {name}")))?;
        return Ovf::parse(&xml);
    }
    Err(ErrorKind::Damaged.about("ova", format!("{what}: an empty archive")))
}

/// The disk `choice` names in the OVA on `src`.
pub async fn open(
    src: Arc<dyn BlockSource>,
    choice: Option<&DiskChoice>,
) -> Result<Arc<dyn BlockSource>> {
    if src.caps().sequential {
        return open_streamed(src, choice.cloned()).await;
    }
    let listing = list(&src).await?;
    let disk = listing.choose(choice)?.clone();
    let file = listing
        .ovf
        .files
        .iter()
        .find(|f| f.href == disk.file)
        .expect("listed disks have files")
        .clone();
    let members = members(&src).await?;
    let parts: Vec<&Member> = match file.chunk_size {
        None => members
            .iter()
            .filter(|m| same_name(&m.name, &file.href))
            .take(1)
            .collect(),
        Some(_) => {
            let mut chunks: Vec<&Member> = members
                .iter()
                .filter(|m| {
                    m.name
                        .trim_start_matches("./")
                        .strip_prefix(file.href.trim_start_matches("./"))
                        .and_then(|s| s.strip_prefix('.'))
                        .is_some_and(|n| n.len() == 9 && n.bytes().all(|b| b.is_ascii_digit()))
                })
                .collect();
            chunks.sort_by(|a, b| a.name.cmp(&b.name));
            chunks
        }
    };
    if parts.is_empty() {
        return Err(ErrorKind::Damaged.about(
            "ova",
            format!(
                "{}: disk {} is in {}, which is not in the archive",
                src.describe(),
                disk.disk_id,
                file.href
            ),
        ));
    }
    check_parts(&parts, &file)?;
    let name = format!("{} in {}", file.href, src.describe());
    let mut slices: Vec<Arc<dyn BlockSource>> = Vec::with_capacity(parts.len());
    for m in parts {
        slices.push(Arc::new(SliceSource::new(
            src.clone(),
            m.offset,
            m.size,
            format!("{} in {}", m.name, src.describe()),
        )?));
    }
    let member: Arc<dyn BlockSource> = if slices.len() == 1 {
        slices.pop().expect("one")
    } else {
        Arc::new(ConcatSource::new(slices, name.clone())?)
    };
    let head = super::read_exact(&*member, 0, member.size().min(4) as usize).await?;
    let gzip = head.as_slice().starts_with(&[0x1f, 0x8b]);
    let out = if gzip || file.compression.is_some() {
        if !gzip {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{name}: compression '{}' (gzip is read)",
                    file.compression.unwrap_or_default()
                ),
            ));
        }
        let rt = tokio::runtime::Handle::current();
        let capacity = disk.capacity;
        Arc::new(
            ReadSource::start(format!("{name} (gzip)"), move |serve| {
                let input = SourceReader::new(member, rt, 1 << 20);
                let gz = flate2::read::MultiGzDecoder::new(input);
                decode_stream(gz, &name, None, capacity, serve, None)
            })
            .await?,
        )
    } else {
        let head = super::read_exact(&*member, 0, member.size().min(512) as usize).await?;
        if super::detect(head.as_slice()).is_none() {
            check_raw(&name, member.size(), disk.capacity)?;
        }
        super::open_member(member).await?
    };
    if out.caps().size_known && out.size() != disk.capacity {
        tracing::warn!(
            disk = %disk.disk_id,
            image = out.size(),
            ovf = disk.capacity,
            "the image's size differs from the capacity the OVF gives; the image's is used"
        );
    }
    Ok(out)
}

/// Checks the members holding `file`: chunks numbered from 0 without a gap, all but the last
/// of `ovf:chunkSize` bytes, and together of `ovf:size` bytes when the OVF gives it.
fn check_parts(parts: &[&Member], file: &super::ovf::OvfFile) -> Result<()> {
    if let Some(chunk) = file.chunk_size {
        for (i, m) in parts.iter().enumerate() {
            if !m.name.ends_with(&format!(".{i:09}")) {
                return Err(ErrorKind::Damaged.about(
                    "ova",
                    format!("{}: chunk {i} is missing (found {})", file.href, m.name),
                ));
            }
            if i + 1 < parts.len() && m.size != chunk {
                return Err(ErrorKind::Damaged.about(
                    "ova",
                    format!(
                        "{}: chunk {} holds {} bytes, not the chunk size {chunk}",
                        file.href, m.name, m.size
                    ),
                ));
            }
        }
    }
    let total: u64 = parts.iter().map(|m| m.size).sum();
    match file.size {
        Some(size) if size != total => Err(ErrorKind::Damaged.about(
            "ova",
            format!(
                "{}: the OVF says {size} bytes, the archive holds {total}: truncated or damaged",
                file.href
            ),
        )),
        _ => Ok(()),
    }
}

/// A raw member must hold exactly the disk the OVF describes (no header says otherwise).
fn check_raw(name: &str, size: u64, capacity: u64) -> Result<()> {
    if size == capacity {
        return Ok(());
    }
    Err(ErrorKind::Damaged.about(
        "ova",
        format!("{name}: a raw disk of {size} bytes, but the OVF gives a capacity of {capacity}"),
    ))
}

/// Serves the disk image that `input` decodes to, front to back: a stream-optimized VMDK, or
/// raw bytes (`raw_size` of them when known, checked against `capacity`). `rest` reads what
/// follows in the underlying stream once the disk is complete.
fn decode_stream(
    input: impl Read,
    name: &str,
    raw_size: Option<u64>,
    capacity: u64,
    serve: Serve,
    rest: Option<Drain>,
) -> Result<()> {
    let mut input = BufReader::with_capacity(1 << 20, input);
    let head = input
        .fill_buf()
        .map_err(|e| from_io(e, &format!("ova: {name}")))?;
    if head.starts_with(&vmdk::header::MAGIC) {
        let mut r = vmdk::stream::StreamReader::new(input)?;
        let size = r.size();
        serve.serve(&mut r, Some(size), rest);
        return Ok(());
    }
    if super::detect(head).is_some() {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!("{name}: this image format needs random access, which a compressed or streamed member does not give"),
        ));
    }
    if let Some(size) = raw_size {
        check_raw(name, size, capacity)?;
    }
    serve.serve(&mut input, raw_size, rest);
    Ok(())
}

/// The chosen disk of an OVA that can only be read front to back.
async fn open_streamed(
    src: Arc<dyn BlockSource>,
    choice: Option<DiskChoice>,
) -> Result<Arc<dyn BlockSource>> {
    let rt = tokio::runtime::Handle::current();
    let what = src.describe();
    let s = ReadSource::start(format!("ova {what} (streamed)"), move |serve| {
        let reader = SourceReader::new(src, rt, 1 << 20);
        let rest = reader.drain();
        let mut archive = tar::Archive::new(reader);
        let mut entries = archive
            .entries()
            .map_err(|e| from_io(e, &format!("ova: {what}")))?;
        let listing = Listing::new(first_ovf(&mut entries, &what)?);
        let disk = listing.choose(choice.as_ref())?.clone();
        let file = listing
            .ovf
            .files
            .iter()
            .find(|f| f.href == disk.file)
            .expect("listed disks have files");
        if file.chunk_size.is_some() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{what}: {} is split into chunks, which is read with random access only",
                    file.href
                ),
            ));
        }
        for entry in entries {
            let entry = entry.map_err(|e| tar_err(e, &what))?;
            let name = entry
                .path()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !entry.header().entry_type().is_file() || !same_name(&name, &file.href) {
                continue;
            }
            let name = format!("{name} in {what}");
            let size = entry.size();
            let mut entry = BufReader::with_capacity(1 << 16, entry);
            let gzip = entry
                .fill_buf()
                .map_err(|e| from_io(e, &format!("ova: {name}")))?
                .starts_with(&[0x1f, 0x8b]);
            return if gzip {
                decode_stream(
                    flate2::read::MultiGzDecoder::new(entry),
                    &name,
                    None,
                    disk.capacity,
                    serve,
                    Some(rest),
                )
            } else {
                decode_stream(entry, &name, Some(size), disk.capacity, serve, Some(rest))
            };
        }
        Err(ErrorKind::Damaged.about(
            "ova",
            format!("{what}: {} is not in the archive", file.href),
        ))
    })
    .await?;
    Ok(Arc::new(s))
}
