//! Glance source against an in-test Keystone v3 + Glance v2 server (no implementation of either
//! can be installed here). The server follows the API references: `POST /v3/auth/tokens` answers
//! 201 with the token in `X-Subject-Token` and the catalog in the body; Glance wants the token in
//! `X-Auth-Token` and keeps `os_hash_algo`/`os_hash_value` and md5 `checksum` on the image.
//! Credentials reach the importer through `OS_*` variables, never argv.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::thread;

use serde_json::{json, Value};

const TOKEN: &str = "gAAAAAB-test-token";
const PASSWORD: &str = "s3cret-pw-71";

fn digest(tool: &str, bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x");
    std::fs::write(&p, bytes).unwrap();
    let out = Command::new(tool).arg(&p).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn read_request(s: &mut TcpStream) -> Option<Request> {
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (n, v) = h.split_once(':')?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

fn respond(s: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
}

fn authenticate(body: &Value) -> bool {
    let id = &body["auth"]["identity"];
    match id["methods"][0].as_str() {
        Some("password") => {
            let u = &id["password"]["user"];
            u["name"] == "demo" && u["domain"]["name"] == "Default" && u["password"] == PASSWORD
        }
        Some("token") => id["token"]["id"] == "existing-token",
        Some("application_credential") => {
            let c = &id["application_credential"];
            c["id"] == "ac-1" && c["secret"] == "ac-secret"
        }
        _ => false,
    }
}

/// Serves Keystone and Glance on one port; images: `img-ok` (right hashes), `img-bad` (wrong
/// os_hash_value). Returns the Keystone v3 URL.
fn serve(data: Vec<u8>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let (sha512, md5) = (digest("sha512sum", &data), digest("md5sum", &data));
    let glance = base.clone();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let Some(req) = read_request(&mut s) else {
                continue;
            };
            let token_ok = req
                .headers
                .iter()
                .any(|(n, v)| n == "x-auth-token" && v == TOKEN);
            match (req.method.as_str(), req.path.as_str()) {
                ("POST", "/v3/auth/tokens") => {
                    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
                    if authenticate(&body) {
                        let catalog = json!({ "token": { "catalog": [
                            { "type": "identity", "endpoints": [{ "interface": "public", "region": "RegionOne", "url": format!("{glance}/v3") }] },
                            { "type": "image", "endpoints": [
                                { "interface": "internal", "region": "RegionOne", "region_id": "RegionOne", "url": "http://127.0.0.1:9/" },
                                { "interface": "public", "region": "RegionOne", "region_id": "RegionOne", "url": glance.clone() }
                            ] }
                        ] } });
                        let b = serde_json::to_vec(&catalog).unwrap();
                        respond(
                            &mut s,
                            "201 Created",
                            &[
                                ("X-Subject-Token", TOKEN.into()),
                                ("Content-Type", "application/json".into()),
                            ],
                            &b,
                        );
                    } else {
                        respond(
                            &mut s,
                            "401 Unauthorized",
                            &[],
                            br#"{"error":{"code":401,"title":"Unauthorized"}}"#,
                        );
                    }
                }
                (_, _) if !token_ok => respond(&mut s, "401 Unauthorized", &[], b""),
                ("GET", p) if p == "/v2/images/img-ok" || p == "/v2/images/img-bad" => {
                    let value = if p.ends_with("ok") {
                        sha512.clone()
                    } else {
                        "0".repeat(128)
                    };
                    let meta = json!({ "id": &p[11..], "status": "active", "disk_format": "qcow2", "size": data.len(),
                        "os_hash_algo": "sha512", "os_hash_value": value, "checksum": md5 });
                    respond(
                        &mut s,
                        "200 OK",
                        &[("Content-Type", "application/json".into())],
                        &serde_json::to_vec(&meta).unwrap(),
                    );
                }
                ("GET", "/v2/images/img-ok/file") | ("GET", "/v2/images/img-bad/file") => {
                    respond(
                        &mut s,
                        "200 OK",
                        &[("Content-Type", "application/octet-stream".into())],
                        &data,
                    );
                }
                _ => respond(&mut s, "404 Not Found", &[], b""),
            }
        }
    });
    format!("{base}/v3")
}

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
