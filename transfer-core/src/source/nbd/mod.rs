//! NBD source: our own async client (see `client`), URIs as libnbd writes them, and one
//! connection per independent handle (multi-conn when the server allows it).

pub mod client;
pub mod handshake;
pub mod proto;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::{TcpStream, UnixStream};

use crate::buffer::Buffer;
use crate::error::{invalid, Error, ErrorKind, Result};
use crate::extent::{Extent, ExtentKind};
use crate::source::{percent_decode, BlockSource, ChangeTracking, SourceCaps};
pub use client::Connection;
pub use handshake::{ExportInfo, HandshakeOptions};

/// Where the server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdAddr {
    /// TCP host and port.
    Tcp(String, u16),
    /// Unix socket path.
    Unix(String),
}

/// A parsed NBD URI: address and export name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUri {
    /// Server address.
    pub addr: NbdAddr,
    /// Export name ("" = default).
    pub export: String,
}

/// Default NBD port.
pub const DEFAULT_PORT: u16 = 10809;

impl NbdUri {
    /// Parses `nbd://host[:port]/export` or `nbd+unix:///export?socket=PATH`.
    pub fn parse(url: &url::Url) -> Result<Self> {
        let export = percent_decode(url.path().strip_prefix('/').unwrap_or(url.path()));
        match url.scheme() {
            "nbd" => {
                let host = url
                    .host_str()
                    .ok_or_else(|| invalid(format!("NBD URI '{url}' has no host")))?
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned();
                let port = url.port().unwrap_or(DEFAULT_PORT);
                Ok(NbdUri {
                    addr: NbdAddr::Tcp(host, port),
                    export,
                })
            }
            "nbd+unix" => {
                let socket = url
                    .query_pairs()
                    .find(|(k, _)| k == "socket")
                    .map(|(_, v)| v.into_owned())
                    .ok_or_else(|| invalid(format!("NBD URI '{url}' needs ?socket=PATH")))?;
                Ok(NbdUri {
                    addr: NbdAddr::Unix(socket),
                    export,
                })
            }
            "nbds" | "nbds+unix" => Err(Error::new(
                ErrorKind::Unsupported,
                format!("NBD over TLS ('{}') is not supported yet", url.scheme()),
            )),
            s => Err(invalid(format!("not an NBD URI scheme: '{s}'"))),
        }
    }

    /// Description for messages.
    pub fn describe(&self) -> String {
        match &self.addr {
            NbdAddr::Tcp(h, p) => format!("NBD server {h}:{p} export '{}'", self.export),
            NbdAddr::Unix(s) => format!("NBD server unix:{s} export '{}'", self.export),
        }
    }
}

/// Connects, negotiates and starts the transmission phase.
pub async fn connect(uri: &NbdUri, structured: bool) -> Result<Connection> {
    let opts = HandshakeOptions {
        export: uri.export.clone(),
        structured,
        dirty_bitmap: None,
    };
    connect_with(uri, &opts).await
}

/// How long a connection beyond the first may wait for the server's greeting. A server at its
/// client limit (`qemu-nbd` serves one client unless told `-e N`) leaves further clients
/// unanswered in its listen queue: that is "at capacity", not a failure.
const MORE_CONNECTIONS_WAIT: Duration = Duration::from_secs(2);

/// The ranges `(offset, length)` that qemu's dirty bitmap `bitmap` of the export marks as
/// changed (`qemu:dirty-bitmap:NAME`, e.g. `qemu-nbd -B NAME`), sorted and merged.
pub async fn dirty_ranges(uri: &NbdUri, bitmap: &str) -> Result<Vec<(u64, u64)>> {
    let opts = HandshakeOptions {
        export: uri.export.clone(),
        structured: true,
        dirty_bitmap: Some(bitmap.to_owned()),
    };
    let conn = connect_with(uri, &opts).await?;
    let size = conn.info().size;
    let what = format!("{} dirty bitmap '{bitmap}'", uri.describe());
    let extents = crate::source::covering(&what, 0, size, |o, l| conn.dirty_status(o, l)).await?;
    let dirty = extents
        .iter()
        .filter(|e| e.kind == ExtentKind::Data)
        .map(|e| (e.offset, e.len));
    let merged = crate::delta::DeltaSet::new(size, dirty)?;
    let _ = conn.disconnect().await;
    Ok(merged.ranges().to_vec())
}

/// Connects with `opts`, negotiates and starts the transmission phase.
pub async fn connect_with(uri: &NbdUri, opts: &HandshakeOptions) -> Result<Connection> {
    connect_within(uri, opts, Duration::from_secs(30)).await
}

/// [`connect_with`], giving up after `timeout` for each of the connect and the handshake.
async fn connect_within(
    uri: &NbdUri,
    opts: &HandshakeOptions,
    timeout: Duration,
) -> Result<Connection> {
    let desc = uri.describe();
    let conn_err = |e: std::io::Error| {
        Error::with_source(ErrorKind::Connect, format!("cannot connect to {desc}"), e)
    };
    let timed_out = || {
        Error::new(
            ErrorKind::Connect,
            format!("cannot connect to {desc}: timed out"),
        )
    };
    let hs = |e: Error| e.context_prefix(&desc);
    match &uri.addr {
        NbdAddr::Tcp(host, port) => {
            let mut s = tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), *port)))
                .await
                .map_err(|_| timed_out())?
                .map_err(conn_err)?;
            s.set_nodelay(true).map_err(conn_err)?;
            let info = tokio::time::timeout(timeout, handshake::handshake(&mut s, opts))
                .await
                .map_err(|_| timed_out())?
                .map_err(hs)?;
            let (r, w) = s.into_split();
            Ok(Connection::start(info, desc, Box::new(r), Box::new(w)))
        }
        NbdAddr::Unix(path) => {
            let mut s = tokio::time::timeout(timeout, UnixStream::connect(path))
                .await
                .map_err(|_| timed_out())?
                .map_err(conn_err)?;
            let info = tokio::time::timeout(timeout, handshake::handshake(&mut s, opts))
                .await
                .map_err(|_| timed_out())?
                .map_err(hs)?;
            let (r, w) = s.into_split();
            Ok(Connection::start(info, desc, Box::new(r), Box::new(w)))
        }
    }
}

/// An NBD export as a [`BlockSource`]; each handle is one connection.
pub struct NbdSource {
    uri: NbdUri,
    conn: Arc<Connection>,
    structured: bool,
    /// The dirty bitmap negotiated on this connection, if one was asked for.
    dirty_bitmap: Option<String>,
    /// Whether "at capacity" has been logged for this source (once, for all its handles).
    capacity_logged: Arc<AtomicBool>,
}

impl NbdSource {
    /// Connects to `uri`; `structured` asks for structured replies and block status.
    pub async fn connect(uri: NbdUri, structured: bool) -> Result<Self> {
        NbdSource::connect_with_bitmap(uri, structured, None).await
    }

    /// Connects to `uri`, negotiating `base:allocation` and, when named, the qemu dirty bitmap
    /// `qemu:dirty-bitmap:NAME` on the same connection: its changed ranges are then
    /// [`BlockSource::changes`] without a second connection, which a server that serves one
    /// client (`qemu-nbd` by default) would never accept.
    pub async fn connect_with_bitmap(
        uri: NbdUri,
        structured: bool,
        dirty_bitmap: Option<String>,
    ) -> Result<Self> {
        let opts = HandshakeOptions {
            export: uri.export.clone(),
            structured: structured || dirty_bitmap.is_some(),
            dirty_bitmap: dirty_bitmap.clone(),
        };
        let conn = connect_with(&uri, &opts).await?;
        Ok(NbdSource {
            uri,
            conn: Arc::new(conn),
            structured,
            dirty_bitmap,
            capacity_logged: Arc::new(AtomicBool::new(false)),
        })
    }

    /// What the handshake learned.
    pub fn info(&self) -> &ExportInfo {
        self.conn.info()
    }
}

#[async_trait]
impl BlockSource for NbdSource {
    fn describe(&self) -> String {
        self.uri.describe()
    }

    fn size(&self) -> u64 {
        self.conn.info().size
    }

    fn caps(&self) -> SourceCaps {
        let i = self.conn.info();
        SourceCaps {
            // The server's preferred block size is the smallest efficient one; 1 MiB requests
            // keep the per-request cost low while many are in flight.
            preferred_request: (i.block_preferred as usize).max(1 << 20),
            max_request: (i.block_max as usize).min(32 << 20),
            can_extents: i.base_allocation.is_some(),
            max_connections: if i.can_multi_conn() { 16 } else { 1 },
            max_requests: 64,
            sequential: false,
            size_known: true,
        }
    }

    async fn read_at(&self, offset: u64, buf: Buffer) -> Result<Buffer> {
        self.conn.read(offset, buf).await
    }

    async fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.conn.block_status(offset, len).await
    }

    async fn open_another(&self) -> Result<Arc<dyn BlockSource>> {
        let opts = HandshakeOptions {
            export: self.uri.export.clone(),
            structured: self.structured,
            dirty_bitmap: None,
        };
        let conn = match connect_within(&self.uri, &opts, MORE_CONNECTIONS_WAIT).await {
            Ok(c) => c,
            Err(e) if e.context().ends_with("timed out") => {
                if !self.capacity_logged.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        "{}: the server accepted no further connection within {} s; copying with the connections it took",
                        self.describe(),
                        MORE_CONNECTIONS_WAIT.as_secs()
                    );
                }
                return Err(Error::new(
                    ErrorKind::Busy,
                    format!("{}: at capacity", self.describe()),
                ));
            }
            Err(e) => return Err(e),
        };
        let other = NbdSource {
            uri: self.uri.clone(),
            conn: Arc::new(conn),
            structured: self.structured,
            dirty_bitmap: None,
            capacity_logged: self.capacity_logged.clone(),
        };
        if other.size() != self.size() {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!(
                    "{}: export size changed between connections",
                    self.describe()
                ),
            ));
        }
        Ok(Arc::new(other))
    }

    async fn close(&self) -> Result<()> {
        self.conn.disconnect().await
    }

    fn changes(&self) -> Option<Arc<dyn ChangeTracking>> {
        let bitmap = self.dirty_bitmap.clone()?;
        Some(Arc::new(DirtyBitmap {
            conn: self.conn.clone(),
            what: format!("{} dirty bitmap '{bitmap}'", self.describe()),
        }))
    }
}

/// The changed ranges in a qemu dirty bitmap, read over the connection that negotiated it.
struct DirtyBitmap {
    conn: Arc<Connection>,
    what: String,
}

#[async_trait]
impl ChangeTracking for DirtyBitmap {
    async fn changed_ranges(&self) -> Result<Vec<(u64, u64)>> {
        let size = self.conn.info().size;
        let conn = &self.conn;
        let extents =
            crate::source::covering(&self.what, 0, size, |o, l| conn.dirty_status(o, l)).await?;
        Ok(extents
            .iter()
            .filter(|e| e.kind == ExtentKind::Data)
            .map(|e| (e.offset, e.len))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NbdUri> {
        NbdUri::parse(&url::Url::parse(s).unwrap())
    }

    #[test]
    fn libnbd_uri_forms_parse() {
        assert_eq!(
            parse("nbd://localhost:10810/disk").unwrap(),
            NbdUri {
                addr: NbdAddr::Tcp("localhost".into(), 10810),
                export: "disk".into()
            }
        );
        assert_eq!(
            parse("nbd://127.0.0.1").unwrap(),
            NbdUri {
                addr: NbdAddr::Tcp("127.0.0.1".into(), DEFAULT_PORT),
                export: "".into()
            }
        );
        assert_eq!(
            parse("nbd+unix:///my%20disk?socket=/tmp/s.sock").unwrap(),
            NbdUri {
                addr: NbdAddr::Unix("/tmp/s.sock".into()),
                export: "my disk".into()
            }
        );
        assert_eq!(
            parse("nbd://[::1]:99/").unwrap().addr,
            NbdAddr::Tcp("::1".into(), 99)
        );
    }

    #[test]
    fn bad_nbd_uris_are_rejected() {
        assert!(parse("nbd+unix:///x").is_err());
        assert_eq!(
            parse("nbds://h/x").unwrap_err().kind(),
            ErrorKind::Unsupported
        );
    }
}
