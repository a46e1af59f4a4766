//! `populator openstack` and the binary called `openstack-populator`, run as Forklift runs it:
//! its flags (with one Forklift might add later), the credentials in the environment keys of
//! Forklift's secret, against the in-test Keystone + Glance server of the importer's tests. The
//! bytes land in `--volume-path` as they are, and the progress is scraped over HTTPS with
//! Forklift's regex (`progress\{ownerUID="UID"\} (\d+\.?\d*)`) and CDI's name.

#[path = "../../importer/tests/keystone/mod.rs"]
mod keystone;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use keystone::{serve, PASSWORD};

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

/// Value of `name{ownerUID="UID"}` in `text`, read as Forklift's regex reads it.
fn progress(text: &str, name: &str) -> Option<f64> {
    let prefix = format!("{name}{{ownerUID=\"{UID}\"}} ");
    let v = text.lines().find_map(|l| l.strip_prefix(prefix.as_str()))?;
    assert!(v.chars().all(|c| c.is_ascii_digit() || c == '.'), "{v:?}");
    v.parse().ok()
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
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut scrapes = Vec::new();
    let mut child = child;
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        if let Ok(addr) = std::fs::read_to_string(addr_file) {
            let out = Command::new("curl")
                .args(["-sk", &format!("https://{addr}/metrics")])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if !text.is_empty() {
                scrapes.push(text);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (child.wait_with_output().unwrap(), scrapes)
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
    let last = scrapes.last().expect("scraped at least once");
    assert_eq!(
        progress(last, "openstack_populator_progress"),
        Some(100.0),
        "{last}"
    );
    assert_eq!(
        progress(last, "kubevirt_cdi_openstack_populator_progress_total"),
        Some(100.0),
        "{last}"
    );
    let seen: Vec<f64> = scrapes
        .iter()
        .filter_map(|t| progress(t, "openstack_populator_progress"))
        .collect();
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "monotonic: {seen:?}");
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
