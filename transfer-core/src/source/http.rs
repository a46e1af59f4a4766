//! Generic `http://` / `https://` source: a raw disk image served as a file.
//!
//! Opening probes the server: HEAD for the size, then a one-byte ranged GET. A `206` whose
//! `Content-Range` matches means parallel ranged reads (one GET per request, bounded by the
//! engine); anything else means one stream read front to back (the response of the probe is kept,
//! so the body is requested once). Every response is checked: the status, the `Content-Range`
//! of a ranged reply, and the body length — a short body or a wrong range is an error, never a
//! short disk. Compressed and non-raw bodies are refused by magic until their readers land.

use std::sync::Arc;

use async_trait::async_trait;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use crate::buffer::Buffer;
use crate::digest::Checksum;
use crate::error::{Error, ErrorKind, Result};
use crate::http::{redact, HttpClient, HttpOptions};
use crate::source::stream::{BodyStream, Codec};
use crate::source::{BlockSource, SourceCaps};

/// A parsed `Content-Range: bytes a-b/total` (total may be `*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    /// First byte.
    pub first: u64,
    /// Last byte (inclusive).
    pub last: u64,
    /// Full size, when given.
    pub total: Option<u64>,
}

/// Parses a `Content-Range` header value.
pub fn parse_content_range(v: &str) -> Option<ContentRange> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.trim().split_once('-')?;
    let (first, last) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    if last < first || total.is_some_and(|t| last >= t) {
        return None;
    }
    Some(ContentRange { first, last, total })
}

pub use crate::format::sniff as sniff_format;

/// An HTTP(S) disk image.
pub struct HttpSource {
    client: HttpClient,
    url: Url,
    size: u64,
    /// `None` when the server honours Range; otherwise the one stream.
    stream: Option<Arc<BodyStream>>,
    /// Whether the size is known (not for compressed streams, whose size shows at their end).
    size_known: bool,
    connections: usize,
    /// The body's version as the server named it (its ETag, else its Last-Modified).
    validator: Option<String>,
}

/// The next piece of a body. A transport error mid-body (hyper reports a connection that ends
/// before Content-Length as one) means fewer bytes arrived than announced: it is reported as a
/// short body with the counts, never as success.
async fn next_chunk(
    resp: &mut Response,
    url: &Url,
    offset: u64,
    got: usize,
    want: usize,
) -> Result<Option<bytes::Bytes>> {
    resp.chunk().await.map_err(|e| {
        if e.is_timeout() {
            return Error::new(
                ErrorKind::TimedOut,
                format!(
                    "{}: read at offset {offset}: the server stopped sending after {got} of {want} bytes (idle timeout)",
                    redact(url)
                ),
            );
        }
        let mut cause = String::new();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
        while let Some(c) = cur {
            cause = c.to_string();
            cur = c.source();
        }
        let mut err = short_body(url, offset, got, want);
        if !cause.is_empty() {
            err = Error::new(err.kind(), format!("{} ({cause})", err.context()));
        }
        err
    })
}

/// The version of a response's body: its entity tag, else its modification time (at most 256
/// bytes of either; a longer one is no validator a server sends for a disk image).
fn validator(resp: &Response) -> Option<String> {
    let h = resp.headers();
    let v = h
        .get(reqwest::header::ETAG)
        .map(|v| ("etag", v))
        .or_else(|| {
            h.get(reqwest::header::LAST_MODIFIED)
                .map(|v| ("last-modified", v))
        })?;
    let text = v.1.to_str().ok().filter(|t| t.len() <= 256)?;
    Some(format!("{} {text}", v.0))
}

impl HttpSource {
    /// Probes `url` and opens it. `connections` bounds the parallel ranged reads.
    pub async fn open(url: Url, opts: &HttpOptions, connections: usize) -> Result<Self> {
        HttpSource::open_checked(url, opts, connections, None).await
    }

    /// [`open`](Self::open), with the digest the body must have: the body is then read as one
    /// stream, front to back, and a copy fails at its end when the digest differs.
    pub async fn open_checked(
        url: Url,
        opts: &HttpOptions,
        connections: usize,
        checksum: Option<Checksum>,
    ) -> Result<Self> {
        let client = HttpClient::new(opts)?;
        let head_size = match client.send(Method::HEAD, &url, None).await {
            Ok((r, _)) if r.status().is_success() => content_length(&r),
            Ok(_) => None,
            Err(e) if e.kind() == ErrorKind::Connect || e.kind() == ErrorKind::Protocol => {
                return Err(e)
            }
            Err(_) => None,
        };
        // A checksum covers the body in order: read it as one stream.
        let probe = if checksum.is_some() {
            None
        } else {
            Some((0, 0))
        };
        let (resp, at) = client.send_ok(Method::GET, &url, probe).await?;
        let mut src = HttpSource {
            client,
            url,
            size: 0,
            stream: None,
            size_known: true,
            connections: connections.max(1),
            validator: validator(&resp),
        };
        if resp.status() == StatusCode::PARTIAL_CONTENT {
            let cr = resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_content_range);
            let size = match cr {
                Some(ContentRange {
                    first: 0,
                    last: 0,
                    total,
                }) => total.or(head_size),
                _ => {
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        format!(
                            "{}: 206 reply with a wrong Content-Range for bytes 0-0",
                            redact(&at)
                        ),
                    ))
                }
            };
            src.size = size.ok_or_else(|| {
                Error::new(
                    ErrorKind::Unsupported,
                    format!("{}: the server does not tell the size", redact(&at)),
                )
            })?;
            drop(resp);
            if src.size == 0 {
                return Ok(src);
            }
            let n = src.size.min(512) as usize;
            let head = src.read_at(0, Buffer::new(n)).await?;
            // An image with Range support is read through the format layer
            // (crate::format), which sees these bytes again.
            if matches!(sniff_format(&head), Some("qcow2" | "vmdk")) {
                return Ok(src);
            }
            match codec_of(&head, &src.url)? {
                Codec::Raw => return Ok(src),
                // Compressed: decode one stream front to back.
                _ => {
                    let (resp, at) = src.client.send_ok(Method::GET, &src.url, None).await?;
                    return src.into_stream(resp, &at, checksum).await;
                }
            }
        }
        src.into_stream(resp, &at, checksum).await
    }

    /// A raw body of `size` bytes (else its Content-Length) read as one stream, checked against
    /// `checksum` (Glance images are written as they are, whatever their format).
    pub(crate) async fn raw_stream(
        client: HttpClient,
        mut resp: Response,
        at: &Url,
        size: Option<u64>,
        checksum: Option<Checksum>,
    ) -> Result<Self> {
        let length = content_length(&resp).or(size);
        let size = length.ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                format!("{}: the server does not tell the size", redact(at)),
            )
        })?;
        let first = first_chunk(&mut resp, at).await?;
        let stream = BodyStream::start(resp, first, at, Some(size), Codec::Raw, checksum);
        Ok(HttpSource {
            client,
            url: at.clone(),
            size,
            stream: Some(Arc::new(stream)),
            size_known: true,
            connections: 1,
            validator: None,
        })
    }

    /// Switches to reading `resp` as one stream (raw or decoded).
    async fn into_stream(
        mut self,
        mut resp: Response,
        at: &Url,
        checksum: Option<Checksum>,
    ) -> Result<Self> {
        let length = content_length(&resp);
        let first = first_chunk(&mut resp, at).await?;
        let codec = codec_of(&first, at)?;
        if codec == Codec::Raw {
            self.size = length.ok_or_else(|| {
                Error::new(
                    ErrorKind::Unsupported,
                    format!("{}: the server does not tell the size", redact(at)),
                )
            })?;
        } else {
            self.size = 0;
            self.size_known = false;
        }
        self.stream = Some(Arc::new(BodyStream::start(
            resp, first, at, length, codec, checksum,
        )));
        Ok(self)
    }

    async fn read_range(&self, offset: u64, buf: Buffer) -> Result<Buffer> {
        let last = offset + buf.len() as u64 - 1;
        let (resp, at) = self
            .client
            .send_ok(Method::GET, &self.url, Some((offset, last)))
            .await?;
        fill_from_range_reply(resp, &at, offset, self.size, buf).await
    }
}

/// Fills `buf` from the reply to `Range: bytes=offset-(offset+len-1)` of a disk of `size` bytes,
/// checking the status (206), the `Content-Range` (exactly the range asked, of this size) and
/// the body length (neither shorter nor longer).
pub(crate) async fn fill_from_range_reply(
    mut resp: Response,
    at: &Url,
    offset: u64,
    size: u64,
    mut buf: Buffer,
) -> Result<Buffer> {
    let last = offset + buf.len() as u64 - 1;
    let header = resp
        .headers()
        .get(CONTENT_RANGE)
        .and_then(|v| v.to_str().ok());
    let ok = resp.status() == StatusCode::PARTIAL_CONTENT
        && header.and_then(parse_content_range).is_some_and(|c| {
            c.first == offset && c.last == last && c.total.is_none_or(|t| t == size)
        });
    if !ok {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!(
                "{}: reply to Range bytes={offset}-{last} has status {} and Content-Range {:?}",
                redact(at),
                resp.status().as_u16(),
                header.unwrap_or("(none)")
            ),
        ));
    }
    let mut filled = 0usize;
    while let Some(chunk) = next_chunk(&mut resp, at, offset, filled, buf.len()).await? {
        let end = filled + chunk.len();
        if end > buf.len() {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!(
                    "{}: body for bytes={offset}-{last} is longer than the range",
                    redact(at)
                ),
            ));
        }
        buf[filled..end].copy_from_slice(&chunk);
        filled = end;
    }
    if filled != buf.len() {
        return Err(short_body(at, offset, filled, buf.len()));
    }
    Ok(buf)
}

/// The first piece of a body that is about to be read as a stream (empty for an empty body).
async fn first_chunk(resp: &mut Response, at: &Url) -> Result<bytes::Bytes> {
    resp.chunk()
        .await
        .map(Option::unwrap_or_default)
        .map_err(|e| {
            Error::new(
                ErrorKind::Disconnected,
                format!("{}: reading the body failed: {e}", redact(at)),
            )
        })
}

fn short_body(url: &Url, offset: u64, got: usize, want: usize) -> Error {
    Error::new(
        ErrorKind::Disconnected,
        format!(
            "{}: body shorter than announced: got {got} of {want} bytes at offset {offset}",
            redact(url)
        ),
    )
}

pub(crate) fn content_length(r: &Response) -> Option<u64> {
    r.headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The codec of a body from its first bytes; formats that need conversion are refused.
fn codec_of(head: &[u8], url: &Url) -> Result<Codec> {
    match sniff_format(head) {
        Some("gzip") => Ok(Codec::Gzip),
        Some("xz") => Ok(Codec::Xz),
        Some("qcow2") => Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "{}: the image is qcow2, which is read with random access: the server does not honour Range",
                redact(url)
            ),
        )),
        // Other images (a stream-optimized VMDK, an OVA) are decoded front to back by the
        // format layer (crate::format).
        _ => Ok(Codec::Raw),
    }
}

#[async_trait]
impl BlockSource for HttpSource {
    fn fingerprint(&self) -> Option<String> {
        self.validator.clone()
    }

    fn describe(&self) -> String {
        redact(&self.url)
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn caps(&self) -> SourceCaps {
        match self.stream {
            Some(_) => SourceCaps::stream(self.size_known),
            None => SourceCaps {
                preferred_request: 4 << 20,
                max_request: 32 << 20,
                can_extents: false,
                max_connections: self.connections,
                max_requests: 2,
                sequential: false,
                size_known: true,
                costly_requests: false,
            },
        }
    }

    async fn read_at(&self, offset: u64, buf: Buffer) -> Result<Buffer> {
        if buf.is_empty() {
            return Ok(buf);
        }
        if self.size_known && offset + buf.len() as u64 > self.size {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("{}: read past the end", self.describe()),
            ));
        }
        match &self.stream {
            Some(s) => {
                let want = buf.len();
                let buf = s.read(offset, buf).await?;
                if self.size_known {
                    if buf.len() != want {
                        return Err(short_body(&self.url, offset, buf.len(), want));
                    }
                    if offset + want as u64 == self.size {
                        s.finish().await?;
                    }
                }
                Ok(buf)
            }
            None => self.read_range(offset, buf).await,
        }
    }

    async fn open_another(&self) -> Result<Arc<dyn BlockSource>> {
        if self.stream.is_some() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("{}: one stream only", self.describe()),
            ));
        }
        // Handles share the client, so its connection pool serves the parallel requests.
        Ok(Arc::new(HttpSource {
            client: self.client.clone(),
            url: self.url.clone(),
            size: self.size,
            stream: None,
            size_known: true,
            connections: self.connections,
            validator: self.validator.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parses_and_rejects_nonsense() {
        assert_eq!(
            parse_content_range("bytes 0-0/1024"),
            Some(ContentRange {
                first: 0,
                last: 0,
                total: Some(1024)
            })
        );
        assert_eq!(parse_content_range("bytes 10-19/*").unwrap().total, None);
        for bad in [
            "bytes 5-4/10",
            "bytes 0-10/10",
            "items 0-1/2",
            "bytes 0-1",
            "bytes a-b/c",
            "",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn formats_are_sniffed_by_magic() {
        assert_eq!(sniff_format(&[0x1f, 0x8b, 8, 0]), Some("gzip"));
        assert_eq!(sniff_format(b"\xfd7zXZ\x00rest"), Some("xz"));
        assert_eq!(sniff_format(b"QFI\xfb\x00\x00\x00\x03"), Some("qcow2"));
        assert_eq!(sniff_format(b"KDMV\x01"), Some("vmdk"));
        assert_eq!(sniff_format(&[0u8; 512]), None);
    }
}
