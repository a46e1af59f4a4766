//! qcow2 headers and L2 entries (transfer-core/src/format/qcow2.rs), as an image file or a web
//! server hands them over: the input's start is a header, the rest L2 entries (big-endian u64)
//! decoded with that header's cluster size and version.
//!
//! Holds: no panic; a header that parses has a cluster size of 512 B-2 MiB, an L1 table large
//! enough for its disk and small enough to allocate; a decoded data cluster is aligned to the
//! cluster size and a compressed one spans at most two clusters.

#![no_main]

use libfuzzer_sys::fuzz_target;
use transfer_core::format::qcow2::{Header, L2Entry};

fuzz_target!(|data: &[u8]| {
    let Ok(h) = Header::parse(data) else {
        return;
    };
    assert!((9..=21).contains(&h.cluster_bits));
    assert!(u64::from(h.l1_size) >= h.l1_entries_needed());
    assert!(h.l1_entries_needed() * 8 <= 32 << 20);
    let rest = data.get(Header::MIN_LEN..).unwrap_or_default();
    for chunk in rest.chunks_exact(8) {
        let e = u64::from_be_bytes(chunk.try_into().unwrap());
        match L2Entry::decode(e, h.cluster_bits, h.version) {
            Ok(L2Entry::Data(off)) => assert_eq!(off % h.cluster_size(), 0),
            Ok(L2Entry::Compressed { len, .. }) => {
                // The sector count has cluster_bits - 8 bits: at most 2^(cluster_bits - 8)
                // sectors of 512 bytes, two clusters.
                assert!(len <= 2 * h.cluster_size(), "{len}");
            }
            _ => {}
        }
    }
});
