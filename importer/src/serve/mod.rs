//! `importer serve`: ferry's transfer daemon. Controllers and scripts in any language submit
//! transfers over HTTP/JSON (shaped after ovirt-imageio's ticket API) and follow them; each
//! request becomes a [`transfer_core::job::TransferSpec`] run by the same job as `importer copy`.
//! On a Unix socket (mode 0600) the file mode is the access control; over TCP the daemon speaks
//! only TLS and every request but `/healthz` must carry the bearer token of `--token-file`
//! (401 otherwise).
//!
//! API: `POST /v1/transfers` (201 `{"id"}`; 400 naming the field, 403 for a target outside the
//! `--target-root` directories, 409 for a target another transfer is writing, 413 for a body
//! over 1 MiB), `GET /v1/transfers`, `GET /v1/transfers/{id}`, `DELETE /v1/transfers/{id}`
//! (cancel, idempotent), `GET /healthz`, `GET /metrics` (Prometheus text).

pub(crate) mod client;
mod registry;
mod request;
mod state;

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::net::UnixListener;
use transfer_core::engine::MemoryBudget;
use transfer_core::job::ServerSlots;
use transfer_core::source::vddk::Sessions;
use transfer_core::{Error, ErrorKind};

use registry::Registry;

/// Connections to one source server when `--server-connections` names no default: ESXi's
/// NFC default.
const DEFAULT_SERVER_CONNECTIONS: usize = 10;
/// The largest request body accepted.
const MAX_BODY: usize = 1 << 20;
/// A client must send its request headers within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// `importer serve` flags.
#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Where to listen: `unix:PATH` (the socket is made mode 0600) or `tcp:ADDR:PORT` (TLS
    /// with --tls-cert and --tls-key, requests authorised by --token-file).
    #[arg(long)]
    listen: String,
    /// PEM certificate chain the daemon presents over TCP.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// A file holding the bearer token TCP clients must send (`Authorization: Bearer ...`).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// A directory targets may be written in (repeatable); a target outside, or behind a
    /// symbolic link that leads outside, is refused (403).
    #[arg(long = "target-root", required = true)]
    target_roots: Vec<PathBuf>,
    /// Transfers running at once; later ones queue, first come first served.
    #[arg(long, default_value_t = 4)]
    max_transfers: usize,
    /// Seconds a finished transfer stays listed.
    #[arg(long, default_value_t = 3600)]
    retention: u64,
    /// Where transfers are recorded so that a restarted daemon takes up the unfinished ones
    /// (resuming from their journals); without it a stop forgets them.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Bytes of copy buffers all transfers together may hold (each transfer also keeps to
    /// its own 16 MiB).
    #[arg(long, default_value = "64M", value_parser = crate::size_arg)]
    memory: u64,
    /// Connections to one source server, all transfers together: `N` for every server, or
    /// `SERVER=N` for one (`host`, `host:port` or an NBD socket path); repeatable. ESXi
    /// allows about 10 NFC connections per host by default.
    #[arg(long = "server-connections", value_parser = server_cap)]
    server_connections: Vec<(Option<String>, usize)>,
    /// Seconds an unused vSphere login or VDDK connection is kept for the next checkpoint
    /// of the same disk.
    #[arg(long, default_value_t = 300)]
    session_idle: u64,
}

/// `N` or `SERVER=N`.
fn server_cap(s: &str) -> Result<(Option<String>, usize), String> {
    let (server, n) = match s.rsplit_once('=') {
        // Host names are case-blind, socket paths are not.
        Some((h, n)) if h.starts_with('/') => (Some(h.to_owned()), n),
        Some((h, n)) if !h.is_empty() => (Some(h.to_ascii_lowercase()), n),
        _ => (None, s),
    };
    let n: usize = n
        .parse()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| format!("'{s}': expected N or SERVER=N with N at least 1"))?;
    Ok((server, n))
}

/// Runs the daemon until SIGTERM or SIGINT.
pub(crate) async fn run(a: ServeArgs) -> transfer_core::Result<ExitCode> {
    for r in &a.target_roots {
        if !r.is_dir() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("--target-root {}: not a directory", r.display()),
            ));
        }
    }
    let state = match &a.state_dir {
        Some(d) => Some(state::StateDir::open(d)?),
        None => None,
    };
    let default_cap = a
        .server_connections
        .iter()
        .rev()
        .find_map(|(s, n)| s.is_none().then_some(*n))
        .unwrap_or(DEFAULT_SERVER_CONNECTIONS);
    let named: Vec<(String, usize)> = a
        .server_connections
        .iter()
        .filter_map(|(s, n)| s.clone().map(|s| (s, *n)))
        .collect();
    let shared = registry::Shared {
        memory: MemoryBudget::new(a.memory as usize),
        servers: ServerSlots::new(Some(default_cap), &named),
        sessions: Sessions::new(Duration::from_secs(a.session_idle)),
    };
    let sessions = shared.sessions.clone();
    let expiry = tokio::spawn({
        let sessions = sessions.clone();
        let every = Duration::from_secs((a.session_idle / 4).clamp(1, 30));
        async move {
            loop {
                tokio::time::sleep(every).await;
                sessions.expire().await;
            }
        }
    });
    let registry = Registry::new(
        a.max_transfers,
        Duration::from_secs(a.retention),
        state,
        shared,
    );
    let restored = registry.restore(&a.target_roots);
    if restored > 0 {
        tracing::info!(
            transfers = restored,
            "taking up the unfinished transfers of the state directory"
        );
    }
    let listener = Listener::open(&a).await?;
    let daemon = Arc::new(Daemon {
        registry,
        roots: a.target_roots,
        token: match &a.token_file {
            Some(f) => Some(read_token(f)?),
            None => None,
        },
    });
    tracing::info!(listen = %a.listen, "importer serve: listening");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::io("installing the SIGTERM handler", e))?;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            () = listener.accept(&daemon, &slots) => {}
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    listener.close();
    expiry.abort();
    if daemon.registry.keeps_state() {
        sessions.close_all().await;
        // They are recorded as queued or running: the next start takes them up again, from
        // their journals.
        tracing::info!("importer serve: stopping; unfinished transfers resume at the next start");
        return Ok(ExitCode::SUCCESS);
    }
    tracing::info!("importer serve: stopping; cancelling the transfers not finished");
    let waiting: Vec<_> = daemon
        .registry
        .list()
        .into_iter()
        .filter_map(|e| daemon.registry.cancel(e.id()))
        .collect();
    // Give the transfers a moment to clean up after the cancel.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline
        && waiting.iter().any(|e| {
            let s = e.to_json()["state"].clone();
            s == "running" || s == "queued"
        })
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sessions.close_all().await;
    Ok(ExitCode::SUCCESS)
}

struct Daemon {
    registry: Arc<Registry>,
    roots: Vec<PathBuf>,
    /// The bearer token TCP clients must send.
    token: Option<String>,
}

/// Connections served at once; past it a new one is closed at once.
const MAX_CONNECTIONS: usize = 256;
/// A TLS client must finish its handshake within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The bearer token in `path`: its content without surrounding white space, never logged.
fn read_token(path: &std::path::Path) -> transfer_core::Result<String> {
    let raw = std::fs::read(path)
        .map_err(|e| Error::io(format!("--token-file {}", path.display()), e))?;
    let token = String::from_utf8(raw)
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty() && t.len() <= 4096 && t.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "--token-file {}: must hold one token of printable characters",
                    path.display()
                ),
            )
        })?;
    Ok(token)
}

/// Whether `given` equals `token`, in time independent of where they differ.
fn same_token(given: &[u8], token: &[u8]) -> bool {
    given.len() == token.len() && given.iter().zip(token).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
}

/// Where the daemon listens.
enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(tokio::net::TcpListener, tokio_rustls::TlsAcceptor),
}

impl Listener {
    async fn open(a: &ServeArgs) -> transfer_core::Result<Listener> {
        if let Some(path) = a.listen.strip_prefix("unix:") {
            // A socket left by a daemon that died is replaced; anything else is not.
            if let Ok(m) = std::fs::symlink_metadata(path) {
                use std::os::unix::fs::FileTypeExt;
                if !m.file_type().is_socket() {
                    return Err(Error::new(
                        ErrorKind::InvalidInput,
                        format!("--listen {path}: exists and is not a socket"),
                    ));
                }
                let _ = std::fs::remove_file(path);
            }
            let l = UnixListener::bind(path)
                .map_err(|e| Error::io(format!("listening on {path}"), e))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::io(format!("setting the mode of {path}"), e))?;
            return Ok(Listener::Unix(l, PathBuf::from(path)));
        }
        let Some(addr) = a.listen.strip_prefix("tcp:") else {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("--listen {}: expected unix:PATH or tcp:ADDR:PORT", a.listen),
            ));
        };
        let (Some(cert), Some(key), Some(_)) = (&a.tls_cert, &a.tls_key, &a.token_file) else {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "--listen tcp: needs --tls-cert, --tls-key and --token-file (no plain or anonymous TCP)",
            ));
        };
        let config = tls_config(cert, key)?;
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::io(format!("listening on {addr}"), e))?;
        Ok(Listener::Tcp(
            l,
            tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        ))
    }

    /// Accepts one connection and serves it in a task of its own.
    async fn accept(&self, daemon: &Arc<Daemon>, slots: &Arc<tokio::sync::Semaphore>) {
        let accepted = match self {
            Listener::Unix(l, _) => l.accept().await.map(|(s, _)| Ok(s)),
            Listener::Tcp(l, _) => l.accept().await.map(|(s, _)| Err(s)),
        };
        let Ok(stream) = accepted else {
            // EMFILE and the like: wait instead of spinning on the error.
            tokio::time::sleep(Duration::from_millis(100)).await;
            return;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            return;
        };
        let d = daemon.clone();
        match (stream, self) {
            (Ok(unix), _) => {
                tokio::spawn(async move {
                    let _slot = slot;
                    serve_connection(unix, d, true).await;
                });
            }
            (Err(tcp), Listener::Tcp(_, acceptor)) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                    if let Ok(Ok(tls)) = handshake.await {
                        serve_connection(tls, d, false).await;
                    }
                });
            }
            (Err(_), Listener::Unix(..)) => {}
        }
    }

    fn close(self) {
        if let Listener::Unix(l, path) = self {
            drop(l);
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Serves one connection; `local` connections (the Unix socket) need no token.
async fn serve_connection<S>(stream: S, d: Arc<Daemon>, local: bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let d = d.clone();
        async move { Ok::<_, Infallible>(d.handle(req, local).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(HEADER_TIMEOUT)
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

/// The server side of TLS from PEM files.
fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> transfer_core::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &std::path::Path, e: String| {
        Error::new(ErrorKind::InvalidInput, format!("{}: {e}", what.display()))
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, e.to_string()))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad(cert, "no certificate in it".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| bad(cert, e.to_string()))
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: u16, message: &str) -> Response<Full<Bytes>> {
    reply(
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        json!({ "error": message }),
    )
}

impl Daemon {
    async fn handle(&self, req: Request<Incoming>, local: bool) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        if !local && segments != ["healthz"] {
            let given = req
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
            let token = self.token.as_deref().unwrap_or("").as_bytes();
            if !given.is_some_and(|g| !token.is_empty() && same_token(g, token)) {
                let mut r = error(401, "a bearer token is required");
                r.headers_mut().insert(
                    hyper::header::WWW_AUTHENTICATE,
                    hyper::header::HeaderValue::from_static("Bearer"),
                );
                return r;
            }
        }
        match (req.method().clone(), segments.as_slice()) {
            (Method::GET, ["healthz"]) => reply(StatusCode::OK, json!({"status": "ok"})),
            (Method::GET, ["metrics"]) => self.metrics(),
            (Method::POST, ["v1", "transfers"]) => self.add(req).await,
            (Method::GET, ["v1", "transfers"]) => reply(
                StatusCode::OK,
                Value::Array(self.registry.list().iter().map(|e| e.to_json()).collect()),
            ),
            (Method::GET, ["v1", "transfers", id]) => match self.registry.get(id) {
                Some(e) => reply(StatusCode::OK, e.to_json()),
                None => error(404, "no such transfer"),
            },
            (Method::DELETE, ["v1", "transfers", id]) => match self.registry.cancel(id) {
                Some(e) => reply(StatusCode::OK, e.to_json()),
                None => error(404, "no such transfer"),
            },
            (_, ["healthz"] | ["metrics"] | ["v1", "transfers"] | ["v1", "transfers", _]) => {
                error(405, "method not allowed")
            }
            _ => error(404, "no such resource"),
        }
    }

    async fn add(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        // A declared length over the cap is refused before a byte of the body is read.
        let declared = req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            return error(413, &format!("body: larger than {MAX_BODY} bytes"));
        }
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return error(413, &format!("body: larger than {MAX_BODY} bytes"));
            }
            Err(_) => return error(400, "body: could not be read"),
        };
        let parsed = match request::parse(&body, &self.roots) {
            Ok(r) => r,
            Err(r) => return error(r.status, &r.message),
        };
        let recorded: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        match self.registry.add(parsed, recorded) {
            Ok(e) => {
                tracing::info!(transfer = e.id(), "transfer queued");
                reply(StatusCode::CREATED, json!({ "id": e.id() }))
            }
            Err(r) => error(r.status, &r.message),
        }
    }

    fn metrics(&self) -> Response<Full<Bytes>> {
        let mut text = String::from(
            "# HELP ferry_transfers Transfers known to the daemon, by state.\n# TYPE ferry_transfers gauge\n",
        );
        let counts = self.registry.counts();
        for (state, n, _) in &counts {
            text.push_str(&format!("ferry_transfers{{state=\"{state}\"}} {n}\n"));
        }
        text.push_str(
            "# HELP ferry_transfer_bytes_done Bytes on the target, per transfer.\n# TYPE ferry_transfer_bytes_done gauge\n",
        );
        for e in self.registry.list() {
            let v = e.to_json();
            text.push_str(&format!(
                "ferry_transfer_bytes_done{{id=\"{}\"}} {}\n",
                e.id(),
                v["bytes_done"]
            ));
        }
        let shared = self.registry.shared();
        text.push_str(&format!(
            "# HELP ferry_bytes_copied_total Bytes put on targets by every transfer since the daemon started.\n# TYPE ferry_bytes_copied_total counter\nferry_bytes_copied_total {}\n",
            self.registry.bytes_copied()
        ));
        text.push_str(&format!(
            "# HELP ferry_memory_in_flight_bytes Copy buffers the transfers hold now.\n# TYPE ferry_memory_in_flight_bytes gauge\nferry_memory_in_flight_bytes {}\n# HELP ferry_memory_budget_bytes The copy buffers all transfers together may hold.\n# TYPE ferry_memory_budget_bytes gauge\nferry_memory_budget_bytes {}\n",
            shared.memory.in_use(),
            shared.memory.bytes()
        ));
        let (logins, connections) = shared.sessions.counts();
        text.push_str(&format!(
            "# HELP ferry_kept_vsphere_logins vSphere logins kept for the next checkpoint.\n# TYPE ferry_kept_vsphere_logins gauge\nferry_kept_vsphere_logins {logins}\n# HELP ferry_kept_vddk_connections Idle VDDK connections kept for the next checkpoint.\n# TYPE ferry_kept_vddk_connections gauge\nferry_kept_vddk_connections {connections}\n"
        ));
        let usage = shared.servers.usage();
        let per_server = [
            (
                "ferry_server_connections",
                "Source connections the transfers hold, per server.",
                usage.iter().map(|u| (&u.0, u.1)).collect::<Vec<_>>(),
            ),
            (
                "ferry_server_connections_limit",
                "The connections allowed per server.",
                usage.iter().map(|u| (&u.0, u.2)).collect(),
            ),
        ];
        for (name, help, values) in per_server {
            text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
            for (server, n) in values {
                text.push_str(&format!("{name}{{server=\"{}\"}} {n}\n", label(server)));
            }
        }
        let mut r = Response::new(Full::new(Bytes::from(text)));
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        r
    }
}

/// `s` as a Prometheus label value.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
