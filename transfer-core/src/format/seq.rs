//! What can only be decoded front to back: [`SourceReader`] is a blocking `Read` (and, for a
//! positional source, `Seek`) view of a source, for the decoders that read from `std::io`
//! (the `tar` crate, flate2, the streamOptimized VMDK reader); [`ReadSource`] turns such a chain,
//! run on a thread of its own, back into a sequential [`BlockSource`] for the engine.
//!
//! Errors of the underlying source travel through `std::io` as the payload of an
//! `io::Error::other`, and come out as they went in (`from_io`).

use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use async_trait::async_trait;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::buffer::Buffer;
use crate::error::{Error, ErrorKind, Result};
use crate::source::{BlockSource, SourceCaps};

/// Our error carried through `std::io`.
pub(crate) fn to_io(e: Error) -> std::io::Error {
    std::io::Error::other(e)
}

/// An `io::Error` from a decoder chain: ours passed through, anything else (a decoder's own
/// complaint) as a protocol error of `what`.
pub(crate) fn from_io(e: std::io::Error, what: &str) -> Error {
    match e.into_inner().map(|inner| inner.downcast::<Error>()) {
        Some(Ok(ours)) => *ours,
        Some(Err(other)) => Error::new(ErrorKind::Damaged, format!("{what}: {other}")),
        None => Error::new(ErrorKind::Damaged, format!("{what}: corrupt data")),
    }
}

/// A blocking reader over a source, for a thread outside the runtime (`Handle::block_on`).
/// Reads ahead `chunk` bytes at a time. A sequential source is read in order and cannot seek.
pub struct SourceReader {
    src: Arc<dyn BlockSource>,
    rt: Handle,
    pos: u64,
    end: u64,
    chunk: usize,
    buf: Vec<u8>,
    buf_at: u64,
    /// Where the next read of a sequential source must start (shared with [`Drain`]).
    next_read: u64,
    shared_next: Arc<AtomicU64>,
}

/// The rest of a stream that a [`SourceReader`] stopped reading: read to its end when the disk
/// was found in front of it, so that the stream's own checks at its end (its length, a
/// `--checksum`) still run before the copy is declared done.
pub struct Drain {
    src: Arc<dyn BlockSource>,
    rt: Handle,
    next: Arc<AtomicU64>,
}

impl Drain {
    /// Reads the stream from where its reader stopped to its end (nothing for a positional
    /// source). Blocking: for the decoder thread.
    pub fn run(&self) -> Result<()> {
        let caps = self.src.caps();
        if !caps.sequential {
            return Ok(());
        }
        let mut at = self.next.load(Ordering::Relaxed);
        loop {
            let n = if caps.size_known {
                (self.src.size().saturating_sub(at)).min(1 << 20) as usize
            } else {
                1 << 20
            };
            if n == 0 {
                return Ok(());
            }
            let got = self.rt.block_on(self.src.read_at(at, Buffer::new(n)))?;
            at += got.len() as u64;
            self.next.store(at, Ordering::Relaxed);
            if got.len() < n {
                return Ok(());
            }
        }
    }
}

impl SourceReader {
    /// A reader over `src`, from offset 0, reading `chunk` bytes ahead.
    pub fn new(src: Arc<dyn BlockSource>, rt: Handle, chunk: usize) -> Self {
        let caps = src.caps();
        let end = if caps.size_known {
            src.size()
        } else {
            u64::MAX
        };
        SourceReader {
            src,
            rt,
            pos: 0,
            end,
            chunk: chunk.max(512),
            buf: Vec::new(),
            buf_at: 0,
            next_read: 0,
            shared_next: Arc::new(AtomicU64::new(0)),
        }
    }

    /// What reads the rest of the stream after this reader is done with it.
    pub fn drain(&self) -> Drain {
        Drain {
            src: self.src.clone(),
            rt: self.rt.clone(),
            next: self.shared_next.clone(),
        }
    }

    /// Where the reader is.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let sequential = self.src.caps().sequential;
        let at = if sequential { self.next_read } else { self.pos };
        if sequential && at != self.pos {
            return Err(to_io(Error::new(
                ErrorKind::Unsupported,
                format!("{} can only be read front to back", self.src.describe()),
            )));
        }
        let n = (self.end - at).min(self.chunk as u64) as usize;
        if n == 0 {
            self.buf.clear();
            self.buf_at = at;
            return Ok(());
        }
        let got = self
            .rt
            .block_on(self.src.read_at(at, Buffer::new(n)))
            .map_err(to_io)?;
        self.buf.clear();
        self.buf.extend_from_slice(got.as_slice());
        self.buf_at = at;
        self.next_read = at + self.buf.len() as u64;
        self.shared_next.store(self.next_read, Ordering::Relaxed);
        if self.buf.len() < n {
            // A stream of unknown size ended.
            self.end = self.next_read;
        }
        Ok(())
    }
}

impl Read for SourceReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if out.is_empty() || self.pos >= self.end {
            return Ok(0);
        }
        let buffered = self.pos >= self.buf_at && self.pos < self.buf_at + self.buf.len() as u64;
        if !buffered {
            self.fill()?;
            if self.buf.is_empty() {
                return Ok(0);
            }
        }
        let from = (self.pos - self.buf_at) as usize;
        let n = (self.buf.len() - from).min(out.len());
        out[..n].copy_from_slice(&self.buf[from..from + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for SourceReader {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self
                .src
                .caps()
                .size_known
                .then(|| self.src.size().checked_add_signed(d))
                .flatten(),
        };
        let target = target.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek out of range")
        })?;
        if self.src.caps().sequential && target < self.pos {
            return Err(to_io(Error::new(
                ErrorKind::Unsupported,
                format!("{} can only be read front to back", self.src.describe()),
            )));
        }
        if self.src.caps().sequential {
            // Forward over a stream: read and drop.
            let n = target - self.pos;
            std::io::copy(&mut self.by_ref().take(n), &mut std::io::sink())?;
            return Ok(self.pos);
        }
        self.pos = target.min(self.end);
        Ok(self.pos)
    }
}

type FillRequest = (Buffer, oneshot::Sender<Result<Buffer>>);
/// Where the decoder thread says the disk's size (or why it has none).
type Ready = Arc<Mutex<Option<oneshot::Sender<Result<Option<u64>>>>>>;

/// The thread side of a [`ReadSource`]: what the setup closure calls once its reader is ready.
pub struct Serve {
    ready: Ready,
    requests: std::sync::mpsc::Receiver<FillRequest>,
    what: String,
}

impl Serve {
    /// Announces a disk of `size` bytes (`None`: known at its end, as for a decompressed
    /// stream) and fills the engine's buffers from `r` until the engine stops asking. A read
    /// error is handed to the request that met it. Before the request that completes the disk
    /// is answered, `rest` reads what follows it in the underlying stream.
    pub fn serve(self, r: &mut dyn Read, size: Option<u64>, rest: Option<Drain>) {
        let mut delivered = 0u64;
        if let Some(tx) = self.ready.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = tx.send(Ok(size));
        }
        while let Ok((mut buf, reply)) = self.requests.recv() {
            let cap = buf.len();
            let mut filled = 0;
            let result = loop {
                if filled == cap {
                    break Ok(());
                }
                match r.read(&mut buf[filled..cap]) {
                    Ok(0) => break Ok(()),
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(from_io(e, &self.what)),
                }
            };
            buf.set_len(filled);
            delivered += filled as u64;
            let result = match (&result, size, &rest) {
                (Ok(()), Some(s), Some(d)) if delivered >= s => d.run(),
                _ => result,
            };
            let failed = result.is_err();
            let _ = reply.send(result.map(|()| buf));
            if failed {
                return;
            }
        }
    }
}

/// A disk decoded front to back by a chain of `Read`s on a thread of its own.
pub struct ReadSource {
    desc: String,
    size: Option<u64>,
    requests: Mutex<std::sync::mpsc::Sender<FillRequest>>,
    pos: tokio::sync::Mutex<u64>,
}

impl ReadSource {
    /// Runs `setup` on a new thread; it builds its reader chain (which may borrow from what it
    /// owns there) and calls [`Serve::serve`]. An error before that fails the open.
    pub async fn start<F>(desc: String, setup: F) -> Result<ReadSource>
    where
        F: FnOnce(Serve) -> Result<()> + Send + 'static,
    {
        let (ready_tx, ready_rx) = oneshot::channel();
        let (req_tx, req_rx) = std::sync::mpsc::channel::<FillRequest>();
        let ready: Ready = Arc::new(Mutex::new(Some(ready_tx)));
        let serve = Serve {
            ready: ready.clone(),
            requests: req_rx,
            what: desc.clone(),
        };
        thread::Builder::new()
            .name("ferry-format".into())
            .spawn(move || {
                let r = setup(serve);
                let tx = ready.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(tx) = tx {
                    let _ = tx.send(r.and_then(|()| {
                        Err(Error::new(
                            ErrorKind::Damaged,
                            "no disk found in the stream",
                        ))
                    }));
                }
            })
            .map_err(|e| Error::io("starting the format decoder thread", e))?;
        let size = ready_rx
            .await
            .map_err(|_| Error::new(ErrorKind::Io, format!("{desc}: decoder thread died")))??;
        Ok(ReadSource {
            desc,
            size,
            requests: Mutex::new(req_tx),
            pos: tokio::sync::Mutex::new(0),
        })
    }
}

#[async_trait]
impl BlockSource for ReadSource {
    fn describe(&self) -> String {
        self.desc.clone()
    }

    fn size(&self) -> u64 {
        self.size.unwrap_or(0)
    }

    fn caps(&self) -> SourceCaps {
        SourceCaps::stream(self.size.is_some())
    }

    async fn read_at(&self, offset: u64, buf: Buffer) -> Result<Buffer> {
        let mut pos = self.pos.lock().await;
        if offset != *pos {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{}: read at {offset}, but the stream is at {pos}",
                    self.desc
                ),
            ));
        }
        let want = buf.len();
        let (tx, rx) = oneshot::channel();
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((buf, tx))
            .map_err(|_| Error::new(ErrorKind::Io, format!("{}: decoder stopped", self.desc)))?;
        let buf = rx.await.map_err(|_| {
            Error::new(ErrorKind::Io, format!("{}: decoder thread died", self.desc))
        })??;
        if let (true, Some(size)) = (buf.len() < want, self.size) {
            return Err(Error::new(
                ErrorKind::Damaged,
                format!(
                    "{}: the image ends at {} of {} bytes: truncated?",
                    self.desc,
                    offset + buf.len() as u64,
                    size
                ),
            ));
        }
        *pos += buf.len() as u64;
        Ok(buf)
    }

    async fn open_another(&self) -> Result<Arc<dyn BlockSource>> {
        Err(Error::new(
            ErrorKind::Unsupported,
            format!("{}: one stream only", self.desc),
        ))
    }
}
