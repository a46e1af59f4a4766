//! Extents: what a source says about a byte range (data, zero, hole), and coalescing of runs.

/// What a range of a disk holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    /// Allocated data (may still contain zeros; the engine checks buffers).
    Data,
    /// Allocated but reads as zeros.
    Zero,
    /// Unallocated; reads as zeros.
    Hole,
}

impl ExtentKind {
    /// True when the range reads as zeros.
    pub fn is_zero(self) -> bool {
        matches!(self, ExtentKind::Zero | ExtentKind::Hole)
    }

    /// `data`, `zero` or `hole`.
    pub fn name(self) -> &'static str {
        match self {
            ExtentKind::Data => "data",
            ExtentKind::Zero => "zero",
            ExtentKind::Hole => "hole",
        }
    }
}

/// A contiguous byte range of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First byte.
    pub offset: u64,
    /// Length in bytes (never 0 in well-formed lists).
    pub len: u64,
    /// What the range holds.
    pub kind: ExtentKind,
}

impl Extent {
    /// A new extent.
    pub fn new(offset: u64, len: u64, kind: ExtentKind) -> Self {
        Extent { offset, len, kind }
    }

    /// Appends `[offset, offset+len)` of `kind` to `out`, merging it into the last extent when
    /// that one is of the same kind.
    pub fn push_merged(out: &mut Vec<Extent>, offset: u64, len: u64, kind: ExtentKind) {
        match out.last_mut() {
            Some(last) if last.kind == kind && last.end() == offset => last.len += len,
            _ => out.push(Extent::new(offset, len, kind)),
        }
    }

    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// What the copy engine does with a range: read-and-write data, or zero it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// Copy `[offset, offset+len)`.
    Data {
        /// Where the range starts.
        offset: u64,
        /// Its length in bytes.
        len: u64,
    },
    /// The range reads as zero on the source.
    Zero {
        /// Where the range starts.
        offset: u64,
        /// Its length in bytes.
        len: u64,
    },
}

/// Merges adjacent extents into runs: consecutive zero/hole extents become one `Zero` run,
/// consecutive data extents one `Data` run. Extents must be sorted and contiguous; the result is
/// clipped to `[start, end)`.
pub fn coalesce(extents: &[Extent], start: u64, end: u64) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for e in extents {
        let s = e.offset.max(start);
        let t = e.end().min(end);
        if s >= t {
            continue;
        }
        let zero = e.kind.is_zero();
        match runs.last_mut() {
            Some(Run::Zero { offset, len }) if zero && *offset + *len == s => *len += t - s,
            Some(Run::Data { offset, len }) if !zero && *offset + *len == s => *len += t - s,
            _ if zero => runs.push(Run::Zero {
                offset: s,
                len: t - s,
            }),
            _ => runs.push(Run::Data {
                offset: s,
                len: t - s,
            }),
        }
    }
    runs
}

/// Joins `Data, Zero, Data` into one data run where the zero run is shorter than `gap` (0:
/// never), so that a source whose requests are costly gets fewer, larger reads. Runs must come
/// from [`coalesce`] (sorted, contiguous, alternating).
pub fn bridge(runs: Vec<Run>, gap: u64) -> Vec<Run> {
    if gap == 0 {
        return runs;
    }
    let mut out: Vec<Run> = Vec::with_capacity(runs.len());
    for (i, run) in runs.iter().enumerate() {
        let next_is_data = matches!(runs.get(i + 1), Some(Run::Data { .. }));
        match (out.last_mut(), *run) {
            // A short zero run after data and before more data joins the data run before it.
            (Some(Run::Data { len, .. }), Run::Zero { len: z, .. }) if z < gap && next_is_data => {
                *len += z
            }
            // Data right after a data run (the gap was joined) extends it.
            (Some(Run::Data { offset, len }), Run::Data { offset: o, len: l })
                if *offset + *len == o =>
            {
                *len += l
            }
            _ => out.push(*run),
        }
    }
    out
}

/// The extents of `[offset, offset+len)` from a sorted, contiguous list (a whole image's, or a
/// range's that covers this one), clipped to the range. Empty when the range is past the list.
pub fn clip(list: &[Extent], offset: u64, len: u64) -> Vec<Extent> {
    let end = offset.saturating_add(len);
    let first = list.partition_point(|e| e.end() <= offset);
    list[first..]
        .iter()
        .take_while(|e| e.offset < end)
        .map(|e| {
            let s = e.offset.max(offset);
            Extent::new(s, e.end().min(end) - s, e.kind)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ExtentKind::*;

    #[test]
    fn zero_and_hole_runs_merge_into_one_zero_run() {
        let ex = [
            Extent::new(0, 10, Data),
            Extent::new(10, 5, Hole),
            Extent::new(15, 5, Zero),
            Extent::new(20, 5, Data),
            Extent::new(25, 5, Data),
        ];
        assert_eq!(
            coalesce(&ex, 0, 30),
            vec![
                Run::Data { offset: 0, len: 10 },
                Run::Zero {
                    offset: 10,
                    len: 10
                },
                Run::Data {
                    offset: 20,
                    len: 10
                }
            ]
        );
    }

    fn data(offset: u64, len: u64) -> Run {
        Run::Data { offset, len }
    }

    fn zero(offset: u64, len: u64) -> Run {
        Run::Zero { offset, len }
    }

    #[test]
    fn short_gaps_between_data_are_read_with_it() {
        let runs = vec![
            data(0, 10),
            zero(10, 5),
            data(15, 10),
            zero(25, 50),
            data(75, 5),
            zero(80, 3),
            data(83, 1),
        ];
        assert_eq!(
            bridge(runs, 6),
            vec![data(0, 25), zero(25, 50), data(75, 9)]
        );
    }

    #[test]
    fn leading_and_trailing_zeros_are_never_bridged() {
        let runs = vec![zero(0, 2), data(2, 10), zero(12, 2)];
        assert_eq!(bridge(runs.clone(), 100), runs);
    }

    #[test]
    fn gap_zero_leaves_runs_alone() {
        let runs = vec![data(0, 10), zero(10, 1), data(11, 10)];
        assert_eq!(bridge(runs.clone(), 0), runs);
    }

    #[test]
    fn a_gap_of_exactly_the_limit_is_kept() {
        let runs = vec![data(0, 10), zero(10, 8), data(18, 10)];
        assert_eq!(bridge(runs.clone(), 8), runs);
    }

    #[test]
    fn runs_are_clipped_to_the_range() {
        let ex = [Extent::new(0, 100, Hole), Extent::new(100, 100, Data)];
        assert_eq!(
            coalesce(&ex, 50, 150),
            vec![
                Run::Zero {
                    offset: 50,
                    len: 50
                },
                Run::Data {
                    offset: 100,
                    len: 50
                }
            ]
        );
    }
}
