//! OpenSSH's sshd standing in for an ESXi host's, for the copy-offload tests' SSH clone
//! method: started on a free loopback port with its own host key, root's authorized keys from
//! the test (the restricted key line the populator prints), and the environment the wrapper
//! needs to find /vmfs, vmkfstools and vsish on this machine (`SetEnv`). Root only, as
//! ESXi's key is root's.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_tcp_port, peer_missing, run_ok, s, unavailable};

const SSHD: &str = "/usr/sbin/sshd";

/// A key pair made by ssh-keygen.
pub struct KeyPair {
    /// The private key file's text.
    pub private: String,
    /// The public key line.
    pub public: String,
}

/// Makes a key pair of `kind` (`ed25519`, or `rsa` in PEM form as Go's x509 writes it) in
/// `dir`.
pub fn keygen(dir: &Path, name: &str, kind: &str) -> KeyPair {
    let path = dir.join(name);
    let mut args = vec!["-q", "-N", "", "-C", "ferry-test", "-f", s(&path)];
    match kind {
        "rsa" => args.extend(["-t", "rsa", "-b", "2048", "-m", "PEM"]),
        _ => args.extend(["-t", kind]),
    }
    run_ok("ssh-keygen", &args);
    KeyPair {
        private: std::fs::read_to_string(&path).unwrap(),
        public: std::fs::read_to_string(format!("{}.pub", path.display())).unwrap(),
    }
}

/// A running sshd; killed on drop.
pub struct Sshd {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    log: PathBuf,
    /// The host key's `SHA256:...` fingerprint.
    pub fingerprint: String,
}

impl Sshd {
    /// Starts sshd in a new directory under `dir` with `authorized_keys` as root's and `env` for every session.
    /// `None` (after [`peer_missing`], which panics under CI) without sshd or root.
    pub fn start(dir: &Path, authorized_keys: &str, env: &[(String, String)]) -> Option<Sshd> {
        if !Path::new(SSHD).is_file() {
            peer_missing("sshd (openssh-server)");
            return None;
        }
        // The effective user, from /proc: sshd lets only its own user log in unless root.
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let root = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0");
        if !root {
            unavailable("root, for sshd with root's restricted key");
            return None;
        }
        // sshd's privilege separation directory (on tmpfs: gone after a reboot).
        let _ = std::fs::create_dir_all("/run/sshd");
        // A directory of its own: a test may start several.
        let dir = (0..)
            .map(|n| dir.join(format!("sshd-{n}")))
            .find(|d| std::fs::create_dir(d).is_ok())
            .unwrap();
        let dir = dir.as_path();
        let host_key = dir.join("ssh_host_ed25519_key");
        run_ok(
            "ssh-keygen",
            &["-q", "-N", "", "-t", "ed25519", "-f", s(&host_key)],
        );
        let fp = run_ok("ssh-keygen", &["-l", "-E", "sha256", "-f", s(&host_key)]);
        let fingerprint = String::from_utf8_lossy(&fp.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let keys = dir.join("authorized_keys");
        std::fs::write(&keys, authorized_keys).unwrap();
        let setenv: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let log = dir.join("sshd.log");
        for _ in 0..5 {
            let port = free_tcp_port();
            let config = dir.join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                     PidFile none\nUsePAM no\nStrictModes no\nPasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\nPermitRootLogin forced-commands-only\n\
                     LogLevel VERBOSE\nSetEnv {}\n",
                    host_key.display(),
                    keys.display(),
                    setenv.join(" ")
                ),
            )
            .unwrap();
            let child = Command::new(SSHD)
                .args(["-D", "-e", "-f", s(&config)])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(&log).unwrap())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {SSHD}: {e}"));
            let mut d = Sshd {
                child,
                port,
                log: log.clone(),
                fingerprint: fingerprint.clone(),
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(d);
                }
                if d.child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // The port was taken meanwhile, or sshd refused its configuration.
            let _ = d.child.kill();
            let _ = d.child.wait();
            if !d.log().contains("Address already in use") {
                panic!("sshd did not start: {}", d.log());
            }
        }
        panic!(
            "sshd found no free port: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// What sshd logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
