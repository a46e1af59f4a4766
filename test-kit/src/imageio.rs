//! The ovirt-imageio peer: the real imageio daemon (from PyPI, installed by
//! scripts/install-peers.sh into `.peers/venv`) started standalone from a configuration
//! directory in a tempdir, on free loopback ports, and killed on drop. Tickets are added through
//! its control API; NBD-backed tickets are served by qemu-nbd.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::nginx::Tls;
use crate::{free_tcp_port, peer_missing, require_peers, run_ok, s, tempdir, Peer};

/// How long the daemon may take to accept connections (Python start-up included).
const START: Duration = Duration::from_secs(60);
/// Attempts at starting the daemon: a free port can be taken before the daemon binds it.
const START_ATTEMPTS: usize = 5;

/// The daemon's entry point inside the repository's peer venv.
pub fn daemon_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.peers/venv/bin/ovirt-imageio")
}

/// True when the imageio daemon, qemu-nbd, qemu-img and openssl are installed. A missing one
/// fails the test under CI (`CI=true`) and prints a SKIP line otherwise.
pub fn require_imageio() -> bool {
    if !require_peers(&["qemu-nbd", "qemu-img", "qemu-io", "openssl"]) {
        return false;
    }
    daemon_path().is_file() || peer_missing(&format!("ovirt-imageio ({})", daemon_path().display()))
}

/// How the daemon's local socket service is set up.
#[derive(Clone, Copy)]
enum Local {
    Off,
    Abstract,
    Path,
}

/// A running imageio daemon.
pub struct Imageio {
    child: Child,
    dir: TempDir,
    tls: Option<Tls>,
    port: u16,
    control: u16,
}

/// A ticket to add.
pub struct Ticket<'a> {
    /// Ticket id (the last part of the image URL).
    pub id: &'a str,
    /// Image size in bytes.
    pub size: u64,
    /// Backend: `file:///path` or `nbd:unix:/socket`.
    pub url: String,
    /// Seconds until the ticket expires.
    pub timeout: u64,
    /// Whether `?context=dirty` is allowed.
    pub dirty: bool,
}

impl Imageio {
    /// Starts the daemon with TLS (a test CA and server certificate) or without, and without
    /// its local socket service.
    pub fn start(tls: bool) -> Imageio {
        Imageio::start_with(tls, Local::Off)
    }

    /// Starts the daemon with its local socket service on (a random abstract socket, as unique
    /// per daemon as the default `\0/org/ovirt/imageio` is per host).
    pub fn start_local(tls: bool) -> Imageio {
        Imageio::start_with(tls, Local::Abstract)
    }

    /// Starts the daemon with its local socket service on a path socket, `local.sock` in the
    /// daemon's run directory (see [`local_socket_path`](Self::local_socket_path)).
    pub fn start_local_path(tls: bool) -> Imageio {
        Imageio::start_with(tls, Local::Path)
    }

    /// The path socket of a daemon started with [`start_local_path`](Self::start_local_path).
    pub fn local_socket_path(&self) -> PathBuf {
        self.dir.path().join("run/local.sock")
    }

    fn start_with(tls: bool, local: Local) -> Imageio {
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            match Imageio::try_start(tls, local) {
                Ok(d) => return d,
                Err(e) => last = e,
            }
        }
        panic!("ovirt-imageio did not start in {START_ATTEMPTS} attempts: {last}");
    }

    fn try_start(with_tls: bool, local: Local) -> Result<Imageio, String> {
        let dir = tempdir();
        let tls = with_tls.then(|| Tls::create(&dir.path().join("tls")));
        let (port, control) = (free_tcp_port(), free_tcp_port());
        let conf_d = dir.path().join("conf.d");
        let run = dir.path().join("run");
        std::fs::create_dir_all(&conf_d).expect("creating conf.d");
        std::fs::create_dir_all(&run).expect("creating the run directory");
        let tls_section = match &tls {
            Some(t) => format!(
                "enable = true\nkey_file = {}\ncert_file = {}\nca_file = {}\n",
                s(&t.server_key()),
                s(&t.server_cert()),
                s(&t.ca_cert())
            ),
            None => "enable = false\n".to_owned(),
        };
        let log = dir.path().join("daemon.log");
        let local_section = match local {
            Local::Off => "enable = false\n".to_owned(),
            Local::Abstract => "enable = true\nsocket =\n".to_owned(),
            Local::Path => format!("enable = true\nsocket = {}/local.sock\n", s(&run)),
        };
        let conf = format!(
            "[daemon]\ndrop_privileges = false\nsystemd_enable = false\nrun_dir = {run}\n\
             poll_interval = 0.1\n\
             [tls]\n{tls_section}\
             [remote]\nhost = 127.0.0.1\nport = {port}\n\
             [local]\n{local_section}\
             [control]\ntransport = tcp\nport = {control}\n\
             [profile]\nfilename = {run}/profile\n\
             [handler_logfile]\nargs = ('{log}',)\n",
            run = s(&run),
            log = s(&log),
        );
        std::fs::write(conf_d.join("99-ferry-test.conf"), conf).expect("writing the config");
        let child = spawn_daemon(dir.path())?;
        let mut d = Imageio {
            child,
            dir,
            tls,
            port,
            control,
        };
        d.wait_listening()?;
        Ok(d)
    }

    /// Kills the daemon (its tickets die with it, as on a host reboot) and starts it again on
    /// the same ports with the same configuration.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + START;
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "the old daemon still listens");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = spawn_daemon(self.dir.path()).expect("restarting ovirt-imageio");
        self.wait_listening().expect("restarting ovirt-imageio");
    }

    fn wait_listening(&mut self) -> Result<(), String> {
        let (port, control) = (self.port, self.control);
        let d = self;
        let deadline = Instant::now() + START;
        loop {
            let up = |p: u16| TcpStream::connect(("127.0.0.1", p)).is_ok();
            if up(port) && up(control) {
                return Ok(());
            }
            if !matches!(d.child.try_wait(), Ok(None)) {
                return Err(format!("ovirt-imageio exited: {}", d.logs()));
            }
            if Instant::now() >= deadline {
                return Err(format!("ovirt-imageio does not listen: {}", d.logs()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's log and stderr (for failure messages).
    pub fn logs(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("daemon.log"))
    }

    /// The test PKI (TLS daemons only).
    pub fn tls(&self) -> &Tls {
        self.tls.as_ref().expect("a daemon started with TLS")
    }

    /// The image URL of ticket `id` (`http(s)://127.0.0.1:PORT/images/ID`).
    pub fn url(&self, id: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/images/{id}", self.port)
    }

    /// The ticket `id` as the control API shows it (`GET /tickets/ID`): its `idle_time`,
    /// `active`, `expires`, ... (the fields the engine watches).
    pub fn ticket_info(&self, id: &str) -> serde_json::Value {
        let mut c = TcpStream::connect(("127.0.0.1", self.control)).expect("control API");
        write!(
            c,
            "GET /tickets/{id} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .expect("asking for the ticket");
        let mut answer = String::new();
        c.read_to_string(&mut answer).expect("reading the answer");
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("ticket {id}: {e}: {answer}\n{}", self.logs()))
    }

    /// Adds `t` with `PUT /tickets/ID` on the control API (read-only ticket).
    pub fn add_ticket(&self, t: &Ticket) {
        let body = format!(
            r#"{{"uuid": "{id}", "size": {size}, "url": "{url}", "ops": ["read"], "timeout": {timeout}, "dirty": {dirty}, "transfer_id": "transfer-{id}"}}"#,
            id = t.id,
            size = t.size,
            url = t.url,
            timeout = t.timeout,
            dirty = t.dirty,
        );
        let mut c = TcpStream::connect(("127.0.0.1", self.control)).expect("control API");
        write!(
            c,
            "PUT /tickets/{} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            t.id,
            body.len()
        )
        .expect("sending the ticket");
        let mut answer = String::new();
        c.read_to_string(&mut answer).expect("reading the answer");
        let status = answer.lines().next().unwrap_or("");
        assert!(
            status.starts_with("HTTP/1.1 200"),
            "adding ticket {} failed: {answer}\n{}",
            t.id,
            self.logs()
        );
    }
}

/// Starts the daemon with the configuration in `dir`.
fn spawn_daemon(dir: &Path) -> Result<Child, String> {
    Command::new(daemon_path())
        .args(["--conf-dir", s(dir)])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(dir.join("stderr.log")).expect("creating stderr.log"))
        .spawn()
        .map_err(|e| format!("cannot start ovirt-imageio: {e}"))
}

impl Drop for Imageio {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A qcow2 image exported by qemu-nbd for an imageio NBD ticket.
pub struct NbdExport {
    peer: Peer,
}

impl NbdExport {
    /// Exports `image` (qcow2) read-only with 8 shared connections; with `bitmap`, also the
    /// dirty bitmap of that name (`qemu-nbd -B`).
    pub fn qcow2(image: &Path, bitmap: Option<&str>) -> NbdExport {
        let mut args = vec!["-f", "qcow2", "-r", "-e", "8"];
        if let Some(b) = bitmap {
            args.extend(["-B", b]);
        }
        args.push(s(image));
        NbdExport {
            peer: Peer::qemu_nbd(&args),
        }
    }

    /// The NBD URI of the export (`nbd+unix:///?socket=...`).
    pub fn uri(&self) -> String {
        self.peer.uri()
    }

    /// The backend URL imageio takes: `nbd:unix:/path/to/socket`.
    pub fn ticket_url(&self) -> String {
        let uri = self.peer.uri();
        let sock = uri
            .split_once("socket=")
            .map(|(_, p)| p)
            .expect("a unix socket URI");
        format!("nbd:unix:{sock}")
    }
}

/// `qemu-img create -f qcow2 PATH SIZE`.
pub fn qcow2_create(path: &Path, size: u64) {
    run_ok(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", s(path), &size.to_string()],
    );
}

/// `qemu-io -f qcow2 -c "write -P PATTERN OFFSET LEN" PATH` for each `(offset, len, pattern)`.
pub fn qcow2_write(path: &Path, writes: &[(u64, u64, u8)]) {
    let cmds: Vec<String> = writes
        .iter()
        .map(|(o, l, p)| format!("write -q -P {p} {o} {l}"))
        .collect();
    let mut args = vec!["-f", "qcow2"];
    for c in &cmds {
        args.extend(["-c", c.as_str()]);
    }
    args.push(s(path));
    run_ok("qemu-io", &args);
}

/// `qemu-img convert -O raw IMAGE DEST`: the reference contents.
pub fn qcow2_to_raw(image: &Path, dest: &Path) {
    run_ok(
        "qemu-img",
        &["convert", "-f", "qcow2", "-O", "raw", s(image), s(dest)],
    );
}
