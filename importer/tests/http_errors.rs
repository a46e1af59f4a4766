//! `importer copy` from HTTP(S) failing cleanly: every case exits non-zero with exactly one line on
//! stderr that names the problem, never panics, prints no result, and leaves no target behind.
//! Servers are nginx (status codes, TLS trust, thumbprints) or a tiny HTTP/1.1 server written
//! here that answers by hand and breaks the protocol: a body shorter than its Content-Length, a
//! 206 whose Content-Range is not the range asked for.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use test_kit::nginx::{plain_hex, require_nginx, Location, Nginx};
use test_kit::*;

const MIB: usize = 1 << 20;
const DISK: &str = "disk.img";
const DISK_SIZE: usize = 4 * MIB;

/// `importer copy [OPTIONS...] URL DIR/target.img`; returns the run and the target path.
fn copy(dir: &Path, url: &str, options: &[&str]) -> (Out, PathBuf) {
    let target = dir.join("target.img");
    let mut args = vec!["copy"];
    args.extend_from_slice(options);
    args.extend([url, s(&target)]);
    (importer(&args), target)
}

/// nginx serving [`DISK`]; `None` when the peers are missing (SKIP).
fn serve() -> Option<Nginx> {
    if !require_nginx() {
        return None;
    }
    let nginx = Nginx::start();
    nginx.put(DISK, &disk_bytes(DISK_SIZE, 21));
    Some(nginx)
}

#[test]
fn missing_file_fails_with_http_404() {
    let Some(nginx) = serve() else {
        return;
    };
    let dir = tempdir();

    let (out, target) = copy(dir.path(), &nginx.http(Location::Range, "missing.img"), &[]);

    out.assert_clean_failure(&["HTTP 404"]);
    assert!(!target.exists(), "no target for a missing source");
}

#[test]
fn secret_location_without_the_header_fails_with_http_403() {
    let Some(nginx) = serve() else {
        return;
    };
    let dir = tempdir();

    let (out, target) = copy(dir.path(), &nginx.http(Location::Secret, DISK), &[]);

    out.assert_clean_failure(&["HTTP 403"]);
    assert!(!target.exists());
}

#[test]
fn secret_location_with_a_wrong_header_value_fails_with_http_403() {
    let Some(nginx) = serve() else {
        return;
    };
    let dir = tempdir();

    let (out, target) = copy(
        dir.path(),
        &nginx.http(Location::Secret, DISK),
        &["--header", "X-Ferry-Test: no"],
    );

    out.assert_clean_failure(&["HTTP 403"]);
    assert!(!target.exists());
}

#[test]
fn https_with_system_roots_rejects_the_test_ca() {
    let Some(nginx) = serve() else {
        return;
    };
    let dir = tempdir();

    let (out, target) = copy(dir.path(), &nginx.https(Location::Range, DISK), &[]);

    out.assert_clean_failure(&["certificate"]);
    assert!(!target.exists());
}

#[test]
fn https_with_an_unrelated_ca_rejects_the_server() {
    let Some(nginx) = serve() else {
        return;
    };
    let dir = tempdir();
    let wrong_ca = nginx.tls().other_ca_cert();

    let (out, target) = copy(
        dir.path(),
        &nginx.https(Location::Range, DISK),
        &["--cacert", s(&wrong_ca)],
    );

    out.assert_clean_failure(&["certificate"]);
    assert!(!target.exists());
}

#[test]
fn wrong_sha256_thumbprint_fails_naming_both_fingerprints() {
    let Some(nginx) = serve() else {
        return;
    };
    let dir = tempdir();
    // A real certificate's fingerprint, just not the server's; given in the plain form, named
    // in the colon form.
    let wrong = test_kit::nginx::fingerprint(&nginx.tls().other_ca_cert(), "sha256");
    let presented = nginx.tls().server_sha256();

    let (out, target) = copy(
        dir.path(),
        &nginx.https(Location::Range, DISK),
        &["--thumbprint", &plain_hex(&wrong)],
    );

    out.assert_clean_failure(&["thumbprint mismatch", &wrong, &presented]);
    assert!(!target.exists());
}

#[test]
fn wrong_sha1_thumbprint_fails_naming_both_fingerprints() {
    let Some(nginx) = serve() else {
        return;
    };
    let dir = tempdir();
    let wrong = test_kit::nginx::fingerprint(&nginx.tls().other_ca_cert(), "sha1");
    let presented = nginx.tls().server_sha1();

    let (out, target) = copy(
        dir.path(),
        &nginx.https(Location::Range, DISK),
        &["--thumbprint", &wrong.to_ascii_lowercase()],
    );

    out.assert_clean_failure(&["thumbprint mismatch", &wrong, &presented]);
    assert!(!target.exists());
}

#[test]
fn thumbprint_of_the_wrong_length_is_refused() {
    let dir = tempdir();
    // 31 bytes: neither SHA-256 nor SHA-1. Refused before any connection is tried.
    let port = free_tcp_port();
    let short = vec!["AB"; 31].join(":");

    let (out, target) = copy(
        dir.path(),
        &format!("https://127.0.0.1:{port}/range/{DISK}"),
        &["--thumbprint", &short],
    );

    out.assert_clean_failure(&["thumbprint"]);
    assert!(!target.exists());
}

#[test]
fn http_port_without_listener_fails_to_connect() {
    let dir = tempdir();
    let port = free_tcp_port();

    let (out, target) = copy(
        dir.path(),
        &format!("http://127.0.0.1:{port}/range/{DISK}"),
        &[],
    );

    out.assert_clean_failure(&["cannot connect"]);
    assert!(!target.exists());
}

#[test]
fn https_port_without_listener_fails_to_connect() {
    let dir = tempdir();
    let port = free_tcp_port();

    let (out, target) = copy(
        dir.path(),
        &format!("https://127.0.0.1:{port}/range/{DISK}"),
        &["--insecure"],
    );

    out.assert_clean_failure(&["cannot connect"]);
    assert!(!target.exists());
}

/// One request as the fake server saw it.
#[derive(Debug)]
struct Request {
    head: bool,
    /// `Range: bytes=FIRST-LAST` (LAST inclusive; `None` for an open end).
    range: Option<(u64, Option<u64>)>,
}

/// How the fake server answers a request: the whole response, status line to last body byte.
type Responder = dyn Fn(&Request) -> Vec<u8> + Send + Sync;

/// A hand-written HTTP/1.1 server on 127.0.0.1: one thread per connection, one request per
/// connection (`Connection: close`), each answered by a [`Responder`]. Stopped when dropped.
struct FakeHttp {
    port: u16,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl FakeHttp {
    fn start(respond: impl Fn(&Request) -> Vec<u8> + Send + Sync + 'static) -> FakeHttp {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the fake server");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let respond: Arc<Responder> = Arc::new(respond);
        let acceptor = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let respond = respond.clone();
                    std::thread::spawn(move || serve_one(conn, &*respond));
                }
            })
        };
        FakeHttp {
            port,
            stop,
            acceptor: Some(acceptor),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/{DISK}", self.port)
    }
}

impl Drop for FakeHttp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the acceptor, which then sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request head from `conn`, writes the answer and closes.
fn serve_one(mut conn: TcpStream, respond: &Responder) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let Some(request) = parse_request(&String::from_utf8_lossy(&head)) else {
        return;
    };
    // The client may close early (it has seen enough to fail): write errors are expected.
    let _ = conn.write_all(&respond(&request));
    let _ = conn.flush();
}

fn parse_request(head: &str) -> Option<Request> {
    let mut lines = head.split("\r\n");
    let method = lines.next()?.split(' ').next()?.to_owned();
    let range = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("range"))
        .and_then(|(_, value)| {
            let (first, last) = value.trim().strip_prefix("bytes=")?.split_once('-')?;
            let last = match last.trim() {
                "" => None,
                l => Some(l.parse().ok()?),
            };
            Some((first.trim().parse().ok()?, last))
        });
    Some(Request {
        head: method == "HEAD",
        range,
    })
}

/// A response with `status`, `headers` (each `Name: value`) and `body`, closing the connection.
fn response(status: &str, headers: &[String], body: &[u8]) -> Vec<u8> {
    let mut r = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    let mut r = r.into_bytes();
    r.extend_from_slice(body);
    r
}

/// The range `req` asks of a disk of `size` bytes, as `(first, last)` inclusive.
fn asked(req: &Request, size: usize) -> Option<(usize, usize)> {
    let (first, last) = req.range?;
    let last = last.map_or(size - 1, |l| (l as usize).min(size - 1));
    Some((first as usize, last))
}

/// A whole-disk 200 whose body stops halfway through its Content-Length (also for HEAD, without
/// the body).
fn short_whole(req: &Request, disk: &[u8]) -> Vec<u8> {
    let headers = [
        format!("Content-Length: {}", disk.len()),
        "Content-Type: application/octet-stream".to_owned(),
    ];
    let body = if req.head {
        &[][..]
    } else {
        &disk[..disk.len() / 2]
    };
    response("200 OK", &headers, body)
}

#[test]
fn stream_body_shorter_than_its_content_length_fails() {
    let dir = tempdir();
    let disk = disk_bytes(DISK_SIZE, 22);
    // Range is ignored (as /norange/ does): the disk comes in one stream, which ends early.
    let server = FakeHttp::start(move |req| short_whole(req, &disk));

    let (out, target) = copy(dir.path(), &server.url(), &[]);

    out.assert_clean_failure(&["shorter than"]);
    assert!(!target.exists(), "a truncated copy must not be left behind");
}

#[test]
fn ranged_body_shorter_than_its_content_length_fails() {
    let dir = tempdir();
    let disk = disk_bytes(DISK_SIZE, 23);
    // Every 206 announces the range asked for and sends half of it.
    let server = FakeHttp::start(move |req| match asked(req, disk.len()) {
        Some((first, last)) if !req.head => {
            let headers = [
                format!("Content-Range: bytes {first}-{last}/{}", disk.len()),
                format!("Content-Length: {}", last + 1 - first),
            ];
            let half = first + (last + 1 - first) / 2;
            response("206 Partial Content", &headers, &disk[first..half])
        }
        _ => {
            let headers = [
                format!("Content-Length: {}", disk.len()),
                "Accept-Ranges: bytes".to_owned(),
            ];
            let body = if req.head { &[][..] } else { &disk[..] };
            response("200 OK", &headers, body)
        }
    });

    let (out, target) = copy(dir.path(), &server.url(), &[]);

    out.assert_clean_failure(&["shorter than"]);
    assert!(!target.exists());
}

/// A server that honours Range except that, for ranges starting at or past `wrong_from`, its 206
/// names (and sends) the range 512 bytes further on than the one asked for.
fn shifted_ranges(disk: Vec<u8>, wrong_from: usize) -> FakeHttp {
    FakeHttp::start(move |req| match asked(req, disk.len()) {
        Some((first, last)) if !req.head => {
            let shift = if first >= wrong_from { 512 } else { 0 };
            let (first, last) = (first + shift, last + shift);
            let body = &disk[first.min(disk.len())..(last + 1).min(disk.len())];
            let headers = [
                format!("Content-Range: bytes {first}-{last}/{}", disk.len()),
                format!("Content-Length: {}", body.len()),
            ];
            response("206 Partial Content", &headers, body)
        }
        _ => {
            let headers = [
                format!("Content-Length: {}", disk.len()),
                "Accept-Ranges: bytes".to_owned(),
            ];
            let body = if req.head { &[][..] } else { &disk[..] };
            response("200 OK", &headers, body)
        }
    })
}

#[test]
fn partial_content_for_another_range_mid_copy_fails_naming_content_range() {
    let dir = tempdir();
    // Ranges at offset 0 (where a client probes) are right; every later one is wrong.
    let server = shifted_ranges(disk_bytes(DISK_SIZE, 24), 1);

    let (out, target) = copy(dir.path(), &server.url(), &["--request-size", "1M"]);

    out.assert_clean_failure(&["Content-Range"]);
    assert!(!target.exists());
}

#[test]
fn partial_content_for_another_range_from_the_start_fails_naming_content_range() {
    let dir = tempdir();
    // Every 206 is for the wrong range, the first one too.
    let server = shifted_ranges(disk_bytes(DISK_SIZE, 25), 0);

    let (out, target) = copy(dir.path(), &server.url(), &[]);

    out.assert_clean_failure(&["Content-Range"]);
    assert!(!target.exists());
}

#[test]
fn a_redirect_from_https_to_plain_http_is_refused() {
    let Some(nginx) = serve() else {
        return;
    };
    let dir = tempdir();
    let ca = nginx.tls().ca_cert();
    // The same redirect over plain http is followed: only the downgrade is refused.
    let (plain, plain_target) = copy(dir.path(), &nginx.http(Location::ToHttp, DISK), &[]);
    assert!(plain.status.success(), "{}", plain.stderr);
    assert_file_holds(&plain_target, &disk_bytes(DISK_SIZE, 21));
    std::fs::remove_file(&plain_target).unwrap();

    let (out, target) = copy(
        dir.path(),
        &nginx.https(Location::ToHttp, DISK),
        &["--cacert", s(&ca)],
    );

    out.assert_clean_failure(&["refusing a redirect from https to http://127.0.0.1"]);
    assert!(
        !target.exists(),
        "nothing is read over the downgraded connection"
    );
}
