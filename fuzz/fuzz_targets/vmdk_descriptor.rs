//! VMDK text descriptors (transfer-core/src/format/vmdk/descriptor.rs), as a file or a web
//! server hands them over.
//!
//! Holds: no panic; a descriptor that parses has a size that fits in 64 bits, every extent but
//! ZERO names a file, and detection agrees that it looks like one when it starts with the
//! descriptor's header line.

#![no_main]

use libfuzzer_sys::fuzz_target;
use transfer_core::format::vmdk::descriptor::{looks_like_descriptor, Descriptor, ExtentType};

fuzz_target!(|data: &[u8]| {
    let _ = looks_like_descriptor(data);
    if let Ok(d) = Descriptor::parse(data) {
        assert!(d.size().is_some());
        for e in &d.extents {
            assert_eq!(e.file.is_none(), e.kind == ExtentType::Zero);
        }
        if data.starts_with(b"# Disk DescriptorFile") {
            assert!(looks_like_descriptor(data));
        }
    }
});
