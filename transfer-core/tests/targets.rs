//! Target tests over real files and loop devices: the same checks run against every target kind,
//! plus sizing, sparseness, preallocation, O_DIRECT, zeroing of a dirty device, a too-small device
//! and a read-only device. Loop devices need root and losetup: under CI=true their absence fails
//! the run; elsewhere the test says SKIP (test-kit's one skip helper).

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use test_kit::host::LoopDev;
use transfer_core::engine::verify::{verify, VerifyOptions, VerifyResult};
use transfer_core::engine::{copy, CopyOptions, CopyStats};
use transfer_core::io::IoEngineKind;
use transfer_core::open::{open_source, SourceOptions};
use transfer_core::target::{open_target, BlockTarget, TargetOptions};
use transfer_core::ErrorKind;

const M: u64 = 1 << 20;

/// A loop device of `size` bytes whose every byte is `fill` (test-kit's; `None` is a skip).
fn loop_device(size: u64, fill: u8, read_only: bool) -> Option<LoopDev> {
    LoopDev::new(size, fill, read_only)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

const SPARSE: &str = "synth://sparse-random?size=24M&percent=40&seed=11";

fn copy_synth(
    uri: &str,
    path: &Path,
    topts: &TargetOptions,
    engine: IoEngineKind,
) -> transfer_core::Result<CopyStats> {
    rt().block_on(async {
        let src = open_source(uri, &SourceOptions::default()).await?;
        let tgt = open_target(path, src.size(), topts)?;
        let opts = CopyOptions {
            io_engine: engine,
            direct: topts.direct,
            ..CopyOptions::default()
        };
        copy(src, tgt, &opts).await
    })
}

fn verify_against(uri: &str, path: &Path) -> VerifyResult {
    rt().block_on(async {
        let a = open_source(uri, &SourceOptions::default()).await.unwrap();
        let b = open_source(path.to_str().unwrap(), &SourceOptions::default())
            .await
            .unwrap();
        verify(a, b, &VerifyOptions::default()).await.unwrap()
    })
}

/// Copies [`SPARSE`] to `target` (a device, or a link to one) and checks that `device` holds
/// it in its first 24 MiB (the device is larger than the source).
fn copy_sparse_onto_device(target: &Path, device: &Path) {
    copy_synth(
        SPARSE,
        target,
        &TargetOptions::default(),
        IoEngineKind::Pwrite,
    )
    .unwrap();
    let got = read_back(device, 0, 24 * M as usize);
    let p = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(p.path(), &got).unwrap();
    assert_eq!(verify_against(SPARSE, p.path()), VerifyResult::Equal);
}

fn read_back(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(path).unwrap();
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, offset).unwrap();
    b
}

/// The checks every target must pass: writes land, zeroing zeroes (inside written data and at
/// unaligned edges), flush succeeds.
fn exercise(t: &dyn BlockTarget, path: &Path) {
    t.write_at(0, &[0x5A; 8192]).unwrap();
    t.write_at(M, &vec![0xC3; M as usize]).unwrap();
    t.write_zeroes(M + 4096, 8192).unwrap();
    t.write_zeroes(M + 100_000, 1000).unwrap();
    t.flush().unwrap();
    assert_eq!(read_back(path, 0, 8192), vec![0x5A; 8192]);
    let got = read_back(path, M, M as usize);
    for (i, b) in got.iter().enumerate() {
        let zero = (4096..12288).contains(&i) || (100_000..101_000).contains(&i);
        assert_eq!(*b, if zero { 0 } else { 0xC3 }, "byte {i}");
    }
}

#[test]
fn every_target_kind_writes_zeroes_and_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let new = dir.path().join("new.img");
    exercise(
        &*open_target(&new, 4 * M, &TargetOptions::default()).unwrap(),
        &new,
    );
    let pre = dir.path().join("pre.img");
    let popts = TargetOptions {
        preallocate: true,
        ..TargetOptions::default()
    };
    exercise(&*open_target(&pre, 4 * M, &popts).unwrap(), &pre);
    let direct = dir.path().join("direct.img");
    let dopts = TargetOptions {
        direct: true,
        ..TargetOptions::default()
    };
    exercise(&*open_target(&direct, 4 * M, &dopts).unwrap(), &direct);
    if let Some(l) = loop_device(4 * M, 0xFF, false) {
        exercise(
            &*open_target(l.path(), 4 * M, &TargetOptions::default()).unwrap(),
            l.path(),
        );
    }
}

#[test]
fn new_file_is_sized_to_the_source_and_left_sparse() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("disk.img");
    let stats = copy_synth(SPARSE, &p, &TargetOptions::default(), IoEngineKind::Pwrite).unwrap();
    let meta = std::fs::metadata(&p).unwrap();
    assert_eq!(meta.len(), 24 * M);
    assert!(
        meta.blocks() * 512 < stats.bytes_data + 4 * M,
        "allocated {} for {} data",
        meta.blocks() * 512,
        stats.bytes_data
    );
    assert_eq!(verify_against(SPARSE, &p), VerifyResult::Equal);
}

#[test]
fn existing_dirty_file_is_zeroed_where_the_source_is_zero() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("disk.img");
    std::fs::write(&p, vec![0xEEu8; 30 * M as usize]).unwrap();
    copy_synth(SPARSE, &p, &TargetOptions::default(), IoEngineKind::Pwrite).unwrap();
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 24 * M);
    assert_eq!(verify_against(SPARSE, &p), VerifyResult::Equal);
}

#[test]
fn preallocated_file_is_fully_allocated_and_correct() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("disk.img");
    let opts = TargetOptions {
        preallocate: true,
        ..TargetOptions::default()
    };
    copy_synth(SPARSE, &p, &opts, IoEngineKind::Pwrite).unwrap();
    assert!(std::fs::metadata(&p).unwrap().blocks() * 512 >= 24 * M);
    assert_eq!(verify_against(SPARSE, &p), VerifyResult::Equal);
}

#[test]
fn direct_writes_handle_an_unaligned_disk_size() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("disk.img");
    let uri = "synth://pattern?size=5243392"; // 5 MiB + 512
    let opts = TargetOptions {
        direct: true,
        ..TargetOptions::default()
    };
    copy_synth(uri, &p, &opts, IoEngineKind::Pwrite).unwrap();
    assert_eq!(verify_against(uri, &p), VerifyResult::Equal);
}

#[test]
fn uring_engine_copies_correctly_when_available() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("disk.img");
    let r = copy_synth(SPARSE, &p, &TargetOptions::default(), IoEngineKind::Uring);
    match r {
        Ok(s) => {
            assert_eq!(s.io_engine, "uring");
            assert_eq!(verify_against(SPARSE, &p), VerifyResult::Equal);
        }
        // A runtime that forbids io_uring must give a clear Unsupported error, never a bad copy.
        Err(e) => assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}"),
    }
}

#[test]
fn dirty_block_device_is_zeroed_where_the_source_is_zero() {
    let Some(l) = loop_device(32 * M, 0xFF, false) else {
        return;
    };
    copy_sparse_onto_device(l.path(), l.path());
    assert_eq!(read_back(l.path(), 24 * M, 4096), vec![0xFF; 4096]);
}

#[test]
fn target_is_zero_skips_zeroing_of_a_block_device() {
    let Some(l) = loop_device(24 * M, 0x00, false) else {
        return;
    };
    let opts = TargetOptions {
        target_is_zero: true,
        ..TargetOptions::default()
    };
    copy_synth(SPARSE, l.path(), &opts, IoEngineKind::Pwrite).unwrap();
    assert_eq!(verify_against(SPARSE, l.path()), VerifyResult::Equal);
}

#[test]
fn too_small_block_device_is_refused_before_any_write() {
    let Some(l) = loop_device(8 * M, 0xEE, false) else {
        return;
    };
    let err = copy_synth(
        SPARSE,
        l.path(),
        &TargetOptions::default(),
        IoEngineKind::Pwrite,
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TargetTooSmall);
    assert!(err.to_string().contains("smaller than the source"), "{err}");
    assert_eq!(
        read_back(l.path(), 0, 8 * M as usize),
        vec![0xEE; 8 * M as usize]
    );
}

#[test]
fn read_only_block_device_is_refused() {
    let Some(l) = loop_device(32 * M, 0xEE, true) else {
        return;
    };
    let err = copy_synth(
        SPARSE,
        l.path(),
        &TargetOptions::default(),
        IoEngineKind::Pwrite,
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ReadOnly, "{err}");
}

#[test]
fn file_source_extents_reproduce_a_sparse_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    let f = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&src)
        .unwrap();
    f.set_len(16 * M).unwrap();
    f.write_all_at(&[7u8; 65536], 3 * M).unwrap();
    f.write_all_at(&[9u8; 4096], 15 * M).unwrap();
    drop(f);
    let dst = dir.path().join("dst.img");
    let uri = format!("file://{}", src.display());
    let stats = copy_synth(&uri, &dst, &TargetOptions::default(), IoEngineKind::Pwrite).unwrap();
    assert_eq!(stats.bytes_data, 65536 + 4096);
    assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
}

#[test]
fn in_place_a_file_target_is_kept_grown_never_truncated_and_holes_stay_holes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("disk.img");
    let opts = TargetOptions {
        in_place: true,
        ..TargetOptions::default()
    };
    let e = open_target(&p, 4 * M, &opts)
        .err()
        .expect("a delta needs its target");
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(!p.exists());
    // A 4 MiB file: data in its first MiB, a hole after.
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&p)
        .unwrap();
    f.set_len(4 * M).unwrap();
    f.write_all_at(&vec![0xAB; M as usize], 0).unwrap();
    f.sync_all().unwrap();

    let smaller = open_target(&p, 2 * M, &opts).unwrap();
    assert_eq!(smaller.size(), 4 * M, "never truncated");
    assert!(!smaller.reads_as_zero(), "an existing disk is not zero");
    let t = open_target(&p, 6 * M, &opts).unwrap();
    assert_eq!(
        std::fs::metadata(&p).unwrap().len(),
        6 * M,
        "grown with the source"
    );
    let before = std::fs::metadata(&p).unwrap().blocks();
    t.write_zeroes(2 * M, M).unwrap();
    t.write_zeroes(0, 64 * 1024).unwrap();
    t.flush().unwrap();

    let got = std::fs::read(&p).unwrap();
    assert!(got[..64 * 1024].iter().all(|&b| b == 0), "data is zeroed");
    assert!(got[64 * 1024..M as usize].iter().all(|&b| b == 0xAB));
    assert!(got[M as usize..].iter().all(|&b| b == 0));
    assert!(
        std::fs::metadata(&p).unwrap().blocks() <= before,
        "zeroing a hole allocates nothing"
    );
}

#[test]
fn a_symbolic_link_to_a_file_or_to_nothing_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let to_file = dir.path().join("disk.img");
    std::os::unix::fs::symlink(&victim, &to_file).unwrap();
    let dangling = dir.path().join("dangling.img");
    let nowhere = dir.path().join("created-through-the-link");
    std::os::unix::fs::symlink(&nowhere, &dangling).unwrap();

    for link in [&to_file, &dangling] {
        let e = copy_synth(
            SPARSE,
            link,
            &TargetOptions::default(),
            IoEngineKind::Pwrite,
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        assert!(e.to_string().contains("symbolic link"), "{e}");
    }

    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(!nowhere.exists(), "nothing was created through the link");
}

#[test]
fn a_symbolic_link_to_a_block_device_is_followed() {
    let Some(l) = loop_device(32 * M, 0xFF, false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("by-id-link");
    std::os::unix::fs::symlink(l.path(), &link).unwrap();

    copy_sparse_onto_device(&link, l.path());
}
