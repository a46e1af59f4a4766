//! A body read front to back: a pump task takes the HTTP body, hashes the bytes as received
//! (an expected checksum) and hands them on, either straight to the reader or through a gzip/xz decoder
//! on its own thread (flate2 and liblzma decode from a `Read`). The end of the body is checked:
//! a body shorter than its Content-Length or a checksum mismatch arrives as an error in place of
//! the end, so a copy can never succeed on a short or wrong stream.

use std::io::Read;
use std::thread;

use bytes::Bytes;
use reqwest::Response;
use tokio::sync::{mpsc, oneshot, Mutex};
use url::Url;

use crate::buffer::Buffer;
use crate::digest::hex;
pub use crate::digest::Checksum;
use crate::error::{Error, ErrorKind, Result};
use crate::http::redact;

/// How the body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Raw bytes.
    Raw,
    /// gzip (one or more members).
    Gzip,
    /// xz (one or more streams).
    Xz,
}

type Chunk = Result<Bytes>;

/// Moves the body into `tx`, hashing it; the end is an error when the body is short or the
/// checksum differs.
async fn pump(
    mut resp: Response,
    first: Bytes,
    url: Url,
    length: Option<u64>,
    checksum: Option<Checksum>,
    tx: mpsc::Sender<Chunk>,
) {
    let mut hasher = checksum.as_ref().map(Checksum::hasher);
    let mut total = 0u64;
    let mut next = Some(first);
    loop {
        let chunk = match next.take() {
            Some(c) => c,
            None => match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) if e.is_timeout() => {
                    let msg = format!(
                        "{}: the server stopped sending after {total} bytes (idle timeout)",
                        redact(&url)
                    );
                    let _ = tx.send(Err(Error::new(ErrorKind::TimedOut, msg))).await;
                    return;
                }
                Err(e) => {
                    let cause = std::error::Error::source(&e)
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| e.to_string());
                    let msg = format!(
                        "{}: body shorter than announced: the body ended after {total} bytes ({cause})",
                        redact(&url)
                    );
                    let _ = tx.send(Err(Error::new(ErrorKind::Disconnected, msg))).await;
                    return;
                }
            },
        };
        if chunk.is_empty() {
            continue;
        }
        total += chunk.len() as u64;
        if let Some(h) = hasher.as_mut() {
            h.update(&chunk);
        }
        if tx.send(Ok(chunk)).await.is_err() {
            return;
        }
    }
    if let Some(len) = length.filter(|&l| l != total) {
        let msg = format!(
            "{}: body shorter than announced: {total} of {len} bytes",
            redact(&url)
        );
        let _ = tx.send(Err(Error::new(ErrorKind::Disconnected, msg))).await;
        return;
    }
    if let (Some(h), Some(c)) = (hasher, checksum) {
        let got = h.finish();
        if got != c.expected {
            let msg = format!(
                "{}: checksum mismatch: expected {}:{}, received bytes have {}",
                redact(&url),
                c.algo,
                hex(&c.expected),
                hex(&got)
            );
            let _ = tx.send(Err(Error::new(ErrorKind::Mismatch, msg))).await;
        }
    }
}

/// `Read` over the pump's channel, for the decoder thread.
struct ChannelReader {
    rx: mpsc::Receiver<Chunk>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                // Carried through the decoder as the io::Error's payload, kind and all.
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = self.cur.len().min(out.len());
        out[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

type FillRequest = (Buffer, oneshot::Sender<Result<Buffer>>);

fn decoder_thread(
    codec: Codec,
    input: ChannelReader,
    requests: std::sync::mpsc::Receiver<FillRequest>,
    url: String,
) {
    let reader = std::io::BufReader::with_capacity(256 * 1024, input);
    let mut dec: Box<dyn Read> = match codec {
        Codec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Codec::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(reader)),
        Codec::Raw => Box::new(reader),
    };
    let name = match codec {
        Codec::Gzip => "gzip",
        Codec::Xz => "xz",
        Codec::Raw => "raw",
    };
    while let Ok((mut buf, reply)) = requests.recv() {
        let mut filled = 0;
        let cap = buf.len();
        let r = loop {
            if filled == cap {
                break Ok(());
            }
            match dec.read(&mut buf[filled..cap]) {
                Ok(0) => break Ok(()),
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    break Err(
                        match e.into_inner().map(|inner| inner.downcast::<Error>()) {
                            // An error of the body itself (short, checksum), passed through.
                            Some(Ok(ours)) => *ours,
                            Some(Err(other)) => Error::new(
                                ErrorKind::Protocol,
                                format!("{url}: corrupt {name} stream: {other}"),
                            ),
                            None => Error::new(
                                ErrorKind::Protocol,
                                format!("{url}: corrupt {name} stream"),
                            ),
                        },
                    );
                }
            }
        };
        buf.set_len(filled);
        let failed = r.is_err();
        let _ = reply.send(r.map(|()| buf));
        if failed {
            return;
        }
    }
}

enum Feed {
    Direct(mpsc::Receiver<Chunk>, Bytes),
    Decoded(std::sync::mpsc::Sender<FillRequest>),
}

/// A body read in order.
pub struct BodyStream {
    url: Url,
    feed: Mutex<(Feed, u64)>,
}

impl BodyStream {
    /// Starts reading `resp` (whose first chunk was already taken as `first`).
    pub fn start(
        resp: Response,
        first: Bytes,
        url: &Url,
        length: Option<u64>,
        codec: Codec,
        checksum: Option<Checksum>,
    ) -> Self {
        let (tx, rx) = mpsc::channel::<Chunk>(16);
        tokio::spawn(pump(resp, first, url.clone(), length, checksum, tx));
        let feed = match codec {
            Codec::Raw => Feed::Direct(rx, Bytes::new()),
            c => {
                let (req_tx, req_rx) = std::sync::mpsc::channel::<FillRequest>();
                let input = ChannelReader {
                    rx,
                    cur: Bytes::new(),
                };
                thread::Builder::new()
                    .name("ferry-decode".into())
                    .spawn({
                        let url = redact(url);
                        move || decoder_thread(c, input, req_rx, url)
                    })
                    .expect("spawning the decoder thread");
                Feed::Decoded(req_tx)
            }
        };
        BodyStream {
            url: url.clone(),
            feed: Mutex::new((feed, 0)),
        }
    }

    /// Fills `buf` with the bytes at `offset` (which must be where the stream is); a shorter
    /// buffer comes back only at the end of the stream. At the end, the body's length and checksum
    /// have been checked.
    pub async fn read(&self, offset: u64, mut buf: Buffer) -> Result<Buffer> {
        let mut g = self.feed.lock().await;
        let (feed, pos) = &mut *g;
        if offset != *pos {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{}: stream read at {offset}, but the stream is at {pos}",
                    redact(&self.url)
                ),
            ));
        }
        let buf = match feed {
            Feed::Direct(rx, pending) => {
                let cap = buf.len();
                let mut filled = 0;
                while filled < cap {
                    if pending.is_empty() {
                        match rx.recv().await {
                            Some(Ok(b)) => *pending = b,
                            Some(Err(e)) => return Err(e),
                            None => break,
                        }
                    }
                    let n = pending.len().min(cap - filled);
                    buf[filled..filled + n].copy_from_slice(&pending[..n]);
                    *pending = pending.slice(n..);
                    filled += n;
                }
                buf.set_len(filled);
                buf
            }
            Feed::Decoded(tx) => {
                let (rtx, rrx) = oneshot::channel();
                tx.send((buf, rtx))
                    .map_err(|_| Error::new(ErrorKind::Io, "decoder stopped"))?;
                rrx.await
                    .map_err(|_| Error::new(ErrorKind::Io, "decoder thread died"))??
            }
        };
        *pos += buf.len() as u64;
        Ok(buf)
    }

    /// After the last byte: waits for the end of the body, so that a short body or a checksum
    /// mismatch is reported; more bytes than announced are an error.
    pub async fn finish(&self) -> Result<()> {
        let mut g = self.feed.lock().await;
        let (feed, pos) = &mut *g;
        match feed {
            Feed::Direct(rx, pending) => {
                if !pending.is_empty() {
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        format!(
                            "{}: body is longer than announced ({pos} bytes)",
                            redact(&self.url)
                        ),
                    ));
                }
                match rx.recv().await {
                    None => Ok(()),
                    Some(Ok(_)) => Err(Error::new(
                        ErrorKind::Protocol,
                        format!(
                            "{}: body is longer than announced ({pos} bytes)",
                            redact(&self.url)
                        ),
                    )),
                    Some(Err(e)) => Err(e),
                }
            }
            // The decoder only reports the end after its input ended cleanly.
            Feed::Decoded(_) => Ok(()),
        }
    }
}
