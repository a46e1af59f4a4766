//! In-test API servers where no implementation can be installed here, following the API
//! references. Keystone v3 + Glance v2 ([`serve`]): `POST /v3/auth/tokens` answers 201 with
//! the token in `X-Subject-Token` and the catalog in the body; Glance wants the token in
//! `X-Auth-Token` and keeps `os_hash_algo`/`os_hash_value` and md5 `checksum` on the image.
//! Users: `demo`/`Default` with [`PASSWORD`], the token `existing-token`, the application
//! credential `ac-1`/`ac-secret`. The oVirt engine's image transfers ([`ovirt_engine`]).
//! Shared by the importer's tests and the populators'.

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

/// An in-test oVirt engine (no installable implementation exists), following the REST API
/// reference: `POST /ovirt-engine/sso/oauth/token` (password grant) gives a bearer token;
/// `POST /ovirt-engine/api/imagetransfers` creates a transfer in phase `initializing`, which the
/// next `GET` shows `transferring` with `transfer_url` (the real imageio daemon's ticket);
/// `finalize` and `cancel` end it. Returns the API URL and the log of calls (with a line
/// `inactivity_timeout=N` for what the transfer asked for).
pub fn ovirt_engine(
    transfer_url: String,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::sync::{Arc, Mutex};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let log = calls.clone();
    std::thread::spawn(move || {
        let mut polls = 0;
        let mut inactivity = 60;
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let Some(req) = read_request(&mut s) else {
                continue;
            };
            let authed = req
                .headers
                .iter()
                .any(|(n, v)| n == "authorization" && v == "Bearer engine-token-1");
            let json = |v: serde_json::Value| serde_json::to_vec(&v).unwrap();
            let ct = [("Content-Type", "application/json".to_owned())];
            log.lock()
                .unwrap()
                .push(format!("{} {}", req.method, req.path));
            match (req.method.as_str(), req.path.as_str()) {
                ("POST", "/ovirt-engine/sso/oauth/token") => {
                    let form = String::from_utf8_lossy(&req.body).into_owned();
                    if form.contains("grant_type=password") && form.contains("password=engine-pw") {
                        respond(
                            &mut s,
                            "200 OK",
                            &ct,
                            &json(
                                serde_json::json!({"access_token": "engine-token-1", "token_type": "Bearer"}),
                            ),
                        );
                    } else {
                        respond(
                            &mut s,
                            "401 Unauthorized",
                            &ct,
                            &json(serde_json::json!({"error": "access_denied"})),
                        );
                    }
                }
                _ if !authed => respond(&mut s, "401 Unauthorized", &[], b""),
                ("POST", "/ovirt-engine/api/imagetransfers") => {
                    let body: serde_json::Value =
                        serde_json::from_slice(&req.body).unwrap_or_default();
                    let ok = body["disk"]["id"] == "disk-1" && body["direction"] == "download";
                    // The engine keeps what the client asked for (60 s when it did not ask).
                    inactivity = body["inactivity_timeout"].as_u64().unwrap_or(60);
                    log.lock()
                        .unwrap()
                        .push(format!("inactivity_timeout={inactivity}"));
                    if ok {
                        respond(
                            &mut s,
                            "201 Created",
                            &ct,
                            &json(serde_json::json!({"id": "xfer-1", "phase": "initializing"})),
                        );
                    } else {
                        respond(
                            &mut s,
                            "404 Not Found",
                            &ct,
                            &json(serde_json::json!({"detail": "disk not found"})),
                        );
                    }
                }
                ("GET", "/ovirt-engine/api/imagetransfers/xfer-1") => {
                    polls += 1;
                    let v = if polls < 2 {
                        serde_json::json!({"id": "xfer-1", "phase": "initializing"})
                    } else {
                        serde_json::json!({"id": "xfer-1", "phase": "transferring", "transfer_url": transfer_url, "inactivity_timeout": inactivity})
                    };
                    respond(&mut s, "200 OK", &ct, &json(v));
                }
                ("POST", p) if p.starts_with("/ovirt-engine/api/imagetransfers/xfer-1/") => {
                    respond(&mut s, "200 OK", &ct, b"{}");
                }
                _ => respond(&mut s, "404 Not Found", &[], b""),
            }
        }
    });
    (format!("http://127.0.0.1:{port}/ovirt-engine/api"), calls)
}
