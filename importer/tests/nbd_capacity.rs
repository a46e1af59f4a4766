//! NBD servers that take few clients, against the real `qemu-nbd`: a warm delta from a
//! `qemu-nbd` that serves one client (its default) reads the dirty bitmap over the connection
//! that copies, and a server that accepts two connections still gets a whole copy when
//! importer asks for four.
//!
//! Self-contained on purpose (no shared test module): qemu-nbd is started here on a Unix socket
//! in a temporary directory, and is ready once the socket listens (read from /proc/net/unix:
//! a probe connection would use up a server that serves one client and then exits).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;
use test_kit::{require_peers, run_ok, s, tempdir};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// How long qemu-nbd may take to listen.
const SERVER_START: Duration = Duration::from_secs(30);
/// How long one importer run may take before the test gives up on it: a hang guard, not a
/// timing assertion.
const IMPORTER_WATCHDOG: Duration = Duration::from_secs(180);

/// Whether a Unix socket bound at `path` is listening (`__SO_ACCEPTCON` in /proc/net/unix).
fn listening(path: &Path) -> bool {
    fs::read_to_string("/proc/net/unix").is_ok_and(|t| {
        t.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 8 && f[3] == "00010000" && Path::new(f[7]) == path
        })
    })
}

/// `qemu-nbd -k SOCKET ARGS...` in the foreground, killed and reaped when dropped.
struct QemuNbd {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    _dir: TempDir,
}

impl QemuNbd {
    /// Starts qemu-nbd with `args` (options and the image) and waits until it listens.
    fn start(args: &[&str]) -> QemuNbd {
        let dir = tempdir();
        let socket = dir.path().join("nbd.sock");
        let log = dir.path().join("qemu-nbd.log");
        let child = Command::new("qemu-nbd")
            .arg("-k")
            .arg(&socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("the server log"))
            .spawn()
            .expect("starting qemu-nbd");
        let mut server = QemuNbd {
            child,
            socket,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + SERVER_START;
        while !listening(&server.socket) {
            if let Some(st) = server.child.try_wait().expect("polling qemu-nbd") {
                panic!("qemu-nbd {args:?} exited ({st}): {}", server.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "qemu-nbd {args:?} did not listen within {SERVER_START:?}: {}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", s(&self.socket))
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one importer run printed.
struct Run {
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Runs `importer ARGS`, asserts it succeeds within the watchdog, and returns its output.
fn importer_ok(args: &[&str]) -> Run {
    let dir = tempdir();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_importer"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .expect("starting importer");
    let status = loop {
        if let Some(st) = child.try_wait().expect("polling importer") {
            break st;
        }
        if started.elapsed() > IMPORTER_WATCHDOG {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "importer {args:?} still running after {IMPORTER_WATCHDOG:?}: {}",
                fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let run = Run {
        stdout: fs::read_to_string(&out).unwrap_or_default(),
        stderr: fs::read_to_string(&err).unwrap_or_default(),
        elapsed: started.elapsed(),
    };
    println!(
        "importer {args:?}: {:.2} s, {status}\n{}",
        run.elapsed.as_secs_f64(),
        run.stderr
    );
    assert!(
        status.success(),
        "importer {args:?} failed ({status}) after {:.1} s: {}",
        run.elapsed.as_secs_f64(),
        run.stderr
    );
    run
}

fn json_line(run: &Run) -> Value {
    println!("{}", run.stdout.trim());
    serde_json::from_str(run.stdout.trim()).expect("one JSON line on stdout")
}

/// Asserts the two files hold the same bytes, naming the first difference.
fn assert_same_files(got: &Path, want: &Path) {
    let (a, b) = (fs::read(got).unwrap(), fs::read(want).unwrap());
    assert_eq!(
        a.len(),
        b.len(),
        "{} and {} differ in size",
        s(got),
        s(want)
    );
    if let Some(at) = a.iter().zip(&b).position(|(x, y)| x != y) {
        panic!("{} differs from {} at byte {at}", s(got), s(want));
    }
}

/// `qemu-io -f qcow2 -c "write -P PATTERN OFFSET LEN" IMAGE` for each `(offset, len, pattern)`.
fn qcow2_write(image: &Path, writes: &[(u64, u64, u8)]) {
    let cmds: Vec<String> = writes
        .iter()
        .map(|(o, l, p)| format!("write -q -P {p} {o} {l}"))
        .collect();
    let mut args = vec!["-f", "qcow2"];
    for c in &cmds {
        args.extend(["-c", c.as_str()]);
    }
    args.push(s(image));
    run_ok("qemu-io", &args);
}

/// `size` bytes of deterministic noise (xorshift64*), every eighth MiB left zero.
fn disk_bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(size);
    while v.len() < size {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(size);
    for mib in v.chunks_mut(MIB as usize).step_by(8) {
        mib.fill(0);
    }
    v
}

#[test]
fn a_delta_from_a_default_qemu_nbd_uses_one_connection() {
    if !require_peers(&["qemu-nbd", "qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempdir();
    let image = dir.path().join("vm.qcow2");
    let target = dir.path().join("disk.img");
    run_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            s(&image),
            &(64 * MIB).to_string(),
        ],
    );
    qcow2_write(&image, &[(0, 4 * MIB, 0x11), (32 * MIB, MIB, 0x12)]);
    run_ok("qemu-img", &["bitmap", "--add", s(&image), "b0"]);
    {
        let base = QemuNbd::start(&["-r", "-f", "qcow2", "--persistent", s(&image)]);
        importer_ok(&["copy", &base.uri(), s(&target), "--checkpoint", "c1"]);
    }
    // The guest writes; the bitmap records it.
    qcow2_write(
        &image,
        &[(MIB, 64 * KIB, 0x5a), (40 * MIB, 128 * KIB, 0x5b)],
    );

    // qemu-nbd's defaults: one client (-e 1), and it exits when that client leaves. A second
    // connection for the bitmap would wait unanswered behind the first.
    let export = QemuNbd::start(&["-r", "-f", "qcow2", "-B", "b0", s(&image)]);
    let run = importer_ok(&[
        "copy",
        &export.uri(),
        s(&target),
        "--dirty-bitmap",
        "b0",
        "--checkpoint",
        "c2",
        "--previous-checkpoint",
        "c1",
    ]);
    drop(export);

    let line = json_line(&run);
    assert_eq!(line["delta_bytes"], 64 * KIB + 128 * KIB, "{line}");
    assert_eq!(line["connections"], 1, "{line}");
    let reference = dir.path().join("final.raw");
    run_ok(
        "qemu-img",
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            s(&image),
            s(&reference),
        ],
    );
    assert_same_files(&target, &reference);
}

#[test]
fn a_server_that_takes_two_clients_still_gets_a_full_copy() {
    if !require_peers(&["qemu-nbd"]) {
        return;
    }
    let dir = tempdir();
    let image = dir.path().join("disk.raw");
    let target = dir.path().join("copy.raw");
    fs::write(&image, disk_bytes(256 * MIB as usize, 17)).unwrap();
    // Two clients at once; read-only, so qemu-nbd advertises multi-conn and importer asks for
    // more connections than it takes: the others wait in its listen queue, never greeted.
    let export = QemuNbd::start(&["-r", "-e", "2", "-f", "raw", "--persistent", s(&image)]);

    let run = importer_ok(&["copy", &export.uri(), s(&target), "--connections", "4"]);

    let line = json_line(&run);
    assert_eq!(line["bytes_total"], 256 * MIB, "{line}");
    let connections = line["connections"].as_u64().expect("connections");
    assert!((1..=2).contains(&connections), "{line}");
    assert_eq!(
        run.stderr.matches("accepted no further connection").count(),
        1,
        "at capacity is said once per copy, not once per connection: {}",
        run.stderr
    );
    assert_same_files(&target, &image);
}
