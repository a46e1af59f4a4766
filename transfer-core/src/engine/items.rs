//! The work items of a copy, taken in turn by the workers: groups of ranges `(offset, length)`
//! within one range size of the disk, whose extents are asked for at once. A whole-disk copy's
//! items are a regular grid and are computed when taken, so that a large disk costs a few bytes
//! per item, not a vector each; a delta's are its changed ranges, grouped.

use std::borrow::Cow;

/// A copy's work items.
pub(crate) enum Items {
    /// The whole disk of `size` bytes in items of `range` bytes (the last one shorter).
    Whole { size: u64, range: u64 },
    /// A delta's pieces, grouped.
    Grouped(Vec<Vec<(u64, u64)>>),
}

impl Items {
    /// The whole disk of `size` bytes in items of `range` bytes.
    pub(crate) fn whole(size: u64, range: u64) -> Items {
        Items::Whole {
            size,
            range: range.max(1),
        }
    }

    /// Groups sorted `pieces` into items: consecutive pieces whose span stays within
    /// `range_size`, so that a delta of many small areas asks for extents once per span of the
    /// disk instead of once per area.
    pub(crate) fn grouped(pieces: Vec<(u64, u64)>, range_size: u64) -> Items {
        let mut out: Vec<Vec<(u64, u64)>> = Vec::new();
        for p in pieces {
            match out.last_mut() {
                Some(g) if p.0 + p.1 - g[0].0 <= range_size => g.push(p),
                _ => out.push(vec![p]),
            }
        }
        Items::Grouped(out)
    }

    /// How many items there are.
    pub(crate) fn len(&self) -> usize {
        match self {
            Items::Whole { size, range } => size.div_ceil(*range) as usize,
            Items::Grouped(g) => g.len(),
        }
    }

    /// The ranges of item `i`.
    pub(crate) fn get(&self, i: usize) -> Option<Cow<'_, [(u64, u64)]>> {
        match self {
            Items::Whole { size, range } => {
                let offset = (i as u64).checked_mul(*range).filter(|o| o < size)?;
                Some(Cow::Owned(vec![(offset, (*range).min(size - offset))]))
            }
            Items::Grouped(g) => g.get(i).map(|w| Cow::Borrowed(w.as_slice())),
        }
    }

    /// The bytes of item `i` (0 past the end).
    pub(crate) fn bytes(&self, i: usize) -> u64 {
        self.get(i).map_or(0, |w| w.iter().map(|r| r.1).sum())
    }

    /// The bytes of every item together.
    pub(crate) fn total(&self) -> u64 {
        match self {
            Items::Whole { size, .. } => *size,
            Items::Grouped(g) => g.iter().flatten().map(|r| r.1).sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::DeltaSet;

    #[test]
    fn the_whole_disk_is_cut_as_a_delta_of_the_whole_disk_would_be() {
        for (size, range) in [(10u64, 4u64), (12, 4), (1, 4), (0, 4), (1 << 30, 64 << 20)] {
            let whole = Items::whole(size, range);
            let pieces = DeltaSet::new(size, [(0, size)]).unwrap().pieces(range);
            let grouped = Items::grouped(pieces, range);
            assert_eq!(whole.len(), grouped.len(), "{size}/{range}");
            for i in 0..=whole.len() {
                assert_eq!(whole.get(i), grouped.get(i), "{size}/{range} item {i}");
                assert_eq!(whole.bytes(i), grouped.bytes(i));
            }
            assert_eq!(whole.total(), grouped.total());
        }
    }

    #[test]
    fn a_disk_of_the_largest_size_is_planned_without_a_vector_per_item() {
        let whole = Items::whole(crate::MAX_DISK_SIZE, 64 << 20);
        assert_eq!(whole.len(), 1 << 22);
        assert_eq!(whole.total(), crate::MAX_DISK_SIZE);
        assert_eq!(whole.get(whole.len() - 1).unwrap()[0].1, 64 << 20);
        assert!(whole.get(whole.len()).is_none());
    }

    #[test]
    fn small_areas_share_an_item_within_the_range_size() {
        let g = Items::grouped(vec![(0, 10), (20, 10), (100, 10), (300, 5)], 100);
        assert_eq!(g.len(), 3);
        assert_eq!(&*g.get(0).unwrap(), &[(0, 10), (20, 10)]);
        assert_eq!(g.bytes(0), 20);
        assert_eq!(g.total(), 35);
    }
}
