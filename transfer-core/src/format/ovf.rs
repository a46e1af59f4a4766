//! The OVF descriptor of an OVA: its `References/File` elements (the archive members, their
//! compression and chunking) and `DiskSection/Disk` elements (the virtual disks, their files
//! and capacities). Element and attribute names are matched by local name, whatever prefix the
//! exporter bound the OVF namespace to. Pure parsing, bounded.

use quick_xml::events::Event;
use quick_xml::Reader;

use crate::error::{ErrorKind, Result};

/// The largest descriptor read (bytes).
pub const MAX_LEN: u64 = 16 << 20;
/// The most files or disks taken.
const MAX_ITEMS: usize = 4096;

/// A `References/File`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OvfFile {
    /// `ovf:id`.
    pub id: String,
    /// `ovf:href`: the member's name in the archive.
    pub href: String,
    /// `ovf:size`: bytes of the member (compressed).
    pub size: Option<u64>,
    /// `ovf:compression` (`gzip`), when compressed.
    pub compression: Option<String>,
    /// `ovf:chunkSize`: the file is split into members `href.000000000`, `href.000000001`...
    pub chunk_size: Option<u64>,
}

/// A `DiskSection/Disk`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OvfDisk {
    /// `ovf:diskId`.
    pub disk_id: String,
    /// `ovf:fileRef`: the id of its file (none for a blank disk).
    pub file_ref: Option<String>,
    /// Capacity in bytes (`ovf:capacity` in `ovf:capacityAllocationUnits`).
    pub capacity: u64,
    /// `ovf:format`, e.g. `...vmdk.html#streamOptimized`.
    pub format: Option<String>,
}

/// What an OVF descriptor lists.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ovf {
    /// The referenced files.
    pub files: Vec<OvfFile>,
    /// The disks, in document order.
    pub disks: Vec<OvfDisk>,
}

impl Ovf {
    /// Parses a descriptor.
    pub fn parse(xml: &[u8]) -> Result<Ovf> {
        if xml.len() as u64 > MAX_LEN {
            return Err(ErrorKind::Damaged.about("ovf", "descriptor larger than 16 MiB"));
        }
        let mut r = Reader::from_reader(xml);
        let mut ovf = Ovf::default();
        let mut buf = Vec::new();
        let mut saw_envelope = false;
        loop {
            let ev = r
                .read_event_into(&mut buf)
                .map_err(|e| ErrorKind::Damaged.about("ovf", format!("malformed XML: {e}")))?;
            match ev {
                Event::Start(ref e) | Event::Empty(ref e) => {
                    let mut attrs = Vec::new();
                    for a in e.attributes() {
                        let a = a.map_err(|e| {
                            ErrorKind::Damaged.about("ovf", format!("malformed attribute: {e}"))
                        })?;
                        let v = a.unescape_value().map_err(|e| {
                            ErrorKind::Damaged.about("ovf", format!("malformed attribute: {e}"))
                        })?;
                        attrs.push((
                            String::from_utf8_lossy(a.key.local_name().as_ref()).into_owned(),
                            v.into_owned(),
                        ));
                    }
                    let get = |k: &str| {
                        attrs
                            .iter()
                            .find(|(n, _)| n == k)
                            .map(|(_, v)| v.trim().to_string())
                    };
                    match e.local_name().as_ref() {
                        b"Envelope" => saw_envelope = true,
                        b"File" => {
                            if ovf.files.len() == MAX_ITEMS {
                                return Err(ErrorKind::Damaged.about("ovf", "too many files"));
                            }
                            let num = |k: &str| -> Result<Option<u64>> {
                                get(k)
                                    .map(|v| {
                                        v.parse().map_err(|_| {
                                            ErrorKind::Damaged.about(
                                                "ovf",
                                                format!("File {k}='{v}' is not a number"),
                                            )
                                        })
                                    })
                                    .transpose()
                            };
                            let file = OvfFile {
                                id: get("id").ok_or_else(|| {
                                    ErrorKind::Damaged.about("ovf", "a File without an id")
                                })?,
                                href: get("href").ok_or_else(|| {
                                    ErrorKind::Damaged.about("ovf", "a File without an href")
                                })?,
                                size: num("size")?,
                                compression: get("compression")
                                    .filter(|c| !c.is_empty() && c != "identity"),
                                chunk_size: num("chunkSize")?.filter(|&c| c > 0),
                            };
                            ovf.files.push(file);
                        }
                        b"Disk" => {
                            if ovf.disks.len() == MAX_ITEMS {
                                return Err(ErrorKind::Damaged.about("ovf", "too many disks"));
                            }
                            let id = get("diskId").ok_or_else(|| {
                                ErrorKind::Damaged.about("ovf", "a Disk without a diskId")
                            })?;
                            let cap = get("capacity").ok_or_else(|| {
                                ErrorKind::Damaged
                                    .about("ovf", format!("disk {id} has no capacity"))
                            })?;
                            let units = get("capacityAllocationUnits");
                            ovf.disks.push(OvfDisk {
                                capacity: capacity(&cap, units.as_deref()).map_err(|e| {
                                    ErrorKind::Damaged.about("ovf", format!("disk {id}: {e}"))
                                })?,
                                disk_id: id,
                                file_ref: get("fileRef").filter(|f| !f.is_empty()),
                                format: get("format"),
                            });
                        }
                        _ => {}
                    }
                }
                Event::Eof => break,
                _ => {}
            }
            buf.clear();
        }
        if !saw_envelope {
            return Err(ErrorKind::Damaged.about("ovf", "not an OVF descriptor (no Envelope)"));
        }
        for d in &ovf.disks {
            if let Some(f) = &d.file_ref {
                if !ovf.files.iter().any(|x| &x.id == f) {
                    return Err(ErrorKind::Damaged.about(
                        "ovf",
                        format!(
                            "disk {} refers to file '{f}', which is not listed",
                            d.disk_id
                        ),
                    ));
                }
            }
        }
        Ok(ovf)
    }

    /// The file of `disk`.
    pub fn file_of(&self, disk: &OvfDisk) -> Option<&OvfFile> {
        let id = disk.file_ref.as_ref()?;
        self.files.iter().find(|f| &f.id == id)
    }
}

/// Bytes of `value` in `units` (`byte`, `byte * 2^30`, `byte * 1024^3`, `KB`, `MB`, `GB`...;
/// bytes when absent).
pub fn capacity(value: &str, units: Option<&str>) -> std::result::Result<u64, String> {
    let n: u64 = value
        .parse()
        .map_err(|_| format!("capacity '{value}' is not a whole number"))?;
    let mult = match units.map(|u| u.replace(' ', "").to_ascii_lowercase()) {
        None => 1,
        Some(u) => unit_multiplier(&u)
            .ok_or_else(|| format!("unknown capacity units '{}'", units.unwrap_or("")))?,
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("capacity {value} x {mult} overflows"))
}

fn unit_multiplier(u: &str) -> Option<u64> {
    let named = match u {
        "byte" | "bytes" | "b" => Some(1),
        "kb" | "kilobytes" | "kib" => Some(1 << 10),
        "mb" | "megabytes" | "mib" => Some(1 << 20),
        "gb" | "gigabytes" | "gib" => Some(1 << 30),
        "tb" | "terabytes" | "tib" => Some(1 << 40),
        _ => None,
    };
    if named.is_some() {
        return named;
    }
    // DSP0004 programmatic units: byte*BASE^EXP.
    let rest = u.strip_prefix("byte*")?;
    let (base, exp) = rest.split_once('^')?;
    let (base, exp): (u64, u32) = (base.parse().ok()?, exp.parse().ok()?);
    // A unit of zero bytes (byte*0^N) means nothing.
    base.checked_pow(exp).filter(|&m| m > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OVF: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope vmw:buildId="build-1" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References>
    <File ovf:href="vm-disk1.vmdk" ovf:id="file1" ovf:size="68608"/>
    <File ovf:href="vm-disk2.vmdk.gz" ovf:id="file2" ovf:size="1024" ovf:compression="gzip"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="16" ovf:capacityAllocationUnits="byte * 2^30" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" ovf:populatedSize="0"/>
    <Disk ovf:capacity="1048576" ovf:diskId="vmdisk2" ovf:fileRef="file2"/>
  </DiskSection>
</Envelope>"#;

    #[test]
    fn descriptors_list_files_and_disks() {
        let o = Ovf::parse(OVF.as_bytes()).unwrap();
        assert_eq!(o.files.len(), 2);
        assert_eq!(o.files[1].compression.as_deref(), Some("gzip"));
        assert_eq!(o.disks[0].capacity, 16 << 30);
        assert_eq!(o.disks[1].capacity, 1 << 20);
        assert_eq!(o.file_of(&o.disks[0]).unwrap().href, "vm-disk1.vmdk");
    }

    #[test]
    fn units_and_bad_descriptors() {
        assert_eq!(capacity("2", Some("byte * 1024^3")), Ok(2 << 30));
        assert_eq!(capacity("3", Some("MB")), Ok(3 << 20));
        assert!(capacity("3", Some("furlongs")).is_err());
        // Found by the ovf fuzz target: a unit of zero bytes.
        assert!(capacity("8", Some("byte*0^10")).is_err());
        assert!(capacity("99999999999", Some("byte * 2^40")).is_err());
        assert!(Ovf::parse(b"<Envelope><DiskSection><Disk ovf:diskId='a' ovf:capacity='1' ovf:fileRef='nope'/></DiskSection></Envelope>").is_err());
        assert!(Ovf::parse(b"<html/>").is_err());
        assert!(Ovf::parse(b"<Envelope><References><File ovf:id='x'/>").is_err());
    }
}
