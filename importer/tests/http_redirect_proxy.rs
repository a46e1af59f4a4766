//! The shared HTTP layer's policies, with hand-written servers that record what they receive:
//! a redirect to another origin is followed without the user's headers (tokens), a same-origin
//! redirect keeps them, redirect loops are bounded, and `http_proxy` is honoured.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::thread;

type Seen = Arc<Mutex<Vec<(String, Vec<String>)>>>;

/// A server that records (request line, header lines) and answers with `reply(request line)`
/// (status line + extra headers, body). Range is ignored: every 200 carries the whole body.
fn server(reply: impl Fn(&str) -> (String, Vec<String>, Vec<u8>) + Send + 'static) -> (u16, Seen) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                headers.push(h.trim().to_ascii_lowercase());
            }
            let line = line.trim().to_owned();
            log.lock().unwrap().push((line.clone(), headers));
            let (status, extra, body) = reply(&line);
            let mut head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for h in extra {
                head.push_str(&h);
                head.push_str("\r\n");
            }
            head.push_str("\r\n");
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        }
    });
    (port, seen)
}

fn disk() -> Vec<u8> {
    (0..(3u32 << 20))
        .map(|i| (i.wrapping_mul(2_246_822_519) >> 11) as u8)
        .collect()
}

fn importer(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_importer"));
    c.args(args);
    for k in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "no_proxy",
        "NO_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        c.env_remove(k);
    }
    c.envs(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
    c.output().unwrap()
}

fn has_token(headers: &[String]) -> bool {
    headers.iter().any(|h| h.starts_with("x-ferry-token:"))
}

#[test]
fn redirect_to_another_origin_does_not_carry_the_user_headers() {
    let data = disk();
    let body = data.clone();
    let (b_port, b_seen) = server(move |_| ("200 OK".into(), vec![], body.clone()));
    let (a_port, a_seen) = server(move |_| {
        (
            "302 Found".into(),
            vec![format!("Location: http://127.0.0.1:{b_port}/real.img")],
            vec![],
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("disk.img");
    let url = format!("http://127.0.0.1:{a_port}/disk.img");

    let out = importer(
        &[
            "copy",
            "--header",
            "X-Ferry-Token: t0ken-x1",
            &url,
            target.to_str().unwrap(),
        ],
        &[],
    );

    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(&target).unwrap() == data);
    assert!(a_seen.lock().unwrap().iter().all(|(_, h)| has_token(h)));
    let b = b_seen.lock().unwrap();
    assert!(!b.is_empty());
    assert!(
        b.iter().all(|(_, h)| !has_token(h)),
        "the token reached another origin: {b:?}"
    );
}

#[test]
fn redirect_within_the_same_origin_keeps_the_user_headers() {
    let data = disk();
    let body = data.clone();
    let (port, seen) = server(move |line| {
        if line.contains("/old.img") {
            (
                "301 Moved Permanently".into(),
                vec!["Location: /new.img".into()],
                vec![],
            )
        } else {
            ("200 OK".into(), vec![], body.clone())
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("disk.img");
    let url = format!("http://127.0.0.1:{port}/old.img");

    let out = importer(
        &[
            "copy",
            "--header",
            "X-Ferry-Token: t0ken-x1",
            &url,
            target.to_str().unwrap(),
        ],
        &[],
    );

    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(&target).unwrap() == data);
    assert!(seen.lock().unwrap().iter().all(|(_, h)| has_token(h)));
}

#[test]
fn redirect_loop_is_an_error() {
    let (port, _) = server(|_| {
        (
            "302 Found".into(),
            vec!["Location: /again.img".into()],
            vec![],
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("disk.img");
    let url = format!("http://127.0.0.1:{port}/disk.img");

    let out = importer(&["copy", &url, target.to_str().unwrap()], &[]);

    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("redirects"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!target.exists());
}

#[test]
fn http_proxy_variable_is_honoured() {
    let data = disk();
    let body = data.clone();
    let (proxy, seen) = server(move |_| ("200 OK".into(), vec![], body.clone()));
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("disk.img");
    // Reachable only through the proxy: the .invalid TLD never resolves.
    let url = "http://disk-server.invalid/images/disk.img";

    let out = importer(
        &["copy", url, target.to_str().unwrap()],
        &[("http_proxy", format!("http://127.0.0.1:{proxy}"))],
    );

    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(&target).unwrap() == data);
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter()
            .any(|(line, _)| line.starts_with("GET http://disk-server.invalid/images/disk.img ")),
        "{seen:?}"
    );
}
