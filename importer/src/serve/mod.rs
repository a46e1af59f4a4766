//! `importer serve`: ferry's transfer daemon. Controllers and scripts in any language submit
//! transfers over HTTP/JSON on a Unix socket (shaped after ovirt-imageio's ticket API) and follow
//! them; each request becomes a [`transfer_core::job::TransferSpec`] run by the same job as
//! `importer copy`.
//!
//! API: `POST /v1/transfers` (201 `{"id"}`; 400 naming the field, 403 for a target outside the
//! `--target-root` directories, 409 for a target another transfer is writing, 413 for a body
//! over 1 MiB), `GET /v1/transfers`, `GET /v1/transfers/{id}`, `DELETE /v1/transfers/{id}`
//! (cancel, idempotent), `GET /healthz`, `GET /metrics` (Prometheus text).

pub(crate) mod client;
mod registry;
mod request;

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
use transfer_core::{Error, ErrorKind};

use registry::Registry;

/// The largest request body accepted.
const MAX_BODY: usize = 1 << 20;
/// A client must send its request headers within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// `importer serve` flags.
#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Where to listen: `unix:PATH` (the socket is made mode 0600).
    #[arg(long)]
    listen: String,
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
}

/// Runs the daemon until SIGTERM or SIGINT.
pub(crate) async fn run(a: ServeArgs) -> transfer_core::Result<ExitCode> {
    let path = a.listen.strip_prefix("unix:").ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("--listen {}: expected unix:PATH", a.listen),
        )
    })?;
    for r in &a.target_roots {
        if !r.is_dir() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("--target-root {}: not a directory", r.display()),
            ));
        }
    }
    // A socket left by a daemon that died is replaced; anything else at the path is not.
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
    let listener =
        UnixListener::bind(path).map_err(|e| Error::io(format!("listening on {path}"), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(format!("setting the mode of {path}"), e))?;
    let daemon = Arc::new(Daemon {
        registry: Registry::new(a.max_transfers, Duration::from_secs(a.retention)),
        roots: a.target_roots,
    });
    tracing::info!(socket = path, "importer serve: listening");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::io("installing the SIGTERM handler", e))?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let d = daemon.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let d = d.clone();
                        async move { Ok::<_, Infallible>(d.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .header_read_timeout(HEADER_TIMEOUT)
                        .timer(TokioTimer::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("importer serve: stopping; cancelling the transfers not finished");
    drop(listener);
    let _ = std::fs::remove_file(path);
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
    Ok(ExitCode::SUCCESS)
}

struct Daemon {
    registry: Arc<Registry>,
    roots: Vec<PathBuf>,
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
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
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
        match self.registry.add(parsed) {
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
        let mut r = Response::new(Full::new(Bytes::from(text)));
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        r
    }
}
