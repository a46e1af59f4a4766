//! Pure Storage FlashArray through its REST API 2.x, as Pure documents it: `GET /api/api_version`
//! lists the versions; a session starts with `POST /api/2.N/login` carrying the `api-token`
//! header and answers with the `x-auth-token` header every later call carries; an API token
//! can be had for a user name and password from `POST /api/1.N/auth/apitoken`. Hosts
//! (`/hosts`, with their `iqns` and `wwns`), volumes (`/volumes`, with their `serial`) and
//! host-volume connections (`/connections?host_names=&volume_names=`). Answers are
//! `{"items": [...]}`, failures `{"errors": [{"message"}]}`.
//!
//! The PV's volume on the array is `<PURE_CLUSTER_PREFIX>-<PV name>`, the name Pure's CSI
//! driver gives it. ESXi sees it as `naa.624a9370` followed by the volume's serial in lower case
//! (Pure's NAA prefix). Parsers are apart from I/O; tokens never appear in a message.

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use url::Url;

use transfer_core::error::peer_text;
use transfer_core::http::{read_bounded, HttpClient, HttpOptions, MAX_ANSWER};
use transfer_core::{Error, ErrorKind, Result};

use super::{ArrayInfo, Initiators, Lun, StorageArray, Volume};

/// Pure's IEEE company id in an NAA device id.
const NAA_PREFIX: &str = "naa.624a9370";

/// How the array is logged in to.
pub enum Credentials {
    /// An API token (`STORAGE_TOKEN`).
    Token(String),
    /// A user and password, exchanged for an API token (`STORAGE_USERNAME`/`_PASSWORD`).
    Password(String, String),
}

/// A FlashArray's REST API.
pub struct FlashArray {
    http: HttpClient,
    base: Url,
    credentials: Credentials,
    prefix: String,
    /// `(2.x version, session token)` once logged in.
    session: Mutex<Option<(String, HeaderValue)>>,
}

/// The `items` of an answer.
pub fn items(body: &[u8]) -> Result<Vec<Value>> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| Error::new(ErrorKind::Protocol, format!("FlashArray: not JSON: {e}")))?;
    match v.get("items") {
        Some(Value::Array(a)) => Ok(a.clone()),
        _ => Err(Error::new(
            ErrorKind::Protocol,
            "FlashArray: the answer has no items",
        )),
    }
}

/// The messages of a FlashArray error answer.
pub fn error_message(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    v["errors"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(|x| x["message"].as_str().map(peer_text))
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

/// The newest `major.N` of an `api_version` answer.
pub fn newest(body: &[u8], major: u32) -> Result<String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        Error::new(
            ErrorKind::Protocol,
            format!("FlashArray api_version: not JSON: {e}"),
        )
    })?;
    v["version"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|s| {
            let (a, b) = s.split_once('.')?;
            (a.parse::<u32>().ok()? == major).then_some((b.parse::<u32>().ok()?, s))
        })
        .max()
        .map(|(_, s)| s.to_owned())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                format!("the FlashArray offers no REST API {major}.x"),
            )
        })
}

/// The NAA id ESXi gives a FlashArray volume of serial `serial`.
pub fn naa(serial: &str) -> String {
    format!("{NAA_PREFIX}{}", serial.to_ascii_lowercase())
}

/// A WWPN as the FlashArray lists it: upper-case hex without separators.
fn wwn(s: &str) -> String {
    s.chars()
        .filter(char::is_ascii_hexdigit)
        .collect::<String>()
        .to_ascii_uppercase()
}

fn names_of(v: &Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

impl FlashArray {
    /// The array at `host` (a name or an `https://` URL); the PV volumes are named
    /// `<prefix>-<PV name>`.
    pub fn new(
        host: &str,
        credentials: Credentials,
        prefix: &str,
        http: &HttpOptions,
    ) -> Result<FlashArray> {
        let base = if host.contains("://") {
            host.to_owned()
        } else {
            format!("https://{host}")
        };
        let base = Url::parse(&base).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("STORAGE_HOSTNAME '{host}': {e}"),
            )
        })?;
        if prefix.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "PURE_CLUSTER_PREFIX (the prefix Pure's CSI driver gives volume names) is required",
            ));
        }
        Ok(FlashArray {
            http: HttpClient::new(http)?,
            base,
            credentials,
            prefix: prefix.to_owned(),
            session: Mutex::new(None),
        })
    }

    /// Sends one request; the answer's status, headers and body.
    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Option<Value>,
    ) -> Result<(u16, HeaderMap, Vec<u8>)> {
        let url = self.base.join(path).map_err(|e| {
            Error::new(
                ErrorKind::Protocol,
                format!("FlashArray: bad path {path}: {e}"),
            )
        })?;
        let mut h = headers;
        h.insert(ACCEPT, HeaderValue::from_static("application/json"));
        let body = body.map(|b| b.to_string().into_bytes());
        let (resp, at) = self.http.send_with(method, &url, None, body, &h).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        Ok((status, headers, read_bounded(resp, &at, MAX_ANSWER).await?))
    }

    fn failed(what: &str, status: u16, body: &[u8]) -> Error {
        let kind = match status {
            401 | 403 => ErrorKind::Denied,
            404 => ErrorKind::NotFound,
            400 if error_message(body).contains("does not exist") => ErrorKind::NotFound,
            _ => ErrorKind::Server,
        };
        Error::new(
            kind,
            format!("FlashArray {what}: HTTP {status} {}", error_message(body)),
        )
    }

    /// Logs in (once): the 2.x version and the session token.
    async fn session(&self) -> Result<(String, HeaderValue)> {
        let mut s = self.session.lock().await;
        if let Some(s) = s.as_ref() {
            return Ok(s.clone());
        }
        let (st, _, versions) = self
            .send(Method::GET, "/api/api_version", HeaderMap::new(), None)
            .await?;
        if st != 200 {
            return Err(Self::failed("api_version", st, &versions));
        }
        let v2 = newest(&versions, 2)?;
        let token = match &self.credentials {
            Credentials::Token(t) => t.clone(),
            Credentials::Password(user, password) => {
                let v1 = newest(&versions, 1)?;
                let (st, _, body) = self
                    .send(
                        Method::POST,
                        &format!("/api/{v1}/auth/apitoken"),
                        HeaderMap::new(),
                        Some(json!({"username": user, "password": password})),
                    )
                    .await?;
                if st != 200 {
                    return Err(Self::failed(&format!("login as {user}"), st, &body));
                }
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                v["api_token"].as_str().map(str::to_owned).ok_or_else(|| {
                    Error::new(
                        ErrorKind::Protocol,
                        "FlashArray: no api_token in the answer",
                    )
                })?
            }
        };
        let mut h = HeaderMap::new();
        let mut t = HeaderValue::from_str(&token).map_err(|_| {
            Error::new(
                ErrorKind::InvalidInput,
                "the API token is not a header value",
            )
        })?;
        t.set_sensitive(true);
        h.insert("api-token", t);
        let (st, headers, body) = self
            .send(Method::POST, &format!("/api/{v2}/login"), h, None)
            .await?;
        if st != 200 {
            return Err(Self::failed("login", st, &body));
        }
        let mut session = headers.get("x-auth-token").cloned().ok_or_else(|| {
            Error::new(
                ErrorKind::Protocol,
                "FlashArray login: no x-auth-token in the answer",
            )
        })?;
        session.set_sensitive(true);
        *s = Some((v2.clone(), session.clone()));
        Ok((v2, session))
    }

    /// Drops the session `token` (expired), unless another call has replaced it already.
    async fn forget(&self, token: &HeaderValue) {
        let mut s = self.session.lock().await;
        if s.as_ref().is_some_and(|(_, t)| t == token) {
            *s = None;
        }
    }

    /// One 2.x call (`path` after `/api/2.N/`, with its query); its items (none for an empty
    /// answer). A session that has expired (Purity ends idle ones: a long clone outlasts it,
    /// and the cleanup must still unmap) is opened again, once.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Vec<Value>> {
        let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let listing = method == Method::GET;
        let mut renewed = false;
        let (st, answer) = loop {
            let (v2, token) = self.session().await?;
            let mut h = HeaderMap::new();
            h.insert("x-auth-token", token.clone());
            let (st, _, answer) = self
                .send(
                    method.clone(),
                    &format!("/api/{v2}/{path}"),
                    h,
                    body.clone(),
                )
                .await?;
            if st == 401 && !renewed {
                tracing::info!("FlashArray session ended ({what}); logging in again");
                self.forget(&token).await;
                renewed = true;
                continue;
            }
            break (st, answer);
        };
        if !(200..300).contains(&st) {
            return Err(Self::failed(&what, st, &answer));
        }
        // A change may answer with nothing (DELETE) or with items; a listing must have items.
        match items(&answer) {
            Err(_) if !listing => Ok(Vec::new()),
            r => r,
        }
    }

    /// The volume whose `key` (`ids` or `names`) is `value`, if there is one (Purity answers
    /// such a query for a missing volume with 400 "Volume does not exist.").
    async fn volume_where(&self, key: &str, value: &str) -> Result<Option<Value>> {
        let q = query(&[(key, value)]);
        let field = if key == "ids" { "id" } else { "name" };
        match self.call(Method::GET, &format!("volumes?{q}"), None).await {
            Ok(items) => Ok(items.into_iter().find(|v| v[field] == value)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The host named `name`, if there is one: its iqns and wwns.
    async fn host(&self, name: &str) -> Result<Option<(Vec<String>, Vec<String>)>> {
        let all = self.call(Method::GET, "hosts", None).await?;
        Ok(all
            .iter()
            .find(|h| h["name"] == name)
            .map(|h| (names_of(h, "iqns"), names_of(h, "wwns"))))
    }
}

/// The URL-encoded `k=v&...` query.
fn query(pairs: &[(&str, &str)]) -> String {
    let mut u = Url::parse("http://x/").expect("a valid URL");
    u.query_pairs_mut().extend_pairs(pairs);
    u.query().unwrap_or("").to_owned()
}

/// The host name the populator uses on the array for an ESXi host: `xcopy-` and the host id
/// (as Forklift names it), with what Purity does not take in a name (letters, digits and `-`
/// only) replaced by `-`.
pub fn host_name(esxi: &str) -> String {
    super::group_name(esxi, |c| c.is_ascii_alphanumeric(), 63)
}

#[async_trait]
impl StorageArray for FlashArray {
    fn product(&self) -> &'static str {
        "pureFlashArray"
    }

    async fn info(&self) -> Result<ArrayInfo> {
        let arrays = self.call(Method::GET, "arrays", None).await?;
        let controllers = self.call(Method::GET, "controllers", None).await?;
        // The primary controller's model (both controllers of an array are one model).
        let model = controllers
            .iter()
            .find(|c| c["mode"] == "primary")
            .or(controllers.first())
            .and_then(|c| c["model"].as_str());
        let version = arrays.first().and_then(|a| a["version"].as_str());
        Ok(ArrayInfo {
            vendor: "Pure Storage",
            product: "FlashArray",
            model: model.unwrap_or("n/a").to_owned(),
            version: version.unwrap_or("n/a").to_owned(),
        })
    }

    async fn ensure_group(&self, host: &str, initiators: &Initiators) -> Result<String> {
        let name = host_name(host);
        let iqns: Vec<String> = initiators.iscsi.clone();
        let wwns: Vec<String> = initiators.fc_wwpns().iter().map(|w| wwn(w)).collect();
        // Purity lets an IQN or WWN belong to one host object only: when the ESXi host already
        // has one on this array (as it must, to reach the source datastore), that one is used.
        let all = self.call(Method::GET, "hosts", None).await?;
        let holds_ours = |h: &Value| {
            names_of(h, "iqns")
                .iter()
                .any(|i| iqns.iter().any(|o| o.eq_ignore_ascii_case(i)))
                || names_of(h, "wwns").iter().any(|w| wwns.contains(&wwn(w)))
        };
        if let Some(existing) = all
            .iter()
            .find(|h| h["name"] != name.as_str() && holds_ours(h))
        {
            let n = existing["name"].as_str().unwrap_or("").to_owned();
            if !n.is_empty() {
                tracing::info!(host = %n, "the array already knows the ESXi host's initiators");
                return Ok(n);
            }
        }
        let q = query(&[("names", &name)]);
        match self.host(&name).await? {
            None => {
                self.call(
                    Method::POST,
                    &format!("hosts?{q}"),
                    Some(json!({"iqns": iqns, "wwns": wwns})),
                )
                .await?;
            }
            Some((have_iqns, have_wwns)) => {
                let add_iqns: Vec<&String> = iqns
                    .iter()
                    .filter(|i| !have_iqns.iter().any(|h| h.eq_ignore_ascii_case(i)))
                    .collect();
                let add_wwns: Vec<&String> = wwns
                    .iter()
                    .filter(|w| !have_wwns.iter().any(|h| wwn(h) == **w))
                    .collect();
                if !add_iqns.is_empty() || !add_wwns.is_empty() {
                    self.call(
                        Method::PATCH,
                        &format!("hosts?{q}"),
                        Some(json!({"add_iqns": add_iqns, "add_wwns": add_wwns})),
                    )
                    .await?;
                }
            }
        }
        Ok(name)
    }

    async fn lun(&self, volume: &Volume) -> Result<Lun> {
        if volume.name.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "the PV has no name to find its FlashArray volume by",
            ));
        }
        // The CSI volume handle may be the volume's id; else Pure's CSI name for the PV.
        let by_name = format!("{}-{}", self.prefix, volume.name);
        let by_id = match volume.handle.as_str() {
            "" => None,
            handle => self.volume_where("ids", handle).await?,
        };
        let v = match by_id {
            Some(v) => v,
            None => self.volume_where("names", &by_name).await?.ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "FlashArray: no volume {by_name} (nor one with the id {})",
                        volume.handle
                    ),
                )
            })?,
        };
        let name = v["name"].as_str().unwrap_or(&by_name).to_owned();
        let serial = v["serial"].as_str().ok_or_else(|| {
            Error::new(
                ErrorKind::Protocol,
                format!("FlashArray: volume {name} has no serial"),
            )
        })?;
        Ok(Lun {
            id: name.clone(),
            name,
            naa: naa(serial),
        })
    }

    async fn mappings(&self, lun: &Lun) -> Result<Vec<String>> {
        let q = query(&[("volume_names", &lun.name)]);
        let c = self
            .call(Method::GET, &format!("connections?{q}"), None)
            .await?;
        Ok(c.iter()
            .filter_map(|c| c["host"]["name"].as_str().map(str::to_owned))
            .collect())
    }

    async fn map(&self, lun: &Lun, group: &str) -> Result<()> {
        if self.mappings(lun).await?.iter().any(|h| h == group) {
            return Ok(());
        }
        let q = query(&[("host_names", group), ("volume_names", &lun.name)]);
        self.call(Method::POST, &format!("connections?{q}"), None)
            .await
            .map(drop)
    }

    async fn unmap(&self, lun: &Lun, group: &str) -> Result<()> {
        if !self.mappings(lun).await?.iter().any(|h| h == group) {
            return Ok(());
        }
        let q = query(&[("host_names", group), ("volume_names", &lun.name)]);
        self.call(Method::DELETE, &format!("connections?{q}"), None)
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed_apart_from_io() {
        let versions = br#"{"version":["1.17","1.19","2.2","2.21","2.4"]}"#;
        assert_eq!(newest(versions, 2).unwrap(), "2.21");
        assert_eq!(newest(versions, 1).unwrap(), "1.19");
        assert!(newest(br#"{"version":["1.19"]}"#, 2).is_err());
        assert_eq!(
            items(br#"{"items":[{"name":"h"}]}"#).unwrap()[0]["name"],
            "h"
        );
        assert_eq!(
            error_message(br#"{"errors":[{"message":"Host does not exist."}]}"#),
            "Host does not exist."
        );
        assert_eq!(
            naa("F4252922ADE248CF000113E6"),
            "naa.624a9370f4252922ade248cf000113e6"
        );
        assert_eq!(wwn("20:00:00:25:b5:aa:00:02"), "20000025B5AA0002");
        assert_eq!(host_name("esx1.example"), "xcopy-esx1-example");
    }
}
