//! Criterion micro-benchmarks of the copy engine's hot pure functions: zero detection over 1 MiB
//! read buffers (`is_zero`, `segments` at 4 KiB) and extent coalescing (`coalesce`) over 10k
//! extents. Throughput is in bytes (zero detection) and extents (coalescing).
//!
//! ```text
//! cargo bench -p benches --bench micro            # full measurement
//! cargo bench -p benches --bench micro -- --quick # a quick look
//! ```
//!
//! Run by `cargo test --benches` (test mode), each benchmark runs once.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use transfer_core::engine::zero::{is_zero, segments, ZERO_BLOCK};
use transfer_core::extent::{coalesce, Extent, ExtentKind};

const BUF: usize = 1 << 20;
const EXTENTS: usize = 10_000;
const EXTENT_LEN: u64 = 64 << 10;

/// 1 MiB buffers: all zero, all data, the only non-zero byte last (is_zero's worst case), first
/// half data then half zero, and 4 KiB blocks alternating data/zero (segments' worst case).
fn buffers() -> Vec<(&'static str, Vec<u8>)> {
    let zero = vec![0u8; BUF];
    let data = vec![0xa5u8; BUF];
    let mut last = vec![0u8; BUF];
    last[BUF - 1] = 1;
    let mut half = vec![0u8; BUF];
    half[..BUF / 2].fill(0xa5);
    let mut alternating = vec![0u8; BUF];
    for block in alternating.chunks_mut(ZERO_BLOCK).step_by(2) {
        block.fill(0xa5);
    }
    vec![
        ("all_zero", zero),
        ("all_data", data),
        ("last_byte_set", last),
        ("half", half),
        ("alternating_4k", alternating),
    ]
}

fn zero_detection(c: &mut Criterion) {
    let bufs = buffers();
    let mut g = c.benchmark_group("is_zero");
    g.throughput(Throughput::Bytes(BUF as u64));
    for (name, b) in &bufs {
        g.bench_with_input(BenchmarkId::from_parameter(name), b, |bch, b| {
            bch.iter(|| is_zero(black_box(b)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("segments_4k");
    g.throughput(Throughput::Bytes(BUF as u64));
    for (name, b) in &bufs {
        g.bench_with_input(BenchmarkId::from_parameter(name), b, |bch, b| {
            bch.iter(|| segments(black_box(b), ZERO_BLOCK))
        });
    }
    g.finish();
}

/// `n` contiguous 64 KiB extents; `kind(i)` says what extent `i` holds.
fn extents(n: usize, kind: impl Fn(usize) -> ExtentKind) -> Vec<Extent> {
    (0..n)
        .map(|i| Extent::new(i as u64 * EXTENT_LEN, EXTENT_LEN, kind(i)))
        .collect()
}

fn coalescing(c: &mut Criterion) {
    let end = EXTENTS as u64 * EXTENT_LEN;
    let cases = [
        (
            "alternating_data_hole",
            extents(EXTENTS, |i| {
                if i % 2 == 0 {
                    ExtentKind::Data
                } else {
                    ExtentKind::Hole
                }
            }),
        ),
        (
            "zero_hole_pairs_merge",
            extents(EXTENTS, |i| match i % 4 {
                0 => ExtentKind::Data,
                1 => ExtentKind::Zero,
                2 => ExtentKind::Hole,
                _ => ExtentKind::Data,
            }),
        ),
        ("all_data_one_run", extents(EXTENTS, |_| ExtentKind::Data)),
    ];
    let mut g = c.benchmark_group("coalesce_10k");
    g.throughput(Throughput::Elements(EXTENTS as u64));
    for (name, ex) in &cases {
        g.bench_with_input(BenchmarkId::from_parameter(name), ex, |bch, ex| {
            bch.iter(|| coalesce(black_box(ex), 0, end))
        });
    }
    // A work range in the middle, clipping both ends (what each copy worker asks for).
    let (_, alternating) = &cases[0];
    g.bench_function("alternating_clipped_middle", |bch| {
        bch.iter(|| coalesce(black_box(alternating), end / 4 + 123, end * 3 / 4 - 456))
    });
    g.finish();
}

fn config() -> Criterion {
    // Short by default: these are nanosecond-to-microsecond functions; 2 s each is plenty.
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = micro;
    config = config();
    targets = zero_detection, coalescing
}
criterion_main!(micro);
