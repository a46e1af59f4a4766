//! `importer copy` from HTTP and HTTPS sources served by nginx: every copy equals the served file
//! byte for byte, over parallel ranged GETs where the server honours Range and over one stream
//! GET where it does not; HTTPS is trusted through a CA file or directory, `--insecure`, or a
//! pinned SHA-256 or SHA-1 thumbprint in either accepted spelling; `--header` reaches a location
//! that requires it; and `importer verify` of the URL against the copy finds them equal.

use std::path::{Path, PathBuf};

use test_kit::nginx::{plain_hex, require_nginx, Location, Nginx, Tls};
use test_kit::*;

const MIB: usize = 1 << 20;
/// A disk of data, repeated-byte and zero regions (64 KiB chunks).
const DISK: &str = "disk.img";
const DISK_SIZE: usize = 8 * MIB;
/// A disk whose size is not a multiple of 4096 (nor of any request size).
const ODD: &str = "odd.img";
const ODD_SIZE: usize = 3 * MIB + 5 * 4096 + 517;

/// nginx serving [`DISK`] and [`ODD`]; `None` when the peers are missing (SKIP).
fn serve() -> Option<(Nginx, Vec<u8>, Vec<u8>)> {
    if !require_nginx() {
        return None;
    }
    let nginx = Nginx::start();
    let disk = disk_bytes(DISK_SIZE, 11);
    let odd = disk_bytes(ODD_SIZE, 12);
    nginx.put(DISK, &disk);
    nginx.put(ODD, &odd);
    Some((nginx, disk, odd))
}

/// `importer copy [OPTIONS...] URL DIR/target.img`, asserting success; returns the target and
/// the statistics.
fn copy_ok(nginx: &Nginx, dir: &Path, url: &str, options: &[&str]) -> (PathBuf, Stats) {
    let target = dir.join("target.img");
    let mut args = vec!["copy"];
    args.extend_from_slice(options);
    args.extend([url, s(&target)]);
    let out = importer(&args);
    assert!(
        out.status.success(),
        "importer {args:?} failed ({}): {}\nnginx log: {}",
        out.status,
        out.stderr,
        nginx.error_log()
    );
    let stats = out.copy_stats();
    (target, stats)
}

#[test]
fn http_with_range_copies_the_file_over_several_connections() {
    let Some((nginx, disk, _)) = serve() else {
        return;
    };
    let dir = tempdir();

    let (target, stats) = copy_ok(
        &nginx,
        dir.path(),
        &nginx.http(Location::Range, DISK),
        &["--connections", "4"],
    );

    assert_file_holds(&target, &disk);
    assert_eq!(stats.bytes_total, DISK_SIZE as u64);
    assert!(
        stats.connections > 1,
        "Range is honoured: parallel GETs expected: {stats:?}"
    );
    assert!(
        stats.bytes_data > 0 && stats.bytes_zero > 0,
        "zero blocks are found in the read data: {stats:?}"
    );
}

#[test]
fn http_with_range_copies_a_size_that_is_not_a_multiple_of_4096() {
    let Some((nginx, _, odd)) = serve() else {
        return;
    };
    let dir = tempdir();

    let (target, stats) = copy_ok(
        &nginx,
        dir.path(),
        &nginx.http(Location::Range, ODD),
        &["--connections", "3"],
    );

    assert_file_holds(&target, &odd);
    assert_eq!(stats.bytes_total, ODD_SIZE as u64);
    assert!(stats.connections > 1, "{stats:?}");
}

#[test]
fn http_without_range_copies_the_file_over_one_stream() {
    let Some((nginx, disk, _)) = serve() else {
        return;
    };
    let dir = tempdir();

    let (target, stats) = copy_ok(
        &nginx,
        dir.path(),
        &nginx.http(Location::NoRange, DISK),
        &["--connections", "4"],
    );

    assert_file_holds(&target, &disk);
    assert_eq!(
        stats.connections, 1,
        "Range is ignored: one stream GET expected: {stats:?}"
    );
    assert!(stats.bytes_data > 0 && stats.bytes_zero > 0, "{stats:?}");
}

#[test]
fn http_without_range_copies_a_size_that_is_not_a_multiple_of_4096() {
    let Some((nginx, _, odd)) = serve() else {
        return;
    };
    let dir = tempdir();

    let (target, stats) = copy_ok(&nginx, dir.path(), &nginx.http(Location::NoRange, ODD), &[]);

    assert_file_holds(&target, &odd);
    assert_eq!(stats.connections, 1, "{stats:?}");
}

#[test]
fn https_with_cacert_file_copies_the_file() {
    let Some((nginx, disk, _)) = serve() else {
        return;
    };
    let dir = tempdir();
    let ca = nginx.tls().ca_cert();

    let (target, stats) = copy_ok(
        &nginx,
        dir.path(),
        &nginx.https(Location::Range, DISK),
        &["--cacert", s(&ca), "--connections", "4"],
    );

    assert_file_holds(&target, &disk);
    assert!(stats.connections > 1, "{stats:?}");
}

#[test]
fn https_with_cacert_directory_copies_the_file() {
    let Some((nginx, disk, _)) = serve() else {
        return;
    };
    let dir = tempdir();
    // The directory holds the unrelated CA too: every PEM file in it is a root.
    let cas = dir.path().join("cas");
    std::fs::create_dir(&cas).unwrap();
    std::fs::copy(nginx.tls().other_ca_cert(), cas.join("other-ca.pem")).unwrap();
    std::fs::copy(nginx.tls().ca_cert(), cas.join("test-ca.pem")).unwrap();

    let (target, _) = copy_ok(
        &nginx,
        dir.path(),
        &nginx.https(Location::Range, DISK),
        &["--cacert", s(&cas)],
    );

    assert_file_holds(&target, &disk);
}

#[test]
fn https_by_host_name_checks_the_certificate_dns_name() {
    let Some((nginx, _, odd)) = serve() else {
        return;
    };
    let dir = tempdir();
    let ca = nginx.tls().ca_cert();

    let (target, _) = copy_ok(
        &nginx,
        dir.path(),
        &nginx.https_host("localhost", Location::Range, ODD),
        &["--cacert", s(&ca)],
    );

    assert_file_holds(&target, &odd);
}

#[test]
fn https_without_range_copies_the_file_over_one_stream() {
    let Some((nginx, _, odd)) = serve() else {
        return;
    };
    let dir = tempdir();
    let ca = nginx.tls().ca_cert();

    let (target, stats) = copy_ok(
        &nginx,
        dir.path(),
        &nginx.https(Location::NoRange, ODD),
        &["--cacert", s(&ca), "--connections", "4"],
    );

    assert_file_holds(&target, &odd);
    assert_eq!(stats.connections, 1, "{stats:?}");
}

#[test]
fn https_insecure_copies_without_knowing_the_ca() {
    let Some((nginx, disk, _)) = serve() else {
        return;
    };
    let dir = tempdir();

    let (target, _) = copy_ok(
        &nginx,
        dir.path(),
        &nginx.https(Location::Range, DISK),
        &["--insecure"],
    );

    assert_file_holds(&target, &disk);
}

/// Copies [`DISK`] over HTTPS with `--thumbprint PIN`, `pin_of` the server's certificate, and
/// no CA: the pin alone is the trust (the system roots do not know the test CA).
fn copy_pinned(pin_of: impl Fn(&Tls) -> String) {
    let Some((nginx, disk, _)) = serve() else {
        return;
    };
    let dir = tempdir();
    let pin = pin_of(nginx.tls());

    let (target, _) = copy_ok(
        &nginx,
        dir.path(),
        &nginx.https(Location::Range, DISK),
        &["--thumbprint", &pin],
    );

    assert_file_holds(&target, &disk);
}

#[test]
fn https_thumbprint_sha256_with_colons_copies_without_the_ca() {
    copy_pinned(|tls| tls.server_sha256());
}

#[test]
fn https_thumbprint_sha256_plain_lowercase_copies_without_the_ca() {
    copy_pinned(|tls| plain_hex(&tls.server_sha256()));
}

#[test]
fn https_thumbprint_sha1_with_colons_copies_without_the_ca() {
    copy_pinned(|tls| tls.server_sha1());
}

#[test]
fn https_thumbprint_sha1_plain_lowercase_copies_without_the_ca() {
    copy_pinned(|tls| plain_hex(&tls.server_sha1()));
}

#[test]
fn header_option_reaches_a_location_that_requires_it() {
    let Some((nginx, disk, _)) = serve() else {
        return;
    };
    let dir = tempdir();

    let (target, stats) = copy_ok(
        &nginx,
        dir.path(),
        &nginx.http(Location::Secret, DISK),
        &["--header", "X-Ferry-Test: yes", "--connections", "4"],
    );

    assert_file_holds(&target, &disk);
    assert!(
        stats.connections > 1,
        "the header is sent on every ranged GET too: {stats:?}"
    );
}

#[test]
fn verify_finds_the_http_source_equal_to_its_copy() {
    let Some((nginx, _, _)) = serve() else {
        return;
    };
    let dir = tempdir();
    let url = nginx.http(Location::Range, DISK);
    let (target, _) = copy_ok(&nginx, dir.path(), &url, &[]);

    let out = importer(&["verify", &url, s(&target)]);

    assert!(
        out.status.success(),
        "verify failed ({}): {}{}",
        out.status,
        out.stdout,
        out.stderr
    );
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("verify prints JSON ({e}): {:?}", out.stdout));
    assert_eq!(v["equal"], true, "{v}");
}

#[test]
fn verify_finds_the_http_source_different_from_another_disk() {
    let Some((nginx, disk, _)) = serve() else {
        return;
    };
    let dir = tempdir();
    let mut changed = disk.clone();
    changed[5 * MIB + 3] ^= 0x5a;
    let other = dir.path().join("other.img");
    write_file(&other, &changed);

    let out = importer(&["verify", &nginx.http(Location::Range, DISK), s(&other)]);

    assert_eq!(out.status.code(), Some(1), "{}{}", out.stdout, out.stderr);
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("verify prints JSON ({e}): {:?}", out.stdout));
    assert_eq!(v["equal"], false, "{v}");
    assert_eq!(v["first_difference"], 5 * MIB + 3, "{v}");
}
