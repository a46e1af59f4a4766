//! A body read front to back: a pump task takes the HTTP body, hashes the bytes as received
//! (`--checksum`) and hands them on, either straight to the reader or through a gzip/xz decoder
//! on its own thread (flate2 and liblzma decode from a `Read`). The end of the body is checked:
//! a body shorter than its Content-Length or a checksum mismatch arrives as an error in place of
//! the end, so a copy can never succeed on a short or wrong stream.

use std::io::Read;
use std::thread;

use bytes::Bytes;
use reqwest::Response;
use sha1::Digest as _;
use tokio::sync::{mpsc, oneshot, Mutex};
use url::Url;

use crate::buffer::Buffer;
use crate::error::{invalid, Error, ErrorKind, Result};
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

/// An expected digest of the received bytes: `sha256:HEX`, `sha1:`, `sha512:`, `md5:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    algo: &'static str,
    expected: Vec<u8>,
}

impl Checksum {
    /// Parses `ALGO:HEX`.
    pub fn parse(s: &str) -> Result<Self> {
        let (algo, hex) = s
            .split_once(':')
            .ok_or_else(|| invalid("invalid checksum: expected ALGO:HEX"))?;
        let (algo, len) = match algo.to_ascii_lowercase().as_str() {
            "md5" => ("md5", 16),
            "sha1" => ("sha1", 20),
            "sha256" => ("sha256", 32),
            "sha512" => ("sha512", 64),
            other => {
                return Err(invalid(format!(
                    "unknown checksum algorithm '{other}' (md5, sha1, sha256, sha512)"
                )))
            }
        };
        let hex = hex.trim();
        if hex.len() != len * 2 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(invalid(format!(
                "invalid {algo} checksum: expected {} hex digits",
                len * 2
            )));
        }
        let expected = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect();
        Ok(Checksum { algo, expected })
    }

    fn hasher(&self) -> Hasher {
        match self.algo {
            "md5" => Hasher::Md5(md5::Md5::new()),
            "sha1" => Hasher::Sha1(sha1::Sha1::new()),
            "sha256" => Hasher::Sha256(sha2::Sha256::new()),
            _ => Hasher::Sha512(sha2::Sha512::new()),
        }
    }
}

enum Hasher {
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(b),
            Hasher::Sha1(h) => h.update(b),
            Hasher::Sha256(h) => h.update(b),
            Hasher::Sha512(h) => h.update(b),
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            Hasher::Md5(h) => h.finalize().to_vec(),
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_parse_all_algorithms_and_reject_bad_input() {
        assert_eq!(
            Checksum::parse(&format!("sha256:{}", "ab".repeat(32)))
                .unwrap()
                .algo,
            "sha256"
        );
        assert_eq!(
            Checksum::parse(&format!("MD5:{}", "00".repeat(16)))
                .unwrap()
                .algo,
            "md5"
        );
        assert_eq!(
            Checksum::parse(&format!("sha1:{}", "00".repeat(20)))
                .unwrap()
                .expected
                .len(),
            20
        );
        assert_eq!(
            Checksum::parse(&format!("sha512:{}", "00".repeat(64)))
                .unwrap()
                .expected
                .len(),
            64
        );
        for bad in [
            "sha256",
            "crc:00",
            "sha256:abc",
            &format!("sha1:{}", "zz".repeat(20)),
        ] {
            assert!(Checksum::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sha256_of_abc_matches_the_known_digest() {
        let c = Checksum::parse(&format!("sha256:{}", "00".repeat(32))).unwrap();
        let mut h = c.hasher();
        h.update(b"abc");
        assert_eq!(
            hex(&h.finish()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
