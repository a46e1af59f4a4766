//! OpenStack Glance source: Keystone v3 authentication (password, token or application
//! credential), the `image` service from the token's catalog (by region and interface), the
//! image's metadata, then `GET /v2/images/{id}/file` read as one stream whose bytes are checked
//! against the image's `os_hash_algo`/`os_hash_value` (or its md5 `checksum`). Bytes are written
//! as they are, whatever the image's disk_format.
//!
//! Credentials come from the standard `OS_*` variables (or the populator's mapping of its own),
//! never from argv, and never appear in messages.

use std::sync::Arc;

use async_trait::async_trait;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use url::Url;

use crate::buffer::Buffer;
use crate::error::{invalid, Error, ErrorKind, Result};
use crate::http::{read_bounded, redact, HttpClient, HttpOptions, MAX_ANSWER};
use crate::source::http::HttpSource;
use crate::source::stream::Checksum;
use crate::source::{BlockSource, SourceCaps};

/// How to authenticate to Keystone.
#[derive(Clone, Default)]
pub struct GlanceAuth {
    /// `password`, `token` or `applicationcredential` (`v3applicationcredential` too).
    pub auth_type: String,
    /// User name or id (password, application credential by name).
    pub username: Option<String>,
    /// User id.
    pub user_id: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// An existing token.
    pub token: Option<String>,
    /// Application credential id.
    pub app_cred_id: Option<String>,
    /// Application credential name (with the user).
    pub app_cred_name: Option<String>,
    /// Application credential secret.
    pub app_cred_secret: Option<String>,
    /// Project name.
    pub project_name: Option<String>,
    /// Project id.
    pub project_id: Option<String>,
    /// User domain name.
    pub user_domain_name: Option<String>,
    /// User domain id.
    pub user_domain_id: Option<String>,
    /// Project domain name.
    pub project_domain_name: Option<String>,
    /// Project domain id.
    pub project_domain_id: Option<String>,
    /// Region of the image endpoint (any when unset).
    pub region: Option<String>,
    /// Endpoint interface: public (default), internal or admin.
    pub interface: Option<String>,
}

impl std::fmt::Debug for GlanceAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("GlanceAuth")
            .field("auth_type", &self.auth_type)
            .finish_non_exhaustive()
    }
}

impl GlanceAuth {
    /// Reads the standard `OS_*` variables.
    pub fn from_env() -> Self {
        let v = |k: &str| std::env::var(k).ok().filter(|s| !s.is_empty());
        GlanceAuth {
            auth_type: v("OS_AUTH_TYPE").unwrap_or_else(|| {
                if v("OS_APPLICATION_CREDENTIAL_SECRET").is_some() {
                    "applicationcredential".into()
                } else if v("OS_TOKEN").is_some() && v("OS_PASSWORD").is_none() {
                    "token".into()
                } else {
                    "password".into()
                }
            }),
            username: v("OS_USERNAME"),
            user_id: v("OS_USER_ID"),
            password: v("OS_PASSWORD"),
            token: v("OS_TOKEN"),
            app_cred_id: v("OS_APPLICATION_CREDENTIAL_ID"),
            app_cred_name: v("OS_APPLICATION_CREDENTIAL_NAME"),
            app_cred_secret: v("OS_APPLICATION_CREDENTIAL_SECRET"),
            project_name: v("OS_PROJECT_NAME"),
            project_id: v("OS_PROJECT_ID"),
            user_domain_name: v("OS_USER_DOMAIN_NAME"),
            user_domain_id: v("OS_USER_DOMAIN_ID"),
            project_domain_name: v("OS_PROJECT_DOMAIN_NAME"),
            project_domain_id: v("OS_PROJECT_DOMAIN_ID"),
            region: v("OS_REGION_NAME"),
            interface: v("OS_INTERFACE"),
        }
    }

    fn need<'a>(v: &'a Option<String>, what: &str) -> Result<&'a str> {
        v.as_deref()
            .ok_or_else(|| invalid(format!("Keystone authentication needs {what}")))
    }

    fn user(&self) -> Result<Value> {
        let domain = match (&self.user_domain_id, &self.user_domain_name) {
            (Some(id), _) => Some(json!({ "id": id })),
            (None, Some(n)) => Some(json!({ "name": n })),
            _ => None,
        };
        let mut u =
            match (&self.user_id, &self.username) {
                (Some(id), _) => json!({ "id": id }),
                (None, Some(n)) => json!({ "name": n }),
                _ => return Err(invalid(
                    "Keystone authentication needs a user name or id (OS_USERNAME / OS_USER_ID)",
                )),
            };
        if let (Some(d), None) = (domain, &self.user_id) {
            u["domain"] = d;
        }
        Ok(u)
    }

    fn scope(&self) -> Option<Value> {
        let domain = match (&self.project_domain_id, &self.project_domain_name) {
            (Some(id), _) => Some(json!({ "id": id })),
            (None, Some(n)) => Some(json!({ "name": n })),
            _ => None,
        };
        match (&self.project_id, &self.project_name) {
            (Some(id), _) => Some(json!({ "project": { "id": id } })),
            (None, Some(n)) => {
                let mut p = json!({ "name": n });
                if let Some(d) = domain {
                    p["domain"] = d;
                }
                Some(json!({ "project": p }))
            }
            _ => None,
        }
    }

    /// The body of `POST /v3/auth/tokens` (Keystone v3 API reference).
    pub fn request_body(&self) -> Result<Value> {
        let identity = match self.auth_type.to_ascii_lowercase().as_str() {
            "password" | "v3password" => {
                let mut user = self.user()?;
                user["password"] = json!(Self::need(&self.password, "a password (OS_PASSWORD)")?);
                json!({ "methods": ["password"], "password": { "user": user } })
            }
            "token" | "v3token" => {
                json!({ "methods": ["token"], "token": { "id": Self::need(&self.token, "a token (OS_TOKEN)")? } })
            }
            "applicationcredential" | "v3applicationcredential" | "application_credential" => {
                let secret = Self::need(&self.app_cred_secret, "an application credential secret")?;
                let cred = match (&self.app_cred_id, &self.app_cred_name) {
                    (Some(id), _) => json!({ "id": id, "secret": secret }),
                    (None, Some(n)) => json!({ "name": n, "user": self.user()?, "secret": secret }),
                    _ => {
                        return Err(invalid(
                            "Keystone authentication needs an application credential id or name",
                        ))
                    }
                };
                // Application credentials carry their own scope.
                return Ok(json!({ "auth": {
                    "identity": { "methods": ["application_credential"], "application_credential": cred }
                } }));
            }
            other => {
                return Err(invalid(format!(
                    "unknown Keystone auth type '{other}' (password, token, applicationcredential)"
                )))
            }
        };
        let mut auth = json!({ "identity": identity });
        if let Some(s) = self.scope() {
            auth["scope"] = s;
        }
        Ok(json!({ "auth": auth }))
    }
}

/// Reads a JSON answer (bounded: tokens with catalogs and image records are small).
async fn json_body(resp: reqwest::Response, at: &Url, what: &str) -> Result<Value> {
    let raw = read_bounded(resp, at, MAX_ANSWER).await?;
    serde_json::from_slice(&raw)
        .map_err(|e| Error::new(ErrorKind::Protocol, format!("{what} is not JSON: {e}")))
}

/// The URL of `image` at the catalog's image `endpoint` (`.../v2/images/ID`, the id escaped as
/// one path segment). The token goes to that endpoint, so a plain-http endpoint is refused
/// when Keystone itself was reached over https.
pub fn image_url(keystone: &Url, endpoint: &str, image: &str) -> Result<Url> {
    let ep = endpoint.trim_end_matches('/');
    let ep = ep.strip_suffix("/v2").unwrap_or(ep);
    let mut url = Url::parse(&format!("{ep}/v2/images")).map_err(|e| {
        invalid(format!(
            "invalid image endpoint in the Keystone catalog: {e}"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "image endpoint {} in the Keystone catalog is not http(s)",
            redact(&url)
        )));
    }
    if keystone.scheme() == "https" && url.scheme() != "https" {
        return Err(Error::new(
            ErrorKind::Denied,
            format!(
                "the Keystone catalog's image endpoint {} is plain http: the token would travel unencrypted",
                redact(&url)
            ),
        ));
    }
    if matches!(image, "" | "." | "..") {
        return Err(invalid(format!("'{image}' is not a Glance image id")));
    }
    url.path_segments_mut()
        .expect("an http(s) URL has a path")
        .push(image);
    Ok(url)
}

/// Picks the `image` endpoint from a Keystone v3 catalog.
pub fn image_endpoint(catalog: &Value, region: Option<&str>, interface: &str) -> Option<String> {
    catalog
        .as_array()?
        .iter()
        .filter(|s| s["type"] == "image")
        .find_map(|s| {
            s["endpoints"].as_array()?.iter().find_map(|e| {
                let region_ok = region.is_none_or(|r| e["region"] == r || e["region_id"] == r);
                (e["interface"] == interface && region_ok)
                    .then(|| e["url"].as_str().map(str::to_owned))
                    .flatten()
            })
        })
}

/// The checksum Glance recorded for an image: `os_hash_algo`/`os_hash_value`, else md5 `checksum`.
pub fn image_checksum(meta: &Value) -> Result<Option<Checksum>> {
    if let (Some(algo), Some(value)) = (
        meta["os_hash_algo"].as_str(),
        meta["os_hash_value"].as_str(),
    ) {
        return Checksum::parse(&format!("{algo}:{value}")).map(Some);
    }
    match meta["checksum"].as_str() {
        Some(md5) => Checksum::parse(&format!("md5:{md5}")).map(Some),
        None => Ok(None),
    }
}

/// An image in Glance, read as one verified stream.
pub struct GlanceSource {
    inner: HttpSource,
    image: String,
}

impl GlanceSource {
    /// Authenticates at `keystone` (the v3 URL, e.g. `https://host:5000/v3`) and opens `image`.
    pub async fn open(
        keystone: Url,
        image: &str,
        auth: &GlanceAuth,
        opts: &HttpOptions,
    ) -> Result<Self> {
        let client = HttpClient::new(opts)?;
        let base = keystone.as_str().trim_end_matches('/');
        let tokens = Url::parse(&format!("{base}/auth/tokens"))
            .map_err(|e| invalid(format!("invalid Keystone URL: {e}")))?;
        let body = serde_json::to_vec(&auth.request_body()?).expect("JSON");
        let (resp, answered) = client
            .send_with(Method::POST, &tokens, None, Some(body), &HeaderMap::new())
            .await?;
        match resp.status() {
            StatusCode::CREATED | StatusCode::OK => {}
            StatusCode::UNAUTHORIZED => {
                return Err(Error::new(
                    ErrorKind::Denied,
                    format!(
                        "Keystone {}: HTTP 401 Unauthorized: the credentials were refused",
                        redact(&keystone)
                    ),
                ))
            }
            s => {
                return Err(Error::new(
                    ErrorKind::Server,
                    format!("Keystone {}: HTTP {}", redact(&keystone), s.as_u16()),
                ))
            }
        }
        let token = resp
            .headers()
            .get("x-subject-token")
            .cloned()
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Protocol,
                    "Keystone answered without an X-Subject-Token header",
                )
            })?;
        let body: Value = json_body(resp, &answered, "Keystone token reply").await?;
        let interface = auth.interface.as_deref().unwrap_or("public");
        let endpoint = image_endpoint(&body["token"]["catalog"], auth.region.as_deref(), interface)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "no '{interface}' image endpoint in the Keystone catalog{}",
                        auth.region
                            .as_ref()
                            .map(|r| format!(" for region {r}"))
                            .unwrap_or_default()
                    ),
                )
            })?;
        let meta_url = image_url(&keystone, &endpoint, image)?;
        let mut h = HeaderMap::new();
        let mut token = token;
        token.set_sensitive(true);
        h.insert("x-auth-token", token);
        let (resp, answered) = client
            .send_ok_with(Method::GET, &meta_url, None, None, &h)
            .await
            .map_err(|e| {
                if e.kind() == ErrorKind::NotFound {
                    Error::new(
                        ErrorKind::NotFound,
                        format!("Glance image {image} not found"),
                    )
                } else {
                    e
                }
            })?;
        let meta: Value = json_body(resp, &answered, "Glance image reply").await?;
        let checksum = image_checksum(&meta)?;
        let mut file_url = meta_url.clone();
        file_url
            .path_segments_mut()
            .expect("an http(s) URL has a path")
            .push("file");
        let (resp, at) = client
            .send_ok_with(Method::GET, &file_url, None, None, &h)
            .await?;
        if resp.status() == StatusCode::NO_CONTENT {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("Glance image {image} has no data"),
            ));
        }
        let size = meta["size"].as_u64();
        let inner = HttpSource::raw_stream(client, resp, &at, size, checksum).await?;
        Ok(GlanceSource {
            inner,
            image: image.to_owned(),
        })
    }
}

#[async_trait]
impl BlockSource for GlanceSource {
    fn describe(&self) -> String {
        format!("Glance image {}", self.image)
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn caps(&self) -> SourceCaps {
        self.inner.caps()
    }

    async fn read_at(&self, offset: u64, buf: Buffer) -> Result<Buffer> {
        self.inner.read_at(offset, buf).await
    }

    async fn open_another(&self) -> Result<Arc<dyn BlockSource>> {
        Err(Error::new(
            ErrorKind::Unsupported,
            "a Glance image is read as one stream",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(t: &str) -> GlanceAuth {
        GlanceAuth {
            auth_type: t.into(),
            ..GlanceAuth::default()
        }
    }

    #[test]
    fn password_body_scopes_user_and_project_by_name_and_domain() {
        let a = GlanceAuth {
            username: Some("u".into()),
            password: Some("p".into()),
            user_domain_name: Some("Default".into()),
            project_name: Some("proj".into()),
            project_domain_id: Some("default".into()),
            ..auth("password")
        };
        let b = a.request_body().unwrap();
        assert_eq!(b["auth"]["identity"]["methods"][0], "password");
        assert_eq!(b["auth"]["identity"]["password"]["user"]["name"], "u");
        assert_eq!(
            b["auth"]["identity"]["password"]["user"]["domain"]["name"],
            "Default"
        );
        assert_eq!(b["auth"]["scope"]["project"]["name"], "proj");
        assert_eq!(b["auth"]["scope"]["project"]["domain"]["id"], "default");
    }

    #[test]
    fn token_and_application_credential_bodies_follow_the_api() {
        let t = GlanceAuth {
            token: Some("t".into()),
            project_id: Some("pid".into()),
            ..auth("token")
        };
        let b = t.request_body().unwrap();
        assert_eq!(b["auth"]["identity"]["token"]["id"], "t");
        assert_eq!(b["auth"]["scope"]["project"]["id"], "pid");
        let c = GlanceAuth {
            app_cred_id: Some("cid".into()),
            app_cred_secret: Some("s".into()),
            ..auth("applicationcredential")
        };
        let b = c.request_body().unwrap();
        assert_eq!(b["auth"]["identity"]["application_credential"]["id"], "cid");
        assert!(b["auth"].get("scope").is_none());
        let n = GlanceAuth {
            app_cred_name: Some("n".into()),
            app_cred_secret: Some("s".into()),
            username: Some("u".into()),
            user_domain_id: Some("d".into()),
            ..auth("v3applicationcredential")
        };
        assert_eq!(
            n.request_body().unwrap()["auth"]["identity"]["application_credential"]["user"]
                ["domain"]["id"],
            "d"
        );
    }

    #[test]
    fn missing_credentials_are_named_without_secrets() {
        let e = GlanceAuth {
            username: Some("u".into()),
            ..auth("password")
        }
        .request_body()
        .unwrap_err();
        assert!(e.to_string().contains("OS_PASSWORD"));
        assert!(auth("kerberos").request_body().is_err());
        let dbg = format!(
            "{:?}",
            GlanceAuth {
                password: Some("hunter2".into()),
                ..auth("password")
            }
        );
        assert!(!dbg.contains("hunter2"));
    }

    #[test]
    fn catalog_lookup_honours_interface_and_region() {
        let cat = json!([
            { "type": "compute", "endpoints": [{ "interface": "public", "region": "R1", "url": "http://nova" }] },
            { "type": "image", "endpoints": [
                { "interface": "internal", "region": "R1", "url": "http://glance-int" },
                { "interface": "public", "region": "R1", "url": "http://glance-r1" },
                { "interface": "public", "region": "R2", "url": "http://glance-r2" }
            ] }
        ]);
        assert_eq!(
            image_endpoint(&cat, None, "public").as_deref(),
            Some("http://glance-r1")
        );
        assert_eq!(
            image_endpoint(&cat, Some("R2"), "public").as_deref(),
            Some("http://glance-r2")
        );
        assert_eq!(
            image_endpoint(&cat, Some("R1"), "internal").as_deref(),
            Some("http://glance-int")
        );
        assert_eq!(image_endpoint(&cat, Some("R3"), "public"), None);
        assert_eq!(image_endpoint(&json!("garbage"), None, "public"), None);
    }

    #[test]
    fn image_checksum_prefers_os_hash_then_md5() {
        let h = "ab".repeat(64);
        let m =
            json!({ "os_hash_algo": "sha512", "os_hash_value": h, "checksum": "00".repeat(16) });
        assert_eq!(
            image_checksum(&m).unwrap(),
            Some(Checksum::parse(&format!("sha512:{h}")).unwrap())
        );
        let m = json!({ "checksum": "11".repeat(16) });
        assert_eq!(
            image_checksum(&m).unwrap(),
            Some(Checksum::parse(&format!("md5:{}", "11".repeat(16))).unwrap())
        );
        assert_eq!(image_checksum(&json!({})).unwrap(), None);
        assert!(
            image_checksum(&json!({ "os_hash_algo": "sha512", "os_hash_value": "xyz" })).is_err()
        );
    }

    #[test]
    fn the_image_id_is_one_escaped_path_segment() {
        let ks = Url::parse("https://keystone.example:5000/v3").unwrap();
        let u = image_url(&ks, "https://glance.example:9292/v2/", "ab/../../v3 x?y").unwrap();
        assert_eq!(
            u.as_str(),
            "https://glance.example:9292/v2/images/ab%2F..%2F..%2Fv3%20x%3Fy"
        );
        let u = image_url(&ks, "https://glance.example/image", "1234").unwrap();
        assert_eq!(u.as_str(), "https://glance.example/image/v2/images/1234");
        for bad in ["", ".", ".."] {
            assert!(
                image_url(&ks, "https://glance.example", bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_plain_http_image_endpoint_never_gets_a_token_from_an_https_keystone() {
        let ks = Url::parse("https://keystone.example:5000/v3").unwrap();
        let e = image_url(&ks, "http://glance.example:9292", "1234").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Denied, "{e}");
        assert!(e.to_string().contains("plain http"), "{e}");
        // A Keystone reached over plain http already sends the credentials in clear.
        let ks = Url::parse("http://keystone.example:5000/v3").unwrap();
        assert!(image_url(&ks, "http://glance.example:9292", "1234").is_ok());
    }
}
