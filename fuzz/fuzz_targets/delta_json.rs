//! Delta sets: the changed-areas JSON a controller hands over (`--changed-areas`,
//! `DeltaSet::from_json`) for disks of several sizes, and `DeltaSet::new` over raw ranges (the
//! input read as a disk size, then (offset, length) pairs, big-endian u64), as every delta
//! source (vSphere, imageio, NBD dirty bitmaps) builds one.
//!
//! Holds: no panic; a delta set's ranges are non-empty, sorted, merged (neither overlapping
//! nor adjacent) and inside the disk, and cover exactly the union of the ranges given; one is
//! built exactly when every range given fits the disk (and, for JSON, every entry has
//! non-negative integer `start` and `length`); a larger disk takes the same delta unchanged;
//! `pieces` cuts the ranges into pieces of at most the size asked that cover them in order.

#![no_main]

use ferry_fuzz::{check_ranges, debug, Input};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use transfer_core::delta::DeltaSet;

fuzz_target!(|data: &[u8]| {
    let entries = serde_json::from_slice::<Value>(data).ok().and_then(|v| {
        v.as_array()?
            .iter()
            .map(|e| Some((e.get("start")?.as_u64()?, e.get("length")?.as_u64()?)))
            .collect::<Option<Vec<_>>>()
    });
    for size in [0, 4096, 1 << 30, u64::MAX] {
        let got = DeltaSet::from_json(data, size);
        debug(|| format!("size {size}: {got:?}"));
        let fits = entries.as_ref().map(|e| fits(e, size));
        match (&got, fits) {
            (Ok(d), Some(true)) => check_delta(d, entries.as_deref().unwrap_or_default(), size),
            (Err(_), Some(false) | None) => {}
            (got, fits) => panic!("size {size}: {got:?} for entries {entries:?} (fit: {fits:?})"),
        }
    }

    let mut input = Input::new(data);
    let size = input.u64();
    let mut ranges = Vec::new();
    while !input.is_empty() {
        ranges.push((input.u64(), input.u64()));
    }
    match DeltaSet::new(size, ranges.iter().copied()) {
        Ok(d) => {
            assert!(fits(&ranges, size), "{ranges:?} taken for a disk of {size}");
            check_delta(&d, &ranges, size);
        }
        Err(_) => assert!(
            !fits(&ranges, size),
            "{ranges:?} refused for a disk of {size}"
        ),
    }
});

fn fits(ranges: &[(u64, u64)], size: u64) -> bool {
    ranges
        .iter()
        .all(|&(o, l)| o.checked_add(l).is_some_and(|e| e <= size))
}

fn check_delta(d: &DeltaSet, given: &[(u64, u64)], size: u64) {
    assert_eq!(d.size(), size);
    check_ranges("delta set", d.ranges(), size);
    assert_eq!(d.ranges(), &union(given)[..], "not the union of {given:?}");
    assert_eq!(d.is_empty(), d.ranges().is_empty());
    let bytes: u64 = d.ranges().iter().map(|r| r.1).sum();
    assert_eq!(d.bytes(), bytes);

    let grown = d.clone().with_size(size.saturating_add(4096));
    assert_eq!(grown.ranges(), d.ranges(), "a grown disk changed the delta");
    let again = DeltaSet::new(size.saturating_add(4096), given.iter().copied())
        .expect("a larger disk takes the same ranges");
    assert_eq!(again.ranges(), d.ranges());

    for max in [0, 1, 4096, 1 << 26] {
        if bytes / max.max(1) > 10_000 {
            continue;
        }
        let pieces = d.pieces(max);
        let mut it = pieces.iter().peekable();
        for &(o, l) in d.ranges() {
            let mut pos = o;
            while pos < o + l {
                let &(po, pl) = it.next().expect("pieces end early");
                assert!(
                    po == pos && pl > 0 && pl <= max.max(1),
                    "{pieces:?} of {d:?}"
                );
                pos += pl;
            }
            assert_eq!(pos, o + l, "pieces overrun a range: {pieces:?}");
        }
        assert!(it.peek().is_none(), "pieces past the ranges: {pieces:?}");
    }
}

/// The union of `(offset, length)` ranges as sorted, merged ranges (empty ones dropped).
fn union(given: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut spans: Vec<(u64, u64)> = given
        .iter()
        .filter(|r| r.1 > 0)
        .map(|&(o, l)| (o, o + l))
        .collect();
    spans.sort();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in spans {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out.into_iter().map(|(s, e)| (s, e - s)).collect()
}
