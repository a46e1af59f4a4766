//! The transfer job as an embedder drives it: a cancel token that stops a copy and removes the
//! disk it created, deltas checked against the target's checkpoint chain before anything is
//! written, a delta that writes only its ranges, and a progress observer that sees every byte.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use transfer_core::buffer::Buffer;
use transfer_core::engine::ProgressObserver;
use transfer_core::job::{
    CancelToken, Changes, Mode, SourceSpec, TargetSpec, Transfer, TransferSpec,
};
use transfer_core::open::SourceOptions;
use transfer_core::{BlockSource, ErrorKind, Result, SourceCaps};

const MIB: u64 = 1 << 20;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("a runtime")
}

fn spec(uri: &str, target: &Path) -> TransferSpec {
    TransferSpec {
        source: Some(SourceSpec::Uri {
            uri: uri.to_owned(),
            options: SourceOptions::default(),
        }),
        target: TargetSpec {
            path: target.to_owned(),
            ..TargetSpec::default()
        },
        ..TransferSpec::default()
    }
}

fn run(spec: TransferSpec) -> Result<transfer_core::job::Summary> {
    runtime().block_on(Transfer::new(spec).run(&CancelToken::new(), None))
}

/// A disk of `size` bytes of 0x5a whose every read takes `delay`.
struct Slow {
    size: u64,
    delay: Duration,
}

#[async_trait]
impl BlockSource for Slow {
    fn describe(&self) -> String {
        "slow test disk".into()
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn caps(&self) -> SourceCaps {
        SourceCaps::default()
    }

    async fn read_at(&self, _offset: u64, mut buf: Buffer) -> Result<Buffer> {
        tokio::time::sleep(self.delay).await;
        buf.fill(0x5a);
        Ok(buf)
    }

    async fn open_another(&self) -> Result<Arc<dyn BlockSource>> {
        Ok(Arc::new(Slow {
            size: self.size,
            delay: self.delay,
        }))
    }
}

#[test]
fn a_cancelled_transfer_stops_and_removes_the_disk_it_created() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("disk.img");
    let source = Arc::new(Slow {
        size: 1 << 30,
        delay: Duration::from_millis(200),
    });
    let mut spec = spec("unused", &target);
    spec.source = Some(SourceSpec::Opened(source));
    let cancel = CancelToken::new();
    let rt = runtime();

    let r = rt.block_on(async {
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            c.cancel();
        });
        tokio::time::timeout(
            Duration::from_secs(30),
            Transfer::new(spec).run(&cancel, None),
        )
        .await
        .expect("the transfer stops when cancelled")
    });

    assert_eq!(r.expect_err("cancelled").kind(), ErrorKind::Cancelled);
    assert!(!target.exists(), "the unfinished disk is removed");
}

#[test]
fn a_delta_that_does_not_start_from_the_last_checkpoint_is_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("disk.img");
    let mut base = spec("synth://pattern?size=8M", &target);
    base.checkpoint = Some("c1".into());
    run(base).expect("the base copy");
    let before = std::fs::read(&target).unwrap();
    let mut delta = spec("synth://zero?size=8M", &target);
    delta.mode = Mode::Delta(Changes::Ranges(vec![(0, MIB)]));
    delta.checkpoint = Some("c3".into());
    delta.previous_checkpoint = Some("c2".into());

    let e = run(delta).expect_err("out of order");

    assert!(e.to_string().contains("c2"), "{e}");
    assert_eq!(
        std::fs::read(&target).unwrap(),
        before,
        "nothing was written"
    );
}

#[test]
fn a_delta_writes_only_its_ranges_and_records_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("disk.img");
    let mut base = spec("synth://pattern?size=8M", &target);
    base.checkpoint = Some("c1".into());
    run(base).expect("the base copy");
    let mut expected = std::fs::read(&target).unwrap();
    let mut delta = spec("synth://zero?size=8M", &target);
    delta.mode = Mode::Delta(Changes::Ranges(vec![(MIB, 64 << 10), (5 * MIB, 4096)]));
    delta.checkpoint = Some("c2".into());
    delta.previous_checkpoint = Some("c1".into());

    let s = run(delta).expect("the delta");

    expected[MIB as usize..(MIB + (64 << 10)) as usize].fill(0);
    expected[(5 * MIB) as usize..(5 * MIB + 4096) as usize].fill(0);
    assert_eq!(std::fs::read(&target).unwrap(), expected);
    assert_eq!(s.delta_bytes, Some((64 << 10) + 4096));
    assert_eq!(s.checkpoint.as_deref(), Some("c2"));
}

#[test]
fn a_delta_without_its_checkpoints_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("disk.img");
    let mut delta = spec("synth://zero?size=8M", &target);
    delta.mode = Mode::Delta(Changes::Ranges(vec![(0, 4096)]));

    let e = run(delta).expect_err("no checkpoints");

    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.hint().is_some(), "{e}");
    assert!(!target.exists());
}

/// Counts what the engine reports.
#[derive(Debug, Default)]
struct Counter {
    total: AtomicU64,
    done: AtomicU64,
}

impl ProgressObserver for Counter {
    fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
}

#[test]
fn a_progress_observer_sees_every_byte_of_a_verified_copy() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("disk.img");
    let mut s = spec("synth://sparse-random?size=32M&percent=50&seed=3", &target);
    s.verify = true;
    let counter = Arc::new(Counter::default());

    let summary = runtime()
        .block_on(Transfer::new(s).run(&CancelToken::new(), Some(counter.clone())))
        .expect("the copy");

    assert!(summary.verified);
    assert_eq!(counter.total.load(Ordering::Relaxed), 32 * MIB);
    assert_eq!(counter.done.load(Ordering::Relaxed), 32 * MIB);
    assert_eq!(
        summary.stats.bytes_data + summary.stats.bytes_zero,
        32 * MIB
    );
}
