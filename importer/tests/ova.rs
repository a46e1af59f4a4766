//! OVA archives read in place (never unpacked): OVAs packed by GNU tar from an OVF descriptor
//! and stream-optimized disks (qemu-img's, VMware-style from VMDKstream.py, a gzip-compressed
//! member), one disk copied with `--disk INDEX|NAME`, every disk with `importer copy-ova` into a
//! directory or by `--map`, from files and from nginx with and without Range; each disk compared
//! with `qemu-img convert -O raw` of the member extracted with tar, as the peers must. Broken
//! archives fail with one clear line.

use std::path::{Path, PathBuf};

use test_kit::images::*;
use test_kit::nginx::{require_nginx, Location, Nginx};
use test_kit::*;

/// An OVA of three disks (qemu-img stream-optimized, VMware-style, VMware-style gzipped) built
/// from three different raw disks; returns it and the raw disks in disk order.
fn three_disk_ova(dir: &Path) -> (PathBuf, Vec<PathBuf>) {
    let mut raws = Vec::new();
    for i in 0..3 {
        let sub = dir.join(format!("src{i}"));
        std::fs::create_dir(&sub).unwrap();
        let raw = raw_disk(&sub);
        // Make each disk different from the others.
        let mut b = std::fs::read(&raw).unwrap();
        b[(10 << 20) + i * 4096..(10 << 20) + i * 4096 + 100].fill(i as u8 + 1);
        write_sparse(&raw, &b);
        raws.push(raw);
    }
    let d1 = qemu_vmdk(&raws[0], dir, "vm-disk1", "streamOptimized");
    let d2 = vmware_stream_vmdk(&raws[1], dir, "vm-disk2");
    let d3 = vmware_stream_vmdk(&raws[2], dir, "vm-disk3");
    let d3gz = gzip(&d3);
    std::fs::remove_file(&d3).unwrap();
    assert!(d1.exists() && d2.exists() && d3gz.exists());
    let size = RAW_SIZE as u64;
    write_file(
        &dir.join("vm.ovf"),
        ovf(&[
            ("vm-disk1.vmdk", size, false),
            ("vm-disk2.vmdk", size, false),
            ("vm-disk3.vmdk.gz", size, true),
        ])
        .as_bytes(),
    );
    let ova = ova(
        dir,
        "vm",
        &[
            "vm.ovf",
            "vm-disk1.vmdk",
            "vm-disk2.vmdk",
            "vm-disk3.vmdk.gz",
        ],
    );
    (ova, raws)
}

/// [`three_disk_ova`], also served by nginx as `vm.ova`.
fn served_ova(dir: &Path) -> (PathBuf, Vec<PathBuf>, Nginx) {
    let (ova, raws) = three_disk_ova(dir);
    let nginx = Nginx::start();
    nginx.put("vm.ova", &std::fs::read(&ova).unwrap());
    (ova, raws, nginx)
}

/// What the peers do: extract the member with tar, then `qemu-img convert -O raw`.
fn peer_reference(ova: &Path, member: &str, dir: &Path) -> PathBuf {
    let x = dir.join("extracted");
    std::fs::create_dir_all(&x).unwrap();
    run_ok("tar", &["-xf", s(ova), "-C", s(&x), member]);
    let mut image = x.join(member);
    if member.ends_with(".gz") {
        run_ok("gzip", &["-d", "-f", s(&image)]);
        image = x.join(member.trim_end_matches(".gz"));
    }
    let out = dir.join(format!("{member}.reference.raw"));
    qemu_raw(&image, "vmdk", &out);
    out
}

#[test]
fn one_disk_of_an_ova_by_index_or_name_copies_like_tar_and_qemu_img() {
    if !require_image_tools() {
        return;
    }
    let dir = tempdir();
    let (ova, raws) = three_disk_ova(dir.path());
    let out = dir.path().join("out.img");
    let members = ["vm-disk1.vmdk", "vm-disk2.vmdk", "vm-disk3.vmdk.gz"];
    for (i, (member, raw)) in members.iter().zip(&raws).enumerate() {
        let reference = peer_reference(&ova, member, dir.path());
        assert_same_files(&reference, raw);
        for choice in [
            i.to_string(),
            format!("vmdisk{}", i + 1),
            member.to_string(),
        ] {
            let _ = std::fs::remove_file(&out);
            let stats = importer(&["copy", s(&ova), s(&out), "--disk", &choice]).copy_stats();
            assert_eq!(stats.bytes_total, RAW_SIZE as u64);
            assert_same_files(&out, &reference);
        }
    }
    run_ok(
        "qemu-img",
        &[
            "compare",
            "-q",
            "-f",
            "raw",
            "-F",
            "raw",
            s(&out),
            s(&raws[2]),
        ],
    );
    // `checksum` and `extents` read the chosen disk too.
    let v: serde_json::Value = serde_json::from_str(
        importer(&["checksum", s(&ova), "--disk", "1"])
            .stdout
            .trim(),
    )
    .unwrap();
    assert_eq!(v["size"], RAW_SIZE as u64, "{v}");
}

#[test]
fn copy_ova_copies_every_disk_to_a_directory_or_by_map() {
    if !require_image_tools() {
        return;
    }
    let dir = tempdir();
    let (ova, raws) = three_disk_ova(dir.path());
    let to = dir.path().join("disks");
    let out = importer(&["copy-ova", s(&ova), s(&to)]);
    assert!(out.status.success(), "{}", out.stderr);
    let lines: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["disk"], format!("vmdisk{}", i + 1));
        assert_eq!(line["bytes_total"], RAW_SIZE as u64);
    }
    for (name, raw) in ["vm-disk1.img", "vm-disk2.img", "vm-disk3.img"]
        .iter()
        .zip(&raws)
    {
        assert_same_files(&to.join(name), raw);
    }

    // By map: only the mapped disks, wherever they are mapped.
    let a = dir.path().join("a.img");
    let b = dir.path().join("b.img");
    let out = importer(&[
        "copy-ova",
        s(&ova),
        "--map",
        &format!("vmdisk3={}", s(&a)),
        "--map",
        &format!("0={}", s(&b)),
    ]);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 2);
    assert_same_files(&a, &raws[2]);
    assert_same_files(&b, &raws[0]);

    // Without a directory or maps, and with a disk mapped twice: one clear line.
    importer(&["copy-ova", s(&ova)]).assert_clean_failure(&["TARGET_DIR", "--map"]);
    importer(&[
        "copy-ova",
        s(&ova),
        "--map",
        &format!("0={}", s(&a)),
        "--map",
        &format!("vmdisk1={}", s(&b)),
    ])
    .assert_clean_failure(&["mapped twice"]);
}

#[test]
fn an_ova_over_http_with_and_without_range() {
    if !require_image_tools() || !require_nginx() {
        return;
    }
    let dir = tempdir();
    let (_, raws, nginx) = served_ova(dir.path());
    let out = dir.path().join("out.img");
    for location in [Location::Range, Location::NoRange] {
        for (i, raw) in raws.iter().enumerate() {
            let _ = std::fs::remove_file(&out);
            let url = nginx.http(location, "vm.ova");
            importer(&["copy", &url, s(&out), "--disk", &i.to_string()]).copy_stats();
            assert_same_files(&out, raw);
        }
    }
    // copy-ova over a stream reads the archive once per disk.
    let to = dir.path().join("streamed");
    let out = importer(&["copy-ova", &nginx.http(Location::NoRange, "vm.ova"), s(&to)]);
    assert!(out.status.success(), "{}", out.stderr);
    assert_same_files(&to.join("vm-disk2.img"), &raws[1]);
}

#[test]
fn broken_ovas_fail_with_one_clear_line() {
    if !require_image_tools() || !require_nginx() {
        return;
    }
    let dir = tempdir();
    let (ova, _) = three_disk_ova(dir.path());
    let out = dir.path().join("out.img");
    let fails = |args: &[&str], phrases: &[&str]| {
        let _ = std::fs::remove_file(&out);
        let mut all = vec!["copy"];
        all.extend_from_slice(args);
        all.push(s(&out));
        importer(&all).assert_clean_failure(phrases);
        assert!(!out.exists(), "{args:?}");
    };
    // More than one disk and no --disk: the disks are listed.
    fails(&[s(&ova)], &["3 disks", "vmdisk2", "--disk"]);
    fails(&[s(&ova), "--disk", "7"], &["--disk 7", "3 disks"]);
    fails(&[s(&ova), "--disk", "nosuch"], &["no such disk"]);
    // --disk of something that is not an OVA.
    let raw = dir.path().join("src0/disk.raw");
    fails(&[s(&raw), "--disk", "0"], &["not one"]);

    // A member the OVF names is missing.
    write_file(
        &dir.path().join("lost.ovf"),
        ovf(&[("gone.vmdk", RAW_SIZE as u64, false)]).as_bytes(),
    );
    let lost = test_kit::images::ova(dir.path(), "lost", &["lost.ovf", "vm-disk1.vmdk"]);
    fails(&[s(&lost)], &["gone.vmdk", "not in the archive"]);

    // Truncated inside a disk: random access finds no footer, a stream ends early.
    let bytes = std::fs::read(&ova).unwrap();
    let cut = dir.path().join("cut.ova");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    fails(&[s(&cut), "--disk", "1"], &["truncated"]);
    let nginx = Nginx::start();
    nginx.put("cut.ova", &bytes[..bytes.len() * 2 / 3]);
    nginx.put("cut1.ova", &bytes[..bytes.len() / 3]);
    fails(
        &[&nginx.http(Location::NoRange, "cut.ova"), "--disk", "2"],
        &["ova"],
    );
    fails(
        &[&nginx.http(Location::NoRange, "cut1.ova"), "--disk", "1"],
        &["truncated"],
    );

    // Read front to back, the descriptor must come first (as the OVF specification says).
    let late = test_kit::images::ova(dir.path(), "late", &["vm-disk1.vmdk", "vm.ovf"]);
    nginx.put("late.ova", &std::fs::read(&late).unwrap());
    fails(
        &[&nginx.http(Location::NoRange, "late.ova"), "--disk", "0"],
        &["first member", "descriptor"],
    );
    // Changed ranges are offsets of the served bytes: no delta into a disk inside an archive.
    fails(
        &[s(&ova), "--disk", "0", "--dirty-bitmap", "b0"],
        &["delta applies to a raw disk"],
    );
    // A tar without a descriptor is not an OVA.
    let plain = test_kit::images::ova(dir.path(), "plain", &["vm-disk1.vmdk"]);
    fails(&[s(&plain)], &["without an .ovf descriptor", "not an OVA"]);
    // A file that is only tar garbage after a valid header.
    let mut junk = bytes[..512].to_vec();
    junk[148..156].copy_from_slice(b"9999999\0");
    junk.extend_from_slice(&[0x55; 4096]);
    let junk_path = dir.path().join("junk.ova");
    std::fs::write(&junk_path, &junk).unwrap();
    fails(&[s(&junk_path), "--format", "ova"], &["ova"]);
}

#[test]
fn images_behind_nbd_are_read_when_their_format_is_named() {
    if !require_image_tools() || !require_peers(&["nbdkit", "qemu-nbd"]) {
        return;
    }
    let dir = tempdir();
    let (ova, raws) = three_disk_ova(dir.path());
    let out = dir.path().join("out.img");
    // NBD serves disks: without --format the archive is copied as it is.
    let peer = Peer::nbdkit(&["file", s(&ova)]);
    let stats = importer(&["copy", &peer.uri(), s(&out)]).copy_stats();
    assert_eq!(stats.bytes_total, std::fs::metadata(&ova).unwrap().len());
    for disk in ["0", "vmdisk2", "2"] {
        let _ = std::fs::remove_file(&out);
        importer(&[
            "copy",
            &peer.uri(),
            s(&out),
            "--format",
            "ova",
            "--disk",
            disk,
        ])
        .copy_stats();
        let i: usize = match disk {
            "vmdisk2" => 1,
            d => d.parse().unwrap(),
        };
        assert_same_files(&out, &raws[i]);
    }
    // A VMDK file exported raw by qemu-nbd, read as a VMDK.
    let image = dir.path().join("vm-disk2.vmdk");
    let qemu = Peer::qemu_nbd(&["-f", "raw", "-r", s(&image)]);
    let _ = std::fs::remove_file(&out);
    importer(&["copy", &qemu.uri(), s(&out), "--format", "vmdk"]).copy_stats();
    assert_same_files(&out, &raws[1]);
}

#[test]
fn streamed_checksums_chunks_and_raw_sizes_are_checked_to_the_end() {
    if !require_image_tools() || !require_nginx() {
        return;
    }
    let dir = tempdir();
    let (ova, raws, nginx) = served_ova(dir.path());
    let out = dir.path().join("out.img");
    // The checksum covers the whole archive, even when the chosen disk ends early in it.
    let sum = run_ok("sha256sum", &[s(&ova)]).stdout;
    let sum = String::from_utf8_lossy(&sum[..64]).to_string();
    let url = nginx.http(Location::NoRange, "vm.ova");
    let good = format!("sha256:{sum}");
    importer(&["copy", &url, s(&out), "--disk", "0", "--checksum", &good]).copy_stats();
    assert_same_files(&out, &raws[0]);
    let _ = std::fs::remove_file(&out);
    let wrong = format!("sha256:{}", "0".repeat(64));
    importer(&["copy", &url, s(&out), "--disk", "0", "--checksum", &wrong])
        .assert_clean_failure(&["checksum mismatch"]);

    // A raw disk in chunks: whole it copies; a chunk missing, or a raw size that is not the
    // OVF's capacity, is an error (from a file and from a stream).
    let raw = std::fs::read(&raws[1]).unwrap();
    let chunk = 16 << 20;
    let mut names = vec!["chunks.ovf".to_string()];
    for (i, c) in raw.chunks(chunk).enumerate() {
        let n = format!("disk.raw.{i:09}");
        write_file(&dir.path().join(&n), c);
        names.push(n);
    }
    let ovf_text = ovf(&[("disk.raw", RAW_SIZE as u64, false)]).replace(
        "ovf:id=\"file1\"",
        &format!(
            "ovf:id=\"file1\" ovf:chunkSize=\"{chunk}\" ovf:size=\"{}\"",
            raw.len()
        ),
    );
    write_file(&dir.path().join("chunks.ovf"), ovf_text.as_bytes());
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let chunked = test_kit::images::ova(dir.path(), "chunked", &refs);
    let _ = std::fs::remove_file(&out);
    importer(&["copy", s(&chunked), s(&out)]).copy_stats();
    assert_same_files(&out, &raws[1]);
    let mut gap = refs.clone();
    gap.remove(2);
    let gapped = test_kit::images::ova(dir.path(), "gapped", &gap);
    let _ = std::fs::remove_file(&out);
    importer(&["copy", s(&gapped), s(&out)]).assert_clean_failure(&["chunk 1 is missing"]);

    write_file(&dir.path().join("whole.raw"), &raw);
    let small = ovf(&[("whole.raw", RAW_SIZE as u64 - 512, false)]);
    write_file(&dir.path().join("small.ovf"), small.as_bytes());
    let mismatch = test_kit::images::ova(dir.path(), "mismatch", &["small.ovf", "whole.raw"]);
    nginx.put("mismatch.ova", &std::fs::read(&mismatch).unwrap());
    for src in [
        s(&mismatch).to_string(),
        nginx.http(Location::NoRange, "mismatch.ova"),
    ] {
        let _ = std::fs::remove_file(&out);
        importer(&["copy", &src, s(&out)]).assert_clean_failure(&["raw disk", "capacity"]);
    }

    // A gzipped OVA: copy-ova reads it; verify compares a compressed raw file to the end.
    let gz = gzip(&ova);
    let to = dir.path().join("from-gz");
    let o = importer(&["copy-ova", s(&gz), s(&to)]);
    assert!(o.status.success(), "{}", o.stderr);
    assert_same_files(&to.join("vm-disk3.img"), &raws[2]);
    let rawgz = gzip(&raws[0]);
    let _ = std::fs::remove_file(&out);
    let stats = importer(&["copy", s(&rawgz), s(&out), "--verify"]).copy_stats();
    assert_eq!(stats.bytes_total, RAW_SIZE as u64);
    importer(&["copy-ova", s(&raws[0]), s(&to)]).assert_clean_failure(&["not an OVA"]);
}
