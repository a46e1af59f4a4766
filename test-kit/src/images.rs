//! Reference disk images made by the real tools from one sparse raw disk: every VMDK subformat
//! qemu-img writes, a VMware-style stream-optimized VMDK (grain directory in the footer) from
//! VMDKstream.py (python3-vmdkstream), OVAs packed by GNU tar, gzip members.

use std::path::{Path, PathBuf};

use crate::{importer, peer_missing, require_peers, run_ok, s, write_sparse};

/// Where Debian's python3-vmdkstream puts VMDKstream.py.
const VMDKSTREAM: &str = "/usr/lib/python3/dist-packages/VMDKstream.py";

/// The raw disk's size: not a multiple of 64 KiB grains, so the last grain is partial.
pub const RAW_SIZE: usize = (64 << 20) + (36 << 10);

/// True when qemu-img, tar, gzip, xz and VMDKstream.py are installed (see [`require_peers`]).
pub fn require_image_tools() -> bool {
    if !require_peers(&["qemu-img", "qemu-io", "tar", "gzip", "xz", "python3"]) {
        return false;
    }
    Path::new(VMDKSTREAM).exists() || peer_missing("VMDKstream.py (python3-vmdkstream)")
}

/// A sparse raw disk with text, random bytes, a partial grain and data at its very end.
pub fn raw_disk(dir: &Path) -> PathBuf {
    let mut bytes = vec![0u8; RAW_SIZE];
    let text = b"ferry carries disks; ".repeat(8000);
    bytes[3 << 20..(3 << 20) + text.len()].copy_from_slice(&text);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in &mut bytes[(20 << 20) + 4096..(22 << 20) + 12345] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    bytes[40 << 20..(40 << 20) + 512].fill(0xa5);
    let end = RAW_SIZE - 5000;
    bytes[end..].fill(0x3c);
    let path = dir.join("disk.raw");
    write_sparse(&path, &bytes);
    path
}

/// `qemu-img convert -O vmdk -o subformat=SUB raw` into `dir/NAME.vmdk`.
pub fn qemu_vmdk(raw: &Path, dir: &Path, name: &str, subformat: &str) -> PathBuf {
    let out = dir.join(format!("{name}.vmdk"));
    let opt = format!("subformat={subformat}");
    run_ok(
        "qemu-img",
        &["convert", "-q", "-O", "vmdk", "-o", &opt, s(raw), s(&out)],
    );
    out
}

/// A VMware-style stream-optimized VMDK (footer, end-of-stream marker) by VMDKstream.py.
pub fn vmware_stream_vmdk(raw: &Path, dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(format!("{name}.vmdk"));
    run_ok("python3", &[VMDKSTREAM, s(raw), s(&out)]);
    out
}

/// `qemu-img convert -O raw` of `image` (the reference every copy is compared with).
pub fn qemu_raw(image: &Path, format: &str, out: &Path) {
    run_ok(
        "qemu-img",
        &["convert", "-q", "-f", format, "-O", "raw", s(image), s(out)],
    );
}

/// `gzip -c file > file.gz`.
pub fn gzip(file: &Path) -> PathBuf {
    let out = PathBuf::from(format!("{}.gz", file.display()));
    let o = run_ok("gzip", &["-c", "-n", s(file)]);
    std::fs::write(&out, o.stdout).unwrap();
    out
}

/// An OVF 1.0 descriptor listing `disks` (file name in the archive, capacity in bytes,
/// gzip-compressed), as vSphere writes one.
pub fn ovf(disks: &[(&str, u64, bool)]) -> String {
    let mut refs = String::new();
    let mut section = String::new();
    for (i, (file, capacity, gz)) in disks.iter().enumerate() {
        let n = i + 1;
        let comp = if *gz {
            r#" ovf:compression="gzip""#
        } else {
            ""
        };
        refs.push_str(&format!(
            "    <File ovf:href=\"{file}\" ovf:id=\"file{n}\"{comp}/>\n"
        ));
        section.push_str(&format!(
            "    <Disk ovf:capacity=\"{capacity}\" ovf:capacityAllocationUnits=\"byte\" ovf:diskId=\"vmdisk{n}\" ovf:fileRef=\"file{n}\" ovf:format=\"http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized\"/>\n"
        ));
    }
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope vmw:buildId="build-1" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References>
{refs}  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
{section}  </DiskSection>
  <VirtualSystem ovf:id="vm">
    <Info>A virtual machine</Info>
    <Name>vm</Name>
  </VirtualSystem>
</Envelope>
"#
    )
}

/// `tar -cf dir/NAME.ova` of `members` (files in `dir`, in this order: the .ovf first).
pub fn ova(dir: &Path, name: &str, members: &[&str]) -> PathBuf {
    let out = dir.join(format!("{name}.ova"));
    let mut args = vec!["--format=ustar", "-C", s(dir), "-cf", s(&out)];
    args.extend_from_slice(members);
    run_ok("tar", &args);
    out
}

/// `qemu-img compare` of two images (formats `fa`, `fb`); panics when they differ.
pub fn qemu_compare(fa: &str, a: &Path, fb: &str, b: &Path) {
    run_ok(
        "qemu-img",
        &["compare", "-q", "-f", fa, "-F", fb, s(a), s(b)],
    );
}

/// `importer extents SOURCE`: the list, and how many bytes are data.
pub fn extents_and_data(source: &str) -> (serde_json::Value, u64) {
    let v: serde_json::Value =
        serde_json::from_str(importer(&["extents", source]).stdout.trim()).unwrap();
    let data = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "data")
        .map(|e| e["length"].as_u64().unwrap())
        .sum();
    (v, data)
}
