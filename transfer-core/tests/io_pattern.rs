//! Pins the engine's I/O pattern: for a source with known extents and known zero blocks, the exact
//! set of writes and zero operations issued against a recording target.

use std::sync::Arc;

use async_trait::async_trait;
use transfer_core::buffer::Buffer;
use transfer_core::engine::{copy, CopyOptions};
use transfer_core::io::IoEngineKind;
use transfer_core::source::{BlockSource, SourceCaps};
use transfer_core::target::{BlockTarget, IoRecord, RecordingTarget};
use transfer_core::{Extent, ExtentKind, Result};

const K: u64 = 1024;
const M: u64 = 1024 * 1024;

/// A 4 MiB disk:
/// - [0, 1M) data (bytes 0xAB)
/// - [1M, 2M) hole, [2M, 3M) zero extent (coalesced into one zero run)
/// - [3M, 3M+12K) data whose middle 4 KiB block is all zeros
/// - [3M+12K, 4M) hole
#[derive(Clone)]
struct KnownSource;

impl KnownSource {
    fn byte(off: u64) -> u8 {
        if off < M
            || (3 * M..3 * M + 4 * K).contains(&off)
            || (3 * M + 8 * K..3 * M + 12 * K).contains(&off)
        {
            0xAB
        } else {
            0
        }
    }

    fn map() -> Vec<Extent> {
        vec![
            Extent::new(0, M, ExtentKind::Data),
            Extent::new(M, M, ExtentKind::Hole),
            Extent::new(2 * M, M, ExtentKind::Zero),
            Extent::new(3 * M, 12 * K, ExtentKind::Data),
            Extent::new(3 * M + 12 * K, M - 12 * K, ExtentKind::Hole),
        ]
    }
}

#[async_trait]
impl BlockSource for KnownSource {
    fn describe(&self) -> String {
        "known source".into()
    }
    fn size(&self) -> u64 {
        4 * M
    }
    fn caps(&self) -> SourceCaps {
        SourceCaps {
            can_extents: true,
            max_connections: 1,
            ..SourceCaps::default()
        }
    }
    async fn read_at(&self, offset: u64, mut buf: Buffer) -> Result<Buffer> {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = Self::byte(offset + i as u64);
        }
        Ok(buf)
    }
    async fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        // Answer in pieces, as real servers may: at most two extents per call.
        let end = offset + len;
        Ok(Self::map()
            .into_iter()
            .filter(|e| e.end() > offset && e.offset < end)
            .map(|e| {
                let s = e.offset.max(offset);
                Extent::new(s, e.end().min(end) - s, e.kind)
            })
            .take(2)
            .collect())
    }
    async fn open_another(&self) -> Result<Arc<dyn BlockSource>> {
        Ok(Arc::new(self.clone()))
    }
}

fn run(target: Arc<RecordingTarget>, engine: IoEngineKind) {
    let opts = CopyOptions {
        connections: 1,
        request_size: 256 * K as usize,
        io_engine: engine,
        ..CopyOptions::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stats = rt
        .block_on(copy(Arc::new(KnownSource), target.clone(), &opts))
        .unwrap();
    assert_eq!(stats.bytes_total, 4 * M);
    assert_eq!(stats.bytes_data, M + 8 * K);
    assert_eq!(stats.bytes_zero, 3 * M - 8 * K);
}

fn expected_data_writes() -> Vec<IoRecord> {
    vec![
        IoRecord::Write {
            offset: 0,
            len: 256 * K,
        },
        IoRecord::Write {
            offset: 256 * K,
            len: 256 * K,
        },
        IoRecord::Write {
            offset: 512 * K,
            len: 256 * K,
        },
        IoRecord::Write {
            offset: 768 * K,
            len: 256 * K,
        },
        IoRecord::Write {
            offset: 3 * M,
            len: 4 * K,
        },
        IoRecord::Write {
            offset: 3 * M + 8 * K,
            len: 4 * K,
        },
    ]
}

#[test]
fn dirty_target_gets_coalesced_zero_runs_and_block_level_zeroing() {
    let target = Arc::new(RecordingTarget::new(4 * M, false));
    run(target.clone(), IoEngineKind::Pwrite);
    let mut expected = expected_data_writes();
    expected.extend([
        IoRecord::Zero {
            offset: M,
            len: 2 * M,
        },
        IoRecord::Zero {
            offset: 3 * M + 4 * K,
            len: 4 * K,
        },
        IoRecord::Zero {
            offset: 3 * M + 12 * K,
            len: M - 12 * K,
        },
        IoRecord::Flush,
    ]);
    expected.sort();
    assert_eq!(target.sorted_ops(), expected);
    let want: Vec<u8> = (0..4 * M).map(KnownSource::byte).collect();
    assert!(target.contents() == want);
}

#[test]
fn zero_target_gets_only_data_writes_and_a_flush() {
    let target = Arc::new(RecordingTarget::new(4 * M, true));
    run(target.clone(), IoEngineKind::Pwrite);
    let mut expected = expected_data_writes();
    expected.push(IoRecord::Flush);
    expected.sort();
    assert_eq!(target.sorted_ops(), expected);
}

#[test]
fn copy_to_smaller_target_fails_before_writing() {
    let target = Arc::new(RecordingTarget::new(4 * M - 512, false));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = rt
        .block_on(copy(
            Arc::new(KnownSource),
            target.clone() as Arc<dyn BlockTarget>,
            &CopyOptions::default(),
        ))
        .unwrap_err();
    assert_eq!(err.kind(), transfer_core::ErrorKind::TargetTooSmall);
    assert!(target.sorted_ops().is_empty());
}
