//! The resume journal (`TARGET.ferry-journal`): a file a crash, a full disk or a person may have
//! left in any state, read back by `importer copy --resume` and the pod modes.
//!
//! Holds: no panic; no allocation beyond what the item count allows (it is capped); a journal
//! that parses has a done map of exactly its item count, and renders to bytes that parse back
//! to the same state.

#![no_main]

use libfuzzer_sys::fuzz_target;
use transfer_core::engine::journal::{parse, render};

fuzz_target!(|data: &[u8]| {
    let Ok(state) = parse(data, "fuzz") else {
        return;
    };
    assert_eq!(state.done.len(), state.items);
    let again = parse(&render(&state), "fuzz").expect("a rendered journal parses");
    assert_eq!(again, state);
});
