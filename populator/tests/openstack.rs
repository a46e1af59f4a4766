//! `populator openstack` and the binary called `openstack-populator`, run as Forklift runs it:
//! its flags (with one Forklift might add later), the credentials in the environment keys of
//! Forklift's secret, against the in-test Keystone + Glance server of the importer's tests. The
//! bytes land in `--volume-path` as they are, and the progress is scraped over HTTPS with
//! Forklift's regex (`progress\{ownerUID="UID"\} (\d+\.?\d*)`) and CDI's name.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use test_kit::keystone::{serve, PASSWORD};
use test_kit::metrics::{assert_progress_done, scrape_until_exit};

const UID: &str = "7d3c9a1e-0000-4000-8000-000000000001";

fn image() -> Vec<u8> {
    let mut d = b"QFI\xfb\x00\x00\x00\x03".to_vec();
    d.extend((0..2_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8));
    d
}

/// Forklift's environment for a password secret.
fn secret(password: &str) -> Vec<(&'static str, String)> {
    vec![
        ("authType", "password".into()),
        ("username", "demo".into()),
        ("password", password.into()),
        ("projectName", "demo".into()),
        ("domainName", "Default".into()),
        ("regionName", "RegionOne".into()),
    ]
}

fn run(
    program: &Path,
    first: Option<&str>,
    keystone: &str,
    volume: &Path,
    env: &[(&str, String)],
    addr_file: &Path,
) -> (Output, Vec<String>) {
    let mut cmd = Command::new(program);
    if let Some(f) = first {
        cmd.arg(f);
    }
    cmd.args([
        &format!("--endpoint={keystone}"),
        "--image-id=img-ok",
        &format!("--volume-path={}", volume.display()),
        "--secret-name=openstack-secret",
        "--cr-name=populator-cr",
        "--cr-namespace=vms",
        &format!("--owner-uid={UID}"),
        "--pvc-size",
        &image().len().to_string(),
        "--flag-from-the-future=1",
    ])
    .env_clear()
    .env("PATH", std::env::var_os("PATH").unwrap_or_default())
    .env("FERRY_METRICS_ADDR_FILE", addr_file)
    .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let child = cmd.spawn().expect("starting the populator");
    scrape_until_exit(child, addr_file)
}

#[test]
fn openstack_populator_writes_the_image_as_it_is_and_reports_progress() {
    let keystone = serve(image());
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("disk.img");
    let addr = dir.path().join("addr");

    let (out, scrapes) = run(
        Path::new(env!("CARGO_BIN_EXE_populator")),
        Some("openstack"),
        &keystone,
        &volume,
        &secret(PASSWORD),
        &addr,
    );

    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("flag-from-the-future"),
        "an unknown flag is a warning: {err}"
    );
    assert_eq!(std::fs::read(&volume).unwrap(), image());
    assert_progress_done(
        &scrapes,
        &[
            "openstack_populator_progress",
            "kubevirt_cdi_openstack_populator_progress_total",
        ],
        UID,
    );
}

#[test]
fn called_as_openstack_populator_it_needs_no_subcommand_and_fails_cleanly() {
    let keystone = serve(image());
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("openstack-populator");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_populator"), &link).unwrap();
    let volume = dir.path().join("disk.img");

    let (out, _) = run(
        &link,
        None,
        &keystone,
        &volume,
        &secret("wrong-password"),
        &dir.path().join("addr"),
    );

    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("401"), "{err}");
    assert!(!err.contains("wrong-password"), "{err}");
}

/// Forklift's populator pods pass arguments only (the image's entrypoint is the command): one
/// image with `populator` as its entrypoint serves as the openstack populator image too.
#[test]
fn without_a_name_or_subcommand_the_flags_choose_openstack() {
    let keystone = serve(image());
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("disk.img");

    let (out, _) = run(
        Path::new(env!("CARGO_BIN_EXE_populator")),
        None,
        &keystone,
        &volume,
        &secret(PASSWORD),
        &dir.path().join("addr"),
    );

    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&volume).unwrap(), image());
}
