//! HTTP bodies read as one stream: gzip and xz decompressed on the fly (size learnt at the end),
//! `--checksum` over the received bytes, the KubeVirt export token, and refusals by magic.

use std::path::Path;
use std::process::Command;

use test_kit::nginx::{require_nginx, Location, Nginx, EXPORT_TOKEN};
use test_kit::*;

const DISK_SIZE: usize = 6 * (1 << 20) + 12345;

fn compress(tool: &str, bytes: &[u8], dir: &Path) -> Vec<u8> {
    let raw = dir.join("raw.bin");
    std::fs::write(&raw, bytes).unwrap();
    let out = Command::new(tool).arg("-c").arg(&raw).output().unwrap();
    assert!(out.status.success(), "{tool} failed");
    out.stdout
}

fn sha256_hex(bytes: &[u8]) -> String {
    let dir = tempdir();
    let p = dir.path().join("x");
    std::fs::write(&p, bytes).unwrap();
    let out = Command::new("sha256sum").arg(&p).output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

fn serve() -> Option<(Nginx, Vec<u8>, tempfile::TempDir)> {
    if !require_nginx() {
        return None;
    }
    let nginx = Nginx::start();
    let dir = tempdir();
    let disk = disk_bytes(DISK_SIZE, 21);
    nginx.put("disk.img", &disk);
    nginx.put("disk.img.gz", &compress("gzip", &disk, dir.path()));
    nginx.put("disk.img.xz", &compress("xz", &disk, dir.path()));
    Some((nginx, disk, dir))
}

fn copy_ok(url: &str, options: &[&str], dir: &Path) -> (Vec<u8>, Stats) {
    let target = dir.join("target.img");
    let mut args = vec!["copy"];
    args.extend_from_slice(options);
    args.extend([url, s(&target)]);
    let out = importer(&args);
    assert!(out.status.success(), "importer {args:?}: {}", out.stderr);
    (std::fs::read(&target).unwrap(), out.copy_stats())
}

#[test]
fn gzip_body_from_a_range_server_is_decompressed_as_one_stream() {
    let Some((nginx, disk, dir)) = serve() else {
        return;
    };
    let (got, stats) = copy_ok(&nginx.http(Location::Range, "disk.img.gz"), &[], dir.path());
    assert!(got == disk);
    assert_eq!(stats.bytes_total, DISK_SIZE as u64);
    assert_eq!(stats.connections, 1);
}

#[test]
fn xz_body_without_range_is_decompressed() {
    let Some((nginx, disk, dir)) = serve() else {
        return;
    };
    let (got, stats) = copy_ok(
        &nginx.http(Location::NoRange, "disk.img.xz"),
        &[],
        dir.path(),
    );
    assert!(got == disk);
    assert_eq!(stats.bytes_total, DISK_SIZE as u64);
}

#[test]
fn gzip_over_https_with_a_matching_checksum_of_the_compressed_bytes_copies() {
    let Some((nginx, disk, dir)) = serve() else {
        return;
    };
    let gz = std::fs::read(nginx.put_path("disk.img.gz")).unwrap();
    let sum = format!("sha256:{}", sha256_hex(&gz));
    let ca = nginx.tls().ca_cert();
    let (got, _) = copy_ok(
        &nginx.https(Location::Range, "disk.img.gz"),
        &["--cacert", s(&ca), "--checksum", &sum],
        dir.path(),
    );
    assert!(got == disk);
}

#[test]
fn raw_body_with_a_matching_checksum_copies() {
    let Some((nginx, disk, dir)) = serve() else {
        return;
    };
    let sum = format!("sha256:{}", sha256_hex(&disk));
    let (got, stats) = copy_ok(
        &nginx.http(Location::Range, "disk.img"),
        &["--checksum", &sum],
        dir.path(),
    );
    assert!(got == disk);
    assert_eq!(stats.connections, 1);
}

#[test]
fn checksum_mismatch_fails_the_copy_and_leaves_no_target() {
    let Some((nginx, _, dir)) = serve() else {
        return;
    };
    let target = dir.path().join("target.img");
    let sum = format!("sha256:{}", "0".repeat(64));
    let url = nginx.http(Location::Range, "disk.img");
    let out = importer(&["copy", "--checksum", &sum, &url, s(&target)]);
    out.assert_clean_failure(&["checksum mismatch"]);
    assert!(!target.exists());
}

#[test]
fn truncated_gzip_body_fails_the_copy() {
    let Some((nginx, _, dir)) = serve() else {
        return;
    };
    let gz = std::fs::read(nginx.put_path("disk.img.gz")).unwrap();
    nginx.put("cut.img.gz", &gz[..gz.len() / 2]);
    let target = dir.path().join("target.img");
    let out = importer(&[
        "copy",
        &nginx.http(Location::Range, "cut.img.gz"),
        s(&target),
    ]);
    out.assert_clean_failure(&["gzip"]);
    assert!(!target.exists());
}

#[test]
fn export_token_file_reaches_a_kubevirt_style_export() {
    let Some((nginx, disk, dir)) = serve() else {
        return;
    };
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{EXPORT_TOKEN}\n")).unwrap();
    let (got, _) = copy_ok(
        &nginx.http(Location::Export, "disk.img.gz"),
        &["--token-file", s(&token)],
        dir.path(),
    );
    assert!(got == disk);
}

#[test]
fn wrong_export_token_fails_without_echoing_it() {
    let Some((nginx, _, dir)) = serve() else {
        return;
    };
    let token = dir.path().join("token");
    std::fs::write(&token, "not-the-token-9f2c").unwrap();
    let target = dir.path().join("target.img");
    let out = importer(&[
        "copy",
        "--token-file",
        s(&token),
        &nginx.http(Location::Export, "disk.img"),
        s(&target),
    ]);
    out.assert_clean_failure(&["HTTP 403"]);
    assert!(!out.stderr.contains("not-the-token-9f2c"));
}

#[test]
fn a_damaged_qcow2_body_is_refused_and_one_without_range_too() {
    let Some((nginx, _, dir)) = serve() else {
        return;
    };
    // Only the magic and a version: no cluster size, no tables.
    let mut q = b"QFI\xfb\x00\x00\x00\x03".to_vec();
    q.resize(1 << 16, 0);
    nginx.put("disk.qcow2", &q);
    let target = dir.path().join("target.img");
    let out = importer(&[
        "copy",
        &nginx.http(Location::Range, "disk.qcow2"),
        s(&target),
    ]);
    out.assert_clean_failure(&["qcow2", "cluster_bits"]);
    assert!(!target.exists());

    // A qcow2 image is read with random access, which a server without Range cannot give.
    let out = importer(&[
        "copy",
        &nginx.http(Location::NoRange, "disk.qcow2"),
        s(&target),
    ]);
    out.assert_clean_failure(&["qcow2", "does not honour Range"]);
    assert!(!target.exists());
}
