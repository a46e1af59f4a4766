//! Glance source against an in-test Keystone v3 + Glance v2 server (no implementation of either
//! can be installed here). The server follows the API references: `POST /v3/auth/tokens` answers
//! 201 with the token in `X-Subject-Token` and the catalog in the body; Glance wants the token in
//! `X-Auth-Token` and keeps `os_hash_algo`/`os_hash_value` and md5 `checksum` on the image.
//! Credentials reach the importer through `OS_*` variables, never argv.

use test_kit::keystone;

use std::process::{Command, Output};

use keystone::{serve, PASSWORD, TOKEN};

fn data() -> Vec<u8> {
    // Written as it is, whatever its format: a qcow2-looking header must not be refused.
    let mut d = b"QFI\xfb\x00\x00\x00\x03".to_vec();
    d.extend((0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    d.extend(vec![0u8; 1 << 20]);
    d
}

fn run(keystone: &str, image: &str, env: &[(&str, &str)], target: &std::path::Path) -> Output {
    let uri = format!("glance+{keystone}?image={image}");
    let mut c = Command::new(env!("CARGO_BIN_EXE_importer"));
    c.args(["copy", &uri, target.to_str().unwrap()]);
    for k in [
        "OS_AUTH_TYPE",
        "OS_USERNAME",
        "OS_PASSWORD",
        "OS_TOKEN",
        "OS_PROJECT_NAME",
        "OS_REGION_NAME",
    ] {
        c.env_remove(k);
    }
    c.envs(env.iter().copied());
    c.output().unwrap()
}

const PASSWORD_ENV: &[(&str, &str)] = &[
    ("OS_AUTH_TYPE", "password"),
    ("OS_USERNAME", "demo"),
    ("OS_USER_DOMAIN_NAME", "Default"),
    ("OS_PASSWORD", PASSWORD),
    ("OS_PROJECT_NAME", "demo"),
    ("OS_PROJECT_DOMAIN_NAME", "Default"),
    ("OS_REGION_NAME", "RegionOne"),
];

fn assert_copied(out: &Output, target: &std::path::Path, want: &[u8]) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(target).unwrap() == want);
}

fn assert_one_line_failure(out: &Output, phrase: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(phrase), "{err}");
    assert!(!err.contains(PASSWORD) && !err.contains(TOKEN), "{err}");
}

#[test]
fn password_auth_copies_the_image_as_it_is_and_verifies_its_sha512() {
    let (d, dir) = (data(), tempfile::tempdir().unwrap());
    let ks = serve(d.clone());
    let target = dir.path().join("disk.img");
    let out = run(&ks, "img-ok", PASSWORD_ENV, &target);
    assert_copied(&out, &target, &d);
}

#[test]
fn token_auth_copies_the_image() {
    let (d, dir) = (data(), tempfile::tempdir().unwrap());
    let ks = serve(d.clone());
    let target = dir.path().join("disk.img");
    let out = run(
        &ks,
        "img-ok",
        &[
            ("OS_AUTH_TYPE", "token"),
            ("OS_TOKEN", "existing-token"),
            ("OS_PROJECT_ID", "p1"),
        ],
        &target,
    );
    assert_copied(&out, &target, &d);
}

#[test]
fn application_credential_auth_copies_the_image() {
    let (d, dir) = (data(), tempfile::tempdir().unwrap());
    let ks = serve(d.clone());
    let target = dir.path().join("disk.img");
    let env = [
        ("OS_AUTH_TYPE", "v3applicationcredential"),
        ("OS_APPLICATION_CREDENTIAL_ID", "ac-1"),
        ("OS_APPLICATION_CREDENTIAL_SECRET", "ac-secret"),
    ];
    let out = run(&ks, "img-ok", &env, &target);
    assert_copied(&out, &target, &d);
}

#[test]
fn wrong_password_fails_with_401_and_no_secret_in_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let ks = serve(data());
    let target = dir.path().join("disk.img");
    let mut env = PASSWORD_ENV.to_vec();
    env.retain(|(k, _)| *k != "OS_PASSWORD");
    env.push(("OS_PASSWORD", "wrong-pw-33"));
    let out = run(&ks, "img-ok", &env, &target);
    assert_one_line_failure(&out, "401");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("wrong-pw-33"));
    assert!(!target.exists());
}

#[test]
fn missing_image_fails_as_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let ks = serve(data());
    let target = dir.path().join("disk.img");
    let out = run(&ks, "img-none", PASSWORD_ENV, &target);
    assert_one_line_failure(&out, "not found");
    assert!(!target.exists());
}

#[test]
fn hash_mismatch_fails_the_copy() {
    let dir = tempfile::tempdir().unwrap();
    let ks = serve(data());
    let target = dir.path().join("disk.img");
    let out = run(&ks, "img-bad", PASSWORD_ENV, &target);
    assert_one_line_failure(&out, "checksum mismatch");
    assert!(!target.exists());
}
