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
pub async fn read_bounded(mut resp: Response, at: &Url, limit: usize) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| {
        Error::new(
            ErrorKind::Disconnected,
            format!("{}: reading the answer: {e}", redact(at)),
        )
    })? {
        if body.len() + chunk.len() > limit {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!("{}: answer larger than {} MiB", redact(at), limit >> 20),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Redirects followed at most.
pub const MAX_REDIRECTS: usize = 10;

/// Options shared by every HTTP-family source.
#[derive(Debug, Clone, Default)]
pub struct HttpOptions {
    /// How the server's certificate is checked.
    pub trust: TlsTrust,
    /// Extra request headers (`Name: value`), sent to the original origin only.
    pub headers: Vec<(String, String)>,
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

/// A URL without user info, query or fragment: safe for messages (tickets and tokens often sit
/// in the query).
pub fn redact(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
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
        return Error::new(ErrorKind::Connect, format!("{target}: timed out: {detail}"));
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
            .connect_timeout(Duration::from_secs(30));
        b = match unix {
            Some(path) => b.unix_socket(path),
            None => b.tcp_nodelay(true),
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
            cur = cur.join(loc).map_err(|e| {
                Error::new(
                    ErrorKind::Protocol,
                    format!("{}: bad redirect: {e}", redact(&cur)),
                )
            })?;
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

    #[test]
    fn redact_drops_credentials_query_and_fragment() {
        let u = Url::parse("https://user:pw@host:8443/images/abc?token=secret#x").unwrap();
        assert_eq!(redact(&u), "https://host:8443/images/abc");
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
