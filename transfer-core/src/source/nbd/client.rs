//! One NBD connection in the transmission phase: requests are pipelined, each tagged with a
//! cookie; a reader task parses replies and fills the caller's buffer straight from the socket.
//!
//! Written here rather than taken from a crate: the `nbd` crate is synchronous and lacks
//! NBD_OPT_GO, structured replies, block status and pipelining; libnbd would need C bindings.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::handshake::ExportInfo;
use super::proto::*;
use crate::buffer::Buffer;
use crate::error::{protocol, Error, ErrorKind, Result};
use crate::extent::{Extent, ExtentKind};

type Writer = Box<dyn AsyncWrite + Send + Unpin>;
type Reader = Box<dyn AsyncRead + Send + Unpin>;

enum Op {
    Read {
        offset: u64,
        buf: Buffer,
        /// Byte ranges of `buf` filled so far (chunks must not overlap: a server that sends
        /// overlapping chunks could otherwise leave stale bytes in a reused buffer).
        covered: Covered,
        error: Option<Error>,
        tx: oneshot::Sender<Result<Buffer>>,
    },
    BlockStatus {
        offset: u64,
        /// The id of the meta context asked about, and how its flags read. The server answers
        /// for every negotiated context (`base:allocation` and a dirty bitmap may both be);
        /// the chunks of the other are skipped.
        id: u32,
        context: MetaContext,
        /// The extents of the chunk that answered for `id`, once it came.
        extents: Option<Vec<Extent>>,
        error: Option<Error>,
        tx: oneshot::Sender<Result<Vec<Extent>>>,
    },
    Plain {
        error: Option<Error>,
        tx: oneshot::Sender<Result<()>>,
    },
}

impl Op {
    fn fail(self, e: Error) {
        // A dropped receiver means the caller gave up; nothing to tell.
        match self {
            Op::Read { tx, .. } => drop(tx.send(Err(e))),
            Op::BlockStatus { tx, .. } => drop(tx.send(Err(e))),
            Op::Plain { tx, .. } => drop(tx.send(Err(e))),
        }
    }

    fn error_slot(&mut self) -> &mut Option<Error> {
        match self {
            Op::Read { error, .. } | Op::BlockStatus { error, .. } | Op::Plain { error, .. } => {
                error
            }
        }
    }

    fn finish(self) {
        match self {
            Op::Read {
                error: Some(e), tx, ..
            } => drop(tx.send(Err(e))),
            Op::Read {
                offset,
                buf,
                covered,
                tx,
                ..
            } => {
                let covered: u64 = covered.iter().map(|(s, e)| e - s).sum();
                let r = if covered == buf.len() as u64 {
                    Ok(buf)
                } else {
                    Err(protocol(format!(
                        "NBD read at offset {offset}: server sent {covered} of {} bytes",
                        buf.len()
                    )))
                };
                drop(tx.send(r))
            }
            Op::BlockStatus {
                error: Some(e), tx, ..
            } => drop(tx.send(Err(e))),
            Op::BlockStatus {
                offset,
                extents,
                tx,
                ..
            } => {
                let r = match extents {
                    Some(e) if !e.is_empty() => Ok(e),
                    _ => Err(protocol(format!(
                        "NBD block status at offset {offset}: no extents in reply"
                    ))),
                };
                drop(tx.send(r))
            }
            Op::Plain { error: Some(e), tx } => drop(tx.send(Err(e))),
            Op::Plain { tx, .. } => drop(tx.send(Ok(()))),
        }
    }
}

struct Shared {
    ops: HashMap<u64, Op>,
    /// Whether the reply being read took its request out of `ops`.
    in_hand: bool,
    /// Set when the connection is gone: every later request fails with this message.
    dead: Option<(ErrorKind, String)>,
}

/// A connected NBD session after the handshake.
pub struct Connection {
    info: ExportInfo,
    desc: String,
    writer: tokio::sync::Mutex<Writer>,
    shared: Arc<Mutex<Shared>>,
    cookie: AtomicU64,
    reader: tokio::task::JoinHandle<()>,
}

fn server_error(what: &str, offset: u64, errno: u32, msg: &str) -> Error {
    let detail = if msg.is_empty() {
        String::new()
    } else {
        format!(": {msg}")
    };
    Error::new(
        ErrorKind::Server,
        format!(
            "NBD {what} at offset {offset} failed: {}{detail}",
            errno_name(errno)
        ),
    )
}

impl Connection {
    /// Starts the transmission phase on an already negotiated stream. While a request waits
    /// for its reply and the server sends nothing for `idle`, the connection is given up
    /// ([`ErrorKind::TimedOut`]): a peer that stopped answering must not hang the copy.
    pub fn start(
        info: ExportInfo,
        desc: String,
        reader: Reader,
        writer: Writer,
        idle: Duration,
    ) -> Self {
        let shared = Arc::new(Mutex::new(Shared {
            ops: HashMap::new(),
            in_hand: false,
            dead: None,
        }));
        let task = tokio::spawn(reader_task(
            reader,
            shared.clone(),
            info.clone(),
            desc.clone(),
            idle,
        ));
        Connection {
            info,
            desc,
            writer: tokio::sync::Mutex::new(writer),
            shared,
            cookie: AtomicU64::new(1),
            reader: task,
        }
    }

    /// What the handshake learned.
    pub fn info(&self) -> &ExportInfo {
        &self.info
    }

    async fn submit(&self, flags: u16, cmd: u16, offset: u64, len: u32, op: Op) -> Result<()> {
        let cookie = self.cookie.fetch_add(1, Ordering::Relaxed);
        {
            let mut sh = self.shared.lock().unwrap();
            if let Some((kind, msg)) = &sh.dead {
                let e = Error::new(*kind, msg.clone());
                drop(sh);
                op.fail(Error::new(e.kind(), e.context().to_owned()));
                return Err(e);
            }
            sh.ops.insert(cookie, op);
        }
        let hdr = encode_request(&Request {
            flags,
            cmd,
            cookie,
            offset,
            len,
        });
        let mut w = self.writer.lock().await;
        if let Err(e) = w.write_all(&hdr).await {
            drop(w);
            let mut err = Error::io(format!("{}: sending request", self.desc), e);
            if err.kind() == ErrorKind::Disconnected {
                // Same words as when the reply reader notices first.
                err = Error::new(
                    ErrorKind::Disconnected,
                    format!("{}: server closed the connection", self.desc),
                );
            }
            let op = self.shared.lock().unwrap().ops.remove(&cookie);
            if let Some(op) = op {
                op.fail(Error::new(err.kind(), err.to_string()));
            }
            return Err(err);
        }
        Ok(())
    }

    fn check_range(&self, what: &str, offset: u64, len: u64) -> Result<()> {
        if len == 0
            || len > self.info.block_max as u64
            || offset.checked_add(len).is_none_or(|e| e > self.info.size)
        {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{}: {what} of {len} bytes at offset {offset} is out of range",
                    self.desc
                ),
            ));
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset` into `buf`.
    pub async fn read(&self, offset: u64, buf: Buffer) -> Result<Buffer> {
        let len = buf.len() as u64;
        self.check_range("read", offset, len)?;
        let (tx, rx) = oneshot::channel();
        let op = Op::Read {
            offset,
            buf,
            covered: Covered::new(),
            error: None,
            tx,
        };
        self.submit(0, CMD_READ, offset, len as u32, op).await?;
        self.wait(rx).await
    }

    /// Block status of `[offset, offset+len)` in `base:allocation`. The reply may cover less.
    pub async fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let Some(context) = self.info.base_allocation else {
            return Ok(vec![Extent::new(offset, len, ExtentKind::Data)]);
        };
        self.status_in(context, MetaContext::Allocation, offset, len)
            .await
    }

    /// The dirty bitmap's status of `[offset, offset+len)`: `Data` extents are dirty, `Hole`
    /// ones clean. The reply may cover less. Needs the bitmap asked for in the handshake.
    pub async fn dirty_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let context = self.info.dirty_bitmap.ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                format!("{}: no dirty bitmap was negotiated", self.desc),
            )
        })?;
        self.status_in(context, MetaContext::DirtyBitmap, offset, len)
            .await
    }

    async fn status_in(
        &self,
        id: u32,
        context: MetaContext,
        offset: u64,
        len: u64,
    ) -> Result<Vec<Extent>> {
        let len = len
            .min(self.info.size.saturating_sub(offset))
            .min(u32::MAX as u64 & !0xfff);
        if len == 0 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("{}: block status at end of disk", self.desc),
            ));
        }
        let (tx, rx) = oneshot::channel();
        let op = Op::BlockStatus {
            offset,
            id,
            context,
            extents: None,
            error: None,
            tx,
        };
        self.submit(0, CMD_BLOCK_STATUS, offset, len as u32, op)
            .await?;
        self.wait(rx).await
    }

    /// Sends NBD_CMD_FLUSH and waits for it.
    pub async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.submit(0, CMD_FLUSH, 0, 0, Op::Plain { error: None, tx })
            .await?;
        self.wait(rx).await
    }

    /// Sends NBD_CMD_DISC (no reply) and stops the reader.
    pub async fn disconnect(&self) -> Result<()> {
        let cookie = self.cookie.fetch_add(1, Ordering::Relaxed);
        let hdr = encode_request(&Request {
            flags: 0,
            cmd: CMD_DISC,
            cookie,
            offset: 0,
            len: 0,
        });
        let mut w = self.writer.lock().await;
        let r = w.write_all(&hdr).await;
        let _ = w.shutdown().await;
        self.reader.abort();
        self.fail_pending("disconnected by the client");
        r.map_err(|e| Error::io(format!("{}: sending disconnect", self.desc), e))
    }

    /// Fails every request still waiting for a reply, and every later one, with `why`: once
    /// the reader is stopped no reply can come, and a waiter must not wait forever.
    fn fail_pending(&self, why: &str) {
        fail_all(
            &self.shared,
            ErrorKind::Disconnected,
            format!("{}: {why}", self.desc),
        );
    }

    async fn wait<T>(&self, rx: oneshot::Receiver<Result<T>>) -> Result<T> {
        match rx.await {
            Ok(Err(e)) if e.kind() == ErrorKind::Server => Err(e.context_prefix(&self.desc)),
            Ok(r) => r,
            Err(_) => {
                let sh = self.shared.lock().unwrap();
                let (kind, msg) = sh.dead.clone().unwrap_or((
                    ErrorKind::Disconnected,
                    format!("{}: connection closed", self.desc),
                ));
                Err(Error::new(kind, msg))
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
        self.fail_pending("connection dropped");
    }
}

async fn reader_task(
    reader: Reader,
    shared: Arc<Mutex<Shared>>,
    info: ExportInfo,
    desc: String,
    idle: Duration,
) {
    let received = Arc::new(AtomicU64::new(0));
    let counting = Counting {
        inner: reader,
        received: received.clone(),
    };
    // Small: it holds reply headers. A read's data goes straight from the socket into the
    // caller's buffer (a larger buffer here would copy the first part of every read twice).
    let mut r = BufReader::with_capacity(4096, counting);
    let mut watch = IdleWatch::new(idle, received);
    let mut ticks = tokio::time::interval(watch.tick());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let err = 'conn: loop {
        // A reply being read holds its request outside `ops` (taken, then put back or
        // finished): `in_hand` says the rest of it is awaited.
        shared.lock().unwrap().in_hand = false;
        let one = read_one(&mut r, &shared, &info);
        tokio::pin!(one);
        loop {
            tokio::select! {
                res = &mut one => match res {
                    Ok(()) => continue 'conn,
                    Err(e) => break 'conn e,
                },
                _ = ticks.tick() => {
                    let waiting = {
                        let sh = shared.lock().unwrap();
                        sh.in_hand || !sh.ops.is_empty()
                    };
                    if let Some(e) = watch.check(waiting) {
                        break 'conn e;
                    }
                }
            }
        }
    };
    let (kind, msg) = match err.kind() {
        ErrorKind::Disconnected => (
            ErrorKind::Disconnected,
            format!("{desc}: server closed the connection"),
        ),
        k => (k, format!("{desc}: {err}")),
    };
    fail_all(&shared, kind, msg);
}

/// A reader that counts the bytes it delivers, for [`IdleWatch`].
struct Counting {
    inner: Reader,
    received: Arc<AtomicU64>,
}

impl AsyncRead for Counting {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.received.fetch_add(n, Ordering::Relaxed);
        r
    }
}

/// Whether a connection with requests waiting has received nothing for too long. Checked on
/// a tick of a quarter of the timeout, so it fires between `idle` and 1.25 x `idle` after the
/// last byte (or after the first request of an idle connection).
struct IdleWatch {
    idle: Duration,
    received: Arc<AtomicU64>,
    seen: u64,
    since: Instant,
}

impl IdleWatch {
    fn new(idle: Duration, received: Arc<AtomicU64>) -> IdleWatch {
        IdleWatch {
            idle,
            received,
            seen: 0,
            since: Instant::now(),
        }
    }

    fn tick(&self) -> Duration {
        (self.idle / 4).max(Duration::from_millis(50))
    }

    /// The timeout error when requests are `waiting` and nothing came for the idle time.
    fn check(&mut self, waiting: bool) -> Option<Error> {
        let now = Instant::now();
        let n = self.received.load(Ordering::Relaxed);
        if n != self.seen || !waiting {
            self.seen = n;
            self.since = now;
            return None;
        }
        (now - self.since >= self.idle).then(|| {
            Error::new(
                ErrorKind::TimedOut,
                format!(
                    "no answer for {} s while requests were waiting: giving up the connection",
                    self.idle.as_secs_f64()
                ),
            )
        })
    }
}

/// Marks the connection dead with `kind`/`msg` (the first reason stays) and fails every
/// request waiting for a reply: no reply can come any more.
fn fail_all(shared: &Mutex<Shared>, kind: ErrorKind, msg: String) {
    let ops: Vec<Op> = {
        let mut sh = shared.lock().unwrap_or_else(|e| e.into_inner());
        if sh.dead.is_none() {
            sh.dead = Some((kind, msg.clone()));
        }
        sh.ops.drain().map(|(_, op)| op).collect()
    };
    for op in ops {
        op.fail(Error::new(kind, msg.clone()));
    }
}

fn take(shared: &Mutex<Shared>, cookie: u64) -> Result<Op> {
    let mut sh = shared.lock().unwrap();
    let op = sh.ops.remove(&cookie);
    sh.in_hand = op.is_some();
    op.ok_or_else(|| protocol(format!("reply with unknown cookie {cookie}")))
}

/// Returns `op` to the pending requests before a fatal error: the reader task then fails it
/// together with every other pending request, with one message that names the server, after the
/// connection is marked dead (failing it here would race that and lose the server's name).
fn put_back(shared: &Mutex<Shared>, cookie: u64, op: Op) {
    shared.lock().unwrap().ops.insert(cookie, op);
}

async fn read_payload<R: AsyncRead + Unpin>(r: &mut R, len: u32) -> Result<Vec<u8>> {
    if len > MAX_META_PAYLOAD {
        return Err(protocol(format!("reply chunk of {len} bytes is too large")));
    }
    let mut v = vec![0u8; len as usize];
    r.read_exact(&mut v)
        .await
        .map_err(|e| Error::io("reading reply payload", e))?;
    Ok(v)
}

/// Reads and dispatches one reply (simple) or chunk (structured). An `Err` is fatal for the
/// connection: the stream can no longer be trusted to be in sync.
async fn read_one<R: AsyncRead + Unpin>(
    r: &mut R,
    shared: &Mutex<Shared>,
    info: &ExportInfo,
) -> Result<()> {
    let mut h = [0u8; STRUCTURED_REPLY_LEN];
    r.read_exact(&mut h[..SIMPLE_REPLY_LEN])
        .await
        .map_err(|e| Error::io("reading reply", e))?;
    let header = match parse_reply_header(&h[..SIMPLE_REPLY_LEN])? {
        Some(h) => h,
        None => {
            r.read_exact(&mut h[SIMPLE_REPLY_LEN..])
                .await
                .map_err(|e| Error::io("reading reply", e))?;
            parse_reply_header(&h)?.ok_or_else(|| protocol("incomplete reply header"))?
        }
    };
    match header {
        ReplyHeader::Simple { error, cookie } => {
            let mut op = take(shared, cookie)?;
            if let Op::Read { buf, .. } = &mut op {
                let fatal = if info.structured {
                    Some(protocol(
                        "simple reply to a read after structured replies were negotiated",
                    ))
                } else if error == 0 {
                    r.read_exact(buf)
                        .await
                        .err()
                        .map(|e| Error::io("reading data", e))
                } else {
                    None
                };
                if let Some(e) = fatal {
                    put_back(shared, cookie, op);
                    return Err(e);
                }
            }
            match op {
                Op::Read {
                    offset, buf, tx, ..
                } => {
                    let res = if error == 0 {
                        Ok(buf)
                    } else {
                        Err(server_error("read", offset, error, ""))
                    };
                    drop(tx.send(res));
                }
                Op::BlockStatus { offset, tx, .. } => {
                    drop(tx.send(Err(server_error(
                        "block status",
                        offset,
                        error.max(22),
                        "simple reply",
                    ))));
                }
                Op::Plain { tx, .. } => {
                    let res = if error == 0 {
                        Ok(())
                    } else {
                        Err(server_error("request", 0, error, ""))
                    };
                    drop(tx.send(res));
                }
            }
            Ok(())
        }
        ReplyHeader::Structured {
            flags,
            kind,
            cookie,
            len,
        } => {
            if !info.structured {
                return Err(protocol("structured reply that was not negotiated"));
            }
            let mut op = take(shared, cookie)?;
            if let Err(e) = chunk(r, &mut op, flags, kind, len, info).await {
                put_back(shared, cookie, op);
                return Err(e);
            }
            if flags & REPLY_FLAG_DONE != 0 {
                op.finish();
            } else {
                shared.lock().unwrap().ops.insert(cookie, op);
            }
            Ok(())
        }
    }
}

/// Handles one structured chunk for `op`.
async fn chunk<R: AsyncRead + Unpin>(
    r: &mut R,
    op: &mut Op,
    flags: u16,
    kind: u16,
    len: u32,
    info: &ExportInfo,
) -> Result<()> {
    match (kind, op) {
        (
            CHUNK_OFFSET_DATA,
            Op::Read {
                offset,
                buf,
                covered,
                ..
            },
        ) => {
            if len < 8 {
                return Err(protocol("data chunk shorter than its offset"));
            }
            let mut o = [0u8; 8];
            r.read_exact(&mut o)
                .await
                .map_err(|e| Error::io("reading data chunk", e))?;
            let (at, n) = (u64::from_be_bytes(o), u64::from(len - 8));
            let start = chunk_in_request("data", at, n, *offset, buf.len() as u64)?;
            claim(covered, start, n, *offset)?;
            r.read_exact(&mut buf[start as usize..(start + n) as usize])
                .await
                .map_err(|e| Error::io("reading data", e))?;
        }
        (
            CHUNK_OFFSET_HOLE,
            Op::Read {
                offset,
                buf,
                covered,
                ..
            },
        ) => {
            let (at, n) = parse_offset_hole(&read_payload(r, len).await?)?;
            let n = u64::from(n);
            if n == 0 {
                return Err(protocol(format!("empty hole chunk at {at}")));
            }
            let start = chunk_in_request("hole", at, n, *offset, buf.len() as u64)?;
            claim(covered, start, n, *offset)?;
            buf[start as usize..(start + n) as usize].fill(0);
        }
        (
            CHUNK_BLOCK_STATUS,
            Op::BlockStatus {
                offset,
                id,
                context,
                extents,
                ..
            },
        ) => {
            let payload = read_payload(r, len).await?;
            if let Some(got) = decode_block_status(&payload, *id, *context, *offset, info.size)? {
                if extents.is_some() {
                    // A second answer for the context would start again at the offset.
                    return Err(protocol(format!(
                        "more than one block status chunk for context {id}"
                    )));
                }
                *extents = Some(got);
            }
        }
        (CHUNK_ERROR | CHUNK_ERROR_OFFSET, op) => {
            let c = parse_error_chunk(kind, &read_payload(r, len).await?)?;
            let (what, at) = match op {
                Op::Read { offset, .. } => ("read", c.offset.unwrap_or(*offset)),
                Op::BlockStatus { offset, .. } => ("block status", c.offset.unwrap_or(*offset)),
                Op::Plain { .. } => ("request", c.offset.unwrap_or(0)),
            };
            let slot = op.error_slot();
            if slot.is_none() {
                *slot = Some(server_error(what, at, c.error, &c.message));
            }
        }
        (CHUNK_NONE, _) => {
            if len != 0 || flags & REPLY_FLAG_DONE == 0 {
                return Err(protocol("NBD_REPLY_TYPE_NONE with payload or without DONE"));
            }
        }
        (k, op) if k & (1 << 15) != 0 => {
            let errno = unknown_error_errno(&read_payload(r, len).await?);
            let slot = op.error_slot();
            if slot.is_none() {
                *slot = Some(server_error("request", 0, errno, "unknown error chunk"));
            }
        }
        (k, _) => return Err(protocol(format!("unexpected reply chunk type {k}"))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, split, DuplexStream};

    const DESC: &str = "NBD server test";

    fn connection() -> (Connection, DuplexStream) {
        connection_with(Duration::from_secs(30))
    }

    /// A connection whose idle timeout is `idle`, and the server's end of it.
    fn connection_with(idle: Duration) -> (Connection, DuplexStream) {
        let (client, server) = duplex(1 << 20);
        let (r, w) = split(client);
        let info = ExportInfo {
            size: 1 << 20,
            flags: TF_HAS_FLAGS | TF_READ_ONLY,
            block_min: 1,
            block_preferred: 4096,
            block_max: 32 << 20,
            structured: true,
            base_allocation: None,
            dirty_bitmap: None,
        };
        let conn = Connection::start(info, DESC.into(), Box::new(r), Box::new(w), idle);
        (conn, server)
    }

    /// Reads one request header from the fake server's side: (cookie, offset, len).
    async fn request(server: &mut DuplexStream) -> (u64, u64, u32) {
        let mut h = [0u8; 28];
        server.read_exact(&mut h).await.unwrap();
        (
            u64::from_be_bytes(h[8..16].try_into().unwrap()),
            u64::from_be_bytes(h[16..24].try_into().unwrap()),
            u32::from_be_bytes(h[24..28].try_into().unwrap()),
        )
    }

    /// Two reads in flight; the server answers one of them in a way that breaks the protocol.
    /// Both reads fail with one error that names the server, whichever read it concerned.
    async fn both_reads_fail_alike(bad_reply: impl Fn(u64, u64, u32) -> Vec<u8>) {
        let (conn, mut server) = connection();
        let conn = Arc::new(conn);
        let (c1, c2) = (conn.clone(), conn.clone());
        let a = tokio::spawn(async move { c1.read(0, Buffer::new(4096)).await });
        let b = tokio::spawn(async move { c2.read(4096, Buffer::new(4096)).await });
        let (cookie, offset, len) = request(&mut server).await;
        let _ = request(&mut server).await;
        server
            .write_all(&bad_reply(cookie, offset, len))
            .await
            .unwrap();

        let errors = [
            a.await.unwrap().expect_err("read fails"),
            b.await.unwrap().expect_err("read fails"),
        ];

        for e in &errors {
            assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
            assert!(e.to_string().starts_with(DESC), "{e}");
        }
        assert_eq!(errors[0].to_string(), errors[1].to_string());
    }

    #[tokio::test]
    async fn data_chunk_outside_its_request_fails_every_read_naming_the_server() {
        both_reads_fail_alike(|cookie, offset, len| {
            let mut m = Vec::new();
            m.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
            m.extend_from_slice(&REPLY_FLAG_DONE.to_be_bytes());
            m.extend_from_slice(&CHUNK_OFFSET_DATA.to_be_bytes());
            m.extend_from_slice(&cookie.to_be_bytes());
            m.extend_from_slice(&(8u32 + 512).to_be_bytes());
            m.extend_from_slice(&(offset + len as u64).to_be_bytes());
            m.extend_from_slice(&[0xa5; 512]);
            m
        })
        .await;
    }

    #[tokio::test]
    async fn simple_read_reply_after_structured_negotiation_fails_every_read_naming_the_server() {
        both_reads_fail_alike(|cookie, _, _| {
            let mut m = Vec::new();
            m.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
            m.extend_from_slice(&0u32.to_be_bytes());
            m.extend_from_slice(&cookie.to_be_bytes());
            m
        })
        .await;
    }

    fn data_chunk(cookie: u64, at: u64, len: usize, flags: u16) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&CHUNK_OFFSET_DATA.to_be_bytes());
        m.extend_from_slice(&cookie.to_be_bytes());
        m.extend_from_slice(&(8 + len as u32).to_be_bytes());
        m.extend_from_slice(&at.to_be_bytes());
        m.extend_from_slice(&vec![0x5a; len]);
        m
    }

    #[tokio::test]
    async fn overlapping_chunks_that_add_up_to_the_length_are_refused() {
        // 4096 bytes requested: chunks [0,2048) and [1024,3072) add up to 4096 with [3072,4096)
        // never sent; accepting them would hand back stale bytes.
        let (conn, mut server) = connection();
        let conn = Arc::new(conn);
        let c = conn.clone();
        let read = tokio::spawn(async move { c.read(0, Buffer::new(4096)).await });
        let (cookie, _, _) = request(&mut server).await;
        let mut m = data_chunk(cookie, 0, 2048, 0);
        m.extend(data_chunk(cookie, 1024, 2048, REPLY_FLAG_DONE));
        server.write_all(&m).await.unwrap();

        let e = read.await.unwrap().expect_err("overlap must fail");

        assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
        assert!(e.to_string().contains("overlapping"), "{e}");
    }

    #[tokio::test]
    async fn read_split_over_two_chunks_is_accepted() {
        let (conn, mut server) = connection();
        let conn = Arc::new(conn);
        let c = conn.clone();
        let read = tokio::spawn(async move { c.read(0, Buffer::new(4096)).await });
        let (cookie, _, _) = request(&mut server).await;
        let mut m = data_chunk(cookie, 2048, 2048, 0);
        m.extend(data_chunk(cookie, 0, 2048, REPLY_FLAG_DONE));
        server.write_all(&m).await.unwrap();

        let buf = read.await.unwrap().unwrap();

        assert!(buf.iter().all(|&b| b == 0x5a));
    }

    /// The structured reply that ends a read of `len` bytes at `offset` with its data.
    fn data_reply(cookie: u64, offset: u64, len: u32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        m.extend_from_slice(&REPLY_FLAG_DONE.to_be_bytes());
        m.extend_from_slice(&CHUNK_OFFSET_DATA.to_be_bytes());
        m.extend_from_slice(&cookie.to_be_bytes());
        m.extend_from_slice(&(len + 8).to_be_bytes());
        m.extend_from_slice(&offset.to_be_bytes());
        m.extend(std::iter::repeat_n(0x5a, len as usize));
        m
    }

    #[tokio::test]
    async fn a_server_that_stops_answering_fails_the_waiting_read_as_timed_out() {
        let (conn, mut server) = connection_with(Duration::from_millis(200));
        let started = Instant::now();
        let read = tokio::spawn(async move { conn.read(0, Buffer::new(4096)).await });
        let (cookie, offset, len) = request(&mut server).await;
        // Half of the reply, then nothing: a frozen peer behind a live TCP connection.
        let reply = data_reply(cookie, offset, len);
        server.write_all(&reply[..reply.len() / 2]).await.unwrap();

        let e = read.await.unwrap().expect_err("the read fails");

        assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
        assert!(
            e.kind().is_transient(),
            "a retry on a new connection may work"
        );
        assert!(e.to_string().starts_with(DESC), "{e}");
        assert!(e.to_string().contains("no answer for 0.2 s"), "{e}");
        let waited = started.elapsed();
        assert!(waited < Duration::from_secs(5), "gave up after {waited:?}");
        drop(server);
    }

    #[tokio::test]
    async fn a_slow_server_that_keeps_sending_is_not_timed_out() {
        let (conn, mut server) = connection_with(Duration::from_millis(200));
        let read = tokio::spawn(async move { conn.read(0, Buffer::new(4096)).await });
        let (cookie, offset, len) = request(&mut server).await;
        // The reply in ten pieces 100 ms apart: a full second in all, five idle timeouts,
        // but never 200 ms without a byte.
        let reply = data_reply(cookie, offset, len);
        for piece in reply.chunks(reply.len().div_ceil(10)) {
            server.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let buf = read.await.unwrap().expect("the read succeeds");

        assert!(buf.iter().all(|&b| b == 0x5a));
    }

    #[tokio::test]
    async fn an_idle_connection_without_requests_is_not_timed_out() {
        let (conn, mut server) = connection_with(Duration::from_millis(100));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let conn = Arc::new(conn);
        let c = conn.clone();
        let read = tokio::spawn(async move { c.read(0, Buffer::new(4096)).await });
        let (cookie, offset, len) = request(&mut server).await;
        server
            .write_all(&data_reply(cookie, offset, len))
            .await
            .unwrap();

        read.await.unwrap().expect("the read succeeds");
    }
}
