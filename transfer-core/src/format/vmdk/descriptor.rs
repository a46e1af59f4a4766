//! The VMDK text descriptor: `key=value` lines (`createType`, `parentCID`), the extent lines
//! (`RW 4192256 SPARSE "disk-s001.vmdk"`, `RW 8388608 FLAT "disk-flat.vmdk" 0`,
//! `RW 2048 ZERO`) and the disk database (`ddb.geometry.cylinders = "4161"`). Pure parsing.

use super::header::{corrupt, unsupported};
use crate::error::Result;

/// The largest descriptor read (bytes); real ones are a few hundred.
pub const MAX_LEN: usize = 1 << 20;
/// The most extent lines taken.
const MAX_EXTENTS: usize = 8192;

/// What kind of extent a line names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentType {
    /// A hosted sparse extent file (`KDMV`).
    Sparse,
    /// A flat file (or `VMFS`), read from a sector offset.
    Flat,
    /// Zeros, no file.
    Zero,
}

/// One extent line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentLine {
    /// Sectors of the disk the extent holds.
    pub sectors: u64,
    /// Its type.
    pub kind: ExtentType,
    /// Its file, relative to the descriptor (none for `ZERO`).
    pub file: Option<String>,
    /// Sector offset within a flat file.
    pub offset: u64,
}

/// The disk's geometry, as the guest's BIOS saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Geometry {
    /// Cylinders.
    pub cylinders: u64,
    /// Heads.
    pub heads: u64,
    /// Sectors per track.
    pub sectors: u64,
}

/// A parsed descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Descriptor {
    /// `createType`.
    pub create_type: String,
    /// The extents, in disk order.
    pub extents: Vec<ExtentLine>,
    /// `ddb.geometry.*`, when all three are there.
    pub geometry: Option<Geometry>,
    /// `ddb.adapterType`.
    pub adapter: Option<String>,
}

impl Descriptor {
    /// The disk's size in bytes (the extents' sectors).
    pub fn size(&self) -> Option<u64> {
        self.extents
            .iter()
            .try_fold(0u64, |a, e| a.checked_add(e.sectors))?
            .checked_mul(512)
    }

    /// Parses descriptor text; refuses what cannot be read as a standalone disk (a parent,
    /// device-backed or delta extents).
    pub fn parse(text: &[u8]) -> Result<Descriptor> {
        if text.len() > MAX_LEN {
            return Err(corrupt("descriptor longer than 1 MiB"));
        }
        // Embedded descriptors are padded with NULs.
        let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
        let text =
            std::str::from_utf8(&text[..end]).map_err(|_| corrupt("the descriptor is not text"))?;
        let mut d = Descriptor::default();
        let (mut cyl, mut heads, mut secs) = (None, None, None);
        let mut saw_header = false;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                saw_header |= line.eq_ignore_ascii_case("# Disk DescriptorFile");
                continue;
            }
            if let Some(e) = parse_extent(line)? {
                if d.extents.len() == MAX_EXTENTS {
                    return Err(corrupt(format!("more than {MAX_EXTENTS} extents")));
                }
                d.extents.push(e);
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(corrupt(format!(
                    "descriptor line not understood: '{}'",
                    clip(line)
                )));
            };
            let key = key.trim();
            let value = value.trim().trim_matches('"');
            match key {
                "createType" => d.create_type = value.to_string(),
                "parentCID" if !value.eq_ignore_ascii_case("ffffffff") => {
                    return Err(unsupported(
                        "the disk is a delta of a parent disk (parentCID is set): copy a disk that has no parent, or consolidate the snapshots first",
                    ))
                }
                "ddb.geometry.cylinders" => cyl = value.parse().ok(),
                "ddb.geometry.heads" => heads = value.parse().ok(),
                "ddb.geometry.sectors" => secs = value.parse().ok(),
                "ddb.adapterType" => d.adapter = Some(value.to_string()),
                _ => {}
            }
        }
        if d.create_type.is_empty() && !saw_header {
            return Err(corrupt("not a VMDK descriptor (no createType)"));
        }
        let ct = d.create_type.to_ascii_lowercase();
        if matches!(
            ct.as_str(),
            "vmfssparse"
                | "vmfsthinsparse"
                | "sesparse"
                | "vsansparse"
                | "fulldevice"
                | "partitioneddevice"
                | "vmfsrdm"
                | "vmfsrawdevicemap"
                | "vmfspassthroughrawdevicemap"
        ) {
            return Err(unsupported(format!(
                "createType '{}' is not read (hosted sparse, stream-optimized and flat disks are)",
                d.create_type
            )));
        }
        if let (Some(cylinders), Some(heads), Some(sectors)) = (cyl, heads, secs) {
            d.geometry = Some(Geometry {
                cylinders,
                heads,
                sectors,
            });
        }
        if d.size().is_none() {
            return Err(corrupt("the extents add up to more than 2^64 bytes"));
        }
        Ok(d)
    }
}

fn clip(s: &str) -> String {
    s.chars().take(60).collect()
}

/// An extent line, or `None` when the line is not one.
fn parse_extent(line: &str) -> Result<Option<ExtentLine>> {
    let mut words = line.splitn(3, char::is_whitespace);
    let access = words.next().unwrap_or("");
    if !matches!(access, "RW" | "RDONLY" | "NOACCESS") {
        return Ok(None);
    }
    let bad = || corrupt(format!("extent line not understood: '{}'", clip(line)));
    let sectors: u64 = words.next().and_then(|w| w.parse().ok()).ok_or_else(bad)?;
    let rest = words.next().unwrap_or("").trim_start();
    let (kind_word, rest) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    if access == "NOACCESS" {
        return Err(unsupported("a NOACCESS extent cannot be read"));
    }
    let kind = match kind_word {
        "SPARSE" => ExtentType::Sparse,
        "FLAT" | "VMFS" => ExtentType::Flat,
        "ZERO" => ExtentType::Zero,
        "" => return Err(bad()),
        other => {
            return Err(unsupported(format!(
                "{other} extents are not read (SPARSE, FLAT, VMFS and ZERO are)"
            )))
        }
    };
    if kind == ExtentType::Zero {
        return Ok(Some(ExtentLine {
            sectors,
            kind,
            file: None,
            offset: 0,
        }));
    }
    let rest = rest.trim_start();
    let rest = rest.strip_prefix('"').ok_or_else(bad)?;
    let (file, tail) = rest.split_once('"').ok_or_else(bad)?;
    if file.is_empty() {
        return Err(bad());
    }
    let offset = match tail.trim() {
        "" => 0,
        t => t.parse().map_err(|_| bad())?,
    };
    Ok(Some(ExtentLine {
        sectors,
        kind,
        file: Some(file.to_string()),
        offset,
    }))
}

/// Whether `head` (an image's first bytes) looks like a text descriptor.
pub fn looks_like_descriptor(head: &[u8]) -> bool {
    let head = &head[..head.len().min(1024)];
    // Embedded descriptors end at a NUL, as [`Descriptor::parse`] reads them.
    let end = head.iter().position(|&b| b == 0).unwrap_or(head.len());
    let text = String::from_utf8_lossy(&head[..end]);
    text.trim_start().starts_with("# Disk DescriptorFile")
        || text
            .lines()
            .any(|l| l.trim_start().starts_with("createType"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPLIT: &str = "# Disk DescriptorFile\nversion=1\nCID=cc648fed\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentSparse\"\n\n# Extent description\nRW 4192256 SPARSE \"d-s001.vmdk\"\nRW 2048 SPARSE \"d s002.vmdk\"\nRW 100 ZERO\nRDONLY 64 FLAT \"d-flat.vmdk\" 128\n\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\nddb.geometry.cylinders = \"4161\"\nddb.geometry.heads = \"16\"\nddb.geometry.sectors = \"63\"\nddb.adapterType = \"ide\"\n";

    #[test]
    fn descriptors_parse() {
        let d = Descriptor::parse(SPLIT.as_bytes()).unwrap();
        assert_eq!(d.create_type, "twoGbMaxExtentSparse");
        assert_eq!(d.extents.len(), 4);
        assert_eq!(d.extents[1].file.as_deref(), Some("d s002.vmdk"));
        assert_eq!(d.extents[2].kind, ExtentType::Zero);
        assert_eq!(
            (d.extents[3].kind, d.extents[3].offset),
            (ExtentType::Flat, 128)
        );
        assert_eq!(d.size(), Some((4192256 + 2048 + 100 + 64) * 512));
        assert_eq!(
            d.geometry,
            Some(Geometry {
                cylinders: 4161,
                heads: 16,
                sectors: 63
            })
        );
        assert!(looks_like_descriptor(SPLIT.as_bytes()));
        assert!(!looks_like_descriptor(b"\0\0\0\0KDMV"));
    }

    #[test]
    fn what_is_not_read_is_refused() {
        let child = SPLIT.replace("parentCID=ffffffff", "parentCID=1234abcd");
        assert!(Descriptor::parse(child.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("parent"));
        let rdm = SPLIT.replace("RW 100 ZERO", "RW 100 VMFSRDM \"x-rdm.vmdk\"");
        assert!(Descriptor::parse(rdm.as_bytes()).is_err());
        for bad in [
            "createType=\"x\"\nRW abc SPARSE \"a\"",
            "createType=\"x\"\nRW 10 SPARSE a.vmdk",
            "createType=\"x\"\nRW 10 FLAT \"a\" z",
            "createType=\"x\"\nRW 18446744073709551615 ZERO\nRW 1 ZERO",
            "just words",
        ] {
            assert!(Descriptor::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
