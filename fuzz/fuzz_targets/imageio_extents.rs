//! The imageio daemon's JSON answers: `OPTIONS /images/TICKET`, `GET .../extents?context=zero`
//! and `GET .../extents?context=dirty`, each parser fed the whole input; the zero list is then
//! answered per range (`extent::clip`, as `ImageioSource::extents` does) and coalesced into
//! runs (as the copy engine does).
//!
//! Holds: no panic; OPTIONS gives `max_readers >= 1` and a usable socket name (1..=107 bytes,
//! no NUL but a leading one); a zero list starts at 0 and is contiguous, non-empty extents
//! without overflow; every range asked of it is answered from its offset to its end or the
//! image's, contiguously, and coalesces into alternating runs covering the same bytes; a dirty
//! list gives sorted, merged ranges inside the image, which `DeltaSet::new` takes unchanged.

#![no_main]

use ferry_fuzz::{check_extents, check_ranges, debug};
use libfuzzer_sys::fuzz_target;
use transfer_core::delta::DeltaSet;
use transfer_core::extent::{clip, coalesce, Run};
use transfer_core::source::imageio::{parse_dirty_extents, parse_options, parse_zero_extents};

fuzz_target!(|data: &[u8]| {
    debug(|| {
        format!(
            "options: {:?}\nzero: {:?}\ndirty: {:?}",
            parse_options(data),
            parse_zero_extents(data),
            parse_dirty_extents(data, u64::MAX)
        )
    });
    if let Ok(o) = parse_options(data) {
        assert!(o.max_readers >= 1, "{o:?}");
        if let Some(p) = &o.unix_socket {
            assert!(!p.is_empty() && p.len() <= 107, "{o:?}");
            assert!(!p.as_bytes()[1..].contains(&0), "{o:?}");
        }
    }

    let mut image_size = None;
    if let Ok(list) = parse_zero_extents(data) {
        if !list.is_empty() {
            check_extents("imageio zero extents", &list, 0, u64::MAX);
            let total = list.last().map_or(0, |e| e.end());
            image_size = Some(total);
            for (offset, len) in probes(&list, total) {
                check_clip(&list, offset, len, total);
            }
        }
    }

    for size in [image_size.unwrap_or(0), 1 << 30, u64::MAX] {
        if let Ok(ranges) = parse_dirty_extents(data, size) {
            check_ranges("imageio dirty extents", &ranges, size);
            let d =
                DeltaSet::new(size, ranges.iter().copied()).expect("dirty ranges fit the image");
            assert_eq!(
                d.ranges(),
                &ranges[..],
                "DeltaSet changed sorted, merged ranges"
            );
        }
    }
});

/// A few ranges to ask of the list: the whole image, and from inside the first few extents.
fn probes(list: &[transfer_core::Extent], total: u64) -> Vec<(u64, u64)> {
    let mut v = vec![(0, total), (0, u64::MAX), (total, 1)];
    for e in list.iter().take(8) {
        let mid = e.offset + e.len / 2;
        v.push((mid, e.len));
        v.push((mid, u64::MAX - mid));
    }
    v
}

fn check_clip(list: &[transfer_core::Extent], offset: u64, len: u64, total: u64) {
    let got = clip(list, offset, len);
    let end = offset.saturating_add(len).min(total);
    if offset >= end {
        assert!(
            got.is_empty(),
            "clip({offset}, {len}) of {total} bytes: {got:?}"
        );
        return;
    }
    check_extents("clipped extents", &got, offset, end);
    assert_eq!(
        got.last().map(|e| e.end()),
        Some(end),
        "clip({offset}, {len}): {got:?}"
    );
    let runs = coalesce(&got, offset, end);
    let mut pos = offset;
    let mut last_zero = None;
    for r in &runs {
        let (o, l, zero) = match *r {
            Run::Data { offset, len } => (offset, len, false),
            Run::Zero { offset, len } => (offset, len, true),
        };
        assert!(o == pos && l > 0, "runs not contiguous: {runs:?}");
        assert_ne!(
            last_zero,
            Some(zero),
            "runs of one kind not merged: {runs:?}"
        );
        last_zero = Some(zero);
        pos += l;
    }
    assert_eq!(pos, end, "runs do not cover the range: {runs:?}");
}
