//! Warm migration: delta sets (the byte ranges that changed between two checkpoints) and the
//! checkpoint chain of a target ([`chain`]).
//!
//! A [`DeltaSet`] is sorted, merged and bounds-checked when it is built, whatever its origin:
//! vSphere's changed disk areas, imageio's dirty extents, an NBD dirty bitmap or a file a
//! controller hands over. The copy engine reads only its ranges and writes them in place.

pub mod chain;
#[cfg(feature = "vddk")]
pub mod vsphere;

use crate::error::{invalid, Error, ErrorKind, Result};

/// The byte ranges of a disk that changed: sorted, non-overlapping, non-adjacent (merged), each
/// non-empty and inside `[0, size)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaSet {
    size: u64,
    ranges: Vec<(u64, u64)>,
}

impl DeltaSet {
    /// A delta of a disk of `size` bytes from `(offset, length)` ranges in any order; they are
    /// sorted and merged (overlaps included), empty ones dropped. A range past `size` is an
    /// error: a delta that does not fit the disk is never applied in part.
    pub fn new(size: u64, ranges: impl IntoIterator<Item = (u64, u64)>) -> Result<Self> {
        let mut v: Vec<(u64, u64)> = Vec::new();
        for (offset, len) in ranges {
            let end = offset
                .checked_add(len)
                .filter(|&e| e <= size)
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidInput,
                        format!(
                        "changed range at {offset} of {len} bytes ends past the disk ({size} bytes)"
                    ),
                    )
                })?;
            if len > 0 {
                v.push((offset, end));
            }
        }
        v.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(v.len());
        for (s, e) in v {
            match merged.last_mut() {
                Some((_, last_end)) if s <= *last_end => *last_end = (*last_end).max(e),
                _ => merged.push((s, e)),
            }
        }
        Ok(DeltaSet {
            size,
            ranges: merged.into_iter().map(|(s, e)| (s, e - s)).collect(),
        })
    }

    /// Parses a changed-areas file: a JSON list of `{"start": N, "length": N}` (the shape
    /// `importer extents --dirty` prints), for a disk of `size` bytes.
    pub fn from_json(body: &[u8], size: u64) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| invalid(format!("changed areas are not JSON: {e}")))?;
        let list = v.as_array().ok_or_else(|| {
            invalid("changed areas: expected a JSON list of {\"start\", \"length\"}")
        })?;
        let mut ranges = Vec::with_capacity(list.len());
        for (i, e) in list.iter().enumerate() {
            let field = |k: &str| {
                e.get(k).and_then(serde_json::Value::as_u64).ok_or_else(|| {
                    invalid(format!(
                        "changed areas: entry {i} needs a non-negative integer '{k}'"
                    ))
                })
            };
            ranges.push((field("start")?, field("length")?));
        }
        DeltaSet::new(size, ranges)
    }

    /// The size of the disk the delta belongs to.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The ranges `(offset, length)`.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Bytes changed.
    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.1).sum()
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The ranges cut into pieces of at most `max` bytes (work items of the copy engine).
    pub fn pieces(&self, max: u64) -> Vec<(u64, u64)> {
        let max = max.max(1);
        let mut out = Vec::new();
        for &(o, l) in &self.ranges {
            let mut pos = o;
            while pos < o + l {
                let n = (o + l - pos).min(max);
                out.push((pos, n));
                pos += n;
            }
        }
        out
    }

    /// The same changes on a disk that grew to `size` bytes (a delta never shrinks a disk).
    pub fn with_size(mut self, size: u64) -> Self {
        self.size = self.size.max(size);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_sorted_and_merged() {
        let d =
            DeltaSet::new(100, [(50, 10), (0, 10), (5, 10), (60, 5), (90, 0), (70, 1)]).unwrap();
        assert_eq!(d.ranges(), &[(0, 15), (50, 15), (70, 1)]);
        assert_eq!(d.bytes(), 31);
    }

    #[test]
    fn a_range_past_the_disk_is_refused() {
        let e = DeltaSet::new(100, [(0, 10), (95, 10)]).unwrap_err();
        assert!(e.to_string().contains("past the disk"), "{e}");
        assert!(DeltaSet::new(100, [(u64::MAX, 2)]).is_err());
        assert!(DeltaSet::new(100, [(100, 0)]).unwrap().is_empty());
    }

    #[test]
    fn changed_areas_parse_from_json() {
        let d = DeltaSet::from_json(
            br#"[{"start":4096,"length":4096},{"start":0,"length":512}]"#,
            1 << 20,
        )
        .unwrap();
        assert_eq!(d.ranges(), &[(0, 512), (4096, 4096)]);
        for bad in [
            &br#"{"start":0}"#[..],
            br#"[{"start":0}]"#,
            br#"[{"start":-1,"length":1}]"#,
            br#"[{"start":"0","length":1}]"#,
            br#"[{"start":0,"length":2000000}]"#,
            b"not json",
        ] {
            assert!(
                DeltaSet::from_json(bad, 1 << 20).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn pieces_cut_at_the_maximum() {
        let d = DeltaSet::new(1000, [(0, 250), (500, 100)]).unwrap();
        assert_eq!(
            d.pieces(100),
            vec![(0, 100), (100, 100), (200, 50), (500, 100)]
        );
    }
}
