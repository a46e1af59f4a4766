//! `importer transfers ...`: a small client of the daemon, so that shell scripts need no curl.
//! One HTTP/1.1 request per call over the daemon's Unix socket; the answer's JSON is printed.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use transfer_core::{Error, ErrorKind, Result};

/// `importer transfers` flags.
#[derive(Args)]
pub(crate) struct TransfersArgs {
    /// The daemon's socket (its `--listen unix:PATH`).
    #[arg(long, env = "FERRY_SOCKET")]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: TransfersCmd,
}

#[derive(Subcommand)]
enum TransfersCmd {
    /// Submit a transfer of SOURCE to TARGET; prints {"id": ...}.
    Add(AddArgs),
    /// Print one transfer.
    Get { id: String },
    /// Print every transfer.
    List,
    /// Cancel a transfer (nothing happens to a finished one).
    Cancel { id: String },
    /// Wait for a transfer to finish; exit 0 when it succeeded, 1 otherwise.
    Wait {
        id: String,
        /// Give up after this many seconds (0: never).
        #[arg(long, default_value_t = 0)]
        timeout: u64,
    },
}

#[derive(Args)]
struct AddArgs {
    source: String,
    target: String,
    /// Read source and target again after the copy and compare them.
    #[arg(long)]
    verify: bool,
    /// Keep a resume journal (the transfer fails if none can be kept).
    #[arg(long)]
    resume: bool,
    /// Source connections.
    #[arg(long)]
    connections: Option<u64>,
    /// The checkpoint this transfer brings the target to.
    #[arg(long)]
    checkpoint: Option<String>,
    /// The checkpoint the target must be at (a delta's).
    #[arg(long)]
    previous_checkpoint: Option<String>,
    /// A delta whose changed ranges the source tells (vSphere changed areas since the
    /// previous checkpoint, an imageio ticket's dirty extents).
    #[arg(long)]
    delta: bool,
    /// A delta whose changed ranges are this qemu dirty bitmap of an NBD source.
    #[arg(long, value_name = "NAME")]
    dirty_bitmap: Option<String>,
    /// A vddk:// parameter KEY=VALUE (repeatable), as `importer copy --vddk`.
    #[arg(long = "vddk", value_name = "KEY=VALUE")]
    vddk: Vec<String>,
    /// A file holding the vddk:// source's password; the daemon reads it (its path, not
    /// the password, is sent).
    #[arg(long)]
    password_file: Option<PathBuf>,
}

impl AddArgs {
    /// The `POST /v1/transfers` body.
    fn body(self) -> Result<Value> {
        let mut options = json!({ "verify": self.verify, "resume": self.resume });
        if let Some(c) = self.connections {
            options["connections"] = json!(c);
        }
        let mut body = json!({ "source": self.source, "target": self.target, "options": options });
        if let Some(c) = self.checkpoint {
            body["checkpoint"] = json!(c);
        }
        if let Some(c) = self.previous_checkpoint {
            body["previous_checkpoint"] = json!(c);
        }
        match (self.delta, self.dirty_bitmap) {
            (_, Some(b)) => body["delta"] = json!({ "dirty_bitmap": b }),
            (true, None) => body["delta"] = json!({ "changes": "source" }),
            (false, None) => {}
        }
        if !self.vddk.is_empty() {
            let mut params = serde_json::Map::new();
            for kv in &self.vddk {
                let (k, v) = kv.split_once('=').ok_or_else(|| {
                    Error::new(ErrorKind::InvalidInput, "--vddk expects KEY=VALUE")
                })?;
                params.insert(k.to_owned(), json!(v));
            }
            body["vddk"] = Value::Object(params);
        }
        if let Some(f) = self.password_file {
            let f = std::path::absolute(&f)
                .map_err(|e| Error::io(format!("resolving {}", f.display()), e))?;
            body["secrets"] = json!({ "password_file": f });
        }
        Ok(body)
    }
}

/// Runs one client command.
pub(crate) fn run(a: TransfersArgs) -> Result<ExitCode> {
    let call = |method: &str, path: &str, body: Option<Value>| call(&a.socket, method, path, body);
    let (status, v) = match a.cmd {
        TransfersCmd::Add(add) => call("POST", "/v1/transfers", Some(add.body()?))?,
        TransfersCmd::Get { id } => call("GET", &format!("/v1/transfers/{id}"), None)?,
        TransfersCmd::List => call("GET", "/v1/transfers", None)?,
        TransfersCmd::Cancel { id } => call("DELETE", &format!("/v1/transfers/{id}"), None)?,
        TransfersCmd::Wait { id, timeout } => {
            let deadline = (timeout > 0).then(|| Instant::now() + Duration::from_secs(timeout));
            loop {
                let (status, v) = call("GET", &format!("/v1/transfers/{id}"), None)?;
                let state = v["state"].as_str().unwrap_or("");
                if status != 200 || ["succeeded", "failed", "cancelled"].contains(&state) {
                    println!("{v}");
                    return Ok(if state == "succeeded" {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    });
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(Error::new(
                        ErrorKind::TimedOut,
                        format!("transfer {id} still {state} after {timeout} s"),
                    ));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    println!("{v}");
    Ok(if (200..300).contains(&status) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One request; the answer's status and JSON body.
fn call(socket: &PathBuf, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
    let where_ = || format!("the daemon at {}", socket.display());
    let mut s = UnixStream::connect(socket).map_err(|e| {
        Error::with_source(
            ErrorKind::Connect,
            format!("cannot connect to {}", where_()),
            e,
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .and_then(|()| s.set_write_timeout(Some(Duration::from_secs(60))))
        .map_err(|e| Error::io(where_(), e))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| Error::io(format!("sending to {}", where_()), e))?;
    let mut answer = Vec::new();
    s.take(16 << 20)
        .read_to_end(&mut answer)
        .map_err(|e| Error::io(format!("reading from {}", where_()), e))?;
    let text = String::from_utf8_lossy(&answer);
    let bad = || {
        Error::new(
            ErrorKind::Protocol,
            format!("{}: not an HTTP answer", where_()),
        )
    };
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3)?.parse().ok())
        .ok_or_else(bad)?;
    let (_, json_text) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let v = serde_json::from_str(json_text.trim()).map_err(|_| bad())?;
    Ok((status, v))
}
