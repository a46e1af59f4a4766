//! An in-test Keystone v3 + Glance v2 server (no implementation of either can be installed
//! here), following the API references: `POST /v3/auth/tokens` answers 201 with the token in
//! `X-Subject-Token` and the catalog in the body; Glance wants the token in `X-Auth-Token` and
//! keeps `os_hash_algo`/`os_hash_value` and md5 `checksum` on the image. Shared by the importer's
//! Glance tests and the openstack populator's tests. Users: `demo`/`Default` with
//! [`PASSWORD`], the token `existing-token`, the application credential `ac-1`/`ac-secret`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::thread;

use serde_json::{json, Value};

pub const TOKEN: &str = "gAAAAAB-test-token";
pub const PASSWORD: &str = "s3cret-pw-71";

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

/// One HTTP request as the in-test servers read it.
pub struct Request {
    pub method: String,
    pub path: String,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Reads one HTTP/1.1 request (the servers answer with `Connection: close`).
pub fn read_request(s: &mut TcpStream) -> Option<Request> {
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

/// Writes one response and closes the exchange.
pub fn respond(s: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
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
pub fn serve(data: Vec<u8>) -> String {
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
