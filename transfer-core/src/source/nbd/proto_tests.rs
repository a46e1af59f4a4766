//! Unit tests of the NBD wire format (`proto.rs`).

use super::*;

fn greeting(m1: u64, m2: u64, flags: u16) -> [u8; 18] {
    let mut b = [0u8; 18];
    b[..8].copy_from_slice(&m1.to_be_bytes());
    b[8..16].copy_from_slice(&m2.to_be_bytes());
    b[16..].copy_from_slice(&flags.to_be_bytes());
    b
}

#[test]
fn greeting_accepts_newstyle_and_rejects_others() {
    assert_eq!(parse_greeting(&greeting(NBDMAGIC, IHAVEOPT, 3)).unwrap(), 3);
    let e = parse_greeting(&greeting(NBDMAGIC, OLDSTYLE_MAGIC, 0)).unwrap_err();
    assert!(e.to_string().contains("oldstyle"));
    assert!(parse_greeting(&greeting(0x1234, IHAVEOPT, 0)).is_err());
    assert!(parse_greeting(&greeting(NBDMAGIC, 42, 0)).is_err());
}

#[test]
fn option_reply_header_checks_magic_option_and_length() {
    let mut b = [0u8; 20];
    b[..8].copy_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    b[8..12].copy_from_slice(&OPT_GO.to_be_bytes());
    b[12..16].copy_from_slice(&REP_INFO.to_be_bytes());
    b[16..].copy_from_slice(&12u32.to_be_bytes());
    let h = parse_opt_reply_header(&b, OPT_GO).unwrap();
    assert_eq!((h.reply, h.len), (REP_INFO, 12));
    assert!(parse_opt_reply_header(&b, OPT_STRUCTURED_REPLY).is_err());
    b[16..].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(parse_opt_reply_header(&b, OPT_GO).is_err());
    b[0] = 0;
    assert!(parse_opt_reply_header(&b, OPT_GO).is_err());
}

#[test]
fn info_export_and_block_size_parse_and_validate() {
    let mut e = vec![0, 0];
    e.extend_from_slice(&(1u64 << 30).to_be_bytes());
    e.extend_from_slice(&(TF_HAS_FLAGS | TF_CAN_MULTI_CONN).to_be_bytes());
    assert_eq!(
        parse_info(&e).unwrap(),
        Info::Export {
            size: 1 << 30,
            flags: 0x101
        }
    );
    assert!(parse_info(&e[..11]).is_err());
    let mut bs = vec![0, 3];
    for v in [512u32, 4096, 32 << 20] {
        bs.extend_from_slice(&v.to_be_bytes());
    }
    assert_eq!(
        parse_info(&bs).unwrap(),
        Info::BlockSize {
            min: 512,
            preferred: 4096,
            max: 32 << 20
        }
    );
    bs[2..6].copy_from_slice(&3u32.to_be_bytes());
    assert!(parse_info(&bs).is_err());
    assert!(parse_info(&[0]).is_err());
    assert_eq!(parse_info(&[0, 9, 1]).unwrap(), Info::Other(9));
}

#[test]
fn reply_headers_parse_simple_and_structured() {
    let mut s = [0u8; 16];
    s[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    s[4..8].copy_from_slice(&5u32.to_be_bytes());
    s[8..].copy_from_slice(&77u64.to_be_bytes());
    assert_eq!(
        parse_reply_header(&s).unwrap(),
        Some(ReplyHeader::Simple {
            error: 5,
            cookie: 77
        })
    );
    let mut t = [0u8; 20];
    t[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    t[4..6].copy_from_slice(&REPLY_FLAG_DONE.to_be_bytes());
    t[6..8].copy_from_slice(&CHUNK_OFFSET_DATA.to_be_bytes());
    t[8..16].copy_from_slice(&9u64.to_be_bytes());
    t[16..].copy_from_slice(&4104u32.to_be_bytes());
    assert_eq!(parse_reply_header(&t[..16]).unwrap(), None);
    assert_eq!(
        parse_reply_header(&t).unwrap(),
        Some(ReplyHeader::Structured {
            flags: 1,
            kind: 1,
            cookie: 9,
            len: 4104
        })
    );
    assert!(parse_reply_header(&[0u8; 16]).is_err());
    assert!(parse_reply_header(&[0u8; 3]).is_err());
}

#[test]
fn error_chunks_parse_and_reject_bad_lengths() {
    let mut b = 5u32.to_be_bytes().to_vec();
    b.extend_from_slice(&3u16.to_be_bytes());
    b.extend_from_slice(b"bad");
    assert_eq!(
        parse_error_chunk(CHUNK_ERROR, &b).unwrap(),
        ErrorChunk {
            error: 5,
            message: "bad".into(),
            offset: None
        }
    );
    assert!(parse_error_chunk(CHUNK_ERROR_OFFSET, &b).is_err());
    let mut o = b.clone();
    o.extend_from_slice(&4096u64.to_be_bytes());
    assert_eq!(
        parse_error_chunk(CHUNK_ERROR_OFFSET, &o).unwrap().offset,
        Some(4096)
    );
    assert!(parse_error_chunk(CHUNK_ERROR, &b[..7]).is_err());
    let mut z = 0u32.to_be_bytes().to_vec();
    z.extend_from_slice(&[0, 0]);
    assert!(parse_error_chunk(CHUNK_ERROR, &z).is_err());
    let mut long = 5u32.to_be_bytes().to_vec();
    long.extend_from_slice(&100u16.to_be_bytes());
    assert!(parse_error_chunk(CHUNK_ERROR, &long).is_err());
}

#[test]
fn block_status_and_hole_payloads_validate_length() {
    let mut b = 1u32.to_be_bytes().to_vec();
    for (l, f) in [(4096u32, 0u32), (8192, 3)] {
        b.extend_from_slice(&l.to_be_bytes());
        b.extend_from_slice(&f.to_be_bytes());
    }
    assert_eq!(
        parse_block_status(&b).unwrap(),
        (1, vec![(4096, 0), (8192, 3)])
    );
    assert!(parse_block_status(&b[..11]).is_err());
    assert!(parse_block_status(&b[..13]).is_err());
    let mut h = 4096u64.to_be_bytes().to_vec();
    h.extend_from_slice(&512u32.to_be_bytes());
    assert_eq!(parse_offset_hole(&h).unwrap(), (4096, 512));
    assert!(parse_offset_hole(&h[..11]).is_err());
}

fn status_payload(id: u32, descs: &[(u32, u32)]) -> Vec<u8> {
    let mut b = id.to_be_bytes().to_vec();
    for (l, f) in descs {
        b.extend_from_slice(&l.to_be_bytes());
        b.extend_from_slice(&f.to_be_bytes());
    }
    b
}

#[test]
fn allocation_flags_read_as_hole_zero_or_data() {
    let p = status_payload(
        1,
        &[
            (4096, 0),
            (4096, STATE_HOLE | STATE_ZERO),
            (8192, STATE_ZERO),
        ],
    );
    let got = decode_block_status(&p, 1, MetaContext::Allocation, 4096, 1 << 20).unwrap();
    assert_eq!(
        got,
        Some(vec![
            Extent::new(4096, 4096, ExtentKind::Data),
            Extent::new(8192, 4096, ExtentKind::Hole),
            Extent::new(12288, 8192, ExtentKind::Zero),
        ])
    );
}

#[test]
fn dirty_bitmap_flags_read_as_dirty_data_or_clean_hole() {
    // Bit 1 means nothing to a bitmap: a clean block with it set is still clean.
    let p = status_payload(7, &[(65536, 0), (65536, 1), (65536, 2), (65536, 3)]);
    let got = decode_block_status(&p, 7, MetaContext::DirtyBitmap, 0, 1 << 20).unwrap();
    let kinds: Vec<ExtentKind> = got.unwrap().iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            ExtentKind::Hole,
            ExtentKind::Data,
            ExtentKind::Hole,
            ExtentKind::Data
        ]
    );
}

#[test]
fn a_chunk_for_the_other_context_is_skipped_but_must_be_well_formed() {
    // base:allocation is 1, the bitmap 2: both come in answer to one request.
    let allocation = status_payload(1, &[(4096, STATE_HOLE)]);
    let bitmap = status_payload(2, &[(0, 1)]);
    assert_eq!(
        decode_block_status(&allocation, 2, MetaContext::DirtyBitmap, 0, 4096).unwrap(),
        None
    );
    assert_eq!(
        decode_block_status(&bitmap, 1, MetaContext::Allocation, 0, 4096).unwrap(),
        None,
        "a zero length in the other context's chunk is not this request's business"
    );
    assert!(decode_block_status(&bitmap, 2, MetaContext::DirtyBitmap, 0, 4096).is_err());
    assert!(decode_block_status(&allocation[..9], 2, MetaContext::DirtyBitmap, 0, 4096).is_err());
}

#[test]
fn status_extents_are_cut_at_the_end_of_the_export() {
    let descs = [(4096, 0), (u32::MAX, 1), (4096, 0)];
    let got = status_extents(&descs, MetaContext::DirtyBitmap, 512, 10_000).unwrap();
    assert_eq!(
        got,
        [
            Extent::new(512, 4096, ExtentKind::Hole),
            Extent::new(4608, 10_000 - 4608, ExtentKind::Data),
        ]
    );
    // Near 2^64 the end saturates instead of wrapping.
    let top = status_extents(&descs, MetaContext::Allocation, u64::MAX - 10, u64::MAX).unwrap();
    assert_eq!(top, [Extent::new(u64::MAX - 10, 10, ExtentKind::Data)]);
    assert!(status_extents(&[(0, 0)], MetaContext::Allocation, 0, 4096).is_err());
    assert!(status_extents(&[], MetaContext::Allocation, 0, 4096)
        .unwrap()
        .is_empty());
}

#[test]
fn read_chunks_land_inside_their_request_or_fail() {
    assert_eq!(chunk_in_request("data", 4096, 512, 4096, 4096).unwrap(), 0);
    assert_eq!(
        chunk_in_request("hole", 7680, 512, 4096, 4096).unwrap(),
        3584
    );
    let e = chunk_in_request("data", 7681, 512, 4096, 4096).unwrap_err();
    assert!(e.to_string().contains("outside the request"), "{e}");
    assert!(chunk_in_request("data", 0, 512, 4096, 4096).is_err());
    assert!(chunk_in_request("hole", u64::MAX - 3, 8, 0, 4096).is_err());
    let mut covered = Covered::new();
    claim(&mut covered, 0, 2048, 0).unwrap();
    claim(&mut covered, 2048, 2048, 0).unwrap();
    let e = claim(&mut covered, 1024, 2048, 0).unwrap_err();
    assert!(e.to_string().contains("overlapping"), "{e}");
    // A chunk that swallows an earlier one, or starts inside it, overlaps too.
    let mut covered = Covered::new();
    claim(&mut covered, 1000, 10, 0).unwrap();
    assert!(claim(&mut covered, 0, 4096, 0).is_err());
    assert!(claim(&mut covered, 1005, 1, 0).is_err());
    assert!(claim(&mut covered, 1010, 1, 0).is_ok());
    // An empty chunk never counts: a server cannot send them without end.
    let e = claim(&mut covered, 3000, 0, 0).unwrap_err();
    assert!(e.to_string().contains("empty reply chunk"), "{e}");
    assert_eq!(unknown_error_errno(&28u32.to_be_bytes()), 28);
    assert_eq!(unknown_error_errno(&[1, 2]), 5);
}

#[test]
fn requests_encode_big_endian() {
    let r = Request {
        flags: 0,
        cmd: CMD_READ,
        cookie: 0x0102,
        offset: 4096,
        len: 512,
    };
    let b = encode_request(&r);
    assert_eq!(&b[..4], &REQUEST_MAGIC.to_be_bytes());
    assert_eq!(&b[8..16], &0x0102u64.to_be_bytes());
    assert_eq!(&b[24..], &512u32.to_be_bytes());
}
