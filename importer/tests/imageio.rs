//! `importer copy` from oVirt imageio tickets served by the real ovirt-imageio daemon: a
//! file-backed ticket over HTTP and over HTTPS (trusted through `--cacert`) copies byte for byte
//! and `importer verify` agrees; an NBD-backed ticket of a sparse qcow2 copies like
//! `qemu-img convert -O raw` and downloads only the allocated data; unknown and expired tickets
//! fail in one line naming the 403; and the dirty extents of a ticket on a qcow2 with a bitmap
//! are exactly the ranges written after the bitmap was added.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::imageio::{
    qcow2_create, qcow2_to_raw, qcow2_write, require_imageio, Imageio, NbdExport, Ticket,
};
use common::*;
use transfer_core::http::HttpOptions;
use transfer_core::source::imageio::ImageioSource;
use transfer_core::BlockSource;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// A disk of data, repeated-byte and zero regions, with a size that is no multiple of 4096.
const DISK_SIZE: usize = 6 * MIB as usize + 3 * 4096 + 517;

/// A daemon (TLS or not) with a file-backed ticket `file-ticket` on a disk of [`DISK_SIZE`].
fn file_ticket(tls: bool, dir: &Path) -> Option<(Imageio, Vec<u8>)> {
    if !require_imageio() {
        return None;
    }
    let daemon = Imageio::start(tls);
    let disk = disk_bytes(DISK_SIZE, 21);
    let path = dir.join("disk.raw");
    write_sparse(&path, &disk);
    daemon.add_ticket(&Ticket {
        id: "file-ticket",
        size: DISK_SIZE as u64,
        url: format!("file://{}", s(&path)),
        timeout: 300,
        dirty: false,
    });
    Some((daemon, disk))
}

/// `importer copy [OPTIONS...] imageio+URL DIR/target.img`, asserting success.
fn copy_ok(daemon: &Imageio, dir: &Path, url: &str, options: &[&str]) -> (PathBuf, Stats) {
    let target = dir.join("target.img");
    let source = format!("imageio+{url}");
    let mut args = vec!["copy"];
    args.extend_from_slice(options);
    args.extend([source.as_str(), s(&target)]);
    let out = importer(&args);
    assert!(
        out.status.success(),
        "importer {args:?} failed ({}): {}\nimageio log: {}",
        out.status,
        out.stderr,
        daemon.logs()
    );
    let stats = out.copy_stats();
    (target, stats)
}

#[test]
fn file_ticket_over_http_copies_the_file_and_verify_agrees() {
    let dir = tempdir();
    let Some((daemon, disk)) = file_ticket(false, dir.path()) else {
        return;
    };
    let url = daemon.url("file-ticket");

    let (target, stats) = copy_ok(&daemon, dir.path(), &url, &["--connections", "4"]);
    let verify = importer(&["verify", &format!("imageio+{url}"), s(&target)]);

    assert_file_holds(&target, &disk);
    assert_eq!(stats.bytes_total, DISK_SIZE as u64);
    assert!(
        stats.connections > 1,
        "max_readers allows parallel readers: {stats:?}"
    );
    assert!(
        verify.status.success(),
        "{}{}",
        verify.stdout,
        verify.stderr
    );
    let v: serde_json::Value = serde_json::from_str(verify.stdout.trim())
        .unwrap_or_else(|e| panic!("verify prints JSON ({e}): {:?}", verify.stdout));
    assert_eq!(v["equal"], true, "{v}");
}

#[test]
fn file_ticket_over_https_with_cacert_copies_the_file() {
    let dir = tempdir();
    let Some((daemon, disk)) = file_ticket(true, dir.path()) else {
        return;
    };
    let ca = daemon.tls().ca_cert();

    let (target, stats) = copy_ok(
        &daemon,
        dir.path(),
        &daemon.url("file-ticket"),
        &["--cacert", s(&ca), "--connections", "4"],
    );

    assert_file_holds(&target, &disk);
    assert_eq!(stats.bytes_total, DISK_SIZE as u64);
}

#[test]
fn source_kind_imageio_reads_a_plain_https_ticket_url() {
    let dir = tempdir();
    let Some((daemon, disk)) = file_ticket(true, dir.path()) else {
        return;
    };
    let target = dir.path().join("plain.img");
    let ca = daemon.tls().ca_cert();

    let out = importer(&[
        "copy",
        "--source-kind",
        "imageio",
        "--cacert",
        s(&ca),
        &daemon.url("file-ticket"),
        s(&target),
    ]);

    out.copy_stats();
    assert_file_holds(&target, &disk);
}

#[test]
fn nbd_ticket_of_a_sparse_qcow2_downloads_only_the_data() {
    if !require_imageio() {
        return;
    }
    let dir = tempdir();
    let image = dir.path().join("disk.qcow2");
    let size = 16 * MIB;
    qcow2_create(&image, size);
    // 1.5 MiB of data in three places, 1 MiB written as zeros (allocated zero clusters); the
    // rest is unallocated.
    qcow2_write(
        &image,
        &[
            (0, MIB, 0x11),
            (5 * MIB, 256 * KIB, 0x22),
            (9 * MIB + 256 * KIB, 256 * KIB, 0x33),
        ],
    );
    run_ok(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -q -z 12M 1M", s(&image)],
    );
    let data = MIB + 512 * KIB;
    let reference = dir.path().join("reference.raw");
    qcow2_to_raw(&image, &reference);
    let export = NbdExport::qcow2(&image, None);
    let daemon = Imageio::start(false);
    daemon.add_ticket(&Ticket {
        id: "nbd-ticket",
        size,
        url: export.ticket_url(),
        timeout: 300,
        dirty: false,
    });

    let (target, stats) = copy_ok(
        &daemon,
        dir.path(),
        &daemon.url("nbd-ticket"),
        &["--connections", "4"],
    );

    assert_same_files(&target, &reference);
    assert_eq!(stats.bytes_total, size);
    assert_eq!(
        stats.bytes_data, data,
        "only the allocated data is downloaded: {stats:?}"
    );
    assert_eq!(stats.bytes_zero, size - data, "{stats:?}");
}

#[test]
fn unknown_ticket_fails_with_a_403_line() {
    if !require_imageio() {
        return;
    }
    let dir = tempdir();
    let daemon = Imageio::start(false);
    let target = dir.path().join("target.img");

    let out = importer(&[
        "copy",
        &format!("imageio+{}", daemon.url("no-such-ticket")),
        s(&target),
    ]);

    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    out.assert_clean_failure(&["403", "ticket"]);
    assert!(!target.exists(), "a failed open leaves no target");
}

#[test]
fn expired_ticket_fails_with_a_403_line() {
    let dir = tempdir();
    if !require_imageio() {
        return;
    }
    let daemon = Imageio::start(false);
    let path = dir.path().join("disk.raw");
    write_file(&path, &disk_bytes(MIB as usize, 3));
    daemon.add_ticket(&Ticket {
        id: "short-ticket",
        size: MIB,
        url: format!("file://{}", s(&path)),
        timeout: 1,
        dirty: false,
    });
    std::thread::sleep(Duration::from_millis(2500));
    let target = dir.path().join("target.img");

    let out = importer(&[
        "copy",
        &format!("imageio+{}", daemon.url("short-ticket")),
        s(&target),
    ]);

    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    out.assert_clean_failure(&["403", "ticket"]);
}

#[test]
fn dirty_extents_are_the_ranges_written_after_the_bitmap() {
    if !require_imageio() {
        return;
    }
    let dir = tempdir();
    let image = dir.path().join("disk.qcow2");
    let size = 8 * MIB;
    qcow2_create(&image, size);
    qcow2_write(&image, &[(0, 2 * MIB, 0x44)]);
    run_ok("qemu-img", &["bitmap", "--add", s(&image), "b1"]);
    // Two adjacent writes (merged), one on its own, one of zeros: all dirty; 64 KiB aligned,
    // the bitmap's granularity.
    qcow2_write(
        &image,
        &[
            (MIB, 64 * KIB, 0x55),
            (MIB + 64 * KIB, 128 * KIB, 0x56),
            (4 * MIB + 192 * KIB, 320 * KIB, 0x66),
        ],
    );
    run_ok(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -q -z 7M 64K", s(&image)],
    );
    let export = NbdExport::qcow2(&image, Some("b1"));
    let daemon = Imageio::start(false);
    daemon.add_ticket(&Ticket {
        id: "dirty-ticket",
        size,
        url: export.ticket_url(),
        timeout: 300,
        dirty: true,
    });
    let opts = HttpOptions::default();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");

    let (src_size, dirty) = rt.block_on(async {
        let src = ImageioSource::open_uri(&daemon.url("dirty-ticket"), &opts, 4)
            .await
            .unwrap_or_else(|e| panic!("opening the ticket: {e}\n{}", daemon.logs()));
        let dirty = src
            .dirty_extents()
            .await
            .unwrap_or_else(|e| panic!("dirty extents: {e}\n{}", daemon.logs()));
        (src.size(), dirty)
    });

    assert_eq!(src_size, size);
    assert_eq!(
        dirty,
        vec![
            (MIB, 192 * KIB),
            (4 * MIB + 192 * KIB, 320 * KIB),
            (7 * MIB, 64 * KIB),
        ]
    );
}
