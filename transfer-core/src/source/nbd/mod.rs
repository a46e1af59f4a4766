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

/// How long requests may wait without a byte from the server before the connection is given
/// up (and, with retries, replaced). A slow server that keeps sending never trips it; a server
/// that answers nothing at all for two minutes has stopped.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// What an NBD source takes besides its URI.
#[derive(Debug, Clone)]
pub struct NbdOptions {
    /// Ask for structured replies and block status.
    pub structured: bool,
    /// The qemu dirty bitmap (`qemu-nbd -B NAME`) whose changed ranges the source reports,
    /// negotiated on the same connection as the data.
    pub dirty_bitmap: Option<String>,
    /// How long requests may wait without a byte from the server
    /// ([`DEFAULT_IDLE_TIMEOUT`]).
    pub idle_timeout: Duration,
}

impl Default for NbdOptions {
    fn default() -> Self {
        NbdOptions {
            structured: true,
            dirty_bitmap: None,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

impl NbdOptions {
    fn handshake(&self, export: &str, with_bitmap: bool) -> HandshakeOptions {
        let dirty_bitmap = self.dirty_bitmap.clone().filter(|_| with_bitmap);
        HandshakeOptions {
            export: export.to_owned(),
            structured: self.structured || dirty_bitmap.is_some(),
            dirty_bitmap,
        }
    }
}

/// TCP keepalive on every NBD socket: a peer that vanished without a word (a host powered
/// off, a connection dropped by a load balancer) is noticed by the kernel after about a
/// minute and a half of silence, even between requests.
fn keepalive(s: &TcpStream) -> std::io::Result<()> {
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    socket2::SockRef::from(s).set_tcp_keepalive(&ka)
}

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
    connect_with(uri, &opts, DEFAULT_IDLE_TIMEOUT).await
}

/// How long the first connection may take to connect, to be greeted, and to negotiate.
const FIRST_CONNECTION_WAIT: Duration = Duration::from_secs(30);

/// How long a connection beyond the first may wait to connect and for the server's greeting.
/// A server at its client limit (`qemu-nbd` serves one client unless told `-e N`) leaves
/// further clients unanswered in its listen queue: that is "at capacity", not a failure.
const MORE_CONNECTIONS_WAIT: Duration = Duration::from_secs(2);

/// The ranges `(offset, length)` that qemu's dirty bitmap `bitmap` of the export marks as
/// changed (`qemu:dirty-bitmap:NAME`, e.g. `qemu-nbd -B NAME`), sorted and merged, read over a
/// connection of their own. A source that copies reads them over its own connection instead:
/// [`NbdSource::open`] with [`NbdOptions::dirty_bitmap`], and [`BlockSource::changes`].
pub async fn dirty_ranges(uri: &NbdUri, bitmap: &str) -> Result<Vec<(u64, u64)>> {
    let opts = NbdOptions {
        dirty_bitmap: Some(bitmap.to_owned()),
        ..NbdOptions::default()
    };
    let src = NbdSource::open(uri.clone(), opts).await?;
    let tracker = src
        .changes()
        .expect("a source connected with a dirty bitmap tracks changes");
    let ranges = tracker.changed_ranges().await;
    let _ = src.close().await;
    ranges
}

/// Connects with `opts`, negotiates and starts the transmission phase; requests wait at most
/// `idle` without a byte from the server ([`Connection::start`]).
pub async fn connect_with(
    uri: &NbdUri,
    opts: &HandshakeOptions,
    idle: Duration,
) -> Result<Connection> {
    connect_within(uri, opts, FIRST_CONNECTION_WAIT, idle)
        .await?
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Connect,
                format!(
                    "cannot connect to {}: timed out: the server took no connection within {} s",
                    uri.describe(),
                    FIRST_CONNECTION_WAIT.as_secs()
                ),
            )
        })
}

/// [`connect_with`], waiting at most `answer` for the connection to be accepted and for the
/// server's greeting: `Ok(None)` when the server did not answer in time (or its listen queue is
/// full), the socket then closed. The rest of the handshake may take [`FIRST_CONNECTION_WAIT`].
async fn connect_within(
    uri: &NbdUri,
    opts: &HandshakeOptions,
    answer: Duration,
    idle: Duration,
) -> Result<Option<Connection>> {
    let desc = uri.describe();
    let conn_err = |e: std::io::Error| {
        Error::with_source(ErrorKind::Connect, format!("cannot connect to {desc}"), e)
    };
    /// What a connect that did not succeed means: no answer (`None`) or a failure.
    fn unanswered<T>(
        r: std::result::Result<std::io::Result<T>, tokio::time::error::Elapsed>,
    ) -> std::result::Result<Option<T>, std::io::Error> {
        match r {
            Err(_) => Ok(None),
            // A Unix socket whose listen queue is full refuses at once (EAGAIN).
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Ok(r) => r.map(Some),
        }
    }
    let (info, r, w): (ExportInfo, Reader, Writer) = match &uri.addr {
        NbdAddr::Tcp(host, port) => {
            let connect = TcpStream::connect((host.as_str(), *port));
            let Some(mut s) =
                unanswered(tokio::time::timeout(answer, connect).await).map_err(conn_err)?
            else {
                return Ok(None);
            };
            s.set_nodelay(true).map_err(conn_err)?;
            keepalive(&s).map_err(conn_err)?;
            // The greeting is the server's first word: none means it has not taken us on.
            if tokio::time::timeout(answer, s.readable()).await.is_err() {
                return Ok(None);
            }
            let info = negotiate(&mut s, opts, &desc).await?;
            let (r, w) = s.into_split();
            (info, Box::new(r), Box::new(w))
        }
        NbdAddr::Unix(path) => {
            let connect = UnixStream::connect(path);
            let Some(mut s) =
                unanswered(tokio::time::timeout(answer, connect).await).map_err(conn_err)?
            else {
                return Ok(None);
            };
            if tokio::time::timeout(answer, s.readable()).await.is_err() {
                return Ok(None);
            }
            let info = negotiate(&mut s, opts, &desc).await?;
            let (r, w) = s.into_split();
            (info, Box::new(r), Box::new(w))
        }
    };
    Ok(Some(Connection::start(info, desc, r, w, idle)))
}

type Reader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
type Writer = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

/// The handshake on a stream the server has greeted, within [`FIRST_CONNECTION_WAIT`].
async fn negotiate<S>(s: &mut S, opts: &HandshakeOptions, desc: &str) -> Result<ExportInfo>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::time::timeout(FIRST_CONNECTION_WAIT, handshake::handshake(s, opts))
        .await
        .map_err(|_| {
            Error::new(
                ErrorKind::Connect,
                format!("cannot connect to {desc}: the handshake timed out"),
            )
        })?
        .map_err(|e| e.context_prefix(desc))
}

/// An NBD export as a [`BlockSource`]; each handle is one connection.
pub struct NbdSource {
    uri: NbdUri,
    conn: Arc<Connection>,
    /// The options it was opened with; the dirty bitmap is negotiated on this connection
    /// only, never on the ones [`BlockSource::open_another`] adds.
    opts: NbdOptions,
    /// Whether "at capacity" has been logged for this source (once, for all its handles).
    capacity_logged: Arc<AtomicBool>,
}

impl NbdSource {
    /// Connects to `uri`; `structured` asks for structured replies and block status.
    pub async fn connect(uri: NbdUri, structured: bool) -> Result<Self> {
        let opts = NbdOptions {
            structured,
            ..NbdOptions::default()
        };
        NbdSource::open(uri, opts).await
    }

    /// Connects to `uri` with `opts`. A dirty bitmap, when named, is negotiated together with
    /// `base:allocation` on the same connection: its changed ranges are then
    /// [`BlockSource::changes`] without a second connection, which a server that serves one
    /// client (`qemu-nbd` by default) would never accept.
    pub async fn open(uri: NbdUri, opts: NbdOptions) -> Result<Self> {
        let conn =
            connect_with(&uri, &opts.handshake(&uri.export, true), opts.idle_timeout).await?;
        Ok(NbdSource {
            uri,
            conn: Arc::new(conn),
            opts,
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
            // The server's preferred block size is the smallest efficient one. 1 MiB requests
            // keep the importer's cost per request low; 256 KiB ones (nbdcopy's) spare nbdkit
            // some page faults but cost the importer more than that (docs/benchmarks.md).
            preferred_request: (i.block_preferred as usize).max(1 << 20),
            max_request: (i.block_max as usize).min(32 << 20),
            can_extents: i.base_allocation.is_some(),
            max_connections: if i.can_multi_conn() { 16 } else { 1 },
            max_requests: 64,
            sequential: false,
            size_known: true,
            costly_requests: false,
        }
    }

    async fn read_at(&self, offset: u64, buf: Buffer) -> Result<Buffer> {
        self.conn.read(offset, buf).await
    }

    async fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.conn.block_status(offset, len).await
    }

    async fn open_another(&self) -> Result<Arc<dyn BlockSource>> {
        let opts = self.opts.handshake(&self.uri.export, false);
        let idle = self.opts.idle_timeout;
        let Some(conn) = connect_within(&self.uri, &opts, MORE_CONNECTIONS_WAIT, idle).await?
        else {
            let wait = MORE_CONNECTIONS_WAIT.as_secs();
            if !self.capacity_logged.swap(true, Ordering::Relaxed) {
                tracing::info!(
                    "{} accepted no further connection within {wait} s: copying over the connections it took",
                    self.describe()
                );
            }
            return Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "{} accepted no further connection within {wait} s: at capacity",
                    self.describe()
                ),
            ));
        };
        let other = NbdSource {
            uri: self.uri.clone(),
            conn: Arc::new(conn),
            opts: NbdOptions {
                dirty_bitmap: None,
                ..self.opts.clone()
            },
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
        let bitmap = self.opts.dirty_bitmap.clone()?;
        Some(Arc::new(DirtyBitmap {
            conn: self.conn.clone(),
            what: format!("{}: the dirty bitmap '{bitmap}'", self.describe()),
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
        let dirty = extents
            .iter()
            .filter(|e| e.kind == ExtentKind::Data)
            .map(|e| (e.offset, e.len));
        Ok(crate::delta::DeltaSet::new(size, dirty)?.ranges().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    const SIZE: u64 = 1 << 20;
    const GRAIN: u32 = 64 << 10;

    /// Options that ask for the dirty bitmap `name`.
    fn bitmap(name: &str) -> NbdOptions {
        NbdOptions {
            dirty_bitmap: Some(name.to_owned()),
            ..NbdOptions::default()
        }
    }

    /// An in-process NBD server on a Unix socket that serves `clients` connections (at most
    /// one at a time, like `qemu-nbd` by default) and leaves any further one in its listen
    /// queue. It knows `base:allocation` (context 1, all a hole) and the dirty bitmaps
    /// `bitmaps` (contexts 2, 3, ...: the second 64 KiB block dirty); each block status reply
    /// carries a chunk for every context negotiated, the bitmap's first.
    struct FakeServer {
        uri: NbdUri,
        /// The meta context queries of each connection's NBD_OPT_SET_META_CONTEXT.
        queries: Arc<Mutex<Vec<Vec<String>>>>,
        accepted: Arc<AtomicUsize>,
        listener: Arc<UnixListener>,
        _dir: tempfile::TempDir,
    }

    impl FakeServer {
        fn start(bitmaps: &[&str], clients: usize) -> FakeServer {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("nbd.sock");
            let listener = Arc::new(UnixListener::bind(&path).unwrap());
            let server = FakeServer {
                uri: NbdUri {
                    addr: NbdAddr::Unix(path.to_str().unwrap().to_owned()),
                    export: String::new(),
                },
                queries: Arc::default(),
                accepted: Arc::default(),
                listener: listener.clone(),
                _dir: dir,
            };
            let (queries, accepted) = (server.queries.clone(), server.accepted.clone());
            let bitmaps: Vec<String> = bitmaps.iter().map(|b| b.to_string()).collect();
            tokio::spawn(async move {
                for _ in 0..clients {
                    let (mut s, _) = listener.accept().await.unwrap();
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let _ = serve(&mut s, &bitmaps, &queries).await;
                }
            });
            server
        }
    }

    async fn option_reply(s: &mut UnixStream, opt: u32, reply: u32, data: &[u8]) {
        let mut m = OPT_REPLY_MAGIC.to_be_bytes().to_vec();
        m.extend_from_slice(&opt.to_be_bytes());
        m.extend_from_slice(&reply.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        s.write_all(&m).await.unwrap();
    }

    fn status_chunk(cookie: u64, flags: u16, id: u32, descs: &[(u32, u32)]) -> Vec<u8> {
        let mut m = STRUCTURED_REPLY_MAGIC.to_be_bytes().to_vec();
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&CHUNK_BLOCK_STATUS.to_be_bytes());
        m.extend_from_slice(&cookie.to_be_bytes());
        m.extend_from_slice(&(4 + 8 * descs.len() as u32).to_be_bytes());
        m.extend_from_slice(&id.to_be_bytes());
        for (l, f) in descs {
            m.extend_from_slice(&l.to_be_bytes());
            m.extend_from_slice(&f.to_be_bytes());
        }
        m
    }

    async fn serve(
        s: &mut UnixStream,
        bitmaps: &[String],
        queries: &Mutex<Vec<Vec<String>>>,
    ) -> std::io::Result<()> {
        let mut g = NBDMAGIC.to_be_bytes().to_vec();
        g.extend_from_slice(&IHAVEOPT.to_be_bytes());
        g.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
        s.write_all(&g).await?;
        s.read_u32().await?;
        let mut contexts: Vec<u32> = Vec::new();
        loop {
            assert_eq!(s.read_u64().await?, IHAVEOPT);
            let (opt, len) = (s.read_u32().await?, s.read_u32().await?);
            let mut data = vec![0u8; len as usize];
            s.read_exact(&mut data).await?;
            match opt {
                OPT_STRUCTURED_REPLY => option_reply(s, opt, REP_ACK, &[]).await,
                OPT_SET_META_CONTEXT => {
                    let mut asked = Vec::new();
                    let at = 4 + u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
                    let mut q = &data[at + 4..];
                    while !q.is_empty() {
                        let l = u32::from_be_bytes(q[..4].try_into().unwrap()) as usize;
                        asked.push(String::from_utf8(q[4..4 + l].to_vec()).unwrap());
                        q = &q[4 + l..];
                    }
                    for name in &asked {
                        let id = if name == "base:allocation" {
                            1
                        } else if let Some(i) = bitmaps
                            .iter()
                            .position(|b| *name == format!("qemu:dirty-bitmap:{b}"))
                        {
                            2 + i as u32
                        } else {
                            continue;
                        };
                        contexts.push(id);
                        let mut d = id.to_be_bytes().to_vec();
                        d.extend_from_slice(name.as_bytes());
                        option_reply(s, opt, REP_META_CONTEXT, &d).await;
                    }
                    queries.lock().unwrap().push(asked);
                    option_reply(s, opt, REP_ACK, &[]).await;
                }
                OPT_GO => {
                    let mut d = INFO_EXPORT.to_be_bytes().to_vec();
                    d.extend_from_slice(&SIZE.to_be_bytes());
                    d.extend_from_slice(&(TF_HAS_FLAGS | TF_READ_ONLY).to_be_bytes());
                    option_reply(s, opt, REP_INFO, &d).await;
                    option_reply(s, opt, REP_ACK, &[]).await;
                    break;
                }
                _ => option_reply(s, opt, REP_ERR_UNSUP, &[]).await,
            }
        }
        // Bitmaps first: the client must find its context among the chunks, not take the first.
        contexts.sort_by_key(|&id| std::cmp::Reverse(id));
        loop {
            let mut req = [0u8; 28];
            s.read_exact(&mut req).await?;
            let cmd = u16::from_be_bytes([req[6], req[7]]);
            let cookie = u64::from_be_bytes(req[8..16].try_into().unwrap());
            let (offset, len) = (
                u64::from_be_bytes(req[16..24].try_into().unwrap()),
                u32::from_be_bytes(req[24..28].try_into().unwrap()),
            );
            match cmd {
                CMD_BLOCK_STATUS => {
                    for (i, &id) in contexts.iter().enumerate() {
                        let done = if i + 1 == contexts.len() {
                            REPLY_FLAG_DONE
                        } else {
                            0
                        };
                        let descs: Vec<(u32, u32)> = if id == 1 {
                            vec![(len, STATE_HOLE | STATE_ZERO)]
                        } else {
                            // Aligned blocks from `offset`, the second one dirty.
                            let first = GRAIN - (offset % u64::from(GRAIN)) as u32;
                            let dirty = |o: u64| u32::from(o / u64::from(GRAIN) == 1);
                            let mut v = vec![(first.min(len), dirty(offset))];
                            let mut pos = offset + u64::from(first);
                            while pos < offset + u64::from(len) {
                                v.push((GRAIN, dirty(pos)));
                                pos += u64::from(GRAIN);
                            }
                            v
                        };
                        s.write_all(&status_chunk(cookie, done, id, &descs)).await?;
                    }
                }
                CMD_DISC => return Ok(()),
                _ => panic!("unexpected command {cmd}"),
            }
        }
    }

    #[tokio::test]
    async fn one_connection_carries_allocation_and_the_dirty_bitmap() {
        let server = FakeServer::start(&["b0"], 1);

        let src = NbdSource::open(server.uri.clone(), bitmap("b0"))
            .await
            .unwrap();
        let extents = crate::source::extents_covering(&src, 0, SIZE)
            .await
            .unwrap();
        let changed = src.changes().expect("a tracker").changed_ranges().await;
        src.close().await.unwrap();

        assert_eq!(
            *server.queries.lock().unwrap(),
            [["base:allocation", "qemu:dirty-bitmap:b0"]]
        );
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
        assert!(
            extents.iter().all(|e| e.kind == ExtentKind::Hole),
            "block status reads base:allocation: {extents:?}"
        );
        assert_eq!(changed.unwrap(), [(u64::from(GRAIN), u64::from(GRAIN))]);
    }

    #[tokio::test]
    async fn a_source_without_a_bitmap_reports_no_changes() {
        let server = FakeServer::start(&["b0"], 1);

        let src = NbdSource::connect(server.uri.clone(), true).await.unwrap();

        assert!(src.changes().is_none());
        assert_eq!(*server.queries.lock().unwrap(), [["base:allocation"]]);
        src.close().await.unwrap();
    }

    #[tokio::test]
    async fn dirty_ranges_reads_the_bitmap_over_one_connection() {
        let server = FakeServer::start(&["other", "b1"], 1);

        let ranges = dirty_ranges(&server.uri, "b1").await.unwrap();

        assert_eq!(ranges, [(u64::from(GRAIN), u64::from(GRAIN))]);
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_unknown_dirty_bitmap_fails_in_one_line_naming_it() {
        let server = FakeServer::start(&["b0"], 1);

        let e = NbdSource::open(server.uri.clone(), bitmap("nope"))
            .await
            .err()
            .expect("no such bitmap");

        let msg = e.to_string();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{msg}");
        assert!(msg.contains("the dirty bitmap 'nope'"), "{msg}");
        assert!(msg.starts_with("NBD server unix:"), "{msg}");
        assert!(!msg.contains('\n') && !msg.contains("--"), "{msg}");
    }

    #[tokio::test]
    async fn connections_beyond_what_the_server_takes_are_busy_and_closed() {
        // The first connection is served; the next ones wait in the listen queue, unanswered.
        let server = FakeServer::start(&[], 1);
        let src = NbdSource::connect(server.uri.clone(), true).await.unwrap();

        let started = std::time::Instant::now();
        let (a, b) = tokio::join!(src.open_another(), src.open_another());

        for r in [a, b] {
            let e = r.err().expect("no room for another connection");
            assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
            assert_eq!(
                e.to_string(),
                format!(
                    "{} accepted no further connection within 2 s: at capacity",
                    src.describe()
                )
            );
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(src.capacity_logged.load(Ordering::Relaxed));
        // Each was closed: taken from the queue now, it is at its end at once.
        for _ in 0..2 {
            let (mut s, _) = server.listener.accept().await.unwrap();
            let mut b = [0u8; 1];
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
                .await
                .expect("the client closed it")
                .unwrap_or(0);
            assert_eq!(n, 0);
        }
        src.close().await.unwrap();
    }

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
