//! OVA archives (transfer-core/src/format/ova.rs): tar member headers listed with random
//! access as for a file or a ranged web server, and the first member read front to back as for
//! a stream.
//!
//! Holds: no panic; no more members than the limit; a listed member's data starts after its
//! header.

#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use transfer_core::format::ova::{members_of, ovf_of_stream};

fuzz_target!(|data: &[u8]| {
    if let Ok(members) = members_of(Cursor::new(data), "fuzz") {
        assert!(members.len() <= 100_000);
        for m in &members {
            assert!(m.offset >= 512);
        }
    }
    let _ = ovf_of_stream(data, "fuzz");
});
