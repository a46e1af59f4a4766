//! Sparse VMDK extents (transfer-core/src/format/vmdk/{header,sparse,stream}.rs) as a file or a
//! web server hands them over: the header, markers, the footer, compressed grains, and the whole
//! input decoded front to back as a stream-optimized extent.
//!
//! Holds: no panic; a header that parses has a power-of-two grain of at most 2 MiB and a grain
//! directory small enough to allocate; a grain that inflates fills exactly the bytes asked; the
//! stream decoder never gives more bytes than the capacity it announced.

#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use transfer_core::format::vmdk::header::{parse_footer, Marker, SparseHeader};
use transfer_core::format::vmdk::sparse::inflate_grain;
use transfer_core::format::vmdk::stream::StreamReader;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = SparseHeader::parse(data) {
        assert!(h.grain_sectors.is_power_of_two() && h.grain_sectors <= 4096);
        assert!(h.gd_entries() * 4 <= 32 << 20);
    }
    for sector in data.chunks(512) {
        let _ = Marker::parse(sector);
    }
    if data.len() >= 1536 {
        let _ = parse_footer(&data[data.len() - 1536..]);
    }
    let mut grain = vec![0u8; 65536];
    if inflate_grain(data, true, &mut grain, 65536).is_ok() {
        let _ = inflate_grain(data, false, &mut grain, 1000);
    }
    // Front to back, at most 8 MiB of output (a header may claim a huge capacity of zeros).
    if let Ok(mut r) = StreamReader::new(data) {
        let size = r.size();
        let mut out = vec![0u8; 1 << 20];
        let mut total = 0u64;
        while total < 8 << 20 {
            match r.read(&mut out) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
        assert!(total <= size);
    }
});
