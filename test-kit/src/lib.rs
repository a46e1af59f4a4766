//! ferry's test kit (unpublished): what the importer's and the populators' integration tests
//! share. It starts the real peers on loopback and kills them on drop (nbdkit, qemu-nbd,
//! nbd-server, nginx, the ovirt-imageio daemon, govmomi's vCenter simulator, the fake VDDK),
//! serves the in-test APIs that cannot be installed here (Keystone + Glance, the oVirt engine),
//! finds and runs the binaries under test with a watchdog, makes reference images with the real
//! tools and compares bytes. Under `CI=true` a missing peer fails the test; elsewhere the test
//! prints `SKIP` and passes.

use std::fs::File;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a peer may take to start accepting connections.
const PEER_START: Duration = Duration::from_secs(30);
/// How long one importer run may take before the test gives up on it (a hang guard, not a timing
/// assertion: every run here takes well under a second, a few seconds with the delay filter).
const IMPORTER_WATCHDOG: Duration = Duration::from_secs(180);

/// A new temporary directory (removed when dropped).
pub fn tempdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("ferry-nbd-")
        .tempdir()
        .expect("creating a temporary directory")
}

/// `path` as `&str` (temporary paths are always UTF-8 here).
pub fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

fn find_in_path(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(bin)).find(|p| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// True when every binary in `bins` is installed. When one is missing: panics under CI
/// (`CI=true`), where scripts/install-peers.sh must have installed it; otherwise prints a SKIP
/// line naming the test and the binary, and returns false.
pub fn require_peers(bins: &[&str]) -> bool {
    let missing: Vec<&str> = bins
        .iter()
        .copied()
        .filter(|b| find_in_path(b).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    peer_missing(&format!("test peer(s) {missing:?}"))
}

/// Reports a missing test peer (`what`, e.g. "test peer(s) [\"nbdkit\"]") and returns false:
/// [`unavailable`] with where the peers come from.
pub fn peer_missing(what: &str) -> bool {
    unavailable(&format!(
        "{what} not installed (scripts/install-peers.sh installs them)"
    ))
}

/// Whether the run is under CI (`CI=true` or `CI=1`; scripts/test.sh sets it unless told
/// otherwise).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The one way a test skips: `what` it needs is unavailable. Under CI that fails the test
/// (panics); elsewhere it prints `SKIP <test>: <what>` to the process's stderr (past the
/// harness's capture, so the line shows and scripts/test.sh counts it) and returns false.
pub fn unavailable(what: &str) -> bool {
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_owned();
    assert!(
        !under_ci(),
        "{test}: {what}: unavailable, and under CI=true a test never skips"
    );
    // Straight to the stderr descriptor: the test harness captures eprintln!, which would hide
    // the skip unless the test failed.
    let _ = writeln!(std::io::stderr().lock(), "SKIP {test}: {what}");
    false
}

/// [`require_peers`] for one binary.
pub fn require_peer(bin: &str) -> bool {
    require_peers(&[bin])
}

/// Runs `program args...` to completion and panics (with its stderr) unless it succeeds.
pub fn run_ok(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Where a peer listens.
#[derive(Debug, Clone)]
enum Addr {
    Unix(PathBuf),
    Tcp(u16),
}

impl Addr {
    fn accepts(&self) -> bool {
        match self {
            Addr::Unix(p) => UnixStream::connect(p).is_ok(),
            Addr::Tcp(port) => TcpStream::connect(("127.0.0.1", *port)).is_ok(),
        }
    }
}

/// A running NBD server, killed (and reaped) when dropped.
pub struct Peer {
    name: &'static str,
    /// Foreground servers (nbdkit, qemu-nbd): our child.
    child: Option<Child>,
    /// Daemonizing servers (nbd-server): the daemon's pid, from its pid file.
    daemon: Option<u32>,
    addr: Addr,
    log: PathBuf,
    _dir: TempDir,
}

impl Peer {
    /// Starts `nbdkit -f --exit-with-parent -U SOCKET ARGS...`; `args` are nbdkit options
    /// (`--no-sr`, `--filter=...`), the plugin and its parameters.
    pub fn nbdkit(args: &[&str]) -> Peer {
        let dir = tempdir();
        let sock = dir.path().join("nbdkit.sock");
        let mut cmd = Command::new("nbdkit");
        cmd.args(["-f", "--exit-with-parent", "-U", s(&sock)])
            .args(args);
        Peer::foreground("nbdkit", cmd, Addr::Unix(sock), dir)
    }

    /// Starts `qemu-nbd -k SOCKET -t ARGS...` in the foreground; `args` hold the format, `-e N`
    /// shared connections, `-x NAME` and the image.
    pub fn qemu_nbd(args: &[&str]) -> Peer {
        let dir = tempdir();
        let sock = dir.path().join("qemu-nbd.sock");
        let mut cmd = Command::new("qemu-nbd");
        cmd.args(["-k", s(&sock), "-t"]).args(args);
        Peer::foreground("qemu-nbd", cmd, Addr::Unix(sock), dir)
    }

    /// Starts nbd-server on a free 127.0.0.1 port with one read-only export per `(name, file)`.
    ///
    /// nbd-server runs as a daemon (found through its pid file): its `-d` (don't fork) mode
    /// serves one connection at a time and exits when that client goes, which cannot serve the
    /// several connections that its NBD_FLAG_CAN_MULTI_CONN invites.
    pub fn nbd_server(exports: &[(&str, &Path)]) -> Peer {
        let dir = tempdir();
        let port = free_tcp_port();
        let conf = dir.path().join("nbd-server.conf");
        let pidfile = dir.path().join("nbd-server.pid");
        let mut text = format!("[generic]\nlistenaddr = 127.0.0.1\nport = {port}\n");
        for (name, file) in exports {
            text.push_str(&format!(
                "[{name}]\nexportname = {}\nreadonly = true\n",
                s(file)
            ));
        }
        std::fs::write(&conf, text).expect("writing the nbd-server config");
        let log = dir.path().join("server.log");
        let status = Command::new("nbd-server")
            .args(["-C", s(&conf), "-p", s(&pidfile)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("creating the server log"))
            .status()
            .expect("starting nbd-server");
        let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            status.success(),
            "nbd-server failed to start: {}",
            read_log()
        );
        let deadline = Instant::now() + PEER_START;
        let pid = loop {
            let pid = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok());
            if let Some(pid) = pid {
                break pid;
            }
            assert!(
                Instant::now() < deadline,
                "nbd-server wrote no pid file: {}",
                read_log()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut peer = Peer {
            name: "nbd-server",
            child: None,
            daemon: Some(pid),
            addr: Addr::Tcp(port),
            log,
            _dir: dir,
        };
        peer.wait_ready();
        peer
    }

    fn foreground(name: &'static str, mut cmd: Command, addr: Addr, dir: TempDir) -> Peer {
        let log = dir.path().join("server.log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("creating the server log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut peer = Peer {
            name,
            child: Some(child),
            daemon: None,
            addr,
            log,
            _dir: dir,
        };
        peer.wait_ready();
        peer
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + PEER_START;
        loop {
            if self.addr.accepts() {
                return;
            }
            assert!(
                self.alive(),
                "{} exited before accepting connections: {}",
                self.name,
                self.server_log()
            );
            assert!(
                Instant::now() < deadline,
                "{} does not accept connections on {:?}: {}",
                self.name,
                self.addr,
                self.server_log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn alive(&mut self) -> bool {
        match (&mut self.child, self.daemon) {
            (Some(c), _) => matches!(c.try_wait(), Ok(None)),
            (None, Some(pid)) => process_running(pid),
            (None, None) => false,
        }
    }

    /// The server's stderr so far (for failure messages).
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// URI of the default export, as libnbd writes it.
    pub fn uri(&self) -> String {
        self.uri_for("")
    }

    /// URI of the export `name`, as libnbd writes it.
    pub fn uri_for(&self, name: &str) -> String {
        match &self.addr {
            Addr::Unix(p) => format!("nbd+unix:///{name}?socket={}", s(p)),
            Addr::Tcp(port) => format!("nbd://127.0.0.1:{port}/{name}"),
        }
    }

    /// Kills the server at once (SIGKILL), as a crash would, and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(pid) = self.daemon.take() {
            signal(pid, "KILL");
            wait_gone(pid, Duration::from_secs(10));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(pid) = self.daemon.take() {
            // SIGTERM lets nbd-server stop the children that serve connections too.
            signal(pid, "TERM");
            if !wait_gone(pid, Duration::from_secs(5)) {
                signal(pid, "KILL");
                wait_gone(pid, Duration::from_secs(5));
            }
        }
        self.kill();
    }
}

/// Sends the signal named `sig` (TERM, KILL) to `pid` through the shell's `kill` builtin (the
/// tests have no libc, and a kill(1) binary is not everywhere); true when it was delivered.
fn signal(pid: u32, sig: &str) -> bool {
    Command::new("sh")
        .args(["-c", "kill -s \"$1\" \"$2\"", "sh", sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True while `pid` exists and is not a zombie (a daemon is reaped by init, which in a container
/// may never happen).
fn process_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            state != Some("Z")
        }
        Err(_) => false,
    }
}

fn wait_gone(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while process_running(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
pub fn free_tcp_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port");
    l.local_addr().expect("local address").port()
}

/// What one importer run did.
#[derive(Debug)]
pub struct Out {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
}

/// The stdout JSON line of a successful `importer copy`.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// Source size.
    pub bytes_total: u64,
    /// Bytes written as data.
    pub bytes_data: u64,
    /// Bytes handled as zeros.
    pub bytes_zero: u64,
    /// Wall time.
    pub seconds: f64,
    /// Throughput.
    pub mib_per_s: f64,
    /// Source connections used.
    pub connections: u64,
}

impl Out {
    /// Asserts that the copy succeeded, printed exactly one JSON line with every statistic and
    /// nothing on stderr, and that data plus zero bytes account for the whole disk.
    pub fn copy_stats(&self) -> Stats {
        assert!(
            self.status.success(),
            "importer failed ({}): {}",
            self.status,
            self.stderr
        );
        assert_eq!(self.stderr.trim(), "", "a successful copy logs nothing");
        let lines: Vec<&str> = self.stdout.trim().lines().collect();
        assert_eq!(lines.len(), 1, "one JSON line on stdout: {:?}", self.stdout);
        let v: serde_json::Value = serde_json::from_str(lines[0])
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", lines[0]));
        let uint = |k: &str| {
            v[k].as_u64()
                .unwrap_or_else(|| panic!("'{k}' missing or not an integer in {v}"))
        };
        let float = |k: &str| {
            v[k].as_f64()
                .unwrap_or_else(|| panic!("'{k}' missing or not a number in {v}"))
        };
        let st = Stats {
            bytes_total: uint("bytes_total"),
            bytes_data: uint("bytes_data"),
            bytes_zero: uint("bytes_zero"),
            seconds: float("seconds"),
            mib_per_s: float("mib_per_s"),
            connections: uint("connections"),
        };
        assert_eq!(
            st.bytes_data + st.bytes_zero,
            st.bytes_total,
            "data and zero bytes must cover the disk: {v}"
        );
        // A copy takes time, and its rate is its bytes over that time (seconds are printed
        // to the millisecond, the rate to 0.1 MiB/s).
        assert!(st.seconds > 0.0, "{v}");
        let mib = st.bytes_total as f64 / (1u64 << 20) as f64;
        let fastest = mib / (st.seconds - 0.0005).max(1e-9) + 0.05;
        let slowest = mib / (st.seconds + 0.0005) - 0.05;
        assert!(
            (slowest..=fastest).contains(&st.mib_per_s),
            "mib_per_s is bytes_total over seconds: {v}"
        );
        assert!(st.connections >= 1, "{v}");
        st
    }

    /// Asserts a clean failure: a non-zero exit (not a signal, not a panic's 101), exactly one
    /// line on stderr containing every phrase of `phrases`, no "panicked" anywhere and nothing
    /// on stdout (no success line).
    pub fn assert_clean_failure(&self, phrases: &[&str]) {
        let code = self.status.code();
        assert!(
            matches!(code, Some(c) if c != 0 && c != 101),
            "expected an error exit, got {} (stderr: {})",
            self.status,
            self.stderr
        );
        assert!(
            !self.stderr.contains("panicked") && !self.stdout.contains("panicked"),
            "importer panicked: {}",
            self.stderr
        );
        let lines: Vec<&str> = self.stderr.trim().lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "exactly one line on stderr, got: {:?}",
            self.stderr
        );
        for p in phrases {
            assert!(
                lines[0].contains(p),
                "stderr line {:?} does not contain {p:?}",
                lines[0]
            );
        }
        assert_eq!(self.stdout.trim(), "", "a failed run prints no result");
    }
}

/// An importer run in progress.
pub struct Running {
    pid: u32,
    rx: mpsc::Receiver<std::io::Result<Output>>,
    args: Vec<String>,
}

impl Running {
    /// Kills the run with SIGKILL (a crash: nothing is cleaned up) and waits for it to end.
    pub fn kill(self) -> Out {
        signal(self.pid, "KILL");
        self.finish()
    }

    /// The process id of the run.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits for the run to end (killing it and failing the test if it hangs).
    pub fn finish(self) -> Out {
        let out = match self.rx.recv_timeout(IMPORTER_WATCHDOG) {
            Ok(r) => r.expect("waiting for importer"),
            Err(_) => {
                signal(self.pid, "KILL");
                panic!("importer {:?} hung; killed it", self.args);
            }
        };
        Out::from(out)
    }
}

impl From<Output> for Out {
    fn from(out: Output) -> Out {
        Out {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// The workspace binary `name` (`importer`, `populator`) of the profile the running test was
/// built with: the test runs from `target/<profile>/deps/`, the binaries sit in
/// `target/<profile>/` (cargo builds them for the tests of their own package).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let bin = profile.join(name);
    assert!(
        bin.exists(),
        "{} is missing: run the tests of the package that builds it",
        bin.display()
    );
    bin
}

/// Starts the importer binary with `args` (the log level pinned to the default).
pub fn spawn_importer(args: &[&str]) -> Running {
    spawn_importer_env(args, &[])
}

/// Starts the importer binary with `args` and the extra environment `env`.
pub fn spawn_importer_env(args: &[&str], env: &[(String, String)]) -> Running {
    let child = Command::new(binary("importer"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env_remove("FERRY_LOG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting importer");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    Running {
        pid,
        rx,
        args: args.iter().map(|a| a.to_string()).collect(),
    }
}

/// Runs the importer binary with `args` to completion.
pub fn importer(args: &[&str]) -> Out {
    spawn_importer(args).finish()
}

/// `importer copy URI TARGET`, asserting success; returns the statistics.
pub fn importer_copy(uri: &str, target: &Path) -> Stats {
    importer(&["copy", uri, s(target)]).copy_stats()
}

/// The reference copy: `nbdcopy URI DEST`.
pub fn nbdcopy(uri: &str, dest: &Path) {
    run_ok("nbdcopy", &[uri, s(dest)]);
}

/// Copies `uri` with the importer into `dir/importer.img` and with nbdcopy into
/// `dir/nbdcopy.img`, asserts both files are identical, and returns the importer's target and
/// statistics.
pub fn copy_matching_nbdcopy(uri: &str, dir: &Path) -> (PathBuf, Stats) {
    let ours = dir.join("importer.img");
    let reference = dir.join("nbdcopy.img");
    let stats = importer_copy(uri, &ours);
    nbdcopy(uri, &reference);
    assert_same_files(&ours, &reference);
    (ours, stats)
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or_else(|| (a.len() != b.len()).then(|| a.len().min(b.len())))
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Asserts that the file at `path` holds exactly `expected` (reporting the first difference, not
/// megabytes of bytes).
pub fn assert_file_holds(path: &Path, expected: &[u8]) {
    let got = read(path);
    assert_eq!(
        got.len(),
        expected.len(),
        "{} has the wrong size",
        path.display()
    );
    if let Some(at) = first_difference(&got, expected) {
        panic!(
            "{} differs from the source at offset {at}: {:#04x} != {:#04x}",
            path.display(),
            got[at],
            expected[at]
        );
    }
}

/// Asserts that two files are byte-for-byte identical.
pub fn assert_same_files(a: &Path, b: &Path) {
    assert_file_holds(a, &read(b));
}

/// Asserts that a failed copy into a new path left nothing behind: the importer removes a target
/// file it created when the copy fails, so no full-size file can pass for a finished disk.
pub fn assert_no_complete_target(target: &Path, source: &[u8]) {
    assert!(
        !target.exists(),
        "{} was left behind by a failed copy ({} source bytes)",
        target.display(),
        source.len()
    );
}

/// Deterministic disk contents of `size` bytes: 64 KiB chunks that are zero, one repeated byte,
/// or pseudo-random, mixed so that a copy meets data, holes and zero blocks.
pub fn disk_bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut next = move || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut v = vec![0u8; size];
    for chunk in v.chunks_mut(64 << 10) {
        match next() % 4 {
            0 => {}
            1 => chunk.fill((next() % 255 + 1) as u8),
            _ => {
                for b in chunk.chunks_mut(8) {
                    let r = next().to_le_bytes();
                    b.copy_from_slice(&r[..b.len()]);
                }
            }
        }
    }
    v
}

/// What nbdkit's pattern plugin serves: every 8-byte word holds its own offset, big-endian.
pub fn pattern_bytes(size: usize) -> Vec<u8> {
    (0..size as u64 / 8)
        .flat_map(|i| (i * 8).to_be_bytes())
        .collect()
}

/// Writes `bytes` to a new sparse file at `path`: all-zero 4 KiB blocks are left as holes.
pub fn write_sparse(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = File::create(path).expect("creating the source file");
    f.set_len(bytes.len() as u64)
        .expect("sizing the source file");
    for (i, block) in bytes.chunks(4096).enumerate() {
        if block.iter().any(|&b| b != 0) {
            f.write_all_at(block, (i * 4096) as u64)
                .expect("writing the source file");
        }
    }
    f.sync_all().expect("syncing the source file");
}

/// Writes `bytes` to `path` (dense).
pub fn write_file(path: &Path, bytes: &[u8]) {
    let mut f = File::create(path).expect("creating a file");
    f.write_all(bytes).expect("writing a file");
}

/// Bytes the file at `path` occupies on disk.
pub fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    path.metadata().expect("target metadata").blocks() * 512
}

pub mod daemon;
pub mod host;
pub mod imageio;
pub mod images;
pub mod keystone;
pub mod metrics;
pub mod nginx;
pub mod sshd;
pub mod vcsim;
pub mod vddk;
pub mod xcopy;
