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

/// Zero gaps of this size or more are never read by [`auto_gap`]'s choice: a disk of large
/// extents never downloads a zero run of 1 MiB or more unless the user asks for it.
pub const AUTO_GAP_LIMIT: u64 = 1 << 20;

/// The gap bridging chosen for one work range of a source whose requests are costly, from its
/// runs (before bridging): when the range is fragmented, that is its data runs are on average
/// shorter than one request (`request_size`), the copy is bound by the number of requests, and
/// zero gaps shorter than [`AUTO_GAP_LIMIT`] are read with the data; otherwise every request
/// is full already and no zeros are read (0).
pub fn auto_gap<'a>(runs: impl IntoIterator<Item = &'a Run>, request_size: u64) -> u64 {
    let (count, bytes) = runs.into_iter().fold((0u64, 0u64), |(n, b), r| match r {
        Run::Data { len, .. } => (n + 1, b + len),
        Run::Zero { .. } => (n, b),
    });
    if count >= 2 && bytes < count.saturating_mul(request_size) {
        AUTO_GAP_LIMIT
    } else {
        0
    }
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

    const MIB: u64 = 1 << 20;
    const KIB: u64 = 1 << 10;

    #[test]
    fn a_fragmented_range_bridges_gaps_below_one_mib() {
        // 128 KiB runs, 4 MiB requests: the copy would be bound by the number of requests.
        let runs: Vec<Run> = (0..16)
            .flat_map(|i| {
                [
                    data(i * 384 * KIB, 128 * KIB),
                    zero(i * 384 * KIB + 128 * KIB, 256 * KIB),
                ]
            })
            .collect();
        assert_eq!(auto_gap(&runs, 4 * MIB), AUTO_GAP_LIMIT);
        let bridged = bridge(runs.clone(), auto_gap(&runs, 4 * MIB));
        assert_eq!(
            bridged.len(),
            2,
            "one data run and the trailing zeros: {bridged:?}"
        );
    }

    #[test]
    fn a_range_of_large_extents_reads_no_zeros() {
        // Runs longer than a request on average: every request is full already.
        let runs = vec![
            data(0, 8 * MIB),
            zero(8 * MIB, 512 * KIB),
            data(8 * MIB + 512 * KIB, 4 * MIB),
        ];
        assert_eq!(auto_gap(&runs, 4 * MIB), 0);
        assert_eq!(bridge(runs.clone(), auto_gap(&runs, 4 * MIB)), runs);
    }

    #[test]
    fn automatic_bridging_never_reads_a_zero_run_of_one_mib() {
        let runs = vec![
            data(0, 4 * KIB),
            zero(4 * KIB, MIB),
            data(MIB + 4 * KIB, 4 * KIB),
        ];
        let gap = auto_gap(&runs, 4 * MIB);
        assert_eq!(gap, AUTO_GAP_LIMIT);
        assert_eq!(bridge(runs.clone(), gap), runs);
    }

    #[test]
    fn one_data_run_is_never_fragmented() {
        assert_eq!(
            auto_gap(&[zero(0, 10), data(10, 1), zero(11, 10)], 4 * MIB),
            0
        );
        assert_eq!(auto_gap(&[], 4 * MIB), 0);
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
