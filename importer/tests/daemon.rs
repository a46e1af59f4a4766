//! `importer serve`, the transfer daemon, driven over its Unix socket as a controller would:
//! transfers from a real nbdkit end identical to nbdcopy's copy; bad requests are refused with
//! the status and field they deserve and write nothing; a queued and a running transfer can be
//! cancelled; SIGTERM stops the daemon.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use test_kit::daemon::{call, json, Daemon};
use test_kit::*;

#[test]
fn transfers_submitted_to_the_daemon_end_identical_to_nbdcopy_and_are_listed() {
    if !require_peers(&["nbdkit", "nbdcopy"]) {
        return;
    }
    let dir = tempdir();
    let root = dir.path().join("volumes");
    std::fs::create_dir(&root).unwrap();
    let a = Peer::nbdkit(&["sparse-random", "size=24M", "seed=5", "percent=30"]);
    let b = Peer::nbdkit(&["pattern", "size=8M"]);
    let mut d = Daemon::start(dir.path(), &root, &["--max-transfers", "1"]);

    let (st, health) = call(&d.sock, "GET", "/healthz", None);
    assert_eq!((st, json(&health)["status"].as_str()), (200, Some("ok")));
    let ta = root.join("a.img");
    let tb = root.join("b.img");
    let (st, ra) = d.post(&format!(
        r#"{{"source":"{}","target":"{}","options":{{"verify":true}},"checkpoint":"s1"}}"#,
        a.uri(),
        ta.display()
    ));
    assert_eq!(st, 201, "{ra}");
    let (st, rb) = d.post(&format!(
        r#"{{"source":"{}","target":"{}"}}"#,
        b.uri(),
        tb.display()
    ));
    assert_eq!(st, 201, "{rb}");
    let (ia, ib) = (ra["id"].as_str().unwrap(), rb["id"].as_str().unwrap());
    assert_ne!(ia, ib);

    let va = d.wait(ia);
    let vb = d.wait(ib);
    assert_eq!(va["state"], "succeeded", "{va}");
    assert_eq!(vb["state"], "succeeded", "{vb}");
    assert_eq!(va["bytes_total"], 24 << 20, "{va}");
    assert_eq!(va["bytes_done"], 24 << 20, "{va}");
    assert_eq!(va["summary"]["verified"], true, "{va}");
    assert_eq!(va["checkpoint"], "s1", "{va}");
    for (peer, target) in [(&a, &ta), (&b, &tb)] {
        let reference = dir.path().join("reference.img");
        nbdcopy(&peer.uri(), &reference);
        assert_same_files(target, &reference);
    }
    // The source (whose URI may carry credentials) is never echoed.
    assert!(!va.to_string().contains("nbd+unix"), "{va}");

    let (st, list) = call(&d.sock, "GET", "/v1/transfers", None);
    assert_eq!(st, 200);
    let ids: Vec<String> = json(&list)
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, vec![ia.to_string(), ib.to_string()]);
    let (st, metrics) = call(&d.sock, "GET", "/metrics", None);
    assert_eq!(st, 200);
    assert!(
        metrics.contains("ferry_transfers{state=\"succeeded\"} 2"),
        "{metrics}"
    );
    // Cancelling a finished transfer changes nothing.
    let (st, after) = call(&d.sock, "DELETE", &format!("/v1/transfers/{ia}"), None);
    assert_eq!(
        (st, json(&after)["state"].clone()),
        (200, "succeeded".into())
    );

    let out = d.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(!d.sock.exists(), "the socket is removed at exit");
}

#[test]
fn bad_requests_are_refused_with_their_status_and_field_and_write_nothing() {
    let dir = tempdir();
    let root = dir.path().join("volumes");
    std::fs::create_dir(&root).unwrap();
    let outside = dir.path().join("elsewhere");
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
    let d = Daemon::start(dir.path(), &root, &[]);
    let t = root.join("disk.img");
    let src = "nbd+unix:///?socket=/nonexistent.sock";
    let cases = [
        ("{".to_string(), 400, "body"),
        (format!(r#"{{"target":"{}"}}"#, t.display()), 400, "source"),
        (
            format!(
                r#"{{"source":"{src}","target":"{}","speed":9}}"#,
                t.display()
            ),
            400,
            "speed",
        ),
        (
            format!(
                r#"{{"source":"{src}","target":"{}","options":{{"connections":"four"}}}}"#,
                t.display()
            ),
            400,
            "options.connections",
        ),
        (
            format!(
                r#"{{"source":"{src}","target":"{}/disk.img"}}"#,
                outside.display()
            ),
            403,
            "target",
        ),
        (
            format!(
                r#"{{"source":"{src}","target":"{}/escape/disk.img"}}"#,
                root.display()
            ),
            403,
            "target",
        ),
    ];
    for (body, status, field) in &cases {
        let (st, v) = d.post(body);
        assert_eq!(st, *status, "{body}: {v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap_or("")
                .starts_with(&format!("{field}:")),
            "{body}: {v}"
        );
    }
    // A body declared over 1 MiB is refused before it is sent.
    let mut s = UnixStream::connect(&d.sock).unwrap();
    write!(
        s,
        "POST /v1/transfers HTTP/1.1\r\nHost: ferry\r\nContent-Length: {}\r\n\r\n",
        2 << 20
    )
    .unwrap();
    let mut answer = [0u8; 12];
    s.read_exact(&mut answer).unwrap();
    assert_eq!(
        &answer,
        b"HTTP/1.1 413",
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let (st, _) = call(&d.sock, "GET", "/v1/transfers/t999", None);
    assert_eq!(st, 404);
    let (st, _) = call(&d.sock, "PUT", "/v1/transfers", None);
    assert_eq!(st, 405);
    assert_eq!(
        std::fs::read_dir(&root).unwrap().count(),
        1,
        "only the link"
    );
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}

#[test]
fn a_running_and_a_queued_transfer_are_cancelled_and_a_busy_target_is_refused() {
    if !require_peer("nbdkit") {
        return;
    }
    let dir = tempdir();
    let root = dir.path().join("volumes");
    std::fs::create_dir(&root).unwrap();
    // Slow enough to be caught running and to stay so under load: every read waits 10 s (with
    // 64 reads in flight, 256 MiB take 40 s); both transfers are cancelled long before.
    let slow = Peer::nbdkit(&["--filter=delay", "pattern", "size=256M", "rdelay=10"]);
    let d = Daemon::start(dir.path(), &root, &["--max-transfers", "1"]);
    let running = root.join("running.img");
    let queued = root.join("queued.img");
    let post = |t: &Path| {
        d.post(&format!(
            r#"{{"source":"{}","target":"{}"}}"#,
            slow.uri(),
            t.display()
        ))
    };
    let (st, r1) = post(&running);
    assert_eq!(st, 201, "{r1}");
    let (st, r2) = post(&queued);
    assert_eq!(st, 201, "{r2}");
    let (st, busy) = post(&running);
    assert_eq!(st, 409, "{busy}");
    assert!(
        busy["error"].as_str().unwrap().starts_with("target:"),
        "{busy}"
    );
    let (i1, i2) = (r1["id"].as_str().unwrap(), r2["id"].as_str().unwrap());
    // Generous: a loaded machine (writeback of gigabytes another run left) can stall it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while d.get(i1)["state"] != "running" {
        assert!(Instant::now() < deadline, "{}", d.get(i1));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(d.get(i2)["state"], "queued");
    for id in [i2, i1, i1] {
        let (st, _) = call(&d.sock, "DELETE", &format!("/v1/transfers/{id}"), None);
        assert_eq!(st, 200);
    }
    assert_eq!(d.wait(i1)["state"], "cancelled");
    assert_eq!(d.wait(i2)["state"], "cancelled");
    assert!(!running.exists(), "a cancelled new target is removed");
    assert!(!queued.exists());
    // The target is free again.
    let (st, again) = post(&running);
    assert_eq!(st, 201, "{again}");
}

#[test]
fn the_transfers_client_adds_waits_lists_and_cancels_without_curl() {
    if !require_peer("nbdkit") {
        return;
    }
    let dir = tempdir();
    let root = dir.path().join("volumes");
    std::fs::create_dir(&root).unwrap();
    let src = Peer::nbdkit(&["pattern", "size=16M"]);
    let d = Daemon::start(dir.path(), &root, &[]);
    let sock = d.sock.display().to_string();
    let target = root.join("disk.img");
    let client = |args: &[&str]| {
        let mut a = vec!["transfers", "--socket", sock.as_str()];
        a.extend_from_slice(args);
        importer(&a)
    };
    let added = client(&[
        "add",
        &src.uri(),
        s(&target),
        "--verify",
        "--checkpoint",
        "c1",
    ]);
    assert!(added.status.success(), "{}{}", added.stdout, added.stderr);
    let id = json(added.stdout.trim())["id"]
        .as_str()
        .unwrap()
        .to_string();
    let waited = client(&["wait", &id]);
    assert!(
        waited.status.success(),
        "{}{}",
        waited.stdout,
        waited.stderr
    );
    let v = json(waited.stdout.trim());
    assert_eq!(
        (v["state"].as_str(), v["checkpoint"].as_str()),
        (Some("succeeded"), Some("c1"))
    );
    let listed = client(&["list"]);
    assert_eq!(json(listed.stdout.trim()).as_array().map(Vec::len), Some(1));
    let cancelled = client(&["cancel", &id]);
    assert!(cancelled.status.success(), "{}", cancelled.stderr);
    let missing = client(&["get", "t404"]);
    assert!(!missing.status.success());
    assert!(
        missing.stdout.contains("no such transfer"),
        "{}",
        missing.stdout
    );
    // A refused request fails the command with the daemon's message.
    let refused = client(&["add", &src.uri(), "/etc/ferry-test.img"]);
    assert!(!refused.status.success());
    assert!(
        refused.stdout.contains("outside the target roots"),
        "{}",
        refused.stdout
    );
    let bytes = std::fs::read(&target).unwrap();
    assert_eq!(bytes.len(), 16 << 20);
}

/// `curl` against the daemon over TLS: (status, body).
fn curl(ca: &Path, url: &str, token: Option<&str>, data: Option<&str>) -> (u16, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "30",
        "--cacert",
        s(ca),
        "-w",
        "\n%{http_code}",
    ]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if let Some(d) = data {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", d]);
    }
    let out = cmd.arg(url).output().expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn over_tcp_the_daemon_speaks_tls_and_wants_the_bearer_token() {
    if !require_peers(&["nbdkit", "openssl", "curl"]) {
        return;
    }
    let dir = tempdir();
    let root = dir.path().join("volumes");
    std::fs::create_dir(&root).unwrap();
    let tls = test_kit::nginx::Tls::create(dir.path());
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let port = free_tcp_port();
    let listen = format!("tcp:127.0.0.1:{port}");
    let cert = tls.server_cert();
    let key = tls.server_key();
    let args = [
        "serve",
        "--listen",
        &listen,
        "--target-root",
        s(&root),
        "--tls-cert",
        s(&cert),
        "--tls-key",
        s(&key),
        "--token-file",
        s(&token_file),
    ];
    let run = spawn_importer(&args);
    let base = format!("https://127.0.0.1:{port}");
    let ca = tls.ca_cert();
    let deadline = Instant::now() + Duration::from_secs(20);
    while curl(&ca, &format!("{base}/healthz"), None, None).0 != 200 {
        assert!(Instant::now() < deadline, "the daemon did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let list = format!("{base}/v1/transfers");
    assert_eq!(curl(&ca, &list, None, None).0, 401);
    assert_eq!(curl(&ca, &list, Some("wrong-token!"), None).0, 401);
    assert_eq!(
        curl(&ca, &list, Some("s3cret-token"), None),
        (200, "[]\n".into())
    );

    let src = Peer::nbdkit(&["pattern", "size=8M"]);
    let target = root.join("disk.img");
    let body = format!(
        r#"{{"source":"{}","target":"{}"}}"#,
        src.uri(),
        target.display()
    );
    assert_eq!(curl(&ca, &list, None, Some(&body)).0, 401);
    assert!(!target.exists(), "nothing written without the token");
    let (st, added) = curl(&ca, &list, Some("s3cret-token"), Some(&body));
    assert_eq!(st, 201, "{added}");
    let id = json(&added)["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = curl(&ca, &format!("{list}/{id}"), Some("s3cret-token"), None);
        let v = json(&v);
        if v["state"] == "succeeded" {
            break;
        }
        assert!(Instant::now() < deadline && v["state"] != "failed", "{v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::metadata(&target).unwrap().len(), 8 << 20);
    let out = run.kill();
    assert!(
        !out.stderr.contains("s3cret"),
        "the token is never logged: {}",
        out.stderr
    );

    // Without TLS material or a token, TCP is refused at start.
    let plain = importer(&["serve", "--listen", &listen, "--target-root", s(&root)]);
    assert!(!plain.status.success());
    assert!(plain.stderr.contains("--tls-cert"), "{}", plain.stderr);
}

/// The setup of the restart tests: a state directory, and a slow 512 MiB transfer. One nbdkit
/// thread per connection (nbdkit 1.32 aborts when a client is killed while several of a
/// connection's threads owe it replies: see tests/faults.rs), each 1 MiB read answered after
/// 50 ms: 4 connections, about 6 s in all.
struct Restart {
    dir: tempfile::TempDir,
    root: PathBuf,
    state_arg: String,
    slow: Peer,
    target: PathBuf,
    body: String,
}

const RESTART_SIZE: usize = 512 << 20;

impl Restart {
    fn new() -> Restart {
        let dir = tempdir();
        let root = dir.path().join("volumes");
        std::fs::create_dir(&root).unwrap();
        let state_arg = dir.path().join("state").display().to_string();
        let slow = Peer::nbdkit(&[
            "--threads=1",
            "--filter=delay",
            "pattern",
            "size=512M",
            "rdelay=50ms",
        ]);
        let target = root.join("disk.img");
        let body = format!(
            r#"{{"source":"{}","target":"{}"}}"#,
            slow.uri(),
            target.display()
        );
        Restart {
            dir,
            root,
            state_arg,
            slow,
            target,
            body,
        }
    }
}

#[test]
fn a_daemon_killed_mid_transfer_takes_it_up_again_from_its_journal_and_ends_identical() {
    if !require_peer("nbdkit") {
        return;
    }
    let Restart {
        dir,
        root,
        state_arg,
        slow,
        target,
        body,
    } = Restart::new();
    let id = {
        let d = Daemon::start(dir.path(), &root, &["--state-dir", &state_arg]);
        let id = d.submit(&body);
        // Past the first whole work ranges (64 MiB each, four copied side by side) and the
        // journal's update after them (it follows a flush, once a second).
        d.wait_for_bytes(&id, 384 << 20);
        assert_eq!(d.get(&id)["state"], "running");
        id
        // Dropped: SIGKILL, nothing cleaned up.
    };
    let d = Daemon::start(dir.path(), &root, &["--state-dir", &state_arg]);
    let v = d.wait(&id);
    assert_eq!(v["state"], "succeeded", "{v}");
    assert!(
        v["summary"]["bytes_resumed"].as_u64().unwrap_or(0) > 0,
        "resumed from the journal, not started over: {v}"
    );
    assert_file_holds(&target, &pattern_bytes(RESTART_SIZE));
    // New ids follow the restored ones; the finished transfer stays listed after another
    // restart, as it was.
    let (st, next) = d.post(&format!(
        r#"{{"source":"{}","target":"{}"}}"#,
        slow.uri(),
        root.join("other.img").display()
    ));
    assert_eq!(st, 201, "{next}");
    assert_ne!(next["id"].as_str(), Some(id.as_str()));
    let (st, _) = call(
        &d.sock,
        "DELETE",
        &format!("/v1/transfers/{}", next["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(st, 200);
    drop(d);
    let d = Daemon::start(dir.path(), &root, &["--state-dir", &state_arg]);
    let again = d.get(&id);
    assert_eq!(again["state"], "succeeded", "{again}");
    assert!(!again.to_string().contains("nbd+unix"), "{again}");
}

#[test]
fn sigterm_with_a_state_directory_leaves_the_transfer_to_the_next_start() {
    if !require_peer("nbdkit") {
        return;
    }
    let Restart {
        dir,
        root,
        state_arg,
        slow: _slow,
        target,
        body,
    } = Restart::new();
    let mut d = Daemon::start(dir.path(), &root, &["--state-dir", &state_arg]);
    let id = d.submit(&body);
    d.wait_for_bytes(&id, 64 << 20);
    let stopping = Instant::now();
    let out = d.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "SIGTERM stops the daemon at once: {:?}",
        stopping.elapsed()
    );
    let d = Daemon::start(dir.path(), &root, &["--state-dir", &state_arg]);
    let v = d.wait(&id);
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_file_holds(&target, &pattern_bytes(RESTART_SIZE));
}
