//! Warm migration: a base copy, then deltas applied in place, each from the changed ranges of a
//! real peer (qemu's persistent dirty bitmaps exported by qemu-nbd -B, the imageio daemon's
//! dirty extents) or a controller's changed-areas file, and the target's checkpoint chain that
//! refuses deltas out of order. The target must equal the final disk byte for byte.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use test_kit::imageio::{
    qcow2_create, qcow2_to_raw, qcow2_write, require_imageio, Imageio, NbdExport, Ticket,
};
use test_kit::*;

const KIB: u64 = 1024;
const MIB: u64 = 1 << 20;

/// `qemu-io -f qcow2 -c "write -z OFFSET LEN" PATH`: the guest writes zeros.
fn qcow2_zero(path: &Path, offset: u64, len: u64) {
    run_ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            &format!("write -q -z {offset} {len}"),
            s(path),
        ],
    );
}

/// Runs `importer ARGS`, asserts success, and returns its JSON line.
fn copy_json(args: &[&str]) -> Value {
    let out = importer(args);
    assert!(
        out.status.success(),
        "importer {args:?} failed: {}",
        out.stderr
    );
    assert_eq!(out.stderr.trim(), "", "a successful copy logs nothing");
    serde_json::from_str(out.stdout.trim()).expect("one JSON line")
}

/// `importer copy SRC TARGET --changed-areas AREAS --checkpoint CP --previous-checkpoint PREV`.
fn delta_copy(src: &Path, target: &Path, areas: &Path, prev: &str, cp: &str) -> Out {
    importer(&[
        "copy",
        s(src),
        s(target),
        "--changed-areas",
        s(areas),
        "--checkpoint",
        cp,
        "--previous-checkpoint",
        prev,
    ])
}

fn chain_ids(target: &Path) -> Vec<String> {
    let body = std::fs::read(format!("{}.checkpoints.json", s(target))).expect("the chain file");
    let v: Value = serde_json::from_slice(&body).unwrap();
    v["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Copies the delta of `image`'s bitmap `bitmap` (exported by qemu-nbd -B) from `prev` to `cp`.
fn apply_bitmap_delta(image: &Path, bitmap: &str, target: &Path, prev: &str, cp: &str) -> Value {
    let export = NbdExport::qcow2(image, Some(bitmap));
    copy_json(&[
        "copy",
        &export.uri(),
        s(target),
        "--dirty-bitmap",
        bitmap,
        "--checkpoint",
        cp,
        "--previous-checkpoint",
        prev,
    ])
}

#[test]
fn a_warm_sequence_over_qemu_dirty_bitmaps_ends_identical_to_the_final_disk() {
    if !require_peers(&["qemu-nbd", "qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempdir();
    let image = dir.path().join("vm.qcow2");
    let target = dir.path().join("disk.img");
    qcow2_create(&image, 16 * MIB);
    qcow2_write(&image, &[(0, 8 * MIB, 0x11), (10 * MIB, 2 * MIB, 0x12)]);
    run_ok("qemu-img", &["bitmap", "--add", s(&image), "b1"]);
    {
        let export = NbdExport::qcow2(&image, None);
        copy_json(&["copy", &export.uri(), s(&target), "--checkpoint", "cp1"]);
    }

    // Delta 1: data, a zero write over data, data past the old data.
    qcow2_write(
        &image,
        &[(MIB, 64 * KIB, 0x21), (15 * MIB, 512 * KIB, 0x23)],
    );
    qcow2_zero(&image, 10 * MIB, 128 * KIB);
    run_ok("qemu-img", &["bitmap", "--add", s(&image), "b2"]);
    let d1 = apply_bitmap_delta(&image, "b1", &target, "cp1", "cp2");
    // Delta 2: overlapping writes.
    qcow2_write(&image, &[(2 * MIB, MIB, 0x31), (MIB, 64 * KIB, 0x32)]);
    run_ok("qemu-img", &["bitmap", "--add", s(&image), "b3"]);
    let d2 = apply_bitmap_delta(&image, "b2", &target, "cp2", "cp3");
    // The final delta, at cutover.
    qcow2_zero(&image, 0, 64 * KIB);
    qcow2_write(&image, &[(9 * MIB, 4 * KIB, 0x41)]);
    let d3 = apply_bitmap_delta(&image, "b3", &target, "cp3", "cp4");

    assert_eq!(d1["delta_bytes"], 64 * KIB + 512 * KIB + 128 * KIB);
    assert_eq!(d2["delta_bytes"], MIB + 64 * KIB);
    // The bitmap's granularity is 64 KiB: a 4 KiB write marks its whole block.
    assert_eq!(d3["delta_bytes"], 2 * 64 * KIB);
    for d in [&d1, &d2, &d3] {
        let moved = d["bytes_data"].as_u64().unwrap() + d["bytes_zero"].as_u64().unwrap();
        assert_eq!(
            moved,
            d["delta_bytes"].as_u64().unwrap(),
            "only the delta is copied: {d}"
        );
    }
    assert!(
        d1["bytes_zero"].as_u64().unwrap() >= 128 * KIB,
        "the zero write is a zero: {d1}"
    );
    let reference = dir.path().join("final.raw");
    qcow2_to_raw(&image, &reference);
    assert_same_files(&target, &reference);
    let export = NbdExport::qcow2(&image, None);
    let out = importer(&["verify", &export.uri(), s(&target)]);
    assert!(
        out.status.success(),
        "importer verify: {} {}",
        out.stdout,
        out.stderr
    );
    assert_eq!(chain_ids(&target), ["cp1", "cp2", "cp3", "cp4"]);
}

#[test]
fn an_out_of_order_delta_is_refused_before_anything_is_written() {
    let dir = tempdir();
    let (a, b) = (dir.path().join("a.raw"), dir.path().join("b.raw"));
    let target = dir.path().join("disk.img");
    write_file(&a, &disk_bytes(4 << 20, 1));
    write_file(&b, &disk_bytes(4 << 20, 2));
    let areas = dir.path().join("areas.json");
    std::fs::write(&areas, r#"[{"start":0,"length":4194304}]"#).unwrap();
    copy_json(&["copy", s(&a), s(&target), "--checkpoint", "cp1"]);

    let out = delta_copy(&b, &target, &areas, "cp2", "cp3");

    out.assert_clean_failure(&["cp2 -> cp3 refused", "last checkpoint is cp1", "full copy"]);
    assert_same_files(&target, &a);
    assert_eq!(chain_ids(&target), ["cp1"]);
}

#[test]
fn a_delta_needs_an_existing_target_and_its_checkpoints() {
    let dir = tempdir();
    let b = dir.path().join("b.raw");
    write_file(&b, &disk_bytes(MIB as usize, 3));
    let areas = dir.path().join("areas.json");
    std::fs::write(&areas, r#"[{"start":0,"length":65536}]"#).unwrap();
    let target = dir.path().join("missing.img");

    let out = delta_copy(&b, &target, &areas, "cp1", "cp2");
    out.assert_clean_failure(&["refused", "no checkpoint has been applied"]);
    assert!(!target.exists(), "a delta never creates its target");

    let out = importer(&["copy", s(&b), s(&target), "--changed-areas", s(&areas)]);
    out.assert_clean_failure(&["--checkpoint", "--previous-checkpoint"]);
}

#[test]
fn a_delta_killed_halfway_and_run_again_ends_identical() {
    if !require_peers(&["nbdkit"]) {
        return;
    }
    let dir = tempdir();
    let (a, b) = (dir.path().join("a.raw"), dir.path().join("b.raw"));
    let target = dir.path().join("disk.img");
    let base = disk_bytes(32 << 20, 4);
    let mut next = base.clone();
    // The controller's changed areas: every other MiB rewritten.
    let mut areas = Vec::new();
    for i in (0..32).step_by(2) {
        let at = i << 20;
        next[at..at + (1 << 20)].fill(0x5a + i as u8);
        areas.push(format!(r#"{{"start":{at},"length":1048576}}"#));
    }
    write_file(&a, &base);
    write_file(&b, &next);
    let areas_file = dir.path().join("areas.json");
    std::fs::write(&areas_file, format!("[{}]", areas.join(","))).unwrap();
    copy_json(&["copy", s(&a), s(&target), "--checkpoint", "snapshot-1"]);
    let delta = |src: &str| {
        vec![
            "copy".to_owned(),
            src.to_owned(),
            s(&target).to_owned(),
            "--changed-areas".into(),
            s(&areas_file).into(),
            "--checkpoint".into(),
            "snapshot-2".into(),
            "--previous-checkpoint".into(),
            "snapshot-1".into(),
            "--connections".into(),
            "1".into(),
            "--requests".into(),
            "1".into(),
        ]
    };

    // A slow source (200 ms a read), killed after a few writes.
    let slow = Peer::nbdkit(&["--filter=delay", "file", s(&b), "rdelay=200ms"]);
    let args = delta(&slow.uri());
    let run = spawn_importer(&args.iter().map(String::as_str).collect::<Vec<_>>());
    // Killed as soon as the first changed MiB has landed (16 reads of 200 ms make 3.2 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::fs::read(&target).unwrap()[..1 << 20] == base[..1 << 20] {
        assert!(
            std::time::Instant::now() < deadline,
            "the delta never started writing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = run.kill();
    assert!(
        !killed.status.success(),
        "the run was killed before it finished"
    );
    let half = std::fs::read(&target).unwrap();
    assert!(
        half != base && half != next,
        "the kill left a half-applied delta"
    );
    assert_eq!(
        chain_ids(&target),
        ["snapshot-1"],
        "an unfinished delta is not recorded"
    );

    let args = delta(s(&b));
    copy_json(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_same_files(&target, &b);
    assert_eq!(chain_ids(&target), ["snapshot-1", "snapshot-2"]);
    // The same delta once more (a controller retrying after losing our answer) is harmless.
    copy_json(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_same_files(&target, &b);
    assert_eq!(chain_ids(&target), ["snapshot-1", "snapshot-2"]);
}

#[test]
fn an_imageio_dirty_ticket_gives_the_delta() {
    if !require_imageio() {
        return;
    }
    let dir = tempdir();
    let image = dir.path().join("vm.qcow2");
    let target = dir.path().join("disk.img");
    qcow2_create(&image, 8 * MIB);
    qcow2_write(&image, &[(0, 4 * MIB, 0x61)]);
    run_ok("qemu-img", &["bitmap", "--add", s(&image), "cp1"]);
    let daemon = Imageio::start(false);
    {
        let export = NbdExport::qcow2(&image, None);
        daemon.add_ticket(&Ticket {
            id: "full",
            size: 8 * MIB,
            url: export.ticket_url(),
            timeout: 300,
            dirty: false,
        });
        let url = format!("imageio+{}", daemon.url("full"));
        copy_json(&["copy", &url, s(&target), "--checkpoint", "cp1"]);
    }
    qcow2_write(&image, &[(3 * MIB, 2 * MIB, 0x62)]);
    qcow2_zero(&image, 0, 256 * KIB);
    let export = NbdExport::qcow2(&image, Some("cp1"));
    daemon.add_ticket(&Ticket {
        id: "delta",
        size: 8 * MIB,
        url: export.ticket_url(),
        timeout: 300,
        dirty: true,
    });
    let url = format!("imageio+{}", daemon.url("delta"));

    let d = copy_json(&[
        "copy",
        &url,
        s(&target),
        "--delta",
        "--checkpoint",
        "cp2",
        "--previous-checkpoint",
        "cp1",
    ]);

    assert_eq!(d["delta_bytes"], 2 * MIB + 256 * KIB);
    let reference = dir.path().join("final.raw");
    qcow2_to_raw(&image, &reference);
    assert_same_files(&target, &reference);
    assert_eq!(chain_ids(&target), ["cp1", "cp2"]);
}

#[test]
fn a_full_copy_over_a_target_ends_its_old_chain() {
    let dir = tempdir();
    let (a, b) = (dir.path().join("a.raw"), dir.path().join("b.raw"));
    let target = dir.path().join("disk.img");
    write_file(&a, &disk_bytes(MIB as usize, 5));
    write_file(&b, &disk_bytes(MIB as usize, 6));
    let areas = dir.path().join("areas.json");
    std::fs::write(&areas, r#"[{"start":0,"length":65536}]"#).unwrap();
    copy_json(&["copy", s(&a), s(&target), "--checkpoint", "s1"]);

    // Another disk copied over it, without a checkpoint: s1 no longer describes the target.
    copy_json(&["copy", s(&b), s(&target)]);
    let out = delta_copy(&a, &target, &areas, "s1", "s2");

    out.assert_clean_failure(&["s1 -> s2 refused", "no checkpoint has been applied"]);
    assert_same_files(&target, &b);
}
