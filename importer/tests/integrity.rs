//! Integrity checks: `importer copy --verify` reads both sides again after the copy, and
//! `importer checksum` prints a per-range CRC32 manifest that is the same for a source (a real
//! NBD server) and the copy of it, and right by an independent CRC32.

use test_kit::*;

const MIB: usize = 1 << 20;

/// CRC32 (IEEE, reflected 0xEDB88320), bit by bit: slow, and independent of the importer's.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn manifest(disk: &str) -> serde_json::Value {
    let out = importer(&["checksum", "--range-size", "4M", disk]);
    assert!(out.status.success(), "{}", out.stderr);
    serde_json::from_str(out.stdout.trim()).unwrap()
}

#[test]
fn a_verified_copy_has_the_checksums_of_its_source() {
    if !require_peer("qemu-nbd") {
        return;
    }
    let dir = tempdir();
    let raw = dir.path().join("source.raw");
    let mut bytes = disk_bytes(10 * MIB + 4096, 31);
    bytes[3 * MIB..5 * MIB].fill(0);
    write_sparse(&raw, &bytes);
    let server = Peer::qemu_nbd(&["-f", "raw", "-r", "-e", "4", s(&raw)]);
    let target = dir.path().join("copy.img");

    let out = importer(&["copy", "--verify", &server.uri(), s(&target)]);

    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stdout.contains("\"verified\":true"), "{}", out.stdout);
    let (a, b) = (manifest(&server.uri()), manifest(s(&target)));
    assert_eq!(a, b);
    let ranges = a["ranges"].as_array().unwrap();
    assert_eq!(ranges.len(), 3, "{a}");
    for r in ranges {
        let (off, len) = (
            r["offset"].as_u64().unwrap() as usize,
            r["length"].as_u64().unwrap() as usize,
        );
        assert_eq!(
            r["crc32"].as_str().unwrap(),
            format!("{:08x}", crc32(&bytes[off..off + len])),
            "range at {off}"
        );
    }
    assert_eq!(ranges[2]["length"], 2 * MIB + 4096);
}

#[test]
fn a_changed_byte_changes_only_its_ranges_checksum() {
    let dir = tempdir();
    let a = dir.path().join("a.img");
    let b = dir.path().join("b.img");
    let mut bytes = disk_bytes(12 * MIB, 5);
    write_file(&a, &bytes);
    bytes[9 * MIB + 17] ^= 0x40;
    write_file(&b, &bytes);

    let (ma, mb) = (manifest(s(&a)), manifest(s(&b)));

    let (ra, rb) = (
        ma["ranges"].as_array().unwrap(),
        mb["ranges"].as_array().unwrap(),
    );
    assert_eq!(ra[0], rb[0]);
    assert_eq!(ra[1], rb[1]);
    assert_ne!(ra[2], rb[2]);
}
