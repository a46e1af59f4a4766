//! An nginx test peer for the HTTP(S) source: its own configuration, docroot, logs, temporary
//! paths and TLS material in a temporary directory, listening for HTTP and HTTPS on free
//! 127.0.0.1 ports, killed when dropped. Nothing of the system nginx (port 80, /etc/nginx) is used.
//!
//! The same docroot is served at these locations:
//! - `/range/`: plain static files, Range honoured (206 with Content-Range);
//! - `/norange/`: `max_ranges 0`, so Range is ignored and every GET is a 200 with the whole file;
//! - `/secret/`: 403 unless the request carries `X-Ferry-Test: yes`;
//! - `/export/`: 403 unless the request carries the export token;
//! - `/to-http/`: a 302 to the file at `/range/` over plain http.
//!
//! The TLS material is made with openssl: a test CA, a server certificate for `127.0.0.1` and
//! `localhost` signed by it, and a second, unrelated CA for the "wrong CA" cases.

use std::fs::File;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{free_tcp_port, require_peers, run_ok, s, tempdir};

/// How long nginx may take to accept connections.
const START: Duration = Duration::from_secs(30);
/// Attempts at starting nginx: a free port can be taken by someone else before nginx binds it.
const START_ATTEMPTS: usize = 5;

/// True when nginx and openssl are installed ([`require_peers`] semantics: a missing one fails
/// under CI and prints a SKIP line otherwise).
pub fn require_nginx() -> bool {
    require_peers(&["nginx", "openssl"])
}

/// Where a file is served from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// Range honoured.
    Range,
    /// Range ignored: always 200 with the whole file.
    NoRange,
    /// 403 without the `X-Ferry-Test: yes` header.
    Secret,
    /// Like a KubeVirt VirtualMachineExport: 403 unless `x-kubevirt-export-token` is
    /// [`EXPORT_TOKEN`].
    Export,
    /// A 302 to the same file at `/range/` over plain http (a downgrade when asked over https).
    ToHttp,
}

/// The token the `/export/` location accepts.
pub const EXPORT_TOKEN: &str = "ferry-export-token-5b1e";

impl Location {
    fn prefix(self) -> &'static str {
        match self {
            Location::Range => "range",
            Location::NoRange => "norange",
            Location::Secret => "secret",
            Location::Export => "export",
            Location::ToHttp => "to-http",
        }
    }
}

/// The test PKI: a CA, a server certificate it signed, and an unrelated CA.
pub struct Tls {
    dir: PathBuf,
}

/// openssl configuration of the test PKI: one section per certificate profile. Our own file,
/// so that the system's openssl.cnf defaults (which differ between versions) play no part.
const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = unused

[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash

[leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

impl Tls {
    /// Creates the CA, the server key and certificate and the unrelated CA in `dir`.
    pub fn create(dir: &Path) -> Tls {
        std::fs::create_dir_all(dir).expect("creating the TLS directory");
        let cnf = dir.join("openssl.cnf");
        std::fs::write(&cnf, OPENSSL_CNF).expect("writing openssl.cnf");
        let tls = Tls {
            dir: dir.to_owned(),
        };
        tls.make_ca("ca", "ferry test CA");
        tls.make_ca("other-ca", "ferry unrelated CA");
        let csr = dir.join("server.csr");
        run_ok(
            "openssl",
            &[
                "req",
                "-new",
                "-config",
                s(&cnf),
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                s(&tls.server_key()),
                "-subj",
                "/CN=localhost",
                "-out",
                s(&csr),
            ],
        );
        run_ok(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                s(&csr),
                "-CA",
                s(&tls.ca_cert()),
                "-CAkey",
                s(&dir.join("ca.key")),
                "-set_serial",
                "2",
                "-days",
                "365",
                "-extfile",
                s(&cnf),
                "-extensions",
                "leaf",
                "-out",
                s(&tls.server_cert()),
            ],
        );
        tls
    }

    fn make_ca(&self, name: &str, cn: &str) {
        run_ok(
            "openssl",
            &[
                "req",
                "-x509",
                "-config",
                s(&self.dir.join("openssl.cnf")),
                "-extensions",
                "ca",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                s(&self.dir.join(format!("{name}.key"))),
                "-subj",
                &format!("/CN={cn}"),
                "-days",
                "3650",
                "-out",
                s(&self.dir.join(format!("{name}.pem"))),
            ],
        );
    }

    /// The test CA's certificate (PEM), which signed the server certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A CA certificate (PEM) that has nothing to do with the server certificate.
    pub fn other_ca_cert(&self) -> PathBuf {
        self.dir.join("other-ca.pem")
    }

    /// The server's (leaf) certificate, PEM.
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    /// The server's private key, PEM.
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    /// SHA-256 fingerprint of the server certificate, `AB:CD:...` (uppercase, colon-separated).
    pub fn server_sha256(&self) -> String {
        fingerprint(&self.server_cert(), "sha256")
    }

    /// SHA-1 fingerprint of the server certificate, `AB:CD:...`.
    pub fn server_sha1(&self) -> String {
        fingerprint(&self.server_cert(), "sha1")
    }
}

/// The `digest` (sha256, sha1) fingerprint of the PEM certificate at `cert` as openssl prints it:
/// uppercase hex bytes separated by colons.
pub fn fingerprint(cert: &Path, digest: &str) -> String {
    let out = run_ok(
        "openssl",
        &[
            "x509",
            "-noout",
            "-fingerprint",
            &format!("-{digest}"),
            "-in",
            s(cert),
        ],
    );
    let text = String::from_utf8(out.stdout).expect("openssl prints ASCII");
    // "sha256 Fingerprint=AB:CD:..." (the label's case differs between openssl versions).
    let (_, fp) = text
        .trim()
        .split_once('=')
        .unwrap_or_else(|| panic!("unexpected openssl fingerprint output: {text:?}"));
    fp.to_owned()
}

/// A colon-separated fingerprint as plain lowercase hex (`abcd...`), the other accepted form.
pub fn plain_hex(fingerprint: &str) -> String {
    fingerprint.replace(':', "").to_ascii_lowercase()
}

/// A running nginx, killed (and reaped) when dropped.
pub struct Nginx {
    child: Child,
    http_port: u16,
    https_port: u16,
    tls: Tls,
    dir: TempDir,
}

impl Nginx {
    /// Makes the TLS material and starts nginx on two free 127.0.0.1 ports.
    pub fn start() -> Nginx {
        let dir = tempdir();
        let tls = Tls::create(&dir.path().join("tls"));
        for sub in ["docroot", "tmp"] {
            std::fs::create_dir(dir.path().join(sub)).expect("creating an nginx directory");
        }
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let (http_port, https_port) = (free_tcp_port(), free_tcp_port());
            if http_port == https_port {
                continue;
            }
            match spawn(dir.path(), &tls, http_port, https_port) {
                Ok(child) => {
                    return Nginx {
                        child,
                        http_port,
                        https_port,
                        tls,
                        dir,
                    }
                }
                Err(log) => failures.push(log),
            }
        }
        panic!("nginx did not start in {START_ATTEMPTS} attempts: {failures:#?}");
    }

    /// The test PKI the HTTPS port uses.
    pub fn tls(&self) -> &Tls {
        &self.tls
    }

    /// Where the served file `name` lives.
    pub fn put_path(&self, name: &str) -> PathBuf {
        self.dir.path().join("docroot").join(name)
    }

    /// Writes `bytes` as the served file `name` (visible at every location).
    pub fn put(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.path().join("docroot").join(name);
        std::fs::write(&path, bytes).expect("writing a served file");
        path
    }

    /// `http://127.0.0.1:PORT/LOCATION/NAME`.
    pub fn http(&self, location: Location, name: &str) -> String {
        format!(
            "http://127.0.0.1:{}/{}/{name}",
            self.http_port,
            location.prefix()
        )
    }

    /// `https://127.0.0.1:PORT/LOCATION/NAME`.
    pub fn https(&self, location: Location, name: &str) -> String {
        self.https_host("127.0.0.1", location, name)
    }

    /// `https://HOST:PORT/LOCATION/NAME` (`localhost` checks the certificate's DNS name).
    pub fn https_host(&self, host: &str, location: Location, name: &str) -> String {
        format!(
            "https://{host}:{}/{}/{name}",
            self.https_port,
            location.prefix()
        )
    }

    /// nginx's error log so far (for failure messages).
    pub fn error_log(&self) -> String {
        read_logs(self.dir.path())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_logs(dir: &Path) -> String {
    let err = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
    let stderr = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
    format!("{err}{stderr}")
}

/// nginx.conf: one process in the foreground, everything it writes inside `dir`.
fn config(dir: &Path, tls: &Tls, http_port: u16, https_port: u16) -> String {
    let d = s(dir);
    let docroot = dir.join("docroot");
    let docroot = s(&docroot);
    let (cert, key) = (tls.server_cert(), tls.server_key());
    let (cert, key) = (s(&cert), s(&key));
    let token = EXPORT_TOKEN;
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;

events {{
    worker_connections 256;
}}

http {{
    access_log off;
    client_body_temp_path {d}/tmp/client_body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 100000;

    server {{
        listen 127.0.0.1:{http_port};
        listen 127.0.0.1:{https_port} ssl;
        server_name localhost 127.0.0.1;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;

        location /range/ {{
            alias {docroot}/;
        }}
        location /norange/ {{
            alias {docroot}/;
            max_ranges 0;
        }}
        location /secret/ {{
            if ($http_x_ferry_test != "yes") {{
                return 403;
            }}
            alias {docroot}/;
        }}
        location /to-http/ {{
            rewrite ^/to-http/(.*)$ http://127.0.0.1:{http_port}/range/$1 redirect;
        }}
        location /export/ {{
            if ($http_x_kubevirt_export_token != "{token}") {{
                return 403;
            }}
            alias {docroot}/;
        }}
    }}
}}
"#
    )
}

/// Starts nginx and waits until both ports accept connections; on failure (a port taken, a bad
/// configuration) returns its logs.
fn spawn(dir: &Path, tls: &Tls, http_port: u16, https_port: u16) -> Result<Child, String> {
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, config(dir, tls, http_port, https_port)).expect("writing nginx.conf");
    for stale in ["error.log", "nginx.pid"] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    let err_log = dir.join("error.log");
    let mut child = Command::new("nginx")
        .args(["-p", s(dir), "-c", s(&conf), "-e", s(&err_log)])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(dir.join("stderr.log")).expect("creating nginx's stderr log"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start nginx: {e}"));
    let deadline = Instant::now() + START;
    loop {
        // nginx writes its pid file once it holds its listening sockets: only then are
        // connections to the ports known to reach this nginx.
        let up = dir.join("nginx.pid").exists()
            && [http_port, https_port]
                .iter()
                .all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok());
        if up {
            return Ok(child);
        }
        if !matches!(child.try_wait(), Ok(None)) {
            let _ = child.wait();
            return Err(read_logs(dir));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("not accepting connections: {}", read_logs(dir)));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
