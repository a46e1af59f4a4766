//! The client side of the NBD handshake fed the fuzz input as everything the server sends
//! (greeting, option replies, NBD_INFO payloads, meta contexts, the EXPORT_NAME fallback).
//!
//! Input: one byte of options (bit 0: ask for structured replies, bit 1: ask for a dirty
//! bitmap, bit 2: a named export), then the server's bytes; after them the server has closed.
//!
//! Holds: no panic and no hang (the end of the input ends the handshake); what the client sends
//! is well-formed options; a successful handshake has valid block sizes, and only the meta
//! contexts it asked for, with the dirty bitmap it asked for.

#![no_main]

use ferry_fuzz::{block_on_bounded, debug, runtime, Input, Playback};
use libfuzzer_sys::fuzz_target;
use transfer_core::source::nbd::handshake::{handshake, HandshakeOptions};
use transfer_core::source::nbd::proto::IHAVEOPT;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let opts = HandshakeOptions {
        export: if flags & 4 != 0 {
            "disk".into()
        } else {
            String::new()
        },
        structured: flags & 1 != 0,
        dirty_bitmap: (flags & 2 != 0).then(|| "bitmap0".to_owned()),
    };
    let mut peer = Playback::new(input.rest());
    let rt = runtime();
    let result = block_on_bounded(&rt, "NBD handshake", handshake(&mut peer, &opts));

    debug(|| format!("{result:?}"));
    check_sent(&peer.sent);
    let Ok(info) = result else { return };
    assert!(
        info.block_min >= 1 && info.block_min.is_power_of_two(),
        "block_min {}",
        info.block_min
    );
    assert!(info.block_preferred >= info.block_min, "{info:?}");
    assert!(info.block_max >= info.block_min, "{info:?}");
    if !opts.structured {
        assert!(
            !info.structured,
            "structured replies not asked for: {info:?}"
        );
    }
    if !info.structured {
        assert!(
            info.base_allocation.is_none() && info.dirty_bitmap.is_none(),
            "meta contexts without structured replies: {info:?}"
        );
    }
    assert_eq!(
        info.dirty_bitmap.is_some(),
        opts.dirty_bitmap.is_some(),
        "a dirty bitmap asked for must be there, and only then: {info:?}"
    );
});

/// What the client wrote: its 4-byte flags, then options (IHAVEOPT, option, length, data).
fn check_sent(sent: &[u8]) {
    if sent.len() < 4 {
        return;
    }
    let mut rest = &sent[4..];
    while !rest.is_empty() {
        assert!(rest.len() >= 16, "a truncated option: {sent:02x?}");
        let magic = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
        assert_eq!(magic, IHAVEOPT, "an option without IHAVEOPT: {sent:02x?}");
        let len = u32::from_be_bytes(rest[12..16].try_into().expect("4 bytes")) as usize;
        assert!(
            rest.len() >= 16 + len,
            "option data shorter than its length: {sent:02x?}"
        );
        rest = &rest[16 + len..];
    }
}
