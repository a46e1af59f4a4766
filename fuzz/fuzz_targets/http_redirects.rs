//! The shared HTTP layer's redirect handling (`http::HttpClient::send`, which every HTTP-family
//! source uses): statuses and `Location` values from the fuzz input, answered by an in-process
//! server that every request reaches whatever host it names (it is set as the HTTP proxy), so
//! what the client sends where can be checked.
//!
//! Input: one byte of flags (bit 0: a ranged request), then up to 12 answers, each a status
//! (u16, mapped into 100..=599) and a length-prefixed (u8) `Location` value.
//!
//! Holds: no panic, no hang; at most 1 + MAX_REDIRECTS requests; the user's header (a
//! credential) goes to the original origin and never to another one; a ranged request asks
//! the same range every time; an answer returned is not a redirect (but 304), and comes from
//! the URL of the last request.

#![no_main]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex, OnceLock};

use ferry_fuzz::{debug, Input, TIME_BOUND};
use libfuzzer_sys::fuzz_target;
use transfer_core::http::{HttpClient, HttpOptions, MAX_REDIRECTS};
use url::Url;

const ORIGIN: &str = "http://origin.fuzz/images/disk";
const SECRET: (&str, &str) = ("X-Fuzz-Secret", "s3cret-token");

/// What the in-process server saw of one request: its target (absolute, as sent to a proxy)
/// and its headers, names in lower case.
#[derive(Debug)]
struct Seen {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

#[derive(Default)]
struct Script {
    answers: VecDeque<Vec<u8>>,
    seen: Vec<Seen>,
}

struct World {
    rt: tokio::runtime::Runtime,
    client: HttpClient,
    script: Arc<Mutex<Script>>,
}

/// One server, client and runtime for the whole run (the client's connection pool lives on the
/// runtime); each input scripts the server's answers.
fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let script = Arc::new(Mutex::new(Script::default()));
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let port = listener.local_addr().expect("an address").port();
        let s = script.clone();
        std::thread::spawn(move || serve(listener, s));
        // Every request, whatever host it names, goes to the server above; the client reads
        // these when it is built, below, and nothing else reads the environment.
        std::env::set_var("http_proxy", format!("http://127.0.0.1:{port}"));
        std::env::set_var("https_proxy", format!("http://127.0.0.1:{port}"));
        std::env::remove_var("no_proxy");
        std::env::remove_var("NO_PROXY");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let opts = HttpOptions {
            headers: vec![(SECRET.0.to_owned(), SECRET.1.to_owned())],
            ..HttpOptions::default()
        };
        let client = rt
            .block_on(async { HttpClient::new(&opts) })
            .expect("a client");
        World { rt, client, script }
    })
}

/// Answers each connection with the next scripted answer (or 500), recording the request.
fn serve(listener: TcpListener, script: Arc<Mutex<Script>>) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let mut r = BufReader::new(conn.try_clone().expect("a socket"));
        let mut line = String::new();
        if r.read_line(&mut line).is_err() {
            continue;
        }
        let mut words = line.split_whitespace();
        let method = words.next().unwrap_or("").to_owned();
        let target = words.next().unwrap_or("").to_owned();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                break;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let answer = {
            let mut s = script.lock().expect("the script");
            s.seen.push(Seen {
                method,
                target,
                headers,
            });
            s.answers.pop_front()
        };
        let answer = answer.unwrap_or_else(|| {
            b"HTTP/1.1 500 No More\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
        });
        let _ = conn.write_all(&answer);
    }
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let mut input = Input::new(data);
    let ranged = input.u8() & 1 != 0;
    let mut answers = VecDeque::new();
    while !input.is_empty() && answers.len() < 12 {
        let status = 100 + input.u16() % 500;
        let n = input.u8();
        let location = input.bytes(n.into());
        let mut a = format!("HTTP/1.1 {status} Fuzz\r\n").into_bytes();
        if !location.is_empty() {
            a.extend_from_slice(b"Location: ");
            a.extend_from_slice(location);
            a.extend_from_slice(b"\r\n");
        }
        a.extend_from_slice(b"Content-Length: 0\r\nConnection: close\r\n\r\n");
        answers.push_back(a);
    }
    *w.script.lock().expect("the script") = Script {
        answers,
        seen: Vec::new(),
    };

    let url = Url::parse(ORIGIN).expect("a URL");
    let range = ranged.then_some((0, 511));
    let result = w.rt.block_on(async {
        tokio::time::timeout(TIME_BOUND, w.client.send(reqwest::Method::GET, &url, range))
            .await
            .expect("a request that ends")
    });
    let seen = std::mem::take(&mut w.script.lock().expect("the script").seen);
    debug(|| {
        format!(
            "{:?} after {seen:#?}",
            result.as_ref().map(|(r, at)| (r.status(), at.to_string()))
        )
    });

    assert!(
        seen.len() <= 1 + MAX_REDIRECTS,
        "{} requests: {seen:?}",
        seen.len()
    );
    let origin = url.origin();
    for s in &seen {
        // HTTPS targets reach the proxy as CONNECT host:port, and send nothing in clear.
        if s.method == "CONNECT" {
            continue;
        }
        let Ok(target) = Url::parse(&s.target) else {
            continue;
        };
        let secret = s
            .headers
            .iter()
            .any(|(n, _)| n == &SECRET.0.to_ascii_lowercase());
        if target.origin() != origin {
            assert!(!secret, "the user's header went to {target}");
        }
        if ranged {
            assert!(
                s.headers
                    .iter()
                    .any(|(n, v)| n == "range" && v == "bytes=0-511"),
                "a ranged request without its range at {target}"
            );
        }
    }
    if let Ok((resp, mut at)) = result {
        let st = resp.status();
        assert!(
            !st.is_redirection() || st == reqwest::StatusCode::NOT_MODIFIED,
            "a redirect returned as the answer: {st}"
        );
        // User info and fragment stay out of the request line.
        at.set_fragment(None);
        let _ = at.set_username("");
        let _ = at.set_password(None);
        let plain = seen.last().filter(|s| s.method != "CONNECT");
        if let Some(last) = plain.and_then(|s| Url::parse(&s.target).ok()) {
            assert_eq!(
                at.as_str(),
                last.as_str(),
                "the answer's URL is not the last asked"
            );
        }
    }
});
