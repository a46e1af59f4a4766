//! NBD block status payloads (`NBD_REPLY_TYPE_BLOCK_STATUS`: a context id and (length, flags)
//! descriptors) for `base:allocation` and `qemu:dirty-bitmap:NAME`: parsed on their own
//! (`proto::parse_block_status`), then as the one chunk answering a block status request of the
//! real client, which turns them into extents.
//!
//! Input: one byte of flags (bit 0: ask the dirty bitmap instead of `base:allocation`), one
//! byte choosing the export size (1 MiB, 1 MiB + 512, 2^63, 2^64 - 1), one choosing the offset
//! asked (0, 4096, size - 4096, size - 1), the id the handshake gave the context asked (u32,
//! big-endian; the other context gets another id), then the payload.
//!
//! Holds: the parser accepts exactly the lengths 4 + 8n (n >= 1) and gives the descriptors as
//! sent; the client's extents are the descriptors in order from the offset asked, cut at the
//! end of the export, with the kinds the flags say (hole, zero, data; dirty = data, clean =
//! hole); a descriptor of length 0, another context or a malformed payload is an error; no
//! panic, no hang.

#![no_main]

use std::sync::Arc;

use ferry_fuzz::{block_on_bounded, check_extents, debug, runtime, Input};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use transfer_core::source::nbd::proto::{
    parse_block_status, CHUNK_BLOCK_STATUS, REPLY_FLAG_DONE, STATE_DIRTY, STATE_HOLE, STATE_ZERO,
    STRUCTURED_REPLY_MAGIC, TF_HAS_FLAGS, TF_READ_ONLY,
};
use transfer_core::source::nbd::{Connection, ExportInfo};
use transfer_core::{Extent, ExtentKind, Result};

const SIZES: [u64; 4] = [1 << 20, (1 << 20) + 512, 1 << 63, u64::MAX];

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let dirty = input.u8() & 1 != 0;
    let size = SIZES[(input.u8() & 3) as usize];
    let offset = match input.u8() & 3 {
        0 => 0,
        1 => 4096,
        2 => size - 4096,
        _ => size - 1,
    };
    let context = input.u32();
    let payload = input.rest();

    let parsed = parse_block_status(payload);
    let well_formed = payload.len() >= 12 && (payload.len() - 4).is_multiple_of(8);
    assert_eq!(
        parsed.is_ok(),
        well_formed,
        "payload of {} bytes",
        payload.len()
    );
    let expected = parsed.ok().map(|(id, descs)| {
        assert_eq!(id.to_be_bytes(), payload[..4]);
        assert_eq!(descs.len(), (payload.len() - 4) / 8);
        for (d, raw) in descs.iter().zip(payload[4..].chunks_exact(8)) {
            assert_eq!(d.0.to_be_bytes(), raw[..4]);
            assert_eq!(d.1.to_be_bytes(), raw[4..]);
        }
        (id == context)
            .then(|| model(&descs, offset, size, dirty))
            .flatten()
    });

    let rt = runtime();
    let got = block_on_bounded(
        &rt,
        "NBD block status",
        status(payload, dirty, context, offset, size),
    );
    debug(|| format!("{got:?}"));
    match (expected.flatten(), got) {
        (Some(want), Ok(extents)) => {
            check_extents("NBD block status", &extents, offset, size);
            assert_eq!(extents, want, "extents differ from the descriptors");
        }
        (None, Err(_)) => {}
        (want, got) => panic!("expected {want:?}, got {got:?}"),
    }
});

/// The extents the descriptors describe from `offset`, cut at `size`; `None` when the answer is
/// unusable (no extent, or a descriptor of length 0 before the end of the export).
fn model(descs: &[(u32, u32)], offset: u64, size: u64, dirty: bool) -> Option<Vec<Extent>> {
    let mut out = Vec::new();
    let mut pos = offset;
    for &(len, flags) in descs {
        if len == 0 {
            return None;
        }
        if pos >= size {
            break;
        }
        let len = u64::from(len).min(size - pos);
        let kind = match (dirty, flags) {
            (true, f) if f & STATE_DIRTY != 0 => ExtentKind::Data,
            (true, _) => ExtentKind::Hole,
            (false, f) if f & STATE_HOLE != 0 => ExtentKind::Hole,
            (false, f) if f & STATE_ZERO != 0 => ExtentKind::Zero,
            (false, _) => ExtentKind::Data,
        };
        out.push(Extent::new(pos, len, kind));
        pos += len;
    }
    (!out.is_empty()).then_some(out)
}

/// Asks the client for the status at `offset` and answers with `payload` as one chunk.
async fn status(
    payload: &[u8],
    dirty: bool,
    context: u32,
    offset: u64,
    size: u64,
) -> Result<Vec<Extent>> {
    let other = context.wrapping_add(1);
    let info = ExportInfo {
        size,
        flags: TF_HAS_FLAGS | TF_READ_ONLY,
        block_min: 1,
        block_preferred: 4096,
        block_max: 32 << 20,
        structured: true,
        base_allocation: Some(if dirty { other } else { context }),
        dirty_bitmap: Some(if dirty { context } else { other }),
    };
    let (client, mut server) = tokio::io::duplex(payload.len() + (1 << 16));
    let (r, w) = tokio::io::split(client);
    let conn = Arc::new(Connection::start(
        info,
        "fuzz".into(),
        Box::new(r),
        Box::new(w),
        transfer_core::source::nbd::DEFAULT_IDLE_TIMEOUT,
    ));
    let c = conn.clone();
    let task = tokio::spawn(async move {
        let len = size - offset;
        if dirty {
            c.dirty_status(offset, len).await
        } else {
            c.block_status(offset, len).await
        }
    });
    let mut req = [0u8; 28];
    server.read_exact(&mut req).await.expect("a request");
    let mut chunk = Vec::with_capacity(20 + payload.len());
    chunk.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    chunk.extend_from_slice(&REPLY_FLAG_DONE.to_be_bytes());
    chunk.extend_from_slice(&CHUNK_BLOCK_STATUS.to_be_bytes());
    chunk.extend_from_slice(&req[8..16]);
    chunk.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    chunk.extend_from_slice(payload);
    server
        .write_all(&chunk)
        .await
        .expect("the duplex is large enough");
    drop(server);
    task.await.expect("the request task")
}
