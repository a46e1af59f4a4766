//! The oVirt engine's side of an imageio download: an OAuth token from the engine's SSO
//! (`/ovirt-engine/sso/oauth/token`), an image transfer for a disk (`POST /imagetransfers`,
//! download, raw), polled until it is `transferring`, whose `transfer_url` the imageio source
//! reads; then `finalize` on success or `cancel` on failure. JSON throughout, as the REST API
//! accepts it. Parsing is apart from I/O; the token never appears in a message.
//!
//! The engine pauses a transfer whose imageio ticket has been idle longer than the transfer's
//! `inactivity_timeout` (60 s unless the client asks for more). A copy can be idle that long
//! while its target catches up (a slow volume, a long flush), so the transfer asks for
//! [`INACTIVITY_TIMEOUT`] and [`KeepAlive`] touches the ticket (`OPTIONS`, which the daemon
//! answers without I/O) at a quarter of whatever timeout the engine granted.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Method;
use serde_json::Value;
use url::Url;

use transfer_core::http::{read_bounded, redact, HttpClient, HttpOptions, MAX_ANSWER};
use transfer_core::{Error, ErrorKind, Result};

/// How long a transfer may take to reach `transferring`.
const READY_TIMEOUT: Duration = Duration::from_secs(300);

/// The inactivity timeout asked for, in seconds: long enough for a stalled target, short
/// enough that a transfer whose importer died is released within minutes.
pub const INACTIVITY_TIMEOUT: u64 = 300;

/// The `access_token` of an SSO answer.
pub fn parse_token(body: &[u8]) -> Result<String> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ErrorKind::Protocol.about(format_args!("oVirt engine {}", "token"), e))?;
    v["access_token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            ErrorKind::Protocol.about(
                format_args!("oVirt engine {}", "token"),
                "no access_token in the answer",
            )
        })
}

/// An image transfer's id, phase and (once transferring) URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// The transfer's id.
    pub id: String,
    /// `initializing`, `transferring`, `paused_system`, `finished_failure`, ...
    pub phase: String,
    /// The imageio URL on the host (`transfer_url`), or the proxy's when there is none.
    pub url: Option<String>,
    /// The inactivity timeout the engine granted, in seconds, when it says.
    pub inactivity_timeout: Option<u64>,
}

/// Reads an image transfer from its JSON.
pub fn parse_transfer(body: &[u8]) -> Result<Transfer> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ErrorKind::Protocol.about(format_args!("oVirt engine {}", "image transfer"), e)
    })?;
    let s = |k: &str| v[k].as_str().filter(|s| !s.is_empty()).map(str::to_owned);
    Ok(Transfer {
        id: s("id").ok_or_else(|| {
            ErrorKind::Protocol.about(format_args!("oVirt engine {}", "image transfer"), "no id")
        })?,
        phase: s("phase").ok_or_else(|| {
            ErrorKind::Protocol.about(
                format_args!("oVirt engine {}", "image transfer"),
                "no phase",
            )
        })?,
        url: s("transfer_url").or_else(|| s("proxy_url")),
        inactivity_timeout: v["inactivity_timeout"]
            .as_u64()
            .or_else(|| v["inactivity_timeout"].as_str()?.parse().ok())
            .filter(|t| *t > 0),
    })
}

/// How often [`KeepAlive`] touches a ticket whose transfer was granted `inactivity_timeout`
/// seconds (the engine's 60 when it does not say): a quarter of it, at least 250 ms apart.
pub fn keep_alive_period(inactivity_timeout: Option<u64>) -> Duration {
    let timeout = Duration::from_secs(inactivity_timeout.unwrap_or(60));
    (timeout / 4).max(Duration::from_millis(250))
}

/// A logged-in engine and the transfer it created.
pub struct Engine {
    http: HttpClient,
    api: Url,
    token: String,
}

impl Engine {
    /// Logs in to the engine whose API is `api` (`https://engine/ovirt-engine/api`).
    pub async fn login(
        api: &Url,
        user: &str,
        password: &str,
        opts: &HttpOptions,
    ) -> Result<Engine> {
        let http = HttpClient::new(opts)?;
        let sso = api
            .join("/ovirt-engine/sso/oauth/token")
            .map_err(|e| ErrorKind::Protocol.about(format_args!("oVirt engine {}", "URL"), e))?;
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "password")
            .append_pair("scope", "ovirt-app-api")
            .append_pair("username", user)
            .append_pair("password", password)
            .finish();
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_static("application/json"));
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        let (resp, at) = http
            .send_with(Method::POST, &sso, None, Some(form.into_bytes()), &h)
            .await?;
        let status = resp.status();
        let body = read_bounded(resp, &at, MAX_ANSWER).await?;
        if !status.is_success() {
            return Err(Error::new(
                ErrorKind::Connect,
                format!(
                    "oVirt engine login as {user} at {}: HTTP {}",
                    redact(&at),
                    status.as_u16()
                ),
            ));
        }
        let mut api = api.clone();
        if !api.path().ends_with('/') {
            api.set_path(&format!("{}/", api.path()));
        }
        Ok(Engine {
            http,
            api,
            token: parse_token(&body)?,
        })
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Vec<u8>> {
        let url = self
            .api
            .join(path)
            .map_err(|e| ErrorKind::Protocol.about(format_args!("oVirt engine {}", "URL"), e))?;
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_static("application/json"));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", self.token)).map_err(|_| {
            ErrorKind::Protocol.about(
                format_args!("oVirt engine {}", "token"),
                "not a header value",
            )
        })?;
        auth.set_sensitive(true);
        h.insert(AUTHORIZATION, auth);
        let body = body.map(|b| b.to_string().into_bytes());
        let (resp, at) = self.http.send_with(method, &url, None, body, &h).await?;
        let status = resp.status();
        let answer = read_bounded(resp, &at, MAX_ANSWER).await?;
        if !status.is_success() {
            let detail = serde_json::from_slice::<Value>(&answer)
                .ok()
                .and_then(|v| {
                    v["detail"]
                        .as_str()
                        .or(v["reason"].as_str())
                        .map(transfer_core::error::peer_text)
                })
                .unwrap_or_default();
            let kind = if status.as_u16() == 404 {
                ErrorKind::NotFound
            } else {
                ErrorKind::Server
            };
            return Err(Error::new(
                kind,
                format!(
                    "oVirt engine {}: HTTP {} {detail}",
                    redact(&at),
                    status.as_u16()
                ),
            ));
        }
        Ok(answer)
    }

    /// Creates a raw download transfer of `disk` and waits until it is transferring.
    pub async fn start_download(&self, disk: &str) -> Result<Transfer> {
        let body = serde_json::json!({
            "disk": {"id": disk},
            "direction": "download",
            "format": "raw",
            "inactivity_timeout": INACTIVITY_TIMEOUT,
        });
        let mut t = parse_transfer(
            &self
                .call(Method::POST, "imagetransfers", Some(body))
                .await?,
        )?;
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        while t.phase != "transferring" {
            if t.phase.starts_with("finished") || t.phase.starts_with("cancelled") {
                return Err(Error::new(
                    ErrorKind::Server,
                    format!(
                        "oVirt image transfer {} for disk {disk} ended in phase {}",
                        t.id, t.phase
                    ),
                ));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::new(
                    ErrorKind::Server,
                    format!(
                        "oVirt image transfer {} is still {} after 5 minutes",
                        t.id, t.phase
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            t = parse_transfer(
                &self
                    .call(Method::GET, &format!("imagetransfers/{}", t.id), None)
                    .await?,
            )?;
        }
        if t.url.is_none() {
            return Err(ErrorKind::Protocol.about(
                format_args!("oVirt engine {}", "image transfer"),
                format!("{} is transferring without a URL", t.id),
            ));
        }
        Ok(t)
    }

    /// Keeps the ticket of the transferring `t` from idling out until the result is dropped.
    pub fn keep_alive(&self, t: &Transfer) -> Result<KeepAlive> {
        let url = t.url.as_deref().unwrap_or_default();
        let url = Url::parse(url).map_err(|e| {
            ErrorKind::Protocol.about(format_args!("oVirt engine {}", "transfer URL"), e)
        })?;
        Ok(KeepAlive::start(
            self.http.clone(),
            url,
            keep_alive_period(t.inactivity_timeout),
        ))
    }

    /// Finalizes (`ok`) or cancels the transfer `id`.
    pub async fn end(&self, id: &str, ok: bool) -> Result<()> {
        let action = if ok { "finalize" } else { "cancel" };
        self.call(
            Method::POST,
            &format!("imagetransfers/{id}/{action}"),
            Some(serde_json::json!({})),
        )
        .await
        .map(|_| ())
    }
}

/// Touches an imageio ticket every so often (`OPTIONS` on its URL), which resets the ticket's
/// idle time that the engine watches. Stops when dropped. A failed touch is only logged: the
/// copy's own requests report a ticket that is gone.
pub struct KeepAlive {
    task: tokio::task::JoinHandle<()>,
}

impl KeepAlive {
    /// Touches `url` through `http` every `every`, starting one period from now.
    pub fn start(http: HttpClient, url: Url, every: Duration) -> KeepAlive {
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match http
                    .send_with(Method::OPTIONS, &url, None, None, &HeaderMap::new())
                    .await
                {
                    Ok((resp, at)) if !resp.status().is_success() => tracing::warn!(
                        status = resp.status().as_u16(),
                        "imageio keep-alive: {} refused the ticket",
                        redact(&at)
                    ),
                    Ok(_) => tracing::trace!("imageio keep-alive"),
                    Err(e) => tracing::debug!("imageio keep-alive failed: {e}"),
                }
            }
        });
        KeepAlive { task }
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_transfers_parse() {
        assert_eq!(
            parse_token(br#"{"access_token":"abc","token_type":"Bearer"}"#).unwrap(),
            "abc"
        );
        assert!(parse_token(br#"{"error":"access_denied"}"#).is_err());
        let t = parse_transfer(br#"{"id":"t1","phase":"transferring","transfer_url":"https://h:54322/images/x","proxy_url":"https://e:54323/images/x"}"#).unwrap();
        assert_eq!(t.url.as_deref(), Some("https://h:54322/images/x"));
        let t = parse_transfer(br#"{"id":"t1","phase":"initializing"}"#).unwrap();
        assert_eq!((t.phase.as_str(), t.url), ("initializing", None));
        assert_eq!(t.inactivity_timeout, None);
        for granted in [
            r#""inactivity_timeout":120"#,
            r#""inactivity_timeout":"120""#,
        ] {
            let body = format!(r#"{{"id":"t1","phase":"transferring",{granted}}}"#);
            let t = parse_transfer(body.as_bytes()).unwrap();
            assert_eq!(t.inactivity_timeout, Some(120), "{body}");
        }
        assert!(parse_transfer(b"[]").is_err());
    }
}
