//! Inputs the fuzz targets in `fuzz/` found (or confirmed) to break a parser, fed to the public
//! API: each test names its target and says what the input did before the fix.
#![cfg(feature = "http")]

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use transfer_core::buffer::Buffer;
use transfer_core::source::nbd::proto::{
    CHUNK_BLOCK_STATUS, CHUNK_OFFSET_DATA, CHUNK_OFFSET_HOLE, REPLY_FLAG_DONE,
    STRUCTURED_REPLY_MAGIC, TF_HAS_FLAGS, TF_READ_ONLY,
};
use transfer_core::source::nbd::{Connection, ExportInfo};
use transfer_core::{ErrorKind, Extent, ExtentKind};

/// Longer than any answer takes; a request still waiting then would wait forever.
const HANG: Duration = Duration::from_secs(10);

/// A connection to an in-memory NBD server of `size` bytes, with structured replies and
/// `base:allocation` as context 1.
fn connection(size: u64) -> (Arc<Connection>, DuplexStream) {
    let (client, server) = tokio::io::duplex(1 << 20);
    let (r, w) = tokio::io::split(client);
    let info = ExportInfo {
        size,
        flags: TF_HAS_FLAGS | TF_READ_ONLY,
        block_min: 1,
        block_preferred: 4096,
        block_max: 32 << 20,
        structured: true,
        base_allocation: Some(1),
        dirty_bitmap: None,
    };
    let conn = Connection::start(
        info,
        "fuzz regression".into(),
        Box::new(r),
        Box::new(w),
        transfer_core::source::nbd::DEFAULT_IDLE_TIMEOUT,
    );
    (Arc::new(conn), server)
}

/// The cookie of the next request the server receives.
async fn cookie(server: &mut DuplexStream) -> u64 {
    let mut h = [0u8; 28];
    server.read_exact(&mut h).await.unwrap();
    u64::from_be_bytes(h[8..16].try_into().unwrap())
}

fn chunk(flags: u16, kind: u16, cookie: u64, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(&cookie.to_be_bytes());
    m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    m.extend_from_slice(payload);
    m
}

/// Two reads in flight; the first is answered with `bad` (a chunk for offset 2^64 - 4, which
/// wrapped the bounds check around). Before the fix the reply reader panicked on the buffer
/// slice (or, with overflow checks, on the addition), the first read ended as "connection
/// closed" and the second waited forever.
async fn both_reads_fail_on(bad: impl Fn(u64) -> Vec<u8>) {
    let (conn, mut server) = connection(1 << 20);
    let c = conn.clone();
    let first = tokio::spawn(async move { c.read(0, Buffer::new(4096)).await });
    let one = cookie(&mut server).await;
    let c = conn.clone();
    let second = tokio::spawn(async move { c.read(4096, Buffer::new(4096)).await });
    cookie(&mut server).await;
    server.write_all(&bad(one)).await.unwrap();

    let results = tokio::time::timeout(HANG, async {
        (first.await.unwrap(), second.await.unwrap())
    })
    .await
    .expect("both reads end");

    for r in [results.0, results.1] {
        let e = r.expect_err("a chunk outside its request fails the reads");
        assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    }
}

#[tokio::test]
async fn nbd_data_chunk_at_offset_2_64_minus_4_fails_the_reads_without_a_panic() {
    // nbd_replies: flags 1, size 1 MiB, a DONE data chunk for cookie 1 at 2^64 - 4, 8 bytes.
    both_reads_fail_on(|cookie| {
        let mut p = (u64::MAX - 3).to_be_bytes().to_vec();
        p.extend_from_slice(b"AAAAAAAA");
        chunk(REPLY_FLAG_DONE, CHUNK_OFFSET_DATA, cookie, &p)
    })
    .await;
}

#[tokio::test]
async fn nbd_hole_chunk_at_offset_2_64_minus_4_fails_the_reads_without_a_panic() {
    // nbd_replies: flags 1, size 1 MiB, a DONE hole chunk for cookie 1 at 2^64 - 4, 8 bytes.
    both_reads_fail_on(|cookie| {
        let mut p = (u64::MAX - 3).to_be_bytes().to_vec();
        p.extend_from_slice(&8u32.to_be_bytes());
        chunk(REPLY_FLAG_DONE, CHUNK_OFFSET_HOLE, cookie, &p)
    })
    .await;
}

#[tokio::test]
async fn nbd_block_status_near_the_end_of_a_2_64_byte_export_covers_it_to_the_end() {
    // nbd_block_status crash-d214f8aa: an export of 2^64 - 1 bytes asked at its last 4096;
    // the second descriptor (0x57575757 bytes) overflowed `pos + len` before it was cut at the
    // end of the export: a panic with overflow checks, extents cut short without them.
    let size = u64::MAX;
    let offset = size - 4096;
    let (conn, mut server) = connection(size);
    let c = conn.clone();
    let status = tokio::spawn(async move { c.block_status(offset, 4096).await });
    let cookie = cookie(&mut server).await;
    let mut payload = vec![0, 0, 0, 1, 0, 0, 0];
    payload.extend_from_slice(&[0x57; 111]);
    payload.extend_from_slice(&[0, 0, 0, 0, 0x41, 0xff]);
    server
        .write_all(&chunk(
            REPLY_FLAG_DONE,
            CHUNK_BLOCK_STATUS,
            cookie,
            &payload,
        ))
        .await
        .unwrap();

    let extents = tokio::time::timeout(HANG, status)
        .await
        .expect("the status ends")
        .unwrap()
        .unwrap();

    assert_eq!(
        extents,
        vec![
            Extent::new(offset, 0x57, ExtentKind::Hole),
            Extent::new(offset + 0x57, 4096 - 0x57, ExtentKind::Hole),
        ]
    );
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test]
async fn nbd_second_block_status_chunk_for_the_same_context_is_refused() {
    // nbd_replies crash-65036fb9 (minimized): two BLOCK_STATUS chunks for the negotiated
    // context answer one request. The second one's extents started again at the offset asked,
    // so the list overlapped itself, against the extents contract.
    let (conn, mut server) = connection(1 << 20);
    let c = conn.clone();
    let status = tokio::spawn(async move { c.block_status(4096, (1 << 20) - 4096).await });
    let cookie = cookie(&mut server).await;
    let mut first = hex(
        "000000000001000000000000000700000000000300001000000000000000f000000000020007000000000003",
    );
    let mut second = hex(
        "000000000000f0000000000000f0000000ef00000001010101010101010101010100000101010101010101010101010101010101",
    );
    // The input negotiated base:allocation as context 0; this connection has it as 1.
    first[..4].copy_from_slice(&1u32.to_be_bytes());
    second[..4].copy_from_slice(&1u32.to_be_bytes());
    let mut reply = chunk(0, CHUNK_BLOCK_STATUS, cookie, &first);
    reply.extend(chunk(REPLY_FLAG_DONE, CHUNK_BLOCK_STATUS, cookie, &second));
    server.write_all(&reply).await.unwrap();

    let got = tokio::time::timeout(HANG, status)
        .await
        .expect("the status ends")
        .unwrap();

    let e = got.expect_err("two answers for one context are a protocol error");
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
}

/// A stream-optimized VMDK header (as the first 512 bytes of a stream) with the given
/// descriptor offset, 64 sectors of capacity, 8-sector grains.
fn vmdk_stream_header(descriptor_offset: u64) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..4].copy_from_slice(b"KDMV");
    h[4..8].copy_from_slice(&3u32.to_le_bytes());
    h[8..12].copy_from_slice(&(1u32 | 1 << 16 | 1 << 17).to_le_bytes());
    h[12..20].copy_from_slice(&64u64.to_le_bytes());
    h[20..28].copy_from_slice(&8u64.to_le_bytes());
    h[28..36].copy_from_slice(&descriptor_offset.to_le_bytes());
    h[36..44].copy_from_slice(&1u64.to_le_bytes());
    h[44..48].copy_from_slice(&512u32.to_le_bytes());
    h[56..64].copy_from_slice(&u64::MAX.to_le_bytes());
    h[64..72].copy_from_slice(&2u64.to_le_bytes());
    h[77..79].copy_from_slice(&1u16.to_le_bytes());
    h
}

/// vmdk: a descriptor offset near 2^64 sectors overflowed while the stream decoder computed
/// where to skip to (a panic in debug builds); now the stream simply ends before it.
#[test]
fn vmdk_stream_with_a_huge_descriptor_offset_is_an_error() {
    use transfer_core::format::vmdk::stream::StreamReader;
    let input = vmdk_stream_header(1 << 62);
    let e = StreamReader::new(&input[..]).err().expect("an error");
    assert!(e.to_string().contains("truncated"), "{e}");
}

/// vmdk_descriptor: a descriptor that parsed (it ends at a NUL, as embedded ones do) was not
/// detected as one, because bytes after the NUL were not UTF-8.
#[test]
fn a_descriptor_with_junk_after_its_nul_is_detected() {
    use transfer_core::format::vmdk::descriptor::{looks_like_descriptor, Descriptor};
    let mut d = b"# Disk DescriptorFile\nversion=1\ncreateType=\"x\"\n\0".to_vec();
    d.extend_from_slice(&[0xb5, 0xff, b'\n']);
    assert!(Descriptor::parse(&d).is_ok());
    assert!(looks_like_descriptor(&d));
}

/// ovf: `byte * 0^10` made a unit of zero bytes, so a disk of 8 units had a capacity of 0.
#[test]
fn ovf_capacity_units_of_zero_bytes_are_refused() {
    use transfer_core::format::ovf::capacity;
    assert!(capacity("8", Some("byte*0^10")).is_err());
    assert_eq!(capacity("8", Some("byte * 2^10")), Ok(8192));
}
