//! The per-server VDDK connection cap, used as an embedding controller would: with a cap of
//! one, a second handle on the same server waits until the first closes, another server is not
//! held up, and a copy's extra handles are skipped rather than waited for. Runs against ferry's fake VDDK (`vddk-sys/fake`), which this process loads
//! (one test in this binary: VDDK is initialised once per process and reads its knobs then).
#![cfg(feature = "vddk")]

use std::path::{Path, PathBuf};
use std::time::Duration;

use transfer_core::engine::open_handles;
use transfer_core::source::vddk::{set_host_connection_limit, Secret, VddkParams, VddkSource};
use transfer_core::source::BlockSource;

const TP: &str = "01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67";

/// The built fake library: in this test's `deps/` directory (where cargo builds it as a
/// dev-dependency), else in the target directory above it.
fn fake_library() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let deps = exe.parent().expect("target/<profile>/deps");
    let file = "libvddk_fake.so";
    [deps.join(file), deps.parent().unwrap_or(deps).join(file)]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{file} is missing: cargo build --release -p vddk-fake"))
}

fn params(libdir: &Path, server: &str) -> VddkParams {
    VddkParams {
        server: server.into(),
        user: "svc".into(),
        password: Some(Secret::new("pw")),
        thumbprint: Some(TP.into()),
        vm: "moref=vm-7".into(),
        file: "[ds] vm-7/vm-7.vmdk".into(),
        libdir: libdir.to_owned(),
        ..VddkParams::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_server_gets_one_connection_at_a_time_and_extra_handles_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let libdir = dir.path().join("vddk");
    std::fs::create_dir_all(libdir.join("lib64")).unwrap();
    std::os::unix::fs::symlink(fake_library(), libdir.join("lib64/libvixDiskLib.so.8")).unwrap();
    let disk_dir = dir.path().join("root/ds/vm-7");
    std::fs::create_dir_all(&disk_dir).unwrap();
    std::fs::write(disk_dir.join("vm-7.vmdk"), vec![5u8; 1 << 20]).unwrap();
    // The fake reads its knobs at InitEx, which the first open below does.
    std::env::set_var("FAKE_VDDK_ROOT", dir.path().join("root"));
    set_host_connection_limit("esx-a.example", 1);

    let first = VddkSource::open(params(&libdir, "esx-a.example"))
        .await
        .unwrap();
    assert_eq!(first.size(), 1 << 20);
    let second = tokio::spawn(VddkSource::open(params(&libdir, "ESX-A.example")));
    let other = VddkSource::open(params(&libdir, "esx-b.example")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    assert!(other.is_ok(), "another server is not held up");
    assert!(
        !second.is_finished(),
        "the second connection waits for the first"
    );
    first.close().await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(30), second)
        .await
        .expect("the second connection opens once the first has closed")
        .unwrap()
        .unwrap();
    second.close().await.unwrap();
    other.unwrap().close().await.unwrap();

    // A copy asking for more handles than the cap leaves free gets what is free, and never
    // waits for a slot it would hold itself.
    set_host_connection_limit("esx-c.example", 1);
    let mut p = params(&libdir, "esx-c.example");
    p.connections = 4;
    let source: std::sync::Arc<dyn BlockSource> =
        std::sync::Arc::new(VddkSource::open(p).await.unwrap());
    let handles = tokio::time::timeout(Duration::from_secs(30), open_handles(&source, 4))
        .await
        .expect("opening handles under a full cap does not wait")
        .unwrap();
    assert_eq!(handles.len(), 1);
    source.close().await.unwrap();
}
