//! OVF descriptors (transfer-core/src/format/ovf.rs) as an OVA carries them.
//!
//! Holds: no panic; every disk that names a file names one the descriptor lists; capacity
//! units never overflow silently.

#![no_main]

use libfuzzer_sys::fuzz_target;
use transfer_core::format::ovf::{capacity, Ovf};

fuzz_target!(|data: &[u8]| {
    if let Ok(o) = Ovf::parse(data) {
        for d in &o.disks {
            if d.file_ref.is_some() {
                assert!(o.file_of(d).is_some());
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some((v, u)) = text.split_once('|') {
            if let Ok(n) = capacity(v, Some(u)) {
                assert!(n >= v.parse::<u64>().unwrap_or(0));
            }
        }
    }
});
