//! `importer copy` and `importer verify` against real NBD servers (nbdkit, qemu-nbd, nbd-server):
//! every copy is compared byte for byte with the source and with what `nbdcopy` makes of the same
//! URI, and the statistics line is checked against what the source holds.

use std::os::unix::fs::FileExt;
use std::path::Path;

use test_kit::*;

const MIB: usize = 1 << 20;
const BLOCK: usize = 4096;

/// Bytes in 4 KiB blocks that hold at least one non-zero byte (what the engine writes as data).
fn data_block_bytes(bytes: &[u8]) -> u64 {
    bytes
        .chunks(BLOCK)
        .filter(|b| b.iter().any(|&x| x != 0))
        .map(|b| b.len() as u64)
        .sum()
}

/// Writes of a qemu test image: `(Some(byte), offset, len)` fills with a byte, `(None, ..)`
/// writes zeros (`qemu-io write -z`), applied in order.
const QEMU_LAYOUT: &[(Option<u8>, usize, usize)] = &[
    (Some(0xab), 0, MIB),
    (Some(0xcd), 5 * MIB, 64 << 10),
    (Some(0xee), 6 * MIB, 2 * MIB),
    (None, 6 * MIB + 512 * 1024, 512 * 1024),
    (Some(0x01), 12 * MIB + 3 * BLOCK + 100, 10),
    (Some(0x5a), 24 * MIB - 8192, 8192),
];
const QEMU_SIZE: usize = 24 * MIB;

/// Creates `path` in `format` with [`QEMU_LAYOUT`] written through qemu-io; returns the bytes the
/// image holds.
fn qemu_image(path: &Path, format: &str) -> Vec<u8> {
    run_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            format,
            s(path),
            &QEMU_SIZE.to_string(),
        ],
    );
    let mut args = vec!["-f".to_owned(), format.to_owned()];
    let mut expected = vec![0u8; QEMU_SIZE];
    for &(byte, offset, len) in QEMU_LAYOUT {
        let cmd = match byte {
            Some(b) => format!("write -P {b:#x} {offset} {len}"),
            None => format!("write -z {offset} {len}"),
        };
        args.extend(["-c".to_owned(), cmd]);
        expected[offset..offset + len].fill(byte.unwrap_or(0));
    }
    args.push(s(path).to_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_ok("qemu-io", &args);
    expected
}

/// A sparse raw file of `size` bytes from [`disk_bytes`]; returns its path and bytes.
fn source_file(dir: &Path, size: usize, seed: u64) -> (std::path::PathBuf, Vec<u8>) {
    let path = dir.join("source.raw");
    let bytes = disk_bytes(size, seed);
    write_sparse(&path, &bytes);
    (path, bytes)
}

/// Offset 12345 bytes into the first 64 KiB chunk at or after 3 MiB for which `pred` holds.
fn offset_in_chunk(bytes: &[u8], pred: impl Fn(&[u8]) -> bool) -> u64 {
    let chunk = 64 << 10;
    let i = bytes
        .chunks(chunk)
        .enumerate()
        .skip(3 * MIB / chunk)
        .find(|(_, c)| pred(c))
        .map(|(i, _)| i)
        .expect("a chunk of the wanted kind");
    (i * chunk + 12345) as u64
}

fn flip_byte(path: &Path, offset: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("opening the target");
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).expect("reading a byte");
    f.write_all_at(&[b[0] ^ 0xff], offset)
        .expect("writing a byte");
}

#[test]
fn nbdkit_memory_copy_equals_the_written_bytes_and_nbdcopy() {
    if !require_peers(&["nbdkit", "nbdcopy"]) {
        return;
    }
    let dir = tempdir();
    let (src, bytes) = source_file(dir.path(), 24 * MIB, 1);
    let peer = Peer::nbdkit(&["memory", "size=24M"]);
    nbdcopy(s(&src), Path::new(&peer.uri()));

    let (target, stats) = copy_matching_nbdcopy(&peer.uri(), dir.path());

    assert_file_holds(&target, &bytes);
    assert_eq!(stats.bytes_total, bytes.len() as u64);
}

#[test]
fn nbdkit_sparse_random_copy_equals_the_source_and_nbdcopy_over_several_connections() {
    if !require_peers(&["nbdkit", "nbdcopy", "qemu-img"]) {
        return;
    }
    let dir = tempdir();
    let peer = Peer::nbdkit(&[
        "sparse-random",
        "size=32M",
        "seed=4242",
        "percent=50",
        "runlength=1048576",
    ]);

    let (target, stats) = copy_matching_nbdcopy(&peer.uri(), dir.path());

    // qemu's own NBD client compares the live source with the copy.
    run_ok(
        "qemu-img",
        &[
            "compare",
            "-q",
            "-f",
            "raw",
            "-F",
            "raw",
            &peer.uri(),
            s(&target),
        ],
    );
    assert!(
        stats.connections > 1,
        "sparse-random advertises multi-conn: {stats:?}"
    );
    assert!(stats.bytes_data > 0 && stats.bytes_zero > 0, "{stats:?}");
}

/// A target on tmpfs is written by the copying tasks themselves (the `inline` engine: no writer
/// threads, no writeback window), and ends identical to nbdcopy's copy.
#[test]
fn a_target_on_tmpfs_is_written_inline_and_equals_nbdcopy() {
    if !require_peers(&["nbdkit", "nbdcopy"]) {
        return;
    }
    let Some(tmpfs) = test_kit::host::Tmpfs::mount("128M") else {
        return;
    };
    let peer = Peer::nbdkit(&["sparse-random", "size=48M", "seed=77", "percent=40"]);
    let target = tmpfs.path().join("disk.img");
    let out = importer(&["copy", &peer.uri(), s(&target)]);
    assert!(out.status.success(), "importer: {}", out.stderr);
    let summary: serde_json::Value =
        serde_json::from_str(out.stdout.trim().lines().last().unwrap_or("")).expect("JSON line");
    assert_eq!(summary["io_engine"], "inline", "{}", out.stdout);
    let reference = tmpfs.path().join("nbdcopy.img");
    nbdcopy(&peer.uri(), &reference);
    assert_same_files(&target, &reference);

    // Asked for, the pwrite threads write the same bytes there.
    let threads = tmpfs.path().join("pwrite.img");
    let out = importer(&["copy", &peer.uri(), s(&threads), "--io-engine", "pwrite"]);
    assert!(out.status.success(), "importer: {}", out.stderr);
    assert!(
        out.stdout.contains("\"io_engine\":\"pwrite\""),
        "{}",
        out.stdout
    );
    assert_same_files(&threads, &reference);
}

#[test]
fn nbdkit_pattern_copy_equals_the_pattern_and_nbdcopy() {
    if !require_peers(&["nbdkit", "nbdcopy"]) {
        return;
    }
    let dir = tempdir();
    let peer = Peer::nbdkit(&["pattern", "size=32M"]);

    let (target, stats) = copy_matching_nbdcopy(&peer.uri(), dir.path());

    let expected = pattern_bytes(32 * MIB);
    assert_file_holds(&target, &expected);
    assert_eq!(stats.bytes_data, data_block_bytes(&expected));
}

#[test]
fn nbdkit_data_disk_of_odd_size_copies_to_the_last_byte() {
    if !require_peers(&["nbdkit", "nbdcopy"]) {
        return;
    }
    let dir = tempdir();
    let size = 5_000_003usize;
    let peer = Peer::nbdkit(&[
        "data",
        "data=( 0x41 0x42 \"ferry\" )*1000 @1048576 0x55*70000 @4999990 \"0123456789abc\"",
        &format!("size={size}"),
    ]);
    let mut expected = vec![0u8; size];
    for rep in expected[..7000].chunks_mut(7) {
        rep.copy_from_slice(b"ABferry");
    }
    expected[MIB..MIB + 70000].fill(0x55);
    expected[4_999_990..].copy_from_slice(b"0123456789abc");

    let (target, stats) = copy_matching_nbdcopy(&peer.uri(), dir.path());

    assert_ne!(size % BLOCK, 0);
    assert_file_holds(&target, &expected);
    assert_eq!(stats.bytes_total, size as u64);
    assert_eq!(stats.bytes_data, data_block_bytes(&expected));
}

#[test]
fn qemu_nbd_raw_copy_equals_the_image_and_nbdcopy() {
    if !require_peers(&["qemu-nbd", "qemu-img", "qemu-io", "nbdcopy"]) {
        return;
    }
    let dir = tempdir();
    let image = dir.path().join("disk.raw");
    let expected = qemu_image(&image, "raw");
    let peer = Peer::qemu_nbd(&["-f", "raw", "-e", "8", s(&image)]);

    let (target, _) = copy_matching_nbdcopy(&peer.uri(), dir.path());

    assert_same_files(&target, &image);
    assert_file_holds(&target, &expected);
}

#[test]
fn qemu_nbd_qcow2_copy_equals_the_written_data_and_nbdcopy() {
    if !require_peers(&["qemu-nbd", "qemu-img", "qemu-io", "nbdcopy"]) {
        return;
    }
    let dir = tempdir();
    let image = dir.path().join("disk.qcow2");
    let expected = qemu_image(&image, "qcow2");
    let peer = Peer::qemu_nbd(&["-f", "qcow2", "-e", "8", s(&image)]);

    let (target, stats) = copy_matching_nbdcopy(&peer.uri(), dir.path());

    assert_file_holds(&target, &expected);
    assert_eq!(stats.bytes_total, QEMU_SIZE as u64);
    assert_eq!(stats.bytes_data, data_block_bytes(&expected));
}

#[test]
fn qemu_nbd_export_without_multi_conn_is_read_over_one_connection() {
    if !require_peers(&["qemu-nbd", "qemu-img", "qemu-io", "nbdcopy"]) {
        return;
    }
    let dir = tempdir();
    let image = dir.path().join("disk.qcow2");
    let expected = qemu_image(&image, "qcow2");
    // Without -e, qemu-nbd serves one client and does not advertise multi-conn.
    let peer = Peer::qemu_nbd(&["-f", "qcow2", s(&image)]);

    let (target, stats) = copy_matching_nbdcopy(&peer.uri(), dir.path());

    assert_eq!(stats.connections, 1, "{stats:?}");
    assert_file_holds(&target, &expected);
}

#[test]
fn nbd_server_named_export_over_tcp_copy_equals_the_file_and_nbdcopy() {
    if !require_peers(&["nbd-server", "nbdcopy"]) {
        return;
    }
    let dir = tempdir();
    let (src, bytes) = source_file(dir.path(), 16 * MIB, 2);
    let peer = Peer::nbd_server(&[("disk", &src)]);

    let (target, stats) = copy_matching_nbdcopy(&peer.uri_for("disk"), dir.path());

    assert_file_holds(&target, &bytes);
    assert_eq!(stats.bytes_total, bytes.len() as u64);
}

#[test]
fn server_without_structured_replies_copy_equals_the_file_and_nbdcopy() {
    if !require_peers(&["nbdkit", "nbdcopy"]) {
        return;
    }
    let dir = tempdir();
    let (src, bytes) = source_file(dir.path(), 16 * MIB, 3);
    let peer = Peer::nbdkit(&["--no-sr", "file", &format!("file={}", s(&src))]);

    let (target, stats) = copy_matching_nbdcopy(&peer.uri(), dir.path());

    assert_file_holds(&target, &bytes);
    assert_eq!(stats.bytes_data, data_block_bytes(&bytes));
}

#[test]
fn server_without_block_status_copy_equals_the_file_and_detects_zero_blocks() {
    if !require_peers(&["nbdkit", "nbdcopy"]) {
        return;
    }
    let dir = tempdir();
    let (src, bytes) = source_file(dir.path(), 16 * MIB, 4);
    let peer = Peer::nbdkit(&["--filter=noextents", "file", &format!("file={}", s(&src))]);

    let (target, stats) = copy_matching_nbdcopy(&peer.uri(), dir.path());

    assert_file_holds(&target, &bytes);
    // Every byte arrives as data; the all-zero blocks among them are still not written.
    assert_eq!(stats.bytes_data, data_block_bytes(&bytes));
    assert!(allocated_bytes(&target) < bytes.len() as u64, "{stats:?}");
}

#[test]
fn server_without_multi_conn_is_read_over_one_connection() {
    if !require_peers(&["nbdkit", "nbdcopy"]) {
        return;
    }
    let dir = tempdir();
    let (src, bytes) = source_file(dir.path(), 16 * MIB, 5);
    let peer = Peer::nbdkit(&[
        "--filter=multi-conn",
        "file",
        &format!("file={}", s(&src)),
        "multi-conn-mode=disable",
    ]);

    let (target, stats) = copy_matching_nbdcopy(&peer.uri(), dir.path());

    assert_eq!(stats.connections, 1, "{stats:?}");
    assert_file_holds(&target, &bytes);
}

#[test]
fn copy_prints_one_json_line_counting_data_and_zero_bytes_of_the_source() {
    if !require_peer("nbdkit") {
        return;
    }
    let dir = tempdir();
    let (src, bytes) = source_file(dir.path(), 16 * MIB, 6);
    let peer = Peer::nbdkit(&["file", &format!("file={}", s(&src))]);
    let target = dir.path().join("target.img");

    let stats = importer_copy(&peer.uri(), &target);

    let data = data_block_bytes(&bytes);
    assert_eq!(stats.bytes_total, bytes.len() as u64);
    assert_eq!(stats.bytes_data, data);
    assert_eq!(stats.bytes_zero, bytes.len() as u64 - data);
}

#[test]
fn new_target_from_a_half_sparse_source_keeps_the_holes() {
    if !require_peer("nbdkit") {
        return;
    }
    let dir = tempdir();
    let size = 32 * MIB as u64;
    let peer = Peer::nbdkit(&["data", "data=0x5a*16777216", &format!("size={size}")]);
    let target = dir.path().join("target.img");

    let stats = importer_copy(&peer.uri(), &target);

    let allocated = allocated_bytes(&target);
    assert_eq!(stats.bytes_data, size / 2);
    assert_eq!(target.metadata().unwrap().len(), size);
    assert!(allocated >= size / 2, "data must be allocated: {allocated}");
    assert!(
        allocated < size * 3 / 4,
        "the zero half must stay holes: {allocated} of {size} bytes allocated"
    );
}

#[test]
fn verify_of_a_copy_against_its_source_exits_zero() {
    if !require_peer("nbdkit") {
        return;
    }
    let dir = tempdir();
    let (src, _) = source_file(dir.path(), 16 * MIB, 7);
    let peer = Peer::nbdkit(&["file", &format!("file={}", s(&src))]);
    let target = dir.path().join("target.img");
    importer_copy(&peer.uri(), &target);

    let out = importer(&["verify", &peer.uri(), s(&target)]);

    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout.trim(), r#"{"equal":true}"#);
    assert_eq!(out.stderr.trim(), "");
}

/// Copies a 16 MiB source, flips the byte at the offset `pick` chooses in the target, and
/// asserts that `importer verify` exits 1 naming exactly that offset.
fn assert_verify_finds_flipped_byte(seed: u64, pick: impl Fn(&[u8]) -> bool) {
    let dir = tempdir();
    let (src, bytes) = source_file(dir.path(), 16 * MIB, seed);
    let peer = Peer::nbdkit(&["file", &format!("file={}", s(&src))]);
    let target = dir.path().join("target.img");
    importer_copy(&peer.uri(), &target);
    let offset = offset_in_chunk(&bytes, pick);
    flip_byte(&target, offset);

    let out = importer(&["verify", &peer.uri(), s(&target)]);

    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("JSON on stdout");
    assert_eq!(v["equal"], false);
    assert_eq!(v["first_difference"].as_u64(), Some(offset));
    let lines: Vec<&str> = out.stderr.trim().lines().collect();
    assert_eq!(lines.len(), 1, "{:?}", out.stderr);
    assert!(
        lines[0].contains(&format!("differ at offset {offset}")),
        "{lines:?}"
    );
}

#[test]
fn verify_names_the_offset_of_a_flipped_data_byte_and_exits_one() {
    if !require_peer("nbdkit") {
        return;
    }
    assert_verify_finds_flipped_byte(8, |c| c.iter().any(|&b| b != 0));
}

#[test]
fn verify_names_the_offset_of_a_byte_written_into_a_hole_and_exits_one() {
    if !require_peer("nbdkit") {
        return;
    }
    assert_verify_finds_flipped_byte(9, |c| c.iter().all(|&b| b == 0));
}
