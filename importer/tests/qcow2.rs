//! qcow2 images read as raw disks with no scratch space, against qemu's own tools: images made
//! by `qemu-img create`/`convert` and `qemu-io` (version 2 and 3, compressed clusters, zero
//! clusters), copied by `importer copy` from a file and over HTTP with Range (nginx), and
//! compared with `qemu-img convert -O raw` of the same image. Images qemu would need more for
//! (a backing file) and damaged ones fail with one clear line.

use std::path::{Path, PathBuf};

use test_kit::nginx::{require_nginx, Location, Nginx};
use test_kit::*;

/// A 64 MiB image with data, a zero range and unallocated space, and its raw conversion.
fn reference(dir: &Path, name: &str, create: &[&str]) -> (PathBuf, PathBuf) {
    let image = dir.join(format!("{name}.qcow2"));
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    args.extend_from_slice(create);
    args.extend([s(&image), "64M"]);
    run_ok("qemu-img", &args);
    run_ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5a 1M 3M",
            "-c",
            "write -z 8M 2M",
            "-c",
            "write -P 0x11 60M 64k",
            s(&image),
        ],
    );
    let raw = dir.join(format!("{name}.raw"));
    run_ok("qemu-img", &["convert", "-O", "raw", s(&image), s(&raw)]);
    (image, raw)
}

fn copy_ok(source: &str, target: &Path) {
    let out = importer(&["copy", source, s(target)]);
    out.copy_stats();
}

#[test]
fn qcow2_v2_v3_and_compressed_images_copy_like_qemu_img_convert() {
    if !require_peers(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempdir();
    let (v3, raw) = reference(dir.path(), "v3", &[]);
    let (v2, raw2) = reference(dir.path(), "v2", &["-o", "compat=0.10"]);
    let compressed = dir.path().join("c.qcow2");
    run_ok(
        "qemu-img",
        &["convert", "-c", "-O", "qcow2", s(&raw), s(&compressed)],
    );
    for (image, reference) in [(&v3, &raw), (&v2, &raw2), (&compressed, &raw)] {
        let out = dir.path().join("out.img");
        copy_ok(s(image), &out);
        assert_same_files(&out, reference);
        test_kit::images::qemu_compare("qcow2", image, "raw", &out);
    }
    // Extents come from the tables: the zero clusters and unallocated space are not data.
    let (v, data) = test_kit::images::extents_and_data(s(&v3));
    assert_eq!(data, 3 * (1 << 20) + 65536, "{v}");
    assert!(
        v.as_array().unwrap().iter().any(|e| e["kind"] == "zero"),
        "{v}"
    );
}

#[test]
fn a_qcow2_image_over_http_with_range_copies_like_qemu_img() {
    if !require_peers(&["qemu-img", "qemu-io"]) || !require_nginx() {
        return;
    }
    let dir = tempdir();
    let (image, raw) = reference(dir.path(), "web", &[]);
    let nginx = Nginx::start();
    nginx.put("web.qcow2", &std::fs::read(&image).unwrap());
    let out = dir.path().join("out.img");

    copy_ok(&nginx.http(Location::Range, "web.qcow2"), &out);

    assert_same_files(&out, &raw);
}

#[test]
fn backing_files_and_damaged_images_fail_clearly() {
    if !require_peers(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempdir();
    let (base, _) = reference(dir.path(), "base", &[]);
    let top = dir.path().join("top.qcow2");
    run_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            s(&base),
            s(&top),
        ],
    );
    let out = importer(&["copy", s(&top), s(&dir.path().join("a.img"))]);
    out.assert_clean_failure(&["qcow2", "backing file"]);

    // Cut off inside its tables: the L1 table or an L2 table lies past the end.
    let bytes = std::fs::read(&base).unwrap();
    let truncated = dir.path().join("truncated.qcow2");
    std::fs::write(&truncated, &bytes[..200_000.min(bytes.len() - 1)]).unwrap();
    let out = importer(&["copy", s(&truncated), s(&dir.path().join("b.img"))]);
    out.assert_clean_failure(&["qcow2", "past the end of", "truncated?"]);

    // A header claiming an absurd disk (and so an absurd L1 table) is refused, not allocated.
    let mut huge = bytes.clone();
    huge[24..32].copy_from_slice(&(1u64 << 62).to_be_bytes());
    let claim = dir.path().join("huge.qcow2");
    std::fs::write(&claim, &huge).unwrap();
    let out = importer(&["copy", s(&claim), s(&dir.path().join("c.img"))]);
    out.assert_clean_failure(&["qcow2"]);
}
