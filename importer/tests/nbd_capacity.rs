//! NBD servers that take few clients: a warm delta from a `qemu-nbd` that serves one client
//! (its default) reads the dirty bitmap over the connection that copies, and a server that
//! accepts two connections still gets a whole copy when importer asks for more.

mod common;

use std::path::Path;
use std::time::Instant;

use common::imageio::{qcow2_create, qcow2_to_raw, qcow2_write};
use common::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;

fn copy_json(args: &[&str]) -> Value {
    let started = Instant::now();
    let out = importer(args);
    println!(
        "importer {args:?}: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "importer {args:?} failed: {}",
        out.stderr
    );
    serde_json::from_str(out.stdout.trim()).expect("one JSON line")
}

/// `qemu-nbd -r -f FORMAT [EXTRA...] IMAGE` on a Unix socket, with qemu-nbd's own default of
/// one client unless `extra` says otherwise.
fn serve(format: &str, extra: &[&str], image: &Path) -> Peer {
    let mut args = vec!["-r", "-f", format];
    args.extend_from_slice(extra);
    args.push(s(image));
    Peer::qemu_nbd(&args)
}

#[test]
fn a_delta_from_a_default_qemu_nbd_uses_one_connection() {
    if !require_peers(&["qemu-nbd", "qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempdir();
    let image = dir.path().join("vm.qcow2");
    let target = dir.path().join("disk.img");
    qcow2_create(&image, 64 * MIB);
    qcow2_write(&image, &[(0, 4 * MIB, 0x11)]);
    run_ok("qemu-img", &["bitmap", "--add", s(&image), "b0"]);
    {
        let base = serve("qcow2", &[], &image);
        copy_json(&["copy", &base.uri(), s(&target), "--checkpoint", "c1"]);
    }
    qcow2_write(
        &image,
        &[(MIB, 64 * KIB, 0x5a), (40 * MIB, 128 * KIB, 0x5b)],
    );

    let export = serve("qcow2", &["-B", "b0"], &image);
    let d = copy_json(&[
        "copy",
        &export.uri(),
        s(&target),
        "--dirty-bitmap",
        "b0",
        "--checkpoint",
        "c2",
        "--previous-checkpoint",
        "c1",
    ]);

    assert_eq!(d["delta_bytes"], 64 * KIB + 128 * KIB);
    let reference = dir.path().join("final.raw");
    qcow2_to_raw(&image, &reference);
    assert_same_files(&target, &reference);
}

#[test]
fn a_server_that_takes_two_clients_still_gets_a_full_copy() {
    if !require_peers(&["qemu-nbd"]) {
        return;
    }
    let dir = tempdir();
    let image = dir.path().join("disk.raw");
    let target = dir.path().join("copy.raw");
    let bytes = disk_bytes(256 * MIB as usize, 17);
    write_file(&image, &bytes);
    let export = serve("raw", &["-e", "2"], &image);

    let line = copy_json(&["copy", &export.uri(), s(&target), "--connections", "4"]);

    assert_eq!(line["bytes_total"], 256 * MIB);
    assert!(line["connections"].as_u64().unwrap() <= 2, "{line}");
    assert_file_holds(&target, &bytes);
}
