//! oVirt imageio source: `http(s)://host:54322/images/TICKET`.
//!
//! Opening asks `OPTIONS /images/TICKET` for the features and `max_readers`, then, when the
//! server has the `extents` feature, reads `GET /images/TICKET/extents?context=zero` once: the
//! list covers the whole image (imageio has no per-range query), gives the size, and answers
//! every later [`BlockSource::extents`] call from memory, so zero and hole ranges are never
//! downloaded. Without the feature the size comes from a one-byte ranged GET and everything is
//! data. Reads are ranged GETs whose status (206), `Content-Range` and body length are checked.
//! A 403 means the ticket is unknown, expired or cancelled, and says so in one line.
//!
//! Dirty extents for warm migration come from `?context=dirty` ([`ImageioSource::dirty_extents`]).
//!
//! When the daemon offers its local Unix socket (`unix_socket` in the OPTIONS answer) and runs on
//! this host (the TCP peer's address is one of ours, as imageio's own client checks), every later
//! request goes over that socket as plain HTTP: no TLS and no TCP on the data path. The switch is
//! made only after `OPTIONS` for the same ticket succeeds over the socket; otherwise the source
//! stays on HTTP(S) and logs why.
//!
//! The JSON answers are parsed by pure functions ([`parse_options`], [`parse_zero_extents`],
//! [`parse_dirty_extents`]) that check every field and the ordering.

use std::sync::Arc;

use async_trait::async_trait;
use reqwest::header::CONTENT_RANGE;
use reqwest::{Method, Response, StatusCode};
use serde_json::Value;
use tokio::sync::OnceCell;
use url::Url;

use crate::buffer::Buffer;
use crate::error::{Error, ErrorKind, Result};
use crate::extent::{clip, Extent, ExtentKind};
use crate::http::{read_bounded, read_within, redact, HttpClient, HttpOptions, MAX_ANSWER};
use crate::source::http::{fill_from_range_reply, parse_content_range, ContentRange};
use crate::source::{BlockSource, ChangeTracking, SourceCaps};

/// What `OPTIONS /images/TICKET` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageioOptions {
    /// Features (`extents`, `zero`, `flush`, `checksum`, ...).
    pub features: Vec<String>,
    /// How many parallel readers the ticket allows (1 when not given, as old daemons do).
    pub max_readers: usize,
    /// The daemon's local socket (`\0/org/ovirt/imageio` by default: an abstract socket).
    pub unix_socket: Option<String>,
}

impl ImageioOptions {
    /// True when the server lists `name`.
    pub fn has(&self, name: &str) -> bool {
        self.features.iter().any(|f| f == name)
    }
}

fn parse_json(body: &[u8], what: &str) -> Result<Value> {
    serde_json::from_slice(body)
        .map_err(|e| ErrorKind::Protocol.about(what, format!("not JSON ({e})")))
}

/// Parses the JSON answer of `OPTIONS /images/TICKET`.
pub fn parse_options(body: &[u8]) -> Result<ImageioOptions> {
    const WHAT: &str = "imageio OPTIONS answer";
    let v = parse_json(body, WHAT)?;
    let obj = v
        .as_object()
        .ok_or_else(|| ErrorKind::Protocol.about(WHAT, "not an object"))?;
    let features = match obj.get("features") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|f| {
                f.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| ErrorKind::Protocol.about(WHAT, "a feature is not a string"))
            })
            .collect::<Result<_>>()?,
        Some(_) => return Err(ErrorKind::Protocol.about(WHAT, "'features' is not a list")),
    };
    let max_readers = match obj.get("max_readers") {
        None => 1,
        Some(n) => match n.as_u64() {
            Some(n) if n >= 1 => usize::try_from(n).unwrap_or(usize::MAX),
            _ => return Err(ErrorKind::Protocol.about(WHAT, format!("invalid max_readers {n}"))),
        },
    };
    let unix_socket = match obj.get("unix_socket") {
        None | Some(Value::Null) => None,
        // sun_path holds 108 bytes; an abstract name has no terminator.
        Some(Value::String(p))
            if !p.is_empty() && p.len() <= 107 && !p.as_bytes()[1..].contains(&0) =>
        {
            Some(p.clone())
        }
        Some(_) => return Err(ErrorKind::Protocol.about(WHAT, "invalid unix_socket")),
    };
    Ok(ImageioOptions {
        features,
        max_readers,
        unix_socket,
    })
}

fn field_u64(e: &serde_json::Map<String, Value>, key: &str, what: &str, i: usize) -> Result<u64> {
    e.get(key).and_then(Value::as_u64).ok_or_else(|| {
        ErrorKind::Protocol.about(
            what,
            format!("entry {i}: '{key}' missing or not an integer"),
        )
    })
}

fn field_bool(
    e: &serde_json::Map<String, Value>,
    key: &str,
    what: &str,
    i: usize,
) -> Result<Option<bool>> {
    match e.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => {
            Err(ErrorKind::Protocol.about(what, format!("entry {i}: '{key}' is not a boolean")))
        }
    }
}

/// One entry of an extent list: start, length and the whole object.
type Entry<'a> = (u64, u64, &'a serde_json::Map<String, Value>);

/// The entries of an extent list as `(start, length, object)`, checked to be non-empty ranges
/// without overflow, each starting where the previous one ended (the first at 0).
fn entries<'a>(v: &'a Value, what: &str) -> Result<Vec<Entry<'a>>> {
    let list = v
        .as_array()
        .ok_or_else(|| ErrorKind::Protocol.about(what, "not a list"))?;
    let mut out = Vec::with_capacity(list.len());
    let mut pos = 0u64;
    for (i, e) in list.iter().enumerate() {
        let e = e.as_object().ok_or_else(|| {
            ErrorKind::Protocol.about(what, format!("entry {i} is not an object"))
        })?;
        let start = field_u64(e, "start", what, i)?;
        let length = field_u64(e, "length", what, i)?;
        if length == 0 {
            return Err(ErrorKind::Protocol.about(what, format!("entry {i} has length 0")));
        }
        if start != pos {
            return Err(ErrorKind::Protocol.about(
                what,
                format!("entry {i} starts at {start}, expected {pos} (unsorted, overlapping or with a gap)"),
            ));
        }
        pos = start
            .checked_add(length)
            .ok_or_else(|| ErrorKind::Protocol.about(what, format!("entry {i} overflows")))?;
        out.push((start, length, e));
    }
    Ok(out)
}

/// Parses `GET /images/TICKET/extents?context=zero`: `[{start, length, zero, hole}]`, sorted
/// and contiguous from 0. `zero` is required; a missing `hole` means allocated. Zero ranges
/// become [`ExtentKind::Hole`] when `hole` is true, [`ExtentKind::Zero`] otherwise.
pub fn parse_zero_extents(body: &[u8]) -> Result<Vec<Extent>> {
    const WHAT: &str = "imageio zero extents";
    let v = parse_json(body, WHAT)?;
    entries(&v, WHAT)?
        .into_iter()
        .enumerate()
        .map(|(i, (start, length, e))| {
            let zero = field_bool(e, "zero", WHAT, i)?.ok_or_else(|| {
                ErrorKind::Protocol.about(WHAT, format!("entry {i}: 'zero' missing"))
            })?;
            let hole = field_bool(e, "hole", WHAT, i)?.unwrap_or(false);
            let kind = match (zero, hole) {
                (false, _) => ExtentKind::Data,
                (true, false) => ExtentKind::Zero,
                (true, true) => ExtentKind::Hole,
            };
            Ok(Extent::new(start, length, kind))
        })
        .collect()
}

/// Parses `GET /images/TICKET/extents?context=dirty` of an image of `size` bytes:
/// `[{start, length, dirty, zero}]` (a missing `zero` means data). Returns the dirty byte ranges
/// `(offset, length)`, sorted and merged. An unsorted, overlapping or out-of-bounds list is a
/// protocol error.
pub fn parse_dirty_extents(body: &[u8], size: u64) -> Result<Vec<(u64, u64)>> {
    const WHAT: &str = "imageio dirty extents";
    let v = parse_json(body, WHAT)?;
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (i, (start, length, e)) in entries(&v, WHAT)?.into_iter().enumerate() {
        if start + length > size {
            return Err(ErrorKind::Protocol.about(
                WHAT,
                format!(
                    "entry {i} ends at {} past the image size {size}",
                    start + length
                ),
            ));
        }
        let dirty = field_bool(e, "dirty", WHAT, i)?.ok_or_else(|| {
            ErrorKind::Protocol.about(WHAT, format!("entry {i}: 'dirty' missing"))
        })?;
        field_bool(e, "zero", WHAT, i)?;
        if !dirty {
            continue;
        }
        match out.last_mut() {
            Some((o, l)) if *o + *l == start => *l += length,
            _ => out.push((start, length)),
        }
    }
    Ok(out)
}

/// Whether an address is one of this host's: binding a socket to it succeeds only then.
fn is_local_address(ip: std::net::IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// How an imageio source reaches the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// The local Unix socket when the daemon offers it and runs on this host, else HTTP(S).
    #[default]
    Auto,
    /// HTTP(S) only.
    Tcp,
}

impl std::str::FromStr for Transport {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Transport::Auto),
            "tcp" => Ok(Transport::Tcp),
            _ => Err(Error::new(
                ErrorKind::InvalidInput,
                format!("unknown imageio transport '{s}' (auto, tcp)"),
            )),
        }
    }
}

/// An oVirt imageio ticket, read over HTTP(S) or the daemon's local socket.
pub struct ImageioSource {
    client: HttpClient,
    /// What requests are sent to: the ticket URL, or `http://localhost/images/TICKET` over the
    /// local socket.
    url: Url,
    /// The ticket URL as given (for messages).
    public_url: Url,
    /// The local socket in use, if any.
    local_socket: Option<String>,
    size: u64,
    options: ImageioOptions,
    connections: usize,
    /// The whole-image zero extent list, read once and shared by every handle.
    extents: Arc<OnceCell<Vec<Extent>>>,
}

/// `text` (a server's explanation, which names the ticket: "No such ticket X") without the
/// ticket id of `url`: the id is a bearer capability and stays out of messages.
fn without_ticket(text: &str, url: &Url) -> String {
    match url
        .path()
        .strip_prefix("/images/")
        .map(|r| r.split('/').next().unwrap_or(""))
    {
        Some(id) if !id.is_empty() => text.replace(id, "[ticket]"),
        _ => text.to_owned(),
    }
}

impl ImageioSource {
    /// Opens the ticket URL `url` (`.../images/TICKET`); `connections` bounds the parallel
    /// readers together with the ticket's `max_readers`. Uses the local socket when it can.
    pub async fn open(url: Url, opts: &HttpOptions, connections: usize) -> Result<Self> {
        ImageioSource::open_with(url, opts, connections, Transport::Auto).await
    }

    /// [`open`](Self::open) with a choice of transport.
    pub async fn open_with(
        url: Url,
        opts: &HttpOptions,
        connections: usize,
        transport: Transport,
    ) -> Result<Self> {
        let client = HttpClient::new(opts)?;
        let mut url = url;
        if url.path().ends_with('/') {
            let p = url.path().trim_end_matches('/').to_owned();
            url.set_path(&p);
        }
        let mut src = ImageioSource {
            client,
            public_url: url.clone(),
            url,
            local_socket: None,
            size: 0,
            options: ImageioOptions {
                features: Vec::new(),
                max_readers: 1,
                unix_socket: None,
            },
            connections: connections.max(1),
            extents: Arc::new(OnceCell::new()),
        };
        let (resp, at) = src.request(Method::OPTIONS, &src.url, None).await?;
        let peer = resp.remote_addr();
        let body = read_bounded(resp, &at, MAX_ANSWER).await?;
        src.options = parse_options(&body).map_err(|e| e.context_prefix(src.describe()))?;
        if transport == Transport::Auto {
            if let Some(path) = src.options.unix_socket.clone() {
                if peer.is_some_and(|p| is_local_address(p.ip())) {
                    src.switch_to_local(opts, &path).await;
                }
            }
        }
        match src.read_zero_extents().await? {
            Some(list) => {
                src.size = list.last().map_or(0, Extent::end);
                let _ = src.extents.set(list);
            }
            None => src.size = src.probe_size().await?,
        }
        Ok(src)
    }

    /// Moves every later request to the daemon's local socket `path`, if `OPTIONS` for the
    /// ticket succeeds there; otherwise stays on HTTP(S) and says why.
    async fn switch_to_local(&mut self, opts: &HttpOptions, path: &str) {
        let shown = path.replace('\0', "@");
        match self.try_local(opts, path).await {
            Ok(()) => {
                tracing::debug!(socket = %shown, "imageio: using the daemon's local socket");
                self.local_socket = Some(shown);
            }
            Err(e) => tracing::warn!(
                socket = %shown,
                "imageio: cannot use the daemon's local socket, staying on HTTP(S): {e}"
            ),
        }
    }

    /// Points the source at the local socket `path` and asks `OPTIONS` there with the source's
    /// own request checks; puts HTTP(S) back when that fails.
    async fn try_local(&mut self, opts: &HttpOptions, path: &str) -> Result<()> {
        let client = HttpClient::unix(opts, std::path::Path::new(path))?;
        let mut url = Url::parse("http://localhost/").expect("a valid URL");
        url.set_path(self.public_url.path());
        let tcp_client = std::mem::replace(&mut self.client, client);
        let tcp_url = std::mem::replace(&mut self.url, url.clone());
        let probe = self.get_body(Method::OPTIONS, &url).await;
        let result = probe.and_then(|(body, _)| parse_options(&body)).map(drop);
        if result.is_err() {
            self.client = tcp_client;
            self.url = tcp_url;
        }
        result
    }

    /// The local socket the source reads through (`@` standing for a leading NUL), if any.
    pub fn local_socket(&self) -> Option<&str> {
        self.local_socket.as_deref()
    }

    /// [`open`](Self::open) for a URI string (`http(s)://` or `imageio+http(s)://`).
    pub async fn open_uri(uri: &str, opts: &HttpOptions, connections: usize) -> Result<Self> {
        let plain = uri.strip_prefix("imageio+").unwrap_or(uri);
        let url = Url::parse(plain)
            .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("invalid source URI: {e}")))?;
        ImageioSource::open(url, opts, connections).await
    }

    /// The answer of `OPTIONS`.
    pub fn options(&self) -> &ImageioOptions {
        &self.options
    }

    /// Dirty byte ranges `(offset, length)` of the ticket (`?context=dirty`): sorted, merged
    /// and within the image. Needs a ticket created with `"dirty": true` on an NBD export with
    /// a dirty bitmap. A list larger than [`MAX_ANSWER`] is left unread, with a warning, and
    /// the whole image counts as changed: slower, never wrong.
    pub async fn dirty_extents(&self) -> Result<Vec<(u64, u64)>> {
        let Some((body, at)) = self
            .extents_body("dirty", "copying the whole image")
            .await?
        else {
            return Ok(vec![(0, self.size)]
                .into_iter()
                .filter(|r| r.1 > 0)
                .collect());
        };
        parse_dirty_extents(&body, self.size).map_err(|e| e.context_prefix(redact(&at)))
    }

    /// The answer to `GET .../extents?context=CONTEXT` and where it came from; `None`, with a
    /// warning that says `instead`, when it is larger than [`MAX_ANSWER`].
    async fn extents_body(&self, context: &str, instead: &str) -> Result<Option<(Vec<u8>, Url)>> {
        let url = self.extents_url(context);
        let (resp, at) = self.request(Method::GET, &url, None).await?;
        let body = read_within(resp, &at, MAX_ANSWER).await?;
        if body.is_none() {
            tracing::warn!(
                "{}: the {context} extents are larger than {} MiB: {instead}",
                redact(&at),
                MAX_ANSWER >> 20
            );
        }
        Ok(body.map(|b| (b, at)))
    }

    fn extents_url(&self, context: &str) -> Url {
        let mut u = self.url.clone();
        let p = format!("{}/extents", u.path());
        u.set_path(&p);
        u.set_query(Some(&format!("context={context}")));
        u
    }

    /// The zero extents, when the daemon has the `extents` feature and their list fits in
    /// [`MAX_ANSWER`]; a larger list (a large, fragmented disk) is left unread, with a warning:
    /// every byte is then read as data (zeros are still found in the buffers).
    async fn read_zero_extents(&self) -> Result<Option<Vec<Extent>>> {
        if !self.options.has("extents") {
            return Ok(None);
        }
        let Some((body, at)) = self
            .extents_body("zero", "reading every byte as data")
            .await?
        else {
            return Ok(None);
        };
        parse_zero_extents(&body)
            .map(Some)
            .map_err(|e| e.context_prefix(redact(&at)))
    }

    /// The size from the `Content-Range` total of a one-byte ranged GET.
    async fn probe_size(&self) -> Result<u64> {
        let (resp, at) = self.request(Method::GET, &self.url, Some((0, 0))).await?;
        let cr = content_range(&resp);
        match (resp.status(), cr) {
            (
                StatusCode::PARTIAL_CONTENT,
                Some(ContentRange {
                    first: 0,
                    last: 0,
                    total: Some(t),
                }),
            ) => Ok(t),
            (st, _) => Err(Error::new(
                ErrorKind::Protocol,
                format!(
                    "{}: the server does not tell the size (status {} to Range bytes=0-0)",
                    redact(&at),
                    st.as_u16()
                ),
            )),
        }
    }

    /// Sends a request; any status but success is an error, 403 one about the ticket.
    async fn request(
        &self,
        method: Method,
        url: &Url,
        range: Option<(u64, u64)>,
    ) -> Result<(Response, Url)> {
        let (resp, at) = self.client.send(method.clone(), url, range).await?;
        // Over the local socket the URL is `http://localhost/...`: messages name the ticket URL.
        let at = if self.local_socket.is_some() {
            self.public_url.clone()
        } else {
            at
        };
        let st = resp.status();
        if st.is_success() {
            return Ok((resp, at));
        }
        // imageio explains a refusal in a short text body ("No such ticket X",
        // "Transfer=X expired"): keep its first line, bounded.
        let why = crate::http::read_excerpt(resp).await;
        let why = why
            .lines()
            .next()
            .map(|l| without_ticket(l, &self.public_url))
            .map(|l| crate::error::peer_text(&l))
            .filter(|l| !l.is_empty())
            .map(|l| format!(" ({l})"))
            .unwrap_or_default();
        let (kind, what) = match st {
            StatusCode::FORBIDDEN => (
                ErrorKind::NotFound,
                "the ticket is unknown, expired or cancelled".to_owned(),
            ),
            StatusCode::NOT_FOUND => (ErrorKind::NotFound, "not found".to_owned()),
            _ => (
                ErrorKind::Server,
                st.canonical_reason().unwrap_or("error").to_owned(),
            ),
        };
        Err(Error::new(
            kind,
            format!(
                "{}: {method} answered HTTP {}: {what}{why}",
                redact(&at),
                st.as_u16()
            ),
        ))
    }

    /// The whole (bounded) body of a successful request.
    async fn get_body(&self, method: Method, url: &Url) -> Result<(Vec<u8>, Url)> {
        let (resp, at) = self.request(method, url, None).await?;
        let body = read_bounded(resp, &at, MAX_ANSWER).await?;
        Ok((body, at))
    }

    async fn read_range(&self, offset: u64, buf: Buffer) -> Result<Buffer> {
        let last = offset + buf.len() as u64 - 1;
        let (resp, at) = self
            .request(Method::GET, &self.url, Some((offset, last)))
            .await?;
        fill_from_range_reply(resp, &at, offset, self.size, buf).await
    }
}

fn content_range(resp: &Response) -> Option<ContentRange> {
    resp.headers()
        .get(CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_content_range)
}

#[async_trait]
impl BlockSource for ImageioSource {
    fn describe(&self) -> String {
        redact(&self.public_url)
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn caps(&self) -> SourceCaps {
        SourceCaps {
            preferred_request: 4 << 20,
            max_request: 8 << 20,
            can_extents: self.extents.get().is_some(),
            max_connections: self.connections.min(self.options.max_readers).max(1),
            // One request per handle: imageio serves each HTTP connection with its own backend
            // connection (an NBD client for nbd tickets, bounded by qemu-nbd's -e), so the
            // number of HTTP connections must stay within max_readers.
            max_requests: 1,
            sequential: false,
            size_known: true,
            // Each request is an HTTP round trip, and the daemon records every range it served
            // (for a read-only ticket, in a list it merges again after each request).
            costly_requests: true,
        }
    }

    async fn read_at(&self, offset: u64, buf: Buffer) -> Result<Buffer> {
        if buf.is_empty() {
            return Ok(buf);
        }
        if offset + buf.len() as u64 > self.size {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("{}: read past the end", self.describe()),
            ));
        }
        self.read_range(offset, buf).await
    }

    async fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        match self.extents.get() {
            Some(list) => Ok(clip(list, offset, len)),
            None => Ok(vec![Extent::new(offset, len, ExtentKind::Data)]),
        }
    }

    async fn open_another(&self) -> Result<Arc<dyn BlockSource>> {
        Ok(Arc::new(self.another()))
    }

    fn changes(&self) -> Option<Arc<dyn ChangeTracking>> {
        Some(Arc::new(DirtyExtents(self.another())))
    }
}

impl ImageioSource {
    /// Another handle: handles share the client (its connection pool) and the extent list.
    fn another(&self) -> ImageioSource {
        ImageioSource {
            client: self.client.clone(),
            url: self.url.clone(),
            public_url: self.public_url.clone(),
            local_socket: self.local_socket.clone(),
            size: self.size,
            options: self.options.clone(),
            connections: self.connections,
            extents: self.extents.clone(),
        }
    }
}

/// The ticket's dirty extents (a ticket created with `"dirty": true`) as a delta's changes.
struct DirtyExtents(ImageioSource);

#[async_trait]
impl ChangeTracking for DirtyExtents {
    async fn changed_ranges(&self) -> Result<Vec<(u64, u64)>> {
        self.0.dirty_extents().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_give_features_and_max_readers() {
        let o = parse_options(
            br#"{"features": ["checksum", "extents"], "max_readers": 8, "max_writers": 1}"#,
        )
        .unwrap();
        assert!(o.has("extents") && !o.has("zero"));
        assert_eq!(o.max_readers, 8);
        assert_eq!(parse_options(b"{}").unwrap().max_readers, 1);
        assert_eq!(parse_options(b"{}").unwrap().unix_socket, None);
    }

    #[test]
    fn options_give_the_local_socket_abstract_or_path() {
        let o = parse_options(br#"{"unix_socket": "\u0000/org/ovirt/imageio"}"#).unwrap();
        assert_eq!(o.unix_socket.as_deref(), Some("\0/org/ovirt/imageio"));
        let o = parse_options(br#"{"unix_socket": "/run/imageio.sock"}"#).unwrap();
        assert_eq!(o.unix_socket.as_deref(), Some("/run/imageio.sock"));
    }

    #[test]
    fn loopback_and_own_addresses_are_local_others_not() {
        assert!(is_local_address("127.0.0.1".parse().unwrap()));
        assert!(is_local_address("::1".parse().unwrap()));
        // TEST-NET-3: never assigned to a host.
        assert!(!is_local_address("203.0.113.7".parse().unwrap()));
    }

    #[test]
    fn malformed_options_are_protocol_errors() {
        for body in [
            &b"not json"[..],
            b"[]",
            br#"{"features": "extents"}"#,
            br#"{"features": [1]}"#,
            br#"{"max_readers": 0}"#,
            br#"{"max_readers": -1}"#,
            br#"{"max_readers": "8"}"#,
            br#"{"unix_socket": ""}"#,
            br#"{"unix_socket": 1}"#,
            br#"{"unix_socket": "\u00e9\u0000x"}"#,
            br#"{"unix_socket": "/a\u0000b"}"#,
        ] {
            let e = parse_options(body).unwrap_err();
            assert_eq!(
                e.kind(),
                ErrorKind::Protocol,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn zero_extents_map_to_data_zero_and_hole() {
        let l = parse_zero_extents(
            br#"[{"start": 0, "length": 4096, "zero": false, "hole": false},
                 {"start": 4096, "length": 8192, "zero": true, "hole": false},
                 {"start": 12288, "length": 4096, "zero": true, "hole": true},
                 {"start": 16384, "length": 100, "zero": false}]"#,
        )
        .unwrap();
        assert_eq!(
            l,
            vec![
                Extent::new(0, 4096, ExtentKind::Data),
                Extent::new(4096, 8192, ExtentKind::Zero),
                Extent::new(12288, 4096, ExtentKind::Hole),
                Extent::new(16384, 100, ExtentKind::Data),
            ]
        );
        assert!(parse_zero_extents(b"[]").unwrap().is_empty());
    }

    #[test]
    fn malformed_zero_extents_are_protocol_errors() {
        for body in [
            &b"{}"[..],
            b"[1]",
            br#"[{"start": 0, "length": 10}]"#,
            br#"[{"start": 0, "length": 10, "zero": "no"}]"#,
            br#"[{"start": 0, "length": 0, "zero": false}]"#,
            br#"[{"start": 5, "length": 10, "zero": false}]"#,
            br#"[{"start": 0, "length": 10, "zero": false}, {"start": 5, "length": 10, "zero": true}]"#,
            br#"[{"start": 0, "length": 10, "zero": false}, {"start": 20, "length": 10, "zero": true}]"#,
            br#"[{"start": 0, "length": 18446744073709551615, "zero": false}, {"start": 18446744073709551615, "length": 2, "zero": false}]"#,
            br#"[{"start": -1, "length": 10, "zero": false}]"#,
            br#"[{"start": 0, "length": 1.5, "zero": false}]"#,
        ] {
            let e = parse_zero_extents(body).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Protocol, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn dirty_extents_are_merged_and_missing_zero_means_data() {
        let d = parse_dirty_extents(
            br#"[{"start": 0, "length": 100, "dirty": true, "zero": false},
                 {"start": 100, "length": 50, "dirty": true},
                 {"start": 150, "length": 50, "dirty": false, "zero": true},
                 {"start": 200, "length": 56, "dirty": true, "zero": true}]"#,
            256,
        )
        .unwrap();
        assert_eq!(d, vec![(0, 150), (200, 56)]);
        assert!(parse_dirty_extents(b"[]", 0).unwrap().is_empty());
    }

    #[test]
    fn malformed_dirty_extents_are_protocol_errors() {
        for body in [
            &br#"[{"start": 0, "length": 300, "dirty": true}]"#[..],
            br#"[{"start": 0, "length": 100, "dirty": true}, {"start": 50, "length": 100, "dirty": true}]"#,
            br#"[{"start": 100, "length": 100, "dirty": true}, {"start": 0, "length": 100, "dirty": true}]"#,
            br#"[{"start": 0, "length": 100}]"#,
            br#"[{"start": 0, "length": 100, "dirty": 1}]"#,
            br#"[{"start": 0, "length": 100, "dirty": true, "zero": "yes"}]"#,
            b"[",
        ] {
            let e = parse_dirty_extents(body, 256).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Protocol, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn extents_are_answered_per_range_from_the_list() {
        let list = vec![
            Extent::new(0, 100, ExtentKind::Data),
            Extent::new(100, 100, ExtentKind::Zero),
            Extent::new(200, 100, ExtentKind::Hole),
        ];
        assert_eq!(
            clip(&list, 150, 100),
            vec![
                Extent::new(150, 50, ExtentKind::Zero),
                Extent::new(200, 50, ExtentKind::Hole),
            ]
        );
        assert_eq!(
            clip(&list, 0, 100),
            vec![Extent::new(0, 100, ExtentKind::Data)]
        );
        assert!(clip(&list, 300, 10).is_empty());
    }
}
