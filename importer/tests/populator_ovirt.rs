//! `ovirt-populator` (the `populator` binary of this workspace, called by that name) as Forklift
//! runs it: `--engine-url`, `--disk-id`, `--volume-path`, `--owner-uid`, `--pvc-size`, the
//! engine credentials in `user`/`password`, against the in-test oVirt engine that hands out a
//! ticket of the real ovirt-imageio daemon. It lives with the importer's tests because they own
//! the imageio peer; the binary is found next to this test's own.

mod common;
mod keystone;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::imageio::{
    qcow2_create, qcow2_to_raw, qcow2_write, require_imageio, Imageio, NbdExport, Ticket,
};
use common::*;

const MIB: u64 = 1 << 20;

/// The built populator binary (target/<profile>/populator).
fn populator() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("populator");
    assert!(
        bin.exists(),
        "{} is missing: cargo build --release -p populator",
        bin.display()
    );
    bin
}

#[test]
fn ovirt_populator_downloads_the_disk_through_a_transfer_and_finalizes_it() {
    if !require_imageio() {
        return;
    }
    let dir = tempdir();
    let image = dir.path().join("disk.qcow2");
    qcow2_create(&image, 8 * MIB);
    qcow2_write(&image, &[(MIB, 2 * MIB, 0x3c)]);
    let reference = dir.path().join("reference.raw");
    qcow2_to_raw(&image, &reference);
    let export = NbdExport::qcow2(&image, None);
    let daemon = Imageio::start(false);
    daemon.add_ticket(&Ticket {
        id: "pop-ticket",
        size: 8 * MIB,
        url: export.ticket_url(),
        timeout: 300,
        dirty: false,
    });
    let (api, calls) = keystone::ovirt_engine(daemon.url("pop-ticket"));
    let engine = api.trim_end_matches("/ovirt-engine/api").to_owned();
    let link = dir.path().join("ovirt-populator");
    std::os::unix::fs::symlink(populator(), &link).unwrap();
    let volume = dir.path().join("disk.img");
    let addr = dir.path().join("addr");

    let out = Command::new(&link)
        .args([
            &format!("--engine-url={engine}"),
            "--disk-id=disk-1",
            &format!("--volume-path={}", s(&volume)),
            "--owner-uid=uid-9",
            &format!("--pvc-size={}", 8 * MIB),
            "--secret-name=engine-secret",
        ])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("FERRY_METRICS_ADDR_FILE", &addr)
        .envs([
            ("user", "admin@internal"),
            ("password", "engine-pw"),
            ("insecureSkipVerify", "true"),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();

    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_same_files(&volume, &reference);
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls.last().map(String::as_str),
        Some("POST /ovirt-engine/api/imagetransfers/xfer-1/finalize"),
        "{calls:?}"
    );
    assert!(!err.contains("engine-pw"));
}
