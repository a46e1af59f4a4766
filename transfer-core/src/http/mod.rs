//! The shared HTTP layer (reqwest on hyper + rustls): TLS trust, extra headers, proxies from
//! `http_proxy`/`https_proxy`/`no_proxy`, bounded redirects that never carry the user's headers
//! (tokens, credentials) to another origin, and one-line errors that never include header values.

pub mod tls;

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, LOCATION, RANGE};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use crate::error::{invalid, Error, ErrorKind, Result};
pub use tls::{Thumbprint, TlsTrust};

/// Largest answer [`read_bounded`] takes by default (API answers: catalogs, extents lists).
pub const MAX_ANSWER: usize = 64 << 20;

/// Reads a whole response body of at most `limit` bytes (API answers, never disk data): a
/// longer or broken body is an error naming `at`.
pub async fn read_bounded(resp: Response, at: &Url, limit: usize) -> Result<Vec<u8>> {
    read_within(resp, at, limit).await?.ok_or_else(|| {
        Error::new(
            ErrorKind::Protocol,
            format!("{}: answer larger than {} MiB", redact(at), limit >> 20),
        )
    })
}

/// [`read_bounded`], but a body longer than `limit` is `Ok(None)` (read no further), for a
/// caller that has a way around a large answer.
pub async fn read_within(mut resp: Response, at: &Url, limit: usize) -> Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| {
        Error::new(
            ErrorKind::Disconnected,
            format!("{}: reading the answer: {e}", redact(at)),
        )
    })? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// The start of an error answer's body (at most 4 KiB, read no further, lossy UTF-8), for the
/// reason a server gives; pass it through [`crate::error::peer_text`] before it goes into a
/// message. A broken body gives what arrived.
pub async fn read_excerpt(mut resp: Response) -> String {
    const LIMIT: usize = 4096;
    let mut body = Vec::new();
    while body.len() < LIMIT {
        match resp.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c[..c.len().min(LIMIT - body.len())]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// Redirects followed at most.
pub const MAX_REDIRECTS: usize = 10;

/// How long a request may wait for the next byte of an answer by default: a slow server that
/// keeps sending never trips it; one that sends nothing for two minutes has stopped.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Options shared by every HTTP-family source.
#[derive(Clone)]
pub struct HttpOptions {
    /// How the server's certificate is checked.
    pub trust: TlsTrust,
    /// Extra request headers (`Name: value`), sent to the original origin only. Their values
    /// may be secrets: [`Debug`](std::fmt::Debug) prints only the names.
    pub headers: Vec<(String, String)>,
    /// How long a request waits for the next byte before it fails (retryable, as
    /// [`ErrorKind::TimedOut`]).
    pub idle_timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            trust: TlsTrust::default(),
            headers: Vec::new(),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

impl std::fmt::Debug for HttpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("HttpOptions")
            .field("trust", &self.trust)
            .field("headers", &names)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

impl HttpOptions {
    /// Parses a `Name: value` header argument.
    pub fn parse_header(s: &str) -> Result<(String, String)> {
        let (n, v) = s
            .split_once(':')
            .ok_or_else(|| invalid("invalid header: expected 'Name: value'"))?;
        let (n, v) = (n.trim(), v.trim());
        HeaderName::from_bytes(n.as_bytes())
            .map_err(|_| invalid(format!("invalid header name '{n}'")))?;
        // The value may be a secret: never echo it.
        HeaderValue::from_str(v).map_err(|_| invalid(format!("invalid value for header '{n}'")))?;
        Ok((n.to_owned(), v.to_owned()))
    }
}

/// An HTTP client with ferry's policies.
#[derive(Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    headers: HeaderMap,
}

/// A URL without user info, query or fragment, and without an oVirt imageio ticket id (the
/// segment after a top-level `/images/`, a bearer capability): safe for messages, logs and
/// termination messages (tickets and tokens often sit in the query).
pub fn redact(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    if let Some(rest) = u.path().strip_prefix("/images/") {
        if !rest.is_empty() {
            let tail = rest.split_once('/').map(|(_, t)| t.to_owned());
            let path = match tail {
                Some(t) => format!("/images/[ticket]/{t}"),
                None => "/images/[ticket]".to_owned(),
            };
            u.set_path(&path);
        }
    }
    u.to_string()
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// The causes of a reqwest error as one line, without the URL (which may hold a token).
fn describe_error(e: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cur {
        // rustls says "unexpected error: " before messages of our own verifier.
        let s = c.to_string().replace("unexpected error: ", "");
        // hyper-util's wrapper says nothing the next cause does not say better.
        if s.starts_with("client error (") {
            cur = c.source();
            continue;
        }
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = c.source();
    }
    if parts.is_empty() {
        parts.push(e.without_url_string());
    }
    parts.join(": ")
}

trait WithoutUrl {
    fn without_url_string(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_string(&self) -> String {
        let mut s = self.to_string();
        if let Some(u) = self.url() {
            s = s.replace(u.as_str(), &redact(u));
        }
        s
    }
}

fn request_error(url: &Url, e: reqwest::Error) -> Error {
    let detail = describe_error(&e);
    let target = redact(url);
    if e.is_connect() {
        let kind = if detail.contains("certificate")
            || detail.contains("thumbprint")
            || detail.contains("TLS")
        {
            ErrorKind::Protocol
        } else {
            ErrorKind::Connect
        };
        if kind == ErrorKind::Protocol {
            return Error::new(
                kind,
                format!("TLS handshake with {target} failed: {detail}"),
            );
        }
        return Error::new(kind, format!("cannot connect to {target}: {detail}"));
    }
    if e.is_timeout() {
        return Error::new(
            ErrorKind::TimedOut,
            format!("{target}: timed out: {detail}"),
        );
    }
    Error::new(ErrorKind::Io, format!("{target}: {detail}"))
}

/// The user's extra headers of `opts`, checked (values are never echoed).
fn user_headers(opts: &HttpOptions) -> Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    for (n, v) in &opts.headers {
        let name = HeaderName::from_bytes(n.as_bytes())
            .map_err(|_| invalid(format!("invalid header name '{n}'")))?;
        let value = HeaderValue::from_str(v)
            .map_err(|_| invalid(format!("invalid value for header '{n}'")))?;
        headers.append(name, value);
    }
    Ok(headers)
}

impl HttpClient {
    /// A client for `opts`.
    pub fn new(opts: &HttpOptions) -> Result<Self> {
        HttpClient::build(opts, None)
    }

    /// A client whose every connection goes to the Unix socket `path` (plain HTTP; a path
    /// starting with NUL names a Linux abstract socket), with the same header and redirect
    /// policies. Request URLs keep naming the host for the `Host` header.
    pub fn unix(opts: &HttpOptions, path: &std::path::Path) -> Result<Self> {
        HttpClient::build(opts, Some(path))
    }

    fn build(opts: &HttpOptions, unix: Option<&std::path::Path>) -> Result<Self> {
        // reqwest needs a TLS configuration even for plain HTTP (no process-wide provider).
        let tls = tls::client_config(&opts.trust)?;
        let mut b = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(opts.idle_timeout);
        b = match unix {
            Some(path) => b.unix_socket(path),
            // Keepalive as on NBD sockets: a vanished peer is noticed between requests too.
            None => b
                .tcp_nodelay(true)
                .tcp_keepalive(Duration::from_secs(60))
                .tcp_keepalive_interval(Duration::from_secs(10))
                .tcp_keepalive_retries(3),
        };
        let client = b
            .build()
            .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("HTTP client setup: {e}")))?;
        Ok(HttpClient {
            client,
            headers: user_headers(opts)?,
        })
    }

    /// Sends `method` to `url` (with `Range: bytes=a-b` when `range` is given), following up to
    /// [`MAX_REDIRECTS`] redirects; the user's headers go only to the original origin. Returns the
    /// final response, whatever its status, and the URL it came from.
    pub async fn send(
        &self,
        method: Method,
        url: &Url,
        range: Option<(u64, u64)>,
    ) -> Result<(Response, Url)> {
        self.send_with(method, url, range, None, &HeaderMap::new())
            .await
    }

    /// [`send`](Self::send) with a request body (JSON unless `extra` names another
    /// Content-Type) and request-specific headers (such as an API token); both follow the same
    /// origin rule as the user's headers.
    pub async fn send_with(
        &self,
        method: Method,
        url: &Url,
        range: Option<(u64, u64)>,
        body: Option<Vec<u8>>,
        extra: &HeaderMap,
    ) -> Result<(Response, Url)> {
        let mut cur = url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let mut req = self.client.request(method.clone(), cur.clone());
            if same_origin(url, &cur) {
                req = req.headers(self.headers.clone()).headers(extra.clone());
                if let Some(b) = &body {
                    if !extra.contains_key(reqwest::header::CONTENT_TYPE) {
                        req = req.header(reqwest::header::CONTENT_TYPE, "application/json");
                    }
                    req = req.body(b.clone());
                }
            }
            if let Some((a, b)) = range {
                req = req.header(RANGE, format!("bytes={a}-{b}"));
            }
            let resp = req.send().await.map_err(|e| request_error(&cur, e))?;
            if !resp.status().is_redirection() || resp.status() == StatusCode::NOT_MODIFIED {
                return Ok((resp, cur));
            }
            let loc = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Protocol,
                        format!("{}: redirect without Location", redact(&cur)),
                    )
                })?;
            let next = cur.join(loc).map_err(|e| {
                Error::new(
                    ErrorKind::Protocol,
                    format!("{}: bad redirect: {e}", redact(&cur)),
                )
            })?;
            if cur.scheme() == "https" && next.scheme() != "https" {
                return Err(Error::new(
                    ErrorKind::Denied,
                    format!(
                        "{}: refusing a redirect from https to {}",
                        redact(&cur),
                        redact(&next)
                    ),
                ));
            }
            cur = next;
        }
        Err(Error::new(
            ErrorKind::Protocol,
            format!("{}: more than {MAX_REDIRECTS} redirects", redact(url)),
        ))
    }

    /// Like [`send`](Self::send), but a non-success status is an error naming the code.
    pub async fn send_ok(
        &self,
        method: Method,
        url: &Url,
        range: Option<(u64, u64)>,
    ) -> Result<(Response, Url)> {
        self.send_ok_with(method, url, range, None, &HeaderMap::new())
            .await
    }

    /// [`send_with`](Self::send_with), but a non-success status is an error naming the code.
    pub async fn send_ok_with(
        &self,
        method: Method,
        url: &Url,
        range: Option<(u64, u64)>,
        body: Option<Vec<u8>>,
        extra: &HeaderMap,
    ) -> Result<(Response, Url)> {
        let (resp, at) = self.send_with(method, url, range, body, extra).await?;
        let st = resp.status();
        if !st.is_success() {
            let kind = match st {
                StatusCode::NOT_FOUND | StatusCode::GONE => ErrorKind::NotFound,
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ErrorKind::Denied,
                _ => ErrorKind::Server,
            };
            let reason = st.canonical_reason().unwrap_or("");
            return Err(Error::new(
                kind,
                format!("{}: HTTP {} {reason}", redact(&at), st.as_u16()),
            ));
        }
        Ok((resp, at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response whose body is `len` bytes.
    fn answer(len: usize) -> Response {
        Response::from(::http::Response::new(vec![b'x'; len]))
    }

    #[tokio::test]
    async fn answers_past_the_limit_are_left_unread_or_refused() {
        let at = Url::parse("https://engine/extents").unwrap();

        let fits = read_within(answer(1000), &at, 1000).await.unwrap();
        let over = read_within(answer(1001), &at, 1000).await.unwrap();
        let refused = read_bounded(answer(2 << 20), &at, 1 << 20)
            .await
            .unwrap_err();

        assert_eq!(fits.map(|b| b.len()), Some(1000));
        assert!(over.is_none(), "the caller falls back (imageio: all data)");
        assert_eq!(refused.kind(), ErrorKind::Protocol);
        assert!(
            refused.to_string().contains("larger than 1 MiB"),
            "{refused}"
        );
    }

    #[test]
    fn redact_drops_credentials_query_and_fragment() {
        let u = Url::parse("https://user:pw@host:8443/disks/abc?token=secret#x").unwrap();
        assert_eq!(redact(&u), "https://host:8443/disks/abc");
    }

    #[test]
    fn redact_hides_an_imageio_ticket_id() {
        let u =
            Url::parse("https://host:54322/images/6f1c0c5e-2b1d-4b9e-a1f0-1f2e3d4c5b6a").unwrap();
        assert_eq!(redact(&u), "https://host:54322/images/[ticket]");
        let u = Url::parse("https://host:54322/images/6f1c0c5e/extents?context=dirty").unwrap();
        assert_eq!(redact(&u), "https://host:54322/images/[ticket]/extents");
        // Glance's image ids are names, not capabilities.
        let u = Url::parse("https://glance:9292/v2/images/1234/file").unwrap();
        assert_eq!(redact(&u), "https://glance:9292/v2/images/1234/file");
    }

    #[test]
    fn header_values_never_show_in_debug_output() {
        let opts = HttpOptions {
            headers: vec![("Authorization".into(), "Bearer s3cret-token".into())],
            ..HttpOptions::default()
        };
        let shown = format!("{opts:?}");
        assert!(shown.contains("Authorization"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn header_arguments_parse_and_never_echo_values() {
        assert_eq!(
            HttpOptions::parse_header("X-Token:  s3cret ").unwrap(),
            ("X-Token".into(), "s3cret".into())
        );
        let e = HttpOptions::parse_header("X-Token: bad\nvalue s3cret").unwrap_err();
        assert!(!e.to_string().contains("s3cret"));
        assert!(HttpOptions::parse_header("no colon").is_err());
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let a = Url::parse("https://h/x").unwrap();
        assert!(same_origin(&a, &Url::parse("https://h:443/y").unwrap()));
        assert!(!same_origin(&a, &Url::parse("http://h/x").unwrap()));
        assert!(!same_origin(&a, &Url::parse("https://other/x").unwrap()));
    }
}
