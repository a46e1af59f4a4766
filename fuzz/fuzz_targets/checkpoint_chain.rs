//! The checkpoint chain state file (`TARGET.checkpoints.json`, `delta::chain::Chain::parse`):
//! it may be damaged or written by hand, and it decides whether a delta may be applied.
//!
//! Holds: no panic; every entry read has a non-empty id; whatever the file says, a full copy
//! is always allowed, a delta from a checkpoint to itself never is, a delta from the last
//! checkpoint is, the last delta may run again, and any other delta is refused.

#![no_main]

use std::path::Path;

use ferry_fuzz::debug;
use libfuzzer_sys::fuzz_target;
use transfer_core::delta::chain::Chain;

fuzz_target!(|data: &[u8]| {
    let chain = Chain::parse(Path::new("/fuzz/disk.img.checkpoints.json"), data);
    debug(|| format!("{:?}", chain.as_ref().map(Chain::entries)));
    let Ok(chain) = chain else {
        return;
    };
    let entries = chain.entries();
    assert!(entries.iter().all(|e| !e.id.is_empty()), "{entries:?}");
    assert_eq!(chain.last(), entries.last());

    let mut ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    ids.extend(entries.iter().filter_map(|e| e.previous.as_deref()));
    ids.extend(["snapshot-new", ""]);
    ids.truncate(64);
    for &id in &ids {
        assert!(
            chain.check(id, None).is_ok(),
            "a full copy to {id:?} refused"
        );
        assert!(
            chain.check(id, Some(id)).is_err(),
            "a delta {id:?} -> itself allowed"
        );
        for &prev in &ids {
            if prev == id {
                continue;
            }
            let allowed = chain.last().is_some_and(|last| {
                last.id == prev || (last.id == id && last.previous.as_deref() == Some(prev))
            });
            assert_eq!(
                chain.check(id, Some(prev)).is_ok(),
                allowed,
                "delta {prev:?} -> {id:?} after {:?}",
                chain.last()
            );
        }
    }
});
