//! `ovirt-populator` (the `populator` binary of this workspace, called by that name) as Forklift
//! runs it: `--engine-url`, `--disk-id`, `--volume-path`, `--owner-uid`, `--pvc-size`, the
//! engine credentials in `user`/`password`, against the in-test oVirt engine that hands out a
//! ticket of the real ovirt-imageio daemon. Progress is scraped over HTTPS under Forklift's and
//! CDI's names; SIGTERM mid-copy cancels the transfer. It lives with the importer's tests
//! because they own the imageio peer; the binary is found next to this test's own.

use test_kit::keystone;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use test_kit::imageio::{
    qcow2_create, qcow2_to_raw, qcow2_write, require_imageio, Imageio, NbdExport, Ticket,
};
use test_kit::metrics::{assert_progress_done, scrape_until_exit};
use test_kit::*;

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

/// `ovirt-populator` (a link named so in `dir`) with Forklift's arguments and secret keys for
/// the engine at `api`, writing `volume`.
fn ovirt_populator(dir: &Path, api: &str, volume: &Path) -> Command {
    let engine = api.trim_end_matches("/ovirt-engine/api").to_owned();
    let link = dir.join("ovirt-populator");
    if !link.exists() {
        std::os::unix::fs::symlink(populator(), &link).unwrap();
    }
    let mut cmd = Command::new(&link);
    cmd.args([
        &format!("--engine-url={engine}"),
        "--disk-id=disk-1",
        &format!("--volume-path={}", s(volume)),
        "--owner-uid=uid-9",
        &format!("--pvc-size={}", 8 * MIB),
        "--secret-name=engine-secret",
    ])
    .env_clear()
    .env("PATH", std::env::var_os("PATH").unwrap_or_default())
    .env("FERRY_METRICS_ADDR_FILE", dir.join("addr"))
    .envs([
        ("user", "admin@internal"),
        ("password", "engine-pw"),
        ("insecureSkipVerify", "true"),
    ]);
    cmd
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
    let volume = dir.path().join("disk.img");

    let child = ovirt_populator(dir.path(), &api, &volume)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (out, scrapes) = scrape_until_exit(child, &dir.path().join("addr"));

    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_progress_done(
        &scrapes,
        &["ovirt_progress", "kubevirt_cdi_ovirt_progress_total"],
        "uid-9",
    );
    assert_same_files(&volume, &reference);
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls.last().map(String::as_str),
        Some("POST /ovirt-engine/api/imagetransfers/xfer-1/finalize"),
        "{calls:?}"
    );
    assert!(!err.contains("engine-pw"));
}

/// Kubernetes stops the pod (SIGTERM) while the disk is still coming from a slow host: the
/// populator fails at once with a clear message and cancels the image transfer, so the engine
/// unlocks the disk instead of waiting for the transfer to idle out.
#[test]
fn sigterm_cancels_the_transfer_and_fails() {
    if !require_imageio() || !require_peer("nbdkit") {
        return;
    }
    let dir = tempdir();
    // Every read takes 2 s: the copy is still running when the signal comes.
    let slow = Peer::nbdkit(&["--filter=delay", "pattern", "size=8M", "rdelay=2"]);
    let sock = slow.uri();
    let sock = sock.split_once("socket=").unwrap().1;
    let daemon = Imageio::start(false);
    daemon.add_ticket(&Ticket {
        id: "slow-ticket",
        size: 8 * MIB,
        url: format!("nbd:unix:{sock}"),
        timeout: 300,
        dirty: false,
    });
    let (api, calls) = keystone::ovirt_engine(daemon.url("slow-ticket"));
    let volume = dir.path().join("disk.img");
    let child = ovirt_populator(dir.path(), &api, &volume)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !volume.exists() {
        assert!(Instant::now() < deadline, "the copy never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();

    assert!(kill.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("terminated by SIGTERM"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it stopped at once, not after the copy"
    );
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls.last().map(String::as_str),
        Some("POST /ovirt-engine/api/imagetransfers/xfer-1/cancel"),
        "{calls:?}"
    );
}
