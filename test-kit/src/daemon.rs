//! `importer serve` driven over its Unix socket, as a controller would: one HTTP/1.1 request
//! per connection, and a daemon started and stopped around a test.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{s, spawn_importer_env, Out, Running};

/// One HTTP/1.1 request over the daemon's socket: (status, body as JSON or text).
pub fn call(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut s = UnixStream::connect(sock).expect("connecting to the daemon");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.unwrap_or("");
    // The daemon may answer (413) and close before a large body is all sent: a failed write is
    // not the test's verdict, the answer is.
    let _ = write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut out = String::new();
    s.read_to_string(&mut out).expect("reading the answer");
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {out}"));
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

/// `text` as JSON.
pub fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// A daemon on a socket in `dir`, writing under `root`.
pub struct Daemon {
    run: Option<Running>,
    /// The daemon's socket.
    pub sock: PathBuf,
}

impl Daemon {
    /// Starts `importer serve` with `extra` flags.
    pub fn start(dir: &Path, root: &Path, extra: &[&str]) -> Daemon {
        Daemon::start_env(dir, root, extra, &[])
    }

    /// [`Daemon::start`] with the extra environment `env`.
    pub fn start_env(dir: &Path, root: &Path, extra: &[&str], env: &[(String, String)]) -> Daemon {
        let sock = dir.join("ferry.sock");
        let listen = format!("unix:{}", sock.display());
        let mut args = vec!["serve", "--listen", &listen, "--target-root", s(root)];
        args.extend_from_slice(extra);
        let run = spawn_importer_env(&args, env);
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&sock).is_err() {
            assert!(Instant::now() < deadline, "the daemon did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon {
            run: Some(run),
            sock,
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.run.as_ref().expect("running").pid()
    }

    /// `GET /metrics`: each sample line as (name with labels, value).
    pub fn metrics(&self) -> Vec<(String, f64)> {
        let (st, text) = call(&self.sock, "GET", "/metrics", None);
        assert_eq!(st, 200, "{text}");
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect()
    }

    /// `POST /v1/transfers`.
    pub fn post(&self, body: &str) -> (u16, Value) {
        let (st, b) = call(&self.sock, "POST", "/v1/transfers", Some(body));
        (st, json(&b))
    }

    /// `POST /v1/transfers` of `body`, which must be accepted (201); the transfer's id.
    pub fn submit(&self, body: &str) -> String {
        let (st, v) = self.post(body);
        assert_eq!(st, 201, "{v}");
        v["id"].as_str().expect("an id").to_owned()
    }

    /// Polls transfer `id` until it has put at least `bytes` on its target (60 s at most).
    pub fn wait_for_bytes(&self, id: &str, bytes: u64) {
        let started = Instant::now();
        while self.get(id)["bytes_done"].as_u64().unwrap_or(0) < bytes {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{}",
                self.get(id)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET /v1/transfers/{id}`.
    pub fn get(&self, id: &str) -> Value {
        let (st, b) = call(&self.sock, "GET", &format!("/v1/transfers/{id}"), None);
        assert_eq!(st, 200, "{b}");
        json(&b)
    }

    /// Polls transfer `id` until it is in a final state.
    pub fn wait(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let v = self.get(id);
            if ["succeeded", "failed", "cancelled"].contains(&v["state"].as_str().unwrap_or("")) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "transfer {id} did not finish: {v}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the daemon's output.
    pub fn stop(&mut self) -> Out {
        let run = self.run.take().expect("running");
        assert!(std::process::Command::new("kill")
            .args(["-TERM", &run.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success()));
        run.finish()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(r) = self.run.take() {
            r.kill();
        }
    }
}
