//! `importer` with no subcommand, run as CDI's importer pod runs it: its environment, the
//! fixed paths re-rooted under `FERRY_CDI_ROOT`, the termination message, the exit code and the
//! bytes written. HTTP sources are served by a real nginx.

use test_kit::keystone;

use test_kit::metrics::{assert_progress_done, scrape_until_exit};

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use tempfile::TempDir;
use test_kit::nginx::{require_nginx, Location, Nginx};
use test_kit::*;

const MIB: usize = 1 << 20;

/// A pod's file system: `data/` (the filesystem volume) and `dev/` (termination log, block
/// volume) under a temporary root.
struct Pod {
    root: TempDir,
}

impl Pod {
    fn new() -> Pod {
        let root = tempdir();
        for d in ["data", "dev"] {
            std::fs::create_dir(root.path().join(d)).unwrap();
        }
        Pod { root }
    }

    fn disk(&self) -> PathBuf {
        self.root.path().join("data/disk.img")
    }

    fn message(&self) -> String {
        std::fs::read_to_string(self.root.path().join("dev/termination-log"))
            .expect("the termination log")
    }

    /// Runs the importer with CDI's variables `vars` (and nothing else of CDI's).
    fn run(&self, vars: &[(&str, &str)]) -> Out {
        let out = Command::new(env!("CARGO_BIN_EXE_importer"))
            // CDI starts its importer with klog flags.
            .args(["-v=1", "-alsologtostderr"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("FERRY_CDI_ROOT", self.root.path())
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("running importer");
        Out::from(out)
    }
}

fn complete(pod: &Pod, preallocated: bool) {
    let v: serde_json::Value = serde_json::from_str(&pod.message()).expect("a JSON message");
    assert_eq!(v["message"], "Import Complete", "{v}");
    assert_eq!(v["scratchSpaceRequired"], false);
    assert_eq!(v["preallocationApplied"], preallocated);
    assert_eq!(v["labels"], serde_json::json!({}));
}

#[test]
fn an_http_image_is_imported_into_disk_img_with_the_requested_size() {
    if !require_nginx() {
        return;
    }
    let nginx = Nginx::start();
    let bytes = disk_bytes(4 * MIB, 41);
    nginx.put("disk.raw", &bytes);
    let pod = Pod::new();
    let url = nginx.http(Location::Range, "disk.raw");

    let out = pod.run(&[
        ("IMPORTER_SOURCE", "http"),
        ("IMPORTER_ENDPOINT", &url),
        ("IMPORTER_CONTENTTYPE", "kubevirt"),
        ("IMPORTER_IMAGE_SIZE", "8Mi"),
        ("PREALLOCATION", "false"),
        ("OWNER_UID", "b5d9a8a0-1111-2222-3333-444455556666"),
    ]);

    assert!(out.status.success(), "{}", out.stderr);
    complete(&pod, false);
    let got = std::fs::read(pod.disk()).unwrap();
    assert_eq!(got.len(), 8 * MIB, "resized to the requested size");
    assert_eq!(&got[..4 * MIB], &bytes[..]);
    assert!(got[4 * MIB..].iter().all(|&b| b == 0));
    let mode = std::fs::metadata(pod.disk()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
}

#[test]
fn a_blank_disk_is_made_for_source_none() {
    let pod = Pod::new();

    let out = pod.run(&[
        ("IMPORTER_SOURCE", "none"),
        ("IMPORTER_IMAGE_SIZE", "16Mi"),
        ("PREALLOCATION", "true"),
    ]);

    assert!(out.status.success(), "{}", out.stderr);
    complete(&pod, true);
    assert_eq!(
        std::fs::metadata(pod.disk()).unwrap().len(),
        16 * MIB as u64
    );
    assert!(
        allocated_bytes(&pod.disk()) >= 16 * MIB as u64,
        "preallocated"
    );
}

#[test]
fn an_unknown_source_is_refused_with_cdis_message() {
    let pod = Pod::new();

    let out = pod.run(&[("IMPORTER_SOURCE", "s3"), ("PREALLOCATION", "false")]);

    assert_eq!(out.status.code(), Some(1));
    assert_eq!(pod.message(), "Unknown data source: s3");
    assert!(!pod.disk().exists());
}

#[test]
fn without_a_subcommand_or_cdis_environment_it_only_asks_for_a_subcommand() {
    let pod = Pod::new();

    let out = Command::new(env!("CARGO_BIN_EXE_importer"))
        .env_clear()
        .env("FERRY_CDI_ROOT", pod.root.path())
        .stdin(Stdio::null())
        .output()
        .expect("running importer");

    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("subcommand"));
    assert!(!pod.root.path().join("dev/termination-log").exists());
}

#[test]
fn preallocation_must_be_given() {
    let pod = Pod::new();

    let out = pod.run(&[("IMPORTER_SOURCE", "none"), ("IMPORTER_IMAGE_SIZE", "1Mi")]);

    assert_eq!(out.status.code(), Some(1));
    assert!(pod.message().contains("PREALLOCATION"), "{}", pod.message());
}

#[test]
fn a_disk_larger_than_the_volume_needs_a_larger_pvc_and_writes_nothing() {
    let pod = Pod::new();

    let out = pod.run(&[
        ("IMPORTER_SOURCE", "none"),
        ("IMPORTER_IMAGE_SIZE", "1000Pi"),
        ("PREALLOCATION", "false"),
    ]);

    assert_eq!(out.status.code(), Some(1));
    assert!(
        pod.message().contains("A larger PVC is required"),
        "{}",
        pod.message()
    );
    assert!(!pod.disk().exists());
}

#[test]
fn a_failed_download_leaves_no_disk_and_says_why() {
    if !require_nginx() {
        return;
    }
    let nginx = Nginx::start();
    let pod = Pod::new();
    let url = nginx.http(Location::Range, "missing.raw");

    let out = pod.run(&[
        ("IMPORTER_SOURCE", "http"),
        ("IMPORTER_ENDPOINT", &url),
        ("PREALLOCATION", "false"),
    ]);

    assert_eq!(out.status.code(), Some(1));
    assert!(pod.message().contains("404"), "{}", pod.message());
    assert!(!pod.message().contains('\n'));
    assert!(!pod.disk().exists());
}

#[test]
fn the_block_volume_is_used_when_it_exists() {
    // A real block device where the kubelet puts the pod's block volume: a device node of a
    // loop device, dirty all over.
    let Some(loop_dev) = test_kit::host::LoopDev::new(2 * MIB as u64, 0xFF, false) else {
        return;
    };
    let pod = Pod::new();
    let dev = pod.root.path().join("dev/cdi-block-volume");
    loop_dev.node_at(&dev);

    let out = pod.run(&[
        ("IMPORTER_SOURCE", "none"),
        ("IMPORTER_IMAGE_SIZE", "2Mi"),
        ("PREALLOCATION", "false"),
    ]);

    assert!(out.status.success(), "{}", out.stderr);
    complete(&pod, false);
    assert!(!pod.disk().exists(), "nothing on the filesystem volume");
    assert!(
        std::fs::read(loop_dev.path())
            .unwrap()
            .iter()
            .all(|&b| b == 0),
        "the volume is zeroed"
    );
}

#[test]
fn a_compressed_image_that_expands_past_the_volume_needs_a_larger_pvc() {
    if !require_nginx() {
        return;
    }
    let pod = Pod::new();
    // A 16 MiB volume, and a gzip body of 64 MiB (of zeros: it is 64 KiB on the wire, and a
    // sparse disk.img would hold it without filling the volume).
    let Some(_volume) = test_kit::host::Tmpfs::mount_on(&pod.root.path().join("data"), "16M")
    else {
        return;
    };
    let gz = std::process::Command::new("sh")
        .args(["-c", "head -c 64M /dev/zero | gzip -c"])
        .output()
        .unwrap();
    assert!(gz.status.success());
    let nginx = Nginx::start();
    nginx.put("bomb.img.gz", &gz.stdout);
    let url = nginx.http(Location::Range, "bomb.img.gz");

    let out = pod.run(&[
        ("IMPORTER_SOURCE", "http"),
        ("IMPORTER_ENDPOINT", &url),
        ("IMPORTER_IMAGE_SIZE", "16Mi"),
        ("PREALLOCATION", "false"),
    ]);

    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    let message = pod.message();
    assert!(message.contains("A larger PVC is required"), "{message}");
    assert!(message.contains("expands past"), "{message}");
    assert!(!pod.disk().exists(), "no partial disk is left");
}

#[test]
fn progress_is_scraped_over_https_and_reaches_100_before_exit() {
    let pod = Pod::new();
    let uid = "0b0e2a6c-5f1d-4f5e-9a6b-0c1d2e3f4a5b";
    let child = Command::new(env!("CARGO_BIN_EXE_importer"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("FERRY_CDI_ROOT", pod.root.path())
        .envs([
            ("IMPORTER_SOURCE", "none"),
            ("IMPORTER_IMAGE_SIZE", "64Mi"),
            ("PREALLOCATION", "true"),
            ("OWNER_UID", uid),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting importer");

    let (out, scrapes) = scrape_until_exit(child, &pod.root.path().join("metrics-addr"));

    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    complete(&pod, true);
    assert_progress_done(&scrapes, &["kubevirt_cdi_import_progress_total"], uid);
}

/// CDI's variables for an imageio import of disk-1 through the engine at `api`.
fn ovirt_vars(api: &str) -> [(&str, &str); 6] {
    [
        ("IMPORTER_SOURCE", "imageio"),
        ("IMPORTER_ENDPOINT", api),
        ("IMPORTER_ACCESS_KEY_ID", "admin@internal"),
        ("IMPORTER_SECRET_KEY", "engine-pw"),
        ("IMPORTER_DISK_ID", "disk-1"),
        ("PREALLOCATION", "false"),
    ]
}

#[test]
fn an_ovirt_disk_is_imported_through_an_image_transfer_and_finalized() {
    if !test_kit::imageio::require_imageio() {
        return;
    }
    use test_kit::imageio::{qcow2_create, qcow2_to_raw, qcow2_write, Imageio, NbdExport, Ticket};
    let dir = tempdir();
    let image = dir.path().join("disk.qcow2");
    qcow2_create(&image, 8 * MIB as u64);
    qcow2_write(
        &image,
        &[(0, MIB as u64, 0x5a), (5 * MIB as u64, 64 * 1024, 0x5b)],
    );
    let reference = dir.path().join("reference.raw");
    qcow2_to_raw(&image, &reference);
    let export = NbdExport::qcow2(&image, None);
    let daemon = Imageio::start(false);
    daemon.add_ticket(&Ticket {
        id: "xfer-ticket",
        size: 8 * MIB as u64,
        url: export.ticket_url(),
        timeout: 300,
        dirty: false,
    });
    let (api, calls) = keystone::ovirt_engine(daemon.url("xfer-ticket"));
    let pod = Pod::new();

    let out = pod.run(&ovirt_vars(&api));

    assert!(out.status.success(), "{}\n{}", out.stderr, pod.message());
    complete(&pod, false);
    assert_same_files(&pod.disk(), &reference);
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls.last().map(String::as_str),
        Some("POST /ovirt-engine/api/imagetransfers/xfer-1/finalize"),
        "{calls:?}"
    );
    assert!(!out.stderr.contains("engine-pw") && !pod.message().contains("engine-pw"));
    assert!(
        calls.iter().any(|c| c == "inactivity_timeout=300"),
        "the transfer asks for room to idle: {calls:?}"
    );
}

#[test]
fn a_failed_ovirt_import_cancels_its_transfer() {
    let (api, calls) = keystone::ovirt_engine("http://127.0.0.1:9/images/gone".to_owned());
    let pod = Pod::new();

    let out = pod.run(&ovirt_vars(&api));

    assert_eq!(out.status.code(), Some(1));
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls.last().map(String::as_str),
        Some("POST /ovirt-engine/api/imagetransfers/xfer-1/cancel"),
        "{calls:?}"
    );
    assert!(!pod.disk().exists());
}

/// An HTTP server that announces a 64 MiB disk, sends its first MiB, then stalls.
fn stalling_server() -> String {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut req = [0u8; 4096];
                let n = s.read(&mut req).unwrap_or(0);
                let head = String::from_utf8_lossy(&req[..n]).into_owned();
                let _ = s.write_all(
                    // One request per connection, and it says so.
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        64 * MIB
                    )
                    .as_bytes(),
                );
                if head.starts_with("GET") {
                    let _ = s.write_all(&vec![0x42u8; MIB]);
                    std::thread::sleep(std::time::Duration::from_secs(120));
                }
            });
        }
    });
    format!("http://127.0.0.1:{port}/disk.raw")
}

#[test]
fn sigterm_ends_the_import_cleanly_and_removes_the_unfinished_disk() {
    let pod = Pod::new();
    let url = stalling_server();
    let child = Command::new(env!("CARGO_BIN_EXE_importer"))
        .env_clear()
        .env("FERRY_CDI_ROOT", pod.root.path())
        .envs([
            ("IMPORTER_SOURCE", "http"),
            ("IMPORTER_ENDPOINT", url.as_str()),
            ("PREALLOCATION", "false"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !pod.disk().exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the import never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();

    assert!(kill.success());
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        pod.message().contains("terminated by SIGTERM"),
        "{}",
        pod.message()
    );
    assert!(!pod.disk().exists(), "the unfinished disk is removed");
}
