//! VMDK images read as raw disks with no scratch space, against the real tools: every subformat
//! qemu-img writes (monolithicSparse, streamOptimized, monolithicFlat, twoGbMaxExtentSparse,
//! twoGbMaxExtentFlat) and a VMware-style stream-optimized disk by VMDKstream.py, copied by
//! `importer copy` from files and from nginx with and without Range, and compared with
//! `qemu-img convert -O raw` of the same image (`qemu-img compare` agrees). Truncated,
//! corrupted, oversized and self-referencing images fail with one clear line.

use std::path::{Path, PathBuf};

use test_kit::images::*;
use test_kit::nginx::{require_nginx, Location, Nginx};
use test_kit::*;

fn copy_ok(source: &str, target: &Path) -> Stats {
    let _ = std::fs::remove_file(target);
    importer(&["copy", source, s(target)]).copy_stats()
}

/// Copies `image` and checks the result against qemu-img's conversion of it.
fn copies_like_qemu(image: &Path, reference: &Path, out: &Path) {
    let stats = copy_ok(s(image), out);
    assert_eq!(stats.bytes_total, RAW_SIZE as u64, "{}", image.display());
    assert_same_files(out, reference);
    qemu_compare("vmdk", image, "raw", out);
}

fn all_subformats(raw: &Path, dir: &Path) -> Vec<PathBuf> {
    let mut images: Vec<PathBuf> = [
        "monolithicSparse",
        "streamOptimized",
        "monolithicFlat",
        "twoGbMaxExtentSparse",
        "twoGbMaxExtentFlat",
    ]
    .iter()
    .map(|sub| qemu_vmdk(raw, dir, sub, sub))
    .collect();
    images.push(vmware_stream_vmdk(raw, dir, "vmware-stream"));
    images
}

#[test]
fn every_vmdk_subformat_copies_like_qemu_img_convert() {
    if !require_image_tools() {
        return;
    }
    let dir = tempdir();
    let raw = raw_disk(dir.path());
    let out = dir.path().join("out.img");
    let reference = dir.path().join("reference.raw");
    for image in all_subformats(&raw, dir.path()) {
        qemu_raw(&image, "vmdk", &reference);
        assert_same_files(&reference, &raw);
        copies_like_qemu(&image, &reference, &out);
    }
    // Forced, too.
    let sparse = dir.path().join("monolithicSparse.vmdk");
    let out2 = dir.path().join("forced.img");
    importer(&["copy", s(&sparse), s(&out2), "--format", "vmdk"]).copy_stats();
    assert_same_files(&out2, &raw);

    // Compressed files are decompressed front to back, and what they hold detected in turn.
    let stream = dir.path().join("vmware-stream.vmdk");
    let xz = dir.path().join("vmware-stream.vmdk.xz");
    std::fs::write(&xz, run_ok("xz", &["-c", "-1", s(&stream)]).stdout).unwrap();
    for compressed in [xz, gzip(&stream), gzip(&raw)] {
        let stats = copy_ok(s(&compressed), &out2);
        assert_eq!(stats.connections, 1);
        assert_same_files(&out2, &raw);
    }

    // Extents come from the grain tables: unallocated grains are holes, never read.
    for name in ["monolithicSparse", "vmware-stream"] {
        let image = dir.path().join(format!("{name}.vmdk"));
        let (v, data) = extents_and_data(s(&image));
        assert!(data < (4 << 20), "{name}: {v}");
        assert!(
            v.as_array().unwrap().iter().any(|e| e["kind"] == "hole"),
            "{v}"
        );
    }
}

#[test]
fn vmdks_over_http_with_and_without_range() {
    if !require_image_tools() || !require_nginx() {
        return;
    }
    let dir = tempdir();
    let raw = raw_disk(dir.path());
    let nginx = Nginx::start();
    let images = all_subformats(&raw, dir.path());
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|e| e == "vmdk") {
            nginx.put(
                p.file_name().unwrap().to_str().unwrap(),
                &std::fs::read(&p).unwrap(),
            );
        }
    }
    let gz = gzip(&dir.path().join("vmware-stream.vmdk"));
    nginx.put("vmware-stream.vmdk.gz", &std::fs::read(&gz).unwrap());
    let out = dir.path().join("out.img");

    // With Range every subformat is read with random access, extent files next to the
    // descriptor included.
    for image in &images {
        let name = image.file_name().unwrap().to_str().unwrap();
        copy_ok(&nginx.http(Location::Range, name), &out);
        assert_same_files(&out, &raw);
    }
    // Without Range, stream-optimized disks (qemu's and VMware's, and gzip-compressed) are
    // decoded front to back.
    for name in [
        "streamOptimized.vmdk",
        "vmware-stream.vmdk",
        "vmware-stream.vmdk.gz",
    ] {
        let stats = copy_ok(&nginx.http(Location::NoRange, name), &out);
        assert_eq!(stats.connections, 1, "{name}");
        assert_same_files(&out, &raw);
    }
    // A sparse disk cannot be: one clear line, no target.
    let _ = std::fs::remove_file(&out);
    let o = importer(&[
        "copy",
        &nginx.http(Location::NoRange, "monolithicSparse.vmdk"),
        s(&out),
    ]);
    o.assert_clean_failure(&["stream-optimized", "random access"]);
    assert!(!out.exists());
}

/// Overwrites `at..` of a copy of `image` with `bytes`.
fn damaged(image: &Path, name: &str, at: usize, bytes: &[u8]) -> PathBuf {
    let mut b = std::fs::read(image).unwrap();
    b[at..at + bytes.len()].copy_from_slice(bytes);
    let p = image.with_file_name(name);
    std::fs::write(&p, b).unwrap();
    p
}

#[test]
fn damaged_vmdks_fail_with_one_clear_line() {
    if !require_image_tools() || !require_nginx() {
        return;
    }
    let dir = tempdir();
    let raw = raw_disk(dir.path());
    let sparse = qemu_vmdk(&raw, dir.path(), "sparse", "monolithicSparse");
    let stream = vmware_stream_vmdk(&raw, dir.path(), "stream");
    let stream_bytes = std::fs::read(&stream).unwrap();
    let out = dir.path().join("out.img");
    let fails = |image: &Path, phrases: &[&str]| {
        let _ = std::fs::remove_file(&out);
        importer(&["copy", s(image), s(&out)]).assert_clean_failure(phrases);
        assert!(!out.exists(), "{}", image.display());
    };

    // Truncated: the footer is gone (random access), or a grain is cut (front to back).
    let cut = dir.path().join("cut.vmdk");
    std::fs::write(&cut, &stream_bytes[..stream_bytes.len() / 2]).unwrap();
    fails(&cut, &["vmdk", "footer"]);
    let nginx = Nginx::start();
    nginx.put("cut.vmdk", &stream_bytes[..stream_bytes.len() / 2]);
    let _ = std::fs::remove_file(&out);
    importer(&["copy", &nginx.http(Location::NoRange, "cut.vmdk"), s(&out)])
        .assert_clean_failure(&["truncated"]);

    // Cut exactly before a grain marker of qemu's layout (no end-of-stream marker), then read
    // front to back: the grains its tables list are missing, not zeros.
    let qemu = qemu_vmdk(&raw, dir.path(), "qstream", "streamOptimized");
    let qb = std::fs::read(&qemu).unwrap();
    let cut_at = last_grain_marker(&qb);
    let qcut = dir.path().join("qcut.vmdk");
    std::fs::write(&qcut, &qb[..cut_at]).unwrap();
    let _ = std::fs::remove_file(&out);
    importer(&["copy", s(&gzip(&qcut)), s(&out)])
        .assert_clean_failure(&["grains its tables list", "truncated?"]);
    // VMware's layout cut before its footer, over HTTP without Range.
    nginx.put("vcut.vmdk", &stream_bytes[..stream_bytes.len() - 2048]);
    let _ = std::fs::remove_file(&out);
    importer(&["copy", &nginx.http(Location::NoRange, "vcut.vmdk"), s(&out)])
        .assert_clean_failure(&["truncated?"]);

    // Flipped header fields: a grain size that is not a power of two, a capacity whose grain
    // directory would be huge (refused, not allocated), a grain directory past the end.
    fails(
        &damaged(&sparse, "grain.vmdk", 20, &100u64.to_le_bytes()),
        &["vmdk", "grain size"],
    );
    let mut huge = damaged(&sparse, "huge.vmdk", 12, &(1u64 << 52).to_le_bytes());
    huge = damaged(&huge, "huge.vmdk", 20, &8u64.to_le_bytes());
    fails(&huge, &["vmdk", "grain directory larger"]);
    fails(
        &damaged(&sparse, "gd.vmdk", 56, &(1u64 << 40).to_le_bytes()),
        &["past the end", "truncated?"],
    );
    // A compressed grain with flipped bytes (the first grain sits at the header's overhead).
    let overhead = u64::from_le_bytes(stream_bytes[64..72].try_into().unwrap()) as usize * 512;
    fails(
        &damaged(&stream, "flipped.vmdk", overhead + 40, &[0xff; 16]),
        &["vmdk", "compressed grain"],
    );

    // A descriptor that names itself as its sparse extent (a loop in other readers), one that
    // climbs out of its directory, and one with a parent.
    let own = dir.path().join("own.vmdk");
    write_file(
        &own,
        b"# Disk DescriptorFile\nversion=1\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentSparse\"\nRW 131072 SPARSE \"own.vmdk\"\n",
    );
    fails(&own, &["vmdk", "not a sparse extent"]);
    let escape = dir.path().join("escape.vmdk");
    write_file(
        &escape,
        b"# Disk DescriptorFile\nversion=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 8 FLAT \"../../etc/passwd\" 0\n",
    );
    fails(&escape, &["not a name next to the descriptor"]);
    let child = dir.path().join("child.vmdk");
    write_file(
        &child,
        b"# Disk DescriptorFile\nversion=1\nparentCID=12345678\ncreateType=\"monolithicSparse\"\nRW 8 SPARSE \"x.vmdk\"\n",
    );
    fails(&child, &["parent"]);
    // An extent file shorter than the descriptor says.
    let flat = qemu_vmdk(&raw, dir.path(), "flat", "monolithicFlat");
    let extent = dir.path().join("flat-flat.vmdk");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&extent)
        .unwrap();
    f.set_len(1 << 20).unwrap();
    fails(&flat, &["past the end", "truncated?"]);
}

/// Where the last grain marker of a stream-optimized VMDK starts (markers from the header's
/// overhead on, each padded to a sector).
fn last_grain_marker(b: &[u8]) -> usize {
    let le = |at: usize, n: usize| {
        let mut v = 0u64;
        for (i, x) in b[at..at + n].iter().enumerate() {
            v |= (*x as u64) << (8 * i);
        }
        v
    };
    let mut pos = le(64, 8) as usize * 512;
    let mut last = pos;
    while pos + 512 <= b.len() {
        let size = le(pos + 8, 4) as usize;
        if size == 0 {
            break;
        }
        last = pos;
        pos += (12 + size).div_ceil(512) * 512;
    }
    last
}
